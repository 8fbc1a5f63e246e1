//! The helper processes of AMPED, seen from outside: they are real child processes of
//! flash-server; killing or hanging one costs at most the request it was working on (a
//! clean 503, or a 200 after a retry), never the server or other requests; the pool heals
//! itself; disk jobs queue when helpers are busy, and identical jobs are coalesced.
//!
//! A slow FUSE disk (`flash-slowfs`) makes sure a request is really in flight on a helper
//! when it is disturbed: the tests wait until the read reached the slow disk.

use std::collections::HashSet;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use integration_tests::harness::{
    cmdline, get, proc_state, read_response, require_root, seeded_bytes, signal, Response, Server,
    TempDir,
};
use integration_tests::slowfs::SlowFs;

/// Bound on waiting for an observable event (a read at the disk, a respawned helper).
const EVENT_DEADLINE: Duration = Duration::from_secs(30);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const FILE_SIZE: usize = 64 * 1024;

/// The content of test file number `seed`.
fn content(seed: u32) -> Vec<u8> {
    seeded_bytes(FILE_SIZE, seed)
}

/// Polls `cond` until it holds; panics with `what()` after `EVENT_DEADLINE`.
fn wait_for(what: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {EVENT_DEADLINE:?} waiting for: {}",
            what()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn mount(source: &TempDir, delay: Duration) -> SlowFs {
    SlowFs::mount(source.path(), delay)
        .expect("flash-slowfs must mount: as root these tests need FUSE (/dev/fuse) and never skip")
}

/// Sends `GET /name` on a new connection; the response is read by the returned thread.
fn send_get(server: &Server, name: &str) -> JoinHandle<std::io::Result<Response>> {
    let mut stream: TcpStream = server.connect();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream
        .write_all(
            format!("GET /{name} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send request");
    thread::spawn(move || read_response(&mut BufReader::new(stream), false))
}

fn is_live_helper(pid: u32) -> bool {
    let live = matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X');
    let argv0 = cmdline(pid).into_iter().next().unwrap_or_default();
    live && argv0.rsplit('/').next() == Some("flash-helper")
}

/// Waits until the server has exactly `n` helpers, all live flash-helper processes and
/// none of them in `gone`. Returns their pids.
fn await_whole_pool(server: &Server, n: usize, gone: &HashSet<u32>) -> Vec<u32> {
    let mut pids = Vec::new();
    wait_for(
        || {
            let now = server.helper_pids();
            let desc: Vec<String> = now
                .iter()
                .map(|&p| format!("{p}:{:?}:{:?}", proc_state(p), cmdline(p)))
                .collect();
            format!("{n} live helpers, none of {gone:?}; children now: {desc:?}")
        },
        || {
            pids = server.helper_pids();
            pids.len() == n
                && pids.iter().all(|p| !gone.contains(p))
                && pids.iter().all(|&p| is_live_helper(p))
        },
    );
    pids
}

#[test]
fn helpers_are_child_processes_named_flash_helper() {
    let root = TempDir::new("amped-helpers-ps");
    root.write("index.html", "hello\n");
    let server = Server::start(root.path(), &["--arch", "amped", "--helpers", "3"]);
    let pids = await_whole_pool(&server, 3, &HashSet::new());
    for &pid in &pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let ppid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("PPid line");
        assert_eq!(
            ppid,
            server.engine_pid(),
            "helper {pid} must be a child of flash-server"
        );
    }
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        3,
        "three distinct helper processes: {pids:?}"
    );
    // They do the disk work: a request is answered through them.
    assert_eq!(get(&server, "/").body, b"hello\n");
    let (_, stderr) = server.stop();
    assert!(!stderr.contains("panicked"), "server stderr:\n{stderr}");

    // The SPED baseline has no helpers at all.
    let sped = Server::start(root.path(), &["--arch", "sped", "--helpers", "3"]);
    assert_eq!(get(&sped, "/").body, b"hello\n");
    assert_eq!(
        sped.helper_pids(),
        Vec::<u32>::new(),
        "--arch sped must not spawn helpers"
    );
}

#[test]
fn killing_helpers_mid_request_gives_a_clean_answer_and_the_pool_heals() {
    if !require_root("mounts FUSE") {
        return;
    }
    let source = TempDir::new("amped-helpers-kill");
    let cold = content(1);
    source.write("cold.bin", &cold);
    source.write("other.txt", "other file\n");
    let slow = mount(&source, Duration::from_millis(2000));
    let server = Server::start(slow.mountpoint(), &["--arch", "amped", "--helpers", "2"]);
    let before = await_whole_pool(&server, 2, &HashSet::new());

    let victim = send_get(&server, "cold.bin");
    wait_for(
        || "the cold read to reach the slow disk".into(),
        || slow.reads_of("cold.bin") >= 1,
    );
    // A helper is now blocked on the disk for this request: kill them all.
    let killed: HashSet<u32> = server.helper_pids().into_iter().collect();
    assert_eq!(
        killed,
        before.iter().copied().collect(),
        "helpers changed before the kill"
    );
    for &pid in &killed {
        signal(pid, libc::SIGKILL);
    }

    // The server keeps serving other requests meanwhile.
    let other = send_get(&server, "other.txt");

    let answer = victim.join().unwrap();
    let other = other.join().unwrap();
    let pids = await_whole_pool(&server, 2, &killed);
    let mut server = server;
    let running = server.is_running();
    // After recovery the file is served normally.
    let again = running.then(|| get(&server, "/cold.bin"));
    let (_, stderr) = server.stop();

    eprintln!(
        "killed helpers {killed:?}; victim got {:?}; new helpers {pids:?}",
        answer.as_ref().map(|r| r.status)
    );
    match &answer {
        Ok(r) if r.status == 200 => assert!(
            r.body == cold,
            "the request whose helper was killed got a 200 with a wrong body ({} bytes)\nserver stderr:\n{stderr}",
            r.body.len()
        ),
        Ok(r) if r.status == 503 => {}
        Ok(r) => panic!(
            "the request whose helper was killed got status {} (expected 200 after a retry, or 503)\nserver stderr:\n{stderr}",
            r.status
        ),
        Err(e) => panic!(
            "the request whose helper was killed got no complete response ({e}): a hang or a reset\nserver stderr:\n{stderr}"
        ),
    }
    assert!(running, "the server died\nserver stderr:\n{stderr}");
    match &other {
        Ok(r) => assert!(
            r.status == 200 && r.body == b"other file\n",
            "another request during the crash: status {}, body {:?}\nserver stderr:\n{stderr}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ),
        Err(e) => panic!("another request during the crash failed: {e}\nserver stderr:\n{stderr}"),
    }
    let again = again.unwrap();
    assert!(
        again.status == 200 && again.body == cold,
        "after recovery /cold.bin: status {}\nserver stderr:\n{stderr}",
        again.status
    );
    assert!(pids.iter().all(|p| !killed.contains(p)));
}

#[test]
fn a_hung_helper_times_out_with_503_and_is_replaced() {
    if !require_root("mounts FUSE") {
        return;
    }
    let source = TempDir::new("amped-helpers-hang");
    source.write("cold.bin", content(2));
    // The disk takes 3 s per read; the server gives a helper 1 s.
    let slow = mount(&source, Duration::from_millis(3000));
    let server = Server::start(
        slow.mountpoint(),
        &[
            "--arch",
            "amped",
            "--helpers",
            "2",
            "--helper-timeout",
            "1s",
        ],
    );
    let before: HashSet<u32> = await_whole_pool(&server, 2, &HashSet::new())
        .into_iter()
        .collect();

    let hung = send_get(&server, "cold.bin");
    wait_for(
        || "the cold read to reach the slow disk".into(),
        || slow.reads_of("cold.bin") >= 1,
    );
    let answer = hung.join().unwrap();
    // The event loop still answers (a lookup that needs no disk read).
    let mut server = server;
    let running = server.is_running();
    let status_after = if running {
        get(&server, "/nope.txt").status
    } else {
        0
    };
    // The hung helper is replaced: the pool is whole again, and at least one of the
    // original helpers (the hung one) is gone.
    let mut after = Vec::new();
    if running {
        wait_for(
            || {
                format!(
                    "a replaced helper; before {before:?}, now {:?}",
                    server.helper_pids()
                )
            },
            || {
                after = server.helper_pids();
                after.len() == 2
                    && after.iter().all(|&p| is_live_helper(p))
                    && after.iter().any(|p| !before.contains(p))
            },
        );
    }
    let (_, stderr) = server.stop();

    match &answer {
        Ok(r) => assert_eq!(
            r.status, 503,
            "a request whose helper hung past --helper-timeout must get 503\nserver stderr:\n{stderr}"
        ),
        Err(e) => panic!(
            "a request whose helper hung got no complete response ({e})\nserver stderr:\n{stderr}"
        ),
    }
    assert!(running, "the server died\nserver stderr:\n{stderr}");
    assert!(
        status_after == 404,
        "the server must keep answering (404 for a missing file), got {status_after}\nserver stderr:\n{stderr}"
    );
    let replaced = after.iter().filter(|p| !before.contains(p)).count();
    assert!(
        replaced >= 1,
        "the hung helper must be replaced: before {before:?}, after {after:?}"
    );
}

#[test]
fn one_helper_queues_concurrent_cold_requests() {
    if !require_root("mounts FUSE") {
        return;
    }
    const N: usize = 6;
    let source = TempDir::new("amped-helpers-queue");
    let names: Vec<String> = (0..N).map(|i| format!("q{i}.bin")).collect();
    for (i, name) in names.iter().enumerate() {
        source.write(name, content(10 + i as u32));
    }
    let slow = mount(&source, Duration::from_millis(300));
    let server = Server::start(slow.mountpoint(), &["--arch", "amped", "--helpers", "1"]);
    let before = await_whole_pool(&server, 1, &HashSet::new());

    // All requests are on the wire before any response is read.
    let clients: Vec<_> = names.iter().map(|n| send_get(&server, n)).collect();
    let mut failures = Vec::new();
    for (i, (name, client)) in names.iter().zip(clients).enumerate() {
        match client.join().unwrap() {
            Ok(r) if r.status == 200 && r.body == content(10 + i as u32) => {}
            Ok(r) => failures.push(format!(
                "/{name}: status {}, {} bytes",
                r.status,
                r.body.len()
            )),
            Err(e) => failures.push(format!("/{name}: {e}")),
        }
    }
    let after = server.helper_pids();
    let (_, stderr) = server.stop();
    assert!(
        failures.is_empty(),
        "with one helper, every queued cold request must complete: {failures:#?}\nserver stderr:\n{stderr}"
    );
    for name in &names {
        assert!(
            slow.reads_of(name) >= 1,
            "{name} never reached the slow disk: it was not cold"
        );
    }
    assert_eq!(
        after, before,
        "the single helper must have served them all (none killed or replaced)"
    );
}

#[test]
fn identical_cold_requests_are_coalesced_into_one_disk_read() {
    if !require_root("mounts FUSE") {
        return;
    }
    const FOLLOWERS: usize = 5;
    let source = TempDir::new("amped-helpers-coalesce");
    let x = content(20);
    source.write("x.bin", &x);
    source.write("y.bin", content(21));
    let slow = mount(&source, Duration::from_millis(2000));
    // One helper and room for ONE queued job: without coalescing, the third identical
    // request would find the queue full and get 503.
    let server = Server::start(
        slow.mountpoint(),
        &["--arch", "amped", "--helpers", "1", "--helper-queue", "1"],
    );

    // Baseline: reads one cold request of a file of the same size causes.
    let single = get(&server, "/y.bin");
    assert_eq!(single.status, 200);
    let baseline = slow.reads_of("y.bin");
    assert!(baseline >= 1, "y.bin was not read from the slow disk");

    let first = send_get(&server, "x.bin");
    wait_for(
        || "the first read of x.bin to reach the slow disk".into(),
        || slow.reads_of("x.bin") >= 1,
    );
    // The helper is blocked on the disk for x.bin: send identical requests now.
    let followers: Vec<_> = (0..FOLLOWERS).map(|_| send_get(&server, "x.bin")).collect();
    let mut failures = Vec::new();
    for (i, client) in std::iter::once(first).chain(followers).enumerate() {
        match client.join().unwrap() {
            Ok(r) if r.status == 200 && r.body == x => {}
            Ok(r) => failures.push(format!(
                "request {i}: status {}, {} bytes",
                r.status,
                r.body.len()
            )),
            Err(e) => failures.push(format!("request {i}: {e}")),
        }
    }
    let reads = slow.reads_of("x.bin");
    let (_, stderr) = server.stop();
    assert!(
        failures.is_empty(),
        "{} identical concurrent requests with --helpers 1 --helper-queue 1 must all get the file \
         (they share one job): {failures:#?}\nserver stderr:\n{stderr}",
        FOLLOWERS + 1
    );
    assert_eq!(
        reads,
        baseline,
        "{} identical requests must cause the disk reads of ONE request ({baseline}), not {reads}",
        FOLLOWERS + 1
    );
}

#[test]
fn the_helper_queue_is_bounded() {
    if !require_root("mounts FUSE") {
        return;
    }
    // Control for the coalescing test: with --helper-queue 1 and the only helper blocked on
    // the disk, two DIFFERENT cold requests cannot both wait: one is queued (and served),
    // the other is refused with 503 at once.
    let source = TempDir::new("amped-helpers-bound");
    let files = [
        ("w1.bin", content(30)),
        ("w2.bin", content(31)),
        ("w3.bin", content(32)),
    ];
    for (name, body) in &files {
        source.write(name, body);
    }
    let slow = mount(&source, Duration::from_millis(2000));
    let server = Server::start(
        slow.mountpoint(),
        &["--arch", "amped", "--helpers", "1", "--helper-queue", "1"],
    );
    let first = send_get(&server, "w1.bin");
    wait_for(
        || "the read of w1.bin to reach the slow disk".into(),
        || slow.reads_of("w1.bin") >= 1,
    );
    let second = send_get(&server, "w2.bin");
    let third = send_get(&server, "w3.bin");
    let results: Vec<_> = [first, second, third]
        .into_iter()
        .map(|c| c.join().unwrap())
        .collect();
    let (_, stderr) = server.stop();
    let mut statuses = Vec::new();
    for ((name, body), result) in files.iter().zip(&results) {
        match result {
            Ok(r) if r.status == 200 => {
                assert!(r.body == *body, "/{name}: 200 with a wrong body");
                statuses.push(200);
            }
            Ok(r) => statuses.push(r.status),
            Err(e) => panic!("/{name}: no complete response: {e}\nserver stderr:\n{stderr}"),
        }
    }
    assert_eq!(statuses[0], 200, "the request on the helper must be served");
    let mut rest = statuses[1..].to_vec();
    rest.sort_unstable();
    assert_eq!(
        rest,
        vec![200, 503],
        "of two different requests behind a busy helper with --helper-queue 1, one must be \
         queued and served, the other refused; statuses {statuses:?}\nserver stderr:\n{stderr}"
    );
}
