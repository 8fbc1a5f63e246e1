//! The binary's command-line contract: errors are one clear line and a
//! non-zero exit. (Its presence also makes `cargo test` build the binary that
//! the integration tests start.)

use std::net::TcpListener;
use std::process::Command;

fn flash_server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flash-server"))
}

#[test]
fn missing_root_is_a_clear_error() {
    let out = flash_server()
        .args(["/nonexistent/flash-root", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document root /nonexistent/flash-root"),
        "stderr: {err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn busy_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = flash_server()
        .args([
            env!("CARGO_MANIFEST_DIR"),
            "--listen",
            &addr,
            "--arch",
            "sped",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("in use"),
        "stderr: {err}"
    );
}

#[test]
fn bad_flag_values_are_rejected() {
    let out = flash_server()
        .args(["--header-timeout", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}

#[test]
fn bad_index_names_are_rejected() {
    for (value, expected) in [
        (
            "index.html sub/index.html",
            "invalid index file name \"sub/index.html\"",
        ),
        ("", "no index file name given"),
        (" , ", "no index file name given"),
    ] {
        let out = flash_server().args(["--index", value]).output().unwrap();
        assert!(!out.status.success(), "--index {value:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "--index {value:?}: {err}");
    }
}

#[test]
fn amped_without_helpers_is_a_clear_error() {
    let out = flash_server()
        .args(["--helpers", "0", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--helpers 0") && err.contains("at least one helper"),
        "stderr: {err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}
