//! The configuration file (`--config`), `--check` and `--version`, against
//! the real binaries: a file's settings change what is served, a flag
//! overrides the file, a bad file is refused with its line, and `--check`
//! judges a setup without binding or starting anything.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use integration_tests::harness::{binary, get, wait_until, Server, TempDir, IO_TIMEOUT};

/// A document root with a hidden file and a directory holding two index
/// candidates, so `hidden` and `index` show in responses.
fn site(tag: &str) -> TempDir {
    let root = TempDir::new(tag);
    root.write(".env", "SECRET=1\n");
    root.write("dir/index.html", "index.html\n");
    root.write("dir/default.htm", "default.htm\n");
    root
}

/// `flash-server ARGS` run to completion (for `--check`, `--version` and
/// refused configurations, which exit without serving); one that is still
/// running after `IO_TIMEOUT` (it started serving) is killed and fails the
/// test.
fn flash_server(args: &[&str]) -> Output {
    run_bounded(Command::new(binary("flash-server")).args(args))
}

fn run_bounded(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("piped stderr")));
    let exited = wait_until(IO_TIMEOUT, || !matches!(child.try_wait(), Ok(None)));
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    let output = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(
        exited,
        "{command:?} was still running after {IO_TIMEOUT:?} (killed): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

#[test]
fn settings_of_the_file_take_effect() {
    let root = site("conf-effect");
    let conf = TempDir::new("conf-effect-file");
    // The root comes from the file too: no positional argument.
    let file = conf.write(
        "flash.toml",
        format!(
            "# a comment\nroot = {:?}\nhidden = \"allow\"\nindex = \"default.htm, index.html\"\nhelpers = 2\nworkers = 1\n",
            path_str(root.path())
        ),
    );
    let server = Server::start_with(None, &["--config", path_str(&file)])
        .expect("flash-server with a configuration file");
    let r = get(&server, "/.env");
    assert_eq!(r.status, 200, "hidden = \"allow\" serves /.env");
    assert_eq!(r.body, b"SECRET=1\n");
    let r = get(&server, "/dir/");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body, b"default.htm\n",
        "index from the file, in its order"
    );
    assert_eq!(server.worker_pids().len(), 1, "workers = 1");
    assert_eq!(server.helper_pids().len(), 2, "helpers = 2");
}

#[test]
fn a_flag_overrides_the_file() {
    let root = site("conf-override");
    let conf = TempDir::new("conf-override-file");
    let file = conf.write(
        "flash.toml",
        "hidden = \"allow\"\nindex = \"default.htm index.html\"\n",
    );
    let server = Server::start(
        root.path(),
        &[
            "--config",
            path_str(&file),
            "--hidden",
            "deny",
            "--index",
            "index.html",
        ],
    );
    assert_eq!(get(&server, "/.env").status, 404, "--hidden deny wins");
    let r = get(&server, "/dir/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"index.html\n", "--index wins");
}

#[test]
fn an_unknown_key_is_refused_with_its_line() {
    let root = site("conf-unknown");
    let conf = TempDir::new("conf-unknown-file");
    let file = conf.write(
        "flash.toml",
        "hidden = \"allow\"\n\n# the helpers\nhelper-timout = \"5s\"\n",
    );
    let file = path_str(&file);
    let err = Server::start_with(Some(root.path()), &["--config", file])
        .err()
        .expect("a configuration with an unknown key must be refused");
    assert!(
        err.contains(&format!(
            "flash-server: {file}:4: unknown key \"helper-timout\" (did you mean \"helper-timeout\"?)"
        )),
        "{err}"
    );
    assert!(!err.contains("exit status: 0"), "{err}");
}

#[test]
fn a_bad_value_is_refused_with_its_line_and_reason() {
    let conf = TempDir::new("conf-bad-value");
    let file = conf.write("flash.toml", "helpers = 2\nheader-timeout = \"soon\"\n");
    let file = path_str(&file);
    let out = flash_server(&["--config", file, "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{file}:2: bad value for \"header-timeout\""))
            && err.contains("invalid duration: soon"),
        "{err}"
    );
}

#[test]
fn check_accepts_a_good_setup_without_binding() {
    let root = site("conf-check-ok");
    let conf = TempDir::new("conf-check-ok-file");
    // A port that is taken: --check must not try to bind it.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let file = conf.write(
        "flash.toml",
        format!(
            "root = {:?}\nlisten = [{addr:?}]\nhelpers = 2\n",
            path_str(root.path())
        ),
    );
    let out = flash_server(&["--config", path_str(&file), "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "flash-server: configuration OK\n");
    // And with the command line alone (SPED needs no helper).
    let out = flash_server(&[path_str(root.path()), "--arch", "sped", "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn check_rejects_a_bad_setup_with_the_reason() {
    let root = site("conf-check-bad");
    let conf = TempDir::new("conf-check-bad-file");
    let root_str = path_str(root.path());
    let missing = root.path().join("missing");
    let a_file = root.path().join(".env");
    let not_executable = conf.write("flash-helper", "#!/bin/sh\n");
    let bad_key = conf.write("bad.toml", format!("root = {root_str:?}\nhelperz = 2\n"));
    let cases: [(&[&str], String); 7] = [
        (
            &[root_str, "--header-timeout", "soon"],
            "invalid duration: soon".into(),
        ),
        (
            &[path_str(&missing)],
            format!("document root {}", missing.display()),
        ),
        (
            &[path_str(&a_file)],
            format!("document root {} is not a directory", a_file.display()),
        ),
        (
            &[root_str, "--helper-path", "/nonexistent/flash-helper"],
            "helper executable /nonexistent/flash-helper not found".into(),
        ),
        (
            &[root_str, "--helper-path", path_str(&not_executable)],
            format!(
                "helper executable {} is not executable",
                not_executable.display()
            ),
        ),
        (
            &["--config", path_str(&bad_key)],
            format!(
                "{}:2: unknown key \"helperz\" (did you mean \"helpers\"?)",
                bad_key.display()
            ),
        ),
        (
            &[root_str, "--helpers", "0"],
            "--helpers 0: the AMPED architecture needs at least one helper".into(),
        ),
    ];
    for (args, reason) in cases {
        let mut args = args.to_vec();
        args.push("--check");
        let out = flash_server(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&reason),
            "{args:?}: want {reason:?} in {err:?}"
        );
        assert!(
            !stdout(&out).contains("configuration OK"),
            "{args:?}: {}",
            stdout(&out)
        );
    }
    // SPED does not need a helper, so a missing one is no error there.
    let out = flash_server(&[
        root_str,
        "--arch",
        "sped",
        "--helper-path",
        "/nonexistent/flash-helper",
        "--check",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn both_executables_print_their_version() {
    let version = env!("CARGO_PKG_VERSION");
    for name in ["flash-server", "flash-helper"] {
        let out = run_bounded(Command::new(binary(name)).arg("--version"));
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{name} {version}\n"));
    }
}
