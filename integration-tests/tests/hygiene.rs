//! Process and connection hygiene: a burst of connections is taken without
//! a dropped SYN, a request body trickled in too slowly is cut off by the
//! body timeout, Ctrl-C ends the server and its helpers quietly, and the
//! helpers do not outlive a main process that was killed.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use integration_tests::harness::{
    get, proc_state, process_alive, raise_nofile_limit, read_response, seeded_bytes, signal,
    sockaddr_in, start_slow_download, still_running, wait_until, Launch, Server, TempDir,
    IO_TIMEOUT,
};

// ---- a burst of connections ---------------------------------------------

const BURST: usize = 1000;
/// A SYN dropped because the accept queue was full is retransmitted after
/// one second: a connect that completes sooner was not dropped.
const CONNECT_BOUND: Duration = Duration::from_millis(900);

/// Starts a non-blocking connect to `addr`; the socket and when it started.
fn start_connect(addr: SocketAddr) -> (OwnedFd, Instant) {
    let SocketAddr::V4(v4) = addr else {
        panic!("the harness listens on IPv4 loopback")
    };
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr lives across connect.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = OwnedFd::from_raw_fd(fd);
        let sin = sockaddr_in(&v4);
        let started = Instant::now();
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        assert!(
            rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
            "connect: {err}"
        );
        (owned, started)
    }
}

fn socket_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int into `err`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
    err
}

/// A process stopped with SIGSTOP until this is dropped (SIGCONT).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        signal(pid, libc::SIGSTOP);
        let stopped = Stopped(pid);
        assert!(
            wait_until(IO_TIMEOUT, || proc_state(pid) == Some('T')),
            "the server did not stop"
        );
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

#[test]
fn a_burst_of_1000_connects_completes_without_a_syn_retransmit() {
    // The test's sockets and the server's connections (the server inherits it).
    let limit = raise_nofile_limit(BURST as u64 * 2 + 200);
    assert!(
        limit >= BURST as u64 * 2 + 200,
        "this test needs {} descriptors; the hard limit allows {limit}",
        BURST * 2 + 200
    );
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        somaxconn >= BURST,
        "net.core.somaxconn is {somaxconn}: no listen backlog can hold a burst of {BURST} here"
    );
    let root = TempDir::new("burst");
    root.write("a.txt", "burst\n");
    let server = Server::start(root.path(), &[]);

    // The burst arrives while the server is not accepting (stopped, as if
    // its event loop were busy for that moment): then only the listen
    // backlog decides whether a SYN is taken or dropped, whatever the
    // machine's speed.
    let stopped = Stopped::new(server.engine_pid());
    let sockets: Vec<(OwnedFd, Instant)> = (0..BURST).map(|_| start_connect(server.addr)).collect();
    let mut stopped = Some(stopped);
    let resume_at = Instant::now() + CONNECT_BOUND;
    let mut took: Vec<Option<Duration>> = vec![None; BURST];
    let deadline = Instant::now() + IO_TIMEOUT;
    use std::os::fd::AsRawFd;
    while took.iter().any(Option::is_none) && Instant::now() < deadline {
        if Instant::now() >= resume_at {
            stopped = None; // SIGCONT
        }
        let pending: Vec<usize> = (0..BURST).filter(|&i| took[i].is_none()).collect();
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|&i| libc::pollfd {
                fd: sockets[i].0.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a live array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        let now = Instant::now();
        for (k, pfd) in fds.iter().enumerate() {
            if pfd.revents != 0 {
                let i = pending[k];
                let err = socket_error(pfd.fd);
                assert_eq!(
                    err,
                    0,
                    "connect #{i} failed: {}",
                    std::io::Error::from_raw_os_error(err)
                );
                took[i] = Some(now - sockets[i].1);
            }
        }
    }
    drop(stopped);
    let unfinished = took.iter().filter(|t| t.is_none()).count();
    let slow: Vec<Duration> = took
        .iter()
        .flatten()
        .copied()
        .filter(|&t| t >= CONNECT_BOUND)
        .collect();
    let slowest = took.iter().flatten().max().copied().unwrap_or_default();
    println!(
        "{BURST} connects: slowest {slowest:?}; {} took {CONNECT_BOUND:?} or more; {unfinished} \
         unfinished after {IO_TIMEOUT:?}",
        slow.len()
    );
    assert!(
        unfinished == 0 && slow.is_empty(),
        "every connect of a burst of {BURST} must complete within {CONNECT_BOUND:?} (a SYN \
         dropped for a full accept queue waits a second): {} took longer (slowest {slowest:?}), \
         {unfinished} did not complete",
        slow.len()
    );

    // Each connection is served.
    let streams: Vec<TcpStream> = sockets
        .into_iter()
        .map(|(fd, _)| {
            let stream = TcpStream::from(fd);
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
            stream
        })
        .collect();
    for mut stream in &streams {
        stream
            .write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("send request");
    }
    let mut failures = Vec::new();
    for (i, stream) in streams.into_iter().enumerate() {
        match read_response(&mut BufReader::new(stream), false) {
            Ok(r) if r.status == 200 && r.body == b"burst\n" => {}
            Ok(r) => failures.push(format!("#{i}: status {}", r.status)),
            Err(e) => failures.push(format!("#{i}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {BURST} connections were not served: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}

// ---- a trickled request body ----------------------------------------------

#[test]
fn a_trickled_request_body_gets_408_from_the_body_timeout() {
    let root = TempDir::new("trickle");
    root.write("a.txt", "a\n");
    let server = Server::start(
        root.path(),
        &["--header-timeout", "10s", "--body-timeout", "1s"],
    );
    let mut stream = server.connect();
    stream
        .write_all(b"POST /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    let head_sent = Instant::now();
    // One body byte every 200 ms: each wait is a read bounded by 200 ms, so
    // the answer is seen as soon as it comes. 40 bytes at most (8 s), far
    // from the 1000 announced.
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let mut ended = None;
    'trickle: for _ in 0..40 {
        if stream.write_all(b"x").is_err() {
            // Closed by the server: its answer, if any, is still to be read.
            break;
        }
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    ended = Some(head_sent.elapsed());
                    break 'trickle;
                }
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if answer.is_empty() {
                        continue 'trickle;
                    }
                    // An answer came; now only await the close.
                    break 'trickle;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    ended = Some(head_sent.elapsed());
                    break 'trickle;
                }
            }
        }
    }
    let answered_after = head_sent.elapsed();
    if ended.is_none() {
        // Await the close (EOF or reset), bounded.
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!(
                        "the connection stayed open after the answer {:?}",
                        String::from_utf8_lossy(&answer)
                    )
                }
                Err(_) => break,
            }
        }
        ended = Some(head_sent.elapsed());
    }
    let text = String::from_utf8_lossy(&answer);
    println!("trickled body: answered {text:?}; connection closed {ended:?} after the head");
    // The request itself is answered at once (405 for POST, as nginx does);
    // the body still trickling in then runs into the body timeout.
    let ended = ended.expect("the connection closed");
    assert!(
        text.contains("HTTP/1.1 408 Request Timeout"),
        "a body trickled in (1 byte / 200 ms) must get 408 from --body-timeout 1s; got {text:?} \
         (first answer after {answered_after:?})"
    );
    assert!(
        ended < Duration::from_secs(8),
        "the connection closed {ended:?} after the head: that is not the 1 s body timeout"
    );
}

// ---- Ctrl-C and a killed main process ---------------------------------------

/// Waits until the server has `n` live helpers; returns their pids.
fn await_helpers(server: &Server, n: usize) -> Vec<u32> {
    let mut helpers = Vec::new();
    let found = wait_until(IO_TIMEOUT, || {
        helpers = server.helper_pids();
        helpers.retain(|&pid| process_alive(pid));
        helpers.len() == n
    });
    assert!(found, "expected {n} helpers, found {helpers:?}");
    helpers
}

/// Does not leave helpers behind for the rest of the suite (checking that
/// each pid still is a flash-helper).
fn kill_leftovers(pids: &[u32]) {
    for &pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.windows(12).any(|w| w == b"flash-helper") {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// Ctrl-C in a terminal: SIGINT to the server's whole process group (the
/// helpers get it too). With `download`, a slow client is in the middle of
/// a 16 MiB response at that moment, so the server is still running (it
/// finishes responses in flight) when its helpers die of the same SIGINT.
fn ctrl_c(download: bool) {
    let tag = if download {
        "ctrl-c-download"
    } else {
        "ctrl-c"
    };
    let root = TempDir::new(tag);
    root.write("a.txt", "a\n");
    let big = seeded_bytes(16 * 1024 * 1024, 3);
    root.write("big.bin", &big);
    // Like a shell job: its own process group, which the terminal's Ctrl-C
    // signals as a whole.
    let mut server = Server::launch(&Launch {
        root: Some(root.path()),
        args: &["--arch", "amped", "--helpers", "8"],
        own_process_group: true,
        ..Launch::default()
    })
    .expect("flash-server should start");
    assert_eq!(get(&server, "/a.txt").status, 200);
    let helpers = await_helpers(&server, 8);
    let mut reader = download.then(|| {
        let (mut reader, _) = start_slow_download(&server, "/big.bin");
        let mut first = vec![0u8; 64 * 1024];
        reader.read_exact(&mut first).expect("start of the body");
        (reader, first)
    });

    let pgid = server.pid() as libc::pid_t;
    let sent = Instant::now();
    // SAFETY: kill has no memory-safety preconditions; -pgid is the server's own group.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
    if let Some((reader, body)) = &mut reader {
        // Give the server a moment in which helpers that die of the SIGINT
        // do die (bounded; helpers that ignore it never will), then let the
        // response finish.
        wait_until(Duration::from_millis(300), || {
            helpers.iter().all(|&pid| !process_alive(pid))
        });
        let read = reader.read_to_end(body);
        assert!(
            read.is_ok() && *body == big,
            "{tag}: the response in flight must be finished after Ctrl-C: {read:?} after {} of \
             {} bytes (or the bytes differ)",
            body.len(),
            big.len()
        );
    }
    let (status, stderr) = server
        .wait_exit(IO_TIMEOUT)
        .expect("the server must exit after Ctrl-C");
    let took = sent.elapsed();
    let at_exit: Vec<u32> = helpers
        .iter()
        .copied()
        .filter(|&pid| process_alive(pid))
        .collect();
    // A short grace for helpers that exit on their own once the server did.
    wait_until(Duration::from_secs(2), || {
        helpers.iter().all(|&pid| !process_alive(pid))
    });
    let left = still_running(&helpers);
    kill_leftovers(&left);
    println!(
        "{tag}: exited {took:?} after the SIGINT with {status}; helpers still running at the \
         exit: {at_exit:?}"
    );
    assert!(
        status.success(),
        "{tag}: Ctrl-C must exit 0, got {status}\nstderr:\n{stderr}"
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("warn"))
        .collect();
    assert!(
        warnings.is_empty(),
        "{tag}: Ctrl-C must be quiet: no warnings (helpers ended by the same SIGINT did not \
         crash and must not be respawned), got:\n{}",
        warnings.join("\n")
    );
    assert!(
        left.is_empty(),
        "{tag}: helpers {left:?} still ran 2 s after the server exited"
    );
}

#[test]
fn ctrl_c_stops_an_idle_server_and_its_helpers_quietly() {
    ctrl_c(false);
}

#[test]
fn ctrl_c_during_a_download_finishes_it_and_stops_quietly() {
    ctrl_c(true);
}

#[test]
fn helpers_exit_when_the_main_process_is_killed() {
    let root = TempDir::new("orphans");
    root.write("a.txt", "a\n");
    let mut server = Server::start(root.path(), &["--arch", "amped"]);
    assert_eq!(get(&server, "/a.txt").status, 200);
    // Its worker (told by its control socket ending) and the helpers
    // (by their parent-death signal) must all follow.
    let mut helpers = await_helpers(&server, 8);
    helpers.extend(server.worker_pids());
    signal(server.pid(), libc::SIGKILL);
    let (status, _) = server
        .wait_exit(IO_TIMEOUT)
        .expect("SIGKILL ends the server");
    assert!(!status.success());
    let gone = wait_until(Duration::from_secs(5), || {
        helpers.iter().all(|&pid| !process_alive(pid))
    });
    let left = still_running(&helpers);
    kill_leftovers(&left);
    assert!(
        gone,
        "helpers {left:?} of {helpers:?} still ran 5 s after their main process was killed"
    );
}
