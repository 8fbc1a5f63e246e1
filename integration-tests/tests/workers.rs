//! The supervisor and its workers (`--workers N`): the load is spread over
//! the workers; a worker that dies is replaced and the connections queued for
//! it are served by its successor; a worker that keeps dying is restarted
//! with growing pauses; SIGHUP replaces every worker under load without a
//! refused or reset connection; a reload that cannot work leaves the old
//! workers serving; SIGTERM stops them all. Also the service-manager
//! protocols: socket activation (`LISTEN_FDS`) and readiness (`NOTIFY_SOCKET`).

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration_tests::harness::{
    binary, children_of, process_alive, read_response, signal, wait_until, Server, TempDir,
    IO_TIMEOUT,
};

const BODY: &str = "served by a worker\n";

fn site(tag: &str) -> TempDir {
    let root = TempDir::new(tag);
    root.write("a.txt", BODY);
    root
}

/// Sockets among the descriptors of `pid` (its listeners, helper sockets
/// and connections: compared before and after, the difference is the
/// connections it took).
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// One `GET /a.txt` on a new connection; the body, or what went wrong.
fn fetch(addr: SocketAddr) -> io::Result<Vec<u8>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    (&stream).write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let response = read_response(&mut BufReader::new(stream), false)?;
    if response.status != 200 {
        return Err(io::Error::other(format!("status {}", response.status)));
    }
    Ok(response.body)
}

fn await_workers(server: &Server, n: usize, not: &HashSet<u32>) -> Vec<u32> {
    let mut workers = Vec::new();
    let found = wait_until(IO_TIMEOUT, || {
        workers = server.worker_pids();
        workers.retain(|pid| process_alive(*pid) && !not.contains(pid));
        workers.len() == n
    });
    assert!(
        found,
        "expected {n} new workers, found {workers:?} (excluding {not:?}); stderr:\n{}",
        server.stderr_so_far()
    );
    workers
}

#[test]
fn every_worker_is_an_engine_with_its_own_helpers_and_takes_connections() {
    let root = site("workers-share");
    // The kernel's hash spreads connections here (no steering by CPU,
    // which would give all of one client thread's to one worker).
    let server = Server::start(
        root.path(),
        &["--workers", "2", "--helpers", "2", "--cpu-affinity", "off"],
    );
    let workers = await_workers(&server, 2, &HashSet::new());
    for &pid in &workers {
        assert!(
            wait_until(IO_TIMEOUT, || children_of(pid).len() == 2),
            "worker {pid} should run 2 helpers: {:?}",
            children_of(pid)
        );
    }
    let idle: Vec<usize> = workers.iter().map(|&pid| sockets_of(pid)).collect();
    // 40 connections, each answered once (so each was accepted) and held.
    let held: Vec<TcpStream> = (0..40)
        .map(|_| {
            let stream = server.connect();
            (&stream)
                .write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            assert_eq!(
                read_response(&mut reader, false).unwrap().body,
                BODY.as_bytes()
            );
            stream
        })
        .collect();
    let taken: Vec<usize> = workers
        .iter()
        .zip(&idle)
        .map(|(&pid, &idle)| sockets_of(pid) - idle)
        .collect();
    assert_eq!(taken.iter().sum::<usize>(), held.len(), "{taken:?}");
    // The kernel spreads connections by a hash of their addresses: fewer
    // than 5 of 40 on one worker has a probability below 1e-7.
    assert!(
        taken.iter().all(|&n| n >= 5),
        "connections per worker: {taken:?}"
    );
}

#[test]
fn a_killed_worker_is_replaced_and_its_queued_connections_are_served() {
    let root = site("workers-kill");
    // Hash-spread, so some of the clients' connections go to the victim
    // whichever CPUs their threads run on.
    let server = Server::start(root.path(), &["--workers", "2", "--cpu-affinity", "off"]);
    let workers = await_workers(&server, 2, &HashSet::new());
    let victim = workers[0];
    // Frozen, the victim accepts nothing: the connections the kernel hashes
    // to its socket wait in that socket's queue, held by the supervisor.
    signal(victim, libc::SIGSTOP);
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || fetch(addr))
        })
        .collect();
    // Give the connections time to be queued (they complete their handshake
    // in the kernel): then kill the victim while it holds none of them.
    let queued = wait_until(IO_TIMEOUT, || {
        let out = Command::new("ss")
            .args(["-ltnH", &format!("sport = :{}", server.addr.port())])
            .output()
            .expect("ss");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().nth(1).is_some_and(|q| q != "0"))
    });
    assert!(queued, "no connection queued on the frozen worker's socket");
    signal(victim, libc::SIGKILL);
    for client in clients {
        let body = client.join().unwrap().expect("every client is served");
        assert_eq!(body, BODY.as_bytes());
    }
    let now = await_workers(&server, 2, &HashSet::new());
    assert!(!now.contains(&victim), "{now:?}");
    assert!(server.await_stderr("restarting it", 1, IO_TIMEOUT));
}

#[test]
fn a_worker_that_cannot_start_is_retried_with_growing_pauses() {
    let root = site("workers-backoff");
    let bin = TempDir::new("workers-backoff-bin");
    let helper = bin.path().join("flash-helper");
    std::fs::copy(binary("flash-helper"), &helper).unwrap();
    let server = Server::start(root.path(), &["--helper-path", helper.to_str().unwrap()]);
    let first = server.engine_pid();
    // Without its helper executable a new worker exits at once.
    let hidden = bin.path().join("hidden");
    std::fs::rename(&helper, &hidden).unwrap();
    signal(first, libc::SIGKILL);
    for pause in ["in 100ms", "in 200ms", "in 400ms"] {
        assert!(
            server.await_stderr(pause, 1, IO_TIMEOUT),
            "no restart {pause}; stderr:\n{}",
            server.stderr_so_far()
        );
    }
    assert!(server.stderr_so_far().contains("not found"));
    std::fs::rename(&hidden, &helper).unwrap();
    // The next attempt (at most 10 s away) serves again.
    let served = wait_until(Duration::from_secs(15), || {
        fetch(server.addr).is_ok_and(|b| b == BODY.as_bytes())
    });
    assert!(served, "stderr:\n{}", server.stderr_so_far());
}

/// Clients hammering the server: half open a connection per request, half
/// reuse keep-alive connections. A keep-alive connection that ends before
/// any byte of an answer is retried on a new one, as HTTP clients do (RFC
/// 9112, section 9.3.1); anything else that is not a whole 200 with the
/// file is counted as a failure with its reason.
struct Hammer {
    stop: AtomicBool,
    served: AtomicU64,
    retried: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Hammer {
    fn new() -> Hammer {
        Hammer {
            stop: AtomicBool::new(false),
            served: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
        }
    }

    fn fail(&self, why: String) {
        self.failures.lock().unwrap().push(why);
    }

    fn fresh_connections(&self, addr: SocketAddr) {
        while !self.stop.load(Ordering::Relaxed) {
            match fetch(addr) {
                Ok(body) if body == BODY.as_bytes() => {
                    self.served.fetch_add(1, Ordering::Relaxed);
                }
                Ok(body) => self.fail(format!("wrong body {body:?}")),
                Err(e) => self.fail(format!("new connection: {e}")),
            }
        }
    }

    fn keep_alive(&self, addr: SocketAddr) {
        let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let reused = conn.is_some();
            let (stream, reader) = match conn.take() {
                Some(c) => c,
                None => match TcpStream::connect(addr) {
                    Ok(s) => {
                        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                        let reader = BufReader::new(s.try_clone().unwrap());
                        (s, reader)
                    }
                    Err(e) => {
                        self.fail(format!("connect: {e}"));
                        continue;
                    }
                },
            };
            let mut reader = reader;
            if let Err(e) = (&stream).write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n") {
                if reused && e.kind() == io::ErrorKind::BrokenPipe {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.fail(format!("write (reused: {reused}): {e}"));
                }
                continue;
            }
            match reader.fill_buf() {
                Ok([]) if reused => {
                    // The server ended an idle keep-alive connection.
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok([]) => {
                    self.fail("a new connection closed without an answer".into());
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    self.fail(format!("read (reused: {reused}): {e}"));
                    continue;
                }
            }
            match read_response(&mut reader, false) {
                Ok(r) if r.status == 200 && r.body == BODY.as_bytes() => {
                    self.served.fetch_add(1, Ordering::Relaxed);
                    let closing = r
                        .header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    if !closing {
                        conn = Some((stream, reader));
                    }
                }
                Ok(r) => self.fail(format!("status {} body {:?}", r.status, r.body)),
                Err(e) => self.fail(format!("response: {e}")),
            }
        }
    }
}

#[test]
fn reload_under_load_refuses_and_resets_no_connection() {
    let root = site("workers-reload");
    let server = Server::start(root.path(), &["--workers", "2"]);
    let mut old: HashSet<u32> = await_workers(&server, 2, &HashSet::new())
        .into_iter()
        .collect();
    let hammer = Hammer::new();
    std::thread::scope(|scope| {
        for i in 0..6 {
            let (hammer, addr) = (&hammer, server.addr);
            scope.spawn(move || {
                if i % 2 == 0 {
                    hammer.fresh_connections(addr)
                } else {
                    hammer.keep_alive(addr)
                }
            });
        }
        for round in 1..=3 {
            let before = hammer.served.load(Ordering::Relaxed);
            assert!(
                wait_until(IO_TIMEOUT, || hammer.served.load(Ordering::Relaxed)
                    > before + 200),
                "no load before reload {round}"
            );
            signal(server.pid(), libc::SIGHUP);
            assert!(
                server.await_stderr("configuration reloaded", round, IO_TIMEOUT),
                "reload {round}; stderr:\n{}",
                server.stderr_so_far()
            );
            let new: HashSet<u32> = await_workers(&server, 2, &old).into_iter().collect();
            assert!(
                wait_until(IO_TIMEOUT, || old.iter().all(|&pid| !process_alive(pid))),
                "old workers {old:?} still run after reload {round}"
            );
            old = new;
        }
        let before = hammer.served.load(Ordering::Relaxed);
        assert!(wait_until(IO_TIMEOUT, || hammer
            .served
            .load(Ordering::Relaxed)
            > before + 200));
        hammer.stop.store(true, Ordering::Relaxed);
    });
    let failures = hammer.failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failure(s) among {} answers ({} keep-alive retries), first: {:?}",
        failures.len(),
        hammer.served.load(Ordering::Relaxed),
        hammer.retried.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn a_reload_that_cannot_work_leaves_the_old_workers_serving() {
    let root = site("workers-bad-reload");
    let bin = TempDir::new("workers-bad-reload-bin");
    let helper = bin.path().join("flash-helper");
    std::fs::copy(binary("flash-helper"), &helper).unwrap();
    let server = Server::start(
        root.path(),
        &["--workers", "2", "--helper-path", helper.to_str().unwrap()],
    );
    let workers: HashSet<u32> = await_workers(&server, 2, &HashSet::new())
        .into_iter()
        .collect();
    std::fs::remove_file(&helper).unwrap();
    signal(server.pid(), libc::SIGHUP);
    assert!(
        server.await_stderr("reload refused", 1, IO_TIMEOUT),
        "stderr:\n{}",
        server.stderr_so_far()
    );
    assert!(server.stderr_so_far().contains("not found"));
    assert_eq!(fetch(server.addr).unwrap(), BODY.as_bytes());
    let now: HashSet<u32> = server.worker_pids().into_iter().collect();
    assert_eq!(now, workers, "the old workers keep serving");
}

#[test]
fn sigterm_stops_every_worker_and_helper() {
    let root = site("workers-stop");
    let server = Server::start(root.path(), &["--workers", "3", "--helpers", "2"]);
    let workers = await_workers(&server, 3, &HashSet::new());
    assert!(wait_until(IO_TIMEOUT, || server.helper_pids().len() == 6));
    let mut all = server.helper_pids();
    all.extend(&workers);
    assert_eq!(fetch(server.addr).unwrap(), BODY.as_bytes());
    let (status, stderr) = server.stop();
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(stderr.contains("all workers stopped"), "{stderr}");
    assert!(
        wait_until(IO_TIMEOUT, || all.iter().all(|&pid| !process_alive(pid))),
        "still running: {:?}",
        all.iter()
            .filter(|&&pid| process_alive(pid))
            .collect::<Vec<_>>()
    );
}

/// A python3 wrapper that does what systemd does for socket activation:
/// binds a socket, puts it at descriptor 3, sets `LISTEN_FDS=1` and
/// `LISTEN_PID` to its own pid, and execs the server (same pid).
const ACTIVATE: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen(64)
print("activated", s.getsockname()[1], flush=True)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
"#;

#[test]
fn socket_activation_serves_the_inherited_socket_and_readiness_is_notified() {
    let root = site("workers-activation");
    let notify_dir = TempDir::new("workers-notify");
    let notify_path = notify_dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let server_bin = binary("flash-server");
    let mut child = Command::new("python3")
        .args(["-c", ACTIVATE])
        .arg(&server_bin)
        .arg(root.path())
        .args(["--workers", "2", "--listen", "127.0.0.1:1"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    // Killed if the test fails (its workers follow the supervisor).
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let mut child = KillOnDrop(child);
    // Lines arrive through a channel, so a server that prints nothing
    // fails the test instead of hanging it.
    let (lines, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let next_line = || line_rx.recv_timeout(IO_TIMEOUT).expect("a stdout line");
    let line = next_line();
    let port: u16 = line
        .trim()
        .strip_prefix("activated ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("wrapper said {line:?}"));
    let line = next_line();
    // The inherited socket, not the --listen address.
    assert_eq!(line.trim(), format!("listening on http://127.0.0.1:{port}"));
    let mut datagram = [0u8; 256];
    let n = notify.recv(&mut datagram).expect("READY=1 notification");
    let ready = String::from_utf8_lossy(&datagram[..n]).into_owned();
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains(&format!("MAINPID={}", child.0.id())),
        "{ready:?}"
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(fetch(addr).unwrap(), BODY.as_bytes());

    signal(child.0.id(), libc::SIGHUP);
    let n = notify.recv(&mut datagram).expect("RELOADING=1");
    assert!(String::from_utf8_lossy(&datagram[..n]).starts_with("RELOADING=1\nMONOTONIC_USEC="));
    let n = notify
        .recv(&mut datagram)
        .expect("READY=1 after the reload");
    assert!(String::from_utf8_lossy(&datagram[..n]).starts_with("READY=1"));
    assert_eq!(fetch(addr).unwrap(), BODY.as_bytes());

    signal(child.0.id(), libc::SIGTERM);
    let n = notify.recv(&mut datagram).expect("STOPPING=1");
    assert_eq!(&datagram[..n], b"STOPPING=1");
    let deadline = Instant::now() + IO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    stderr_pipe.read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("from the service manager"), "{stderr}");
}

/// A worker that does not report within its start time (here: frozen right
/// after it was started) is killed and replaced, not forgotten: the server
/// is never left without a worker.
#[test]
fn a_worker_too_slow_to_start_is_killed_and_replaced() {
    let root = site("workers-slow-start");
    let server = Server::start(root.path(), &["--helper-timeout", "1s"]);
    let first = server.engine_pid();
    signal(first, libc::SIGKILL);
    // Freeze the replacement as soon as it exists.
    let mut frozen = 0;
    assert!(wait_until(IO_TIMEOUT, || {
        match server.worker_pids().into_iter().find(|&p| p != first) {
            Some(pid) => {
                signal(pid, libc::SIGSTOP);
                frozen = pid;
                true
            }
            None => false,
        }
    }));
    assert!(
        server.await_stderr("did not start in time: killed", 1, Duration::from_secs(15)),
        "stderr:\n{}",
        server.stderr_so_far()
    );
    let served = wait_until(Duration::from_secs(15), || {
        fetch(server.addr).is_ok_and(|b| b == BODY.as_bytes())
    });
    assert!(served, "stderr:\n{}", server.stderr_so_far());
    let now = server.engine_pid();
    assert!(now != first && now != frozen, "{now}");
}

/// A reload whose new workers cannot serve (here: the new configuration is
/// valid as the supervisor sees it, but the root is no longer readable by
/// the workers' user) is abandoned: the old workers keep serving.
#[test]
fn a_reload_whose_workers_cannot_serve_is_abandoned() {
    if !integration_tests::harness::require_root("workers run as nobody") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let open = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // The root inside a directory whose permissions the test changes.
    let parent = TempDir::new("workers-abandon");
    open(parent.path(), 0o755);
    let root = parent.path().join("site");
    std::fs::create_dir(&root).unwrap();
    open(&root, 0o755);
    std::fs::write(root.join("a.txt"), BODY).unwrap();
    // No path cache: every request is resolved by a helper, in its open root.
    let server = Server::start(
        &root,
        &[
            "--workers",
            "2",
            "--user",
            "nobody",
            "--path-cache-entries",
            "0",
        ],
    );
    let workers: HashSet<u32> = await_workers(&server, 2, &HashSet::new())
        .into_iter()
        .collect();
    assert_eq!(fetch(server.addr).unwrap(), BODY.as_bytes());
    // Root can still reach it (so the supervisor's checks pass); nobody
    // cannot, by its path. The running workers' helpers hold the root open
    // and do not need the path.
    open(parent.path(), 0o700);
    signal(server.pid(), libc::SIGHUP);
    assert!(
        server.await_stderr("reload abandoned", 1, IO_TIMEOUT),
        "stderr:\n{}",
        server.stderr_so_far()
    );
    assert!(server.stderr_so_far().contains("is not readable"));
    // The old workers still serve.
    assert_eq!(fetch(server.addr).unwrap(), BODY.as_bytes());
    let now: HashSet<u32> = await_workers(&server, 2, &HashSet::new())
        .into_iter()
        .collect();
    assert_eq!(now, workers, "the old workers keep serving");
}

/// SIGHUP applies an edited configuration file: here the index names and
/// the number of workers change; then an edit with a mistake is refused
/// with the file's line, and the workers of the last good one keep serving.
#[test]
fn reload_applies_the_edited_file_and_refuses_a_bad_one() {
    let root = site("workers-config");
    root.write("dir/first.html", "first\n");
    root.write("dir/second.html", "second\n");
    let conf_dir = TempDir::new("workers-config-file");
    let conf = conf_dir.path().join("flash.toml");
    std::fs::write(&conf, "workers = 1\nindex = \"first.html\"\n").unwrap();
    let server = Server::start(root.path(), &["--config", conf.to_str().unwrap()]);
    let dir_body = || -> Vec<u8> {
        let stream = server.connect();
        (&stream)
            .write_all(b"GET /dir/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        read_response(&mut BufReader::new(stream), false)
            .unwrap()
            .body
    };
    assert_eq!(dir_body(), b"first\n");
    let before: HashSet<u32> = await_workers(&server, 1, &HashSet::new())
        .into_iter()
        .collect();

    std::fs::write(&conf, "workers = 3\nindex = \"second.html\"\n").unwrap();
    signal(server.pid(), libc::SIGHUP);
    assert!(server.await_stderr("configuration reloaded", 1, IO_TIMEOUT));
    assert!(wait_until(IO_TIMEOUT, || before
        .iter()
        .all(|&p| !process_alive(p))));
    await_workers(&server, 3, &before);
    assert_eq!(dir_body(), b"second\n");

    std::fs::write(&conf, "index = \"second.html\"\nindex-names = \"oops\"\n").unwrap();
    let serving: HashSet<u32> = server.worker_pids().into_iter().collect();
    signal(server.pid(), libc::SIGHUP);
    assert!(
        server.await_stderr("reload refused", 1, IO_TIMEOUT),
        "stderr:\n{}",
        server.stderr_so_far()
    );
    let refused = server
        .stderr_so_far()
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap()
        .to_owned();
    assert!(
        refused.contains(":2: unknown key \"index-names\""),
        "the line names the file, line and key: {refused}"
    );
    assert_eq!(dir_body(), b"second\n");
    let now: HashSet<u32> = server.worker_pids().into_iter().collect();
    assert_eq!(
        now, serving,
        "the workers of the last good configuration keep serving"
    );
}

/// With one worker per CPU (`--cpu-affinity auto`, the default), each
/// worker's event loop is pinned to its own CPU, and a connection goes to
/// the worker on the CPU that handled its first packet: on loopback, the
/// client's. A client pinned to one CPU is served by that CPU's worker only.
#[test]
fn connections_go_to_the_worker_on_their_cpu() {
    let cpus = cpus_allowed();
    if cpus.len() != 2 {
        eprintln!("skipped connections_go_to_the_worker_on_their_cpu: needs exactly 2 CPUs, have {cpus:?}");
        return;
    }
    let root = site("workers-affinity");
    let server = Server::start(root.path(), &["--workers", "2"]);
    let workers = await_workers(&server, 2, &HashSet::new());
    // Each worker's main thread is pinned to one CPU of its own.
    let pinned: Vec<usize> = workers
        .iter()
        .map(|&pid| {
            let mask = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Cpus_allowed_list:")
                        .map(|v| v.trim().to_owned())
                })
                .unwrap();
            mask.parse()
                .unwrap_or_else(|_| panic!("worker {pid} is not pinned: {mask}"))
        })
        .collect();
    assert_eq!(
        pinned.iter().copied().collect::<HashSet<_>>().len(),
        2,
        "{pinned:?}"
    );
    for (&worker, &cpu) in workers.iter().zip(&pinned) {
        // Connect from a thread pinned to that CPU: all land on `worker`.
        let addr = server.addr;
        let before: Vec<usize> = workers.iter().map(|&w| sockets_of(w)).collect();
        let held = std::thread::spawn(move || {
            pin_this_thread(cpu);
            (0..20)
                .map(|_| {
                    let stream = TcpStream::connect(addr).unwrap();
                    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    (&stream)
                        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
                        .unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    assert_eq!(read_response(&mut reader, false).unwrap().status, 200);
                    stream
                })
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        let taken: Vec<usize> = workers
            .iter()
            .zip(&before)
            .map(|(&w, &b)| sockets_of(w).saturating_sub(b))
            .collect();
        let expected: Vec<usize> = workers
            .iter()
            .map(|&w| if w == worker { 20 } else { 0 })
            .collect();
        assert_eq!(
            taken, expected,
            "client on CPU {cpu}: connections per worker {workers:?}"
        );
        drop(held);
    }
}

fn cpus_allowed() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    // SAFETY: each `cpu` is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

fn pin_this_thread(cpu: usize) {
    // SAFETY: as in `cpus_allowed`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "pin the client thread to CPU {cpu}");
}

/// SIGTERM while the first workers are still starting (here: never, their
/// helper exits before saying hello) is a stop like any other: graceful,
/// exit 0 (it was an error exit, which a service manager reports as a
/// failed stop).
#[test]
fn a_stop_during_startup_is_graceful() {
    let root = site("workers-stop-at-start");
    let mut child = Command::new(binary("flash-server"))
        .arg(root.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--helper-path",
            "/bin/true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, line_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if lines.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    // Starting: a helper failed to start (and will be retried).
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("failed to start")) {
        seen.push(
            line_rx
                .recv_timeout(IO_TIMEOUT)
                .expect("a helper start failure"),
        );
    }
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + IO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("still running after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    seen.extend(line_rx.try_iter());
    assert!(status.success(), "{status}: {seen:#?}");
    assert!(
        seen.iter().any(|l| l.contains("all workers stopped")),
        "{seen:#?}"
    );
}
