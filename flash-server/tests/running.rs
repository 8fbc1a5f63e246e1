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
        let mut server = Running::start(&demo_args(&["--user", "nobody"]));
        let dir = demo_dir(&mut server);
        assert!(dir.join("index.html").is_file(), "{}", dir.display());
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

/// The arguments for the demo site over AMPED when flash-helper is built,
/// else SPED; and which one it is.
fn demo_args(extra: &[&'static str]) -> Vec<&'static str> {
    let helper = Path::new(env!("CARGO_BIN_EXE_flash-server")).with_file_name("flash-helper");
    let arch = if helper.is_file() { "amped" } else { "sped" };
    let mut args = vec!["--listen", "127.0.0.1:0", "--arch", arch];
    args.extend_from_slice(extra);
    args
}

/// The directory of the `serving the demo site from DIR (...)` log line.
fn demo_dir(server: &mut Running) -> PathBuf {
    let line = server.stderr_line("serving the demo site from ");
    line.split("serving the demo site from ")
        .nth(1)
        .and_then(|rest| rest.rsplit_once(" ("))
        .map(|(dir, _)| PathBuf::from(dir))
        .unwrap_or_else(|| panic!("no directory in {line:?}"))
}

#[test]
fn idle_server_exits_promptly_and_quietly() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = Running::start(&demo_args(&[]));
        let dir = demo_dir(&mut server);
        let (status, took, stderr) = server.stop(signal);
        eprintln!("signal {signal}: exit after {took:?}");
        assert!(status.success(), "signal {signal}: {status}: {stderr}");
        // The target is well under 100 ms (about 10 ms here); the bound
        // leaves room for a loaded machine.
        assert!(
            took < Duration::from_millis(500),
            "signal {signal}: took {took:?}"
        );
        assert!(!stderr.contains("warn"), "signal {signal}: {stderr}");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn second_signal_exits_at_once() {
    // A request head begun but not finished holds the graceful shutdown
    // (for up to --shutdown-timeout); a second signal must not wait for it.
    let mut server = Running::start(&demo_args(&[
        "--header-timeout",
        "60s",
        "--shutdown-timeout",
        "60s",
    ]));
    let dir = demo_dir(&mut server);
    // The worker, and its helpers.
    let workers = children(server.child.id());
    let mut processes: Vec<u32> = workers.iter().flat_map(|&w| children(w)).collect();
    processes.extend(&workers);
    assert!(processes.len() > workers.len(), "{workers:?} run helpers");
    let mut client = TcpStream::connect(&server.addr).unwrap();
    client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the graceful shutdown no longer waits for a request in progress: \
         hold it some other way for this test"
    );
    let start = Instant::now();
    server.signal(libc::SIGINT);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "still running");
        std::thread::sleep(Duration::from_millis(1));
    };
    let took = start.elapsed();
    eprintln!("second SIGINT: exit after {took:?}");
    assert_eq!(status.code(), Some(128 + libc::SIGINT));
    assert!(took < Duration::from_millis(500), "took {took:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
    // The worker is killed with the supervisor, its helpers follow by their
    // parent-death signal (before stderr is read: they hold it open).
    for pid in processes {
        let deadline = Instant::now() + Duration::from_secs(2);
        while is_running(pid) {
            assert!(
                Instant::now() < deadline,
                "process {pid} outlived the server"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let mut stderr = String::new();
    server.stderr.read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("second SIGINT"), "{stderr}");
    drop(client);
}

/// Child processes of `pid` (its helpers).
fn children(pid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        // Empty when the kernel lacks CONFIG_PROC_CHILDREN: nothing checked then.
        let list =
            std::fs::read_to_string(task.unwrap().path().join("children")).unwrap_or_default();
        pids.extend(list.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
    }
    pids
}

/// Whether `pid` exists and has not exited (a zombie waiting for its
/// reaper has).
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}
