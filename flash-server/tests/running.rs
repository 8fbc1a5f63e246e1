//! The running binary, seen from outside: its listening sockets, its exit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A started flash-server; killed if a test fails before stopping it.
struct Running {
    child: Child,
    /// `ADDR` of the first `listening on http://ADDR` line.
    addr: String,
    stderr: BufReader<ChildStderr>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flash-server"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            let _ = child.kill();
            let _ = child.wait();
            panic!("flash-server did not start: stdout {line:?}, stderr {err:?}");
        };
        Running {
            addr: addr.to_owned(),
            child,
            stderr,
        }
    }

    fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }

    /// Reads stderr up to a line containing `needle`; returns that line.
    fn stderr_line(&mut self, needle: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stderr.read_line(&mut line).unwrap() == 0 {
                panic!("stderr ended without a line containing {needle:?}");
            }
            if line.contains(needle) {
                return line.trim_end().to_owned();
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, signal) };
    }

    /// Sends `signal` and waits (at most 20 s) for the exit; returns the
    /// status, the time the exit took and the rest of stderr.
    fn stop(mut self, signal: libc::c_int) -> (ExitStatus, Duration, String) {
        let start = Instant::now();
        self.signal(signal);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "flash-server still running 20 s after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        let took = start.elapsed();
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        (status, took, rest)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The backlog of the listening socket on 127.0.0.1:`port`, from `ss`
/// (for a LISTEN socket its Send-Q column is the backlog); None when `ss`
/// is not installed.
fn listen_backlog(port: &str) -> Option<u32> {
    let out = match Command::new("ss").args(["-ltnH"]).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run ss: {e}"),
    };
    assert!(out.status.success(), "ss -ltnH failed: {out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let local = format!("127.0.0.1:{port}");
    let row = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&"LISTEN") && cols.get(3) == Some(&local.as_str()))
        .unwrap_or_else(|| panic!("no LISTEN socket on {local} in:\n{table}"));
    Some(row[2].parse().unwrap())
}

fn sped_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec![
        env!("CARGO_MANIFEST_DIR"),
        "--listen",
        "127.0.0.1:0",
        "--arch",
        "sped",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn backlog_flag_reaches_the_listening_socket() {
    let server = Running::start(&sped_args(&["--backlog", "77"]));
    let Some(backlog) = listen_backlog(server.port()) else {
        eprintln!("skipped: `ss` (iproute2) is not installed, so the backlog cannot be read");
        return;
    };
    assert_eq!(backlog, 77);
    let (status, _, stderr) = server.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn backlog_defaults_to_somaxconn() {
    let expected = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .map(|s| s.trim().parse::<u32>().unwrap())
        .unwrap_or(4096);
    let server = Running::start(&sped_args(&[]));
    let Some(backlog) = listen_backlog(server.port()) else {
        eprintln!("skipped: `ss` (iproute2) is not installed, so the backlog cannot be read");
        return;
    };
    // Not Rust's 128: the kernel's own cap.
    assert_eq!(backlog, expected);
    let (status, _, stderr) = server.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn sped_ignores_the_helper_count() {
    let server = Running::start(&sped_args(&["--helpers", "0"]));
    let (status, _, stderr) = server.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
}

/// The flags that start the server as `nobody` on the demo site: AMPED if
/// flash-helper was built next to flash-server, else SPED.
fn demo_as_nobody_args() -> Vec<&'static str> {
    let helper = Path::new(env!("CARGO_BIN_EXE_flash-server")).with_file_name("flash-helper");
    let arch = if helper.is_file() {
        "amped"
    } else {
        eprintln!(
            "note: {} not built; testing with --arch sped",
            helper.display()
        );
        "sped"
    };
    vec![
        "--user",
        "nobody",
        "--listen",
        "127.0.0.1:0",
        "--arch",
        arch,
    ]
}

fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn demo_site_served_as_another_user_is_removed_at_exit() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can start flash-server with --user nobody");
        return;
    }
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = Running::start(&demo_as_nobody_args());
        let line = server.stderr_line("serving the demo site from ");
        let dir = line
            .split("serving the demo site from ")
            .nth(1)
            .and_then(|rest| rest.rsplit_once(" ("))
            .map(|(dir, _)| PathBuf::from(dir))
            .unwrap_or_else(|| panic!("no directory in {line:?}"));
        assert!(dir.join("index.html").is_file(), "{line}");
        let reply = get(&server.addr, "/about/");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let (status, _, stderr) = server.stop(signal);
        assert!(status.success(), "signal {signal}: {status}: {stderr}");
        assert!(
            !dir.exists(),
            "signal {signal}: {} left behind; stderr: {stderr}",
            dir.display()
        );
    }
}
