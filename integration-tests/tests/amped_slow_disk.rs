//! The AMPED claim, end to end: while helper processes are blocked on a slow disk, the
//! event loop keeps serving cached files. The SPED baseline (everything inline) must show
//! the opposite: a cached file waits behind a cold one.
//!
//! The disk is `flash-slowfs` (FUSE) with a fixed delay on every read that reaches it.
//! Every assertion is on the ORDER in which responses complete (a shared sequence counter
//! taken after each full, verified response), never on timings. The delay only has to be
//! large compared with the time to serve the cached requests.
//!
//! Case (b) runs the server as `nobody` over root-owned 0644 files: `mincore` then reports
//! every page resident (the kernel hides page-cache state from non-owners) and
//! `preadv2(RWF_NOWAIT)` is EOPNOTSUPP on FUSE, so only the "windows helpers loaded
//! recently" model can keep cold bytes out of the event loop.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use integration_tests::harness::{get, read_response, require_root, seeded_bytes, Server, TempDir};
use integration_tests::slowfs::SlowFs;

/// Delay of every read reaching the slow disk. Large against scheduling noise: all the
/// cached requests must finish well inside it on a loaded 2-core machine.
const DELAY: Duration = Duration::from_millis(2000);
const FILE_SIZE: usize = 64 * 1024;
const COLD_FILES: [&str; 10] = [
    "b.bin", "c.bin", "d.bin", "e.bin", "f.bin", "g.bin", "h.bin", "i.bin", "j.bin", "k.bin",
];
const HOT_REQUESTS: usize = 30;
/// Client read bound: under SPED the ten cold reads are serialised (10 x DELAY).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on waiting for an observable event (e.g. a read reaching the slow disk).
const EVENT_DEADLINE: Duration = Duration::from_secs(30);
const NOBODY_UID: u32 = 65534;

/// Distinct, position-dependent content per file, so swapped or shifted bodies show.
fn content(seed: u32) -> Vec<u8> {
    seeded_bytes(FILE_SIZE, seed)
}

/// Polls `cond` until it holds; panics with `what` after `EVENT_DEADLINE`.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {EVENT_DEADLINE:?} waiting for: {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn connect(server: &Server) -> TcpStream {
    let stream = server.connect();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream
}

fn request(path: &str) -> Vec<u8> {
    format!("GET /{path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Reads one response from `stream`, checks it is a 200 with `expected` as body, and
/// returns the completion sequence number.
fn finish(
    stream: TcpStream,
    name: &str,
    expected: &[u8],
    seq: &AtomicUsize,
) -> Result<usize, String> {
    let response = read_response(&mut BufReader::new(stream), false)
        .map_err(|e| format!("/{name}: no complete response: {e}"))?;
    let order = seq.fetch_add(1, Ordering::SeqCst);
    if response.status != 200 {
        return Err(format!("/{name}: status {}", response.status));
    }
    if response.body != expected {
        return Err(format!(
            "/{name}: body differs from the file ({} bytes)",
            response.body.len()
        ));
    }
    Ok(order)
}

/// The errno of a `preadv2(RWF_NOWAIT)` of the first bytes of `path`, `None` on success.
fn nowait_read_errno(path: &std::path::Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    let mut buf = [0u8; 16];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one valid iovec over a live buffer; the fd is open for the call.
    let rc = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    (rc < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Uid: real effective saved fs
    line.split_whitespace().nth(2)?.parse().ok()
}

struct Outcome {
    /// Completion order of the hot (cached) responses.
    hot: Vec<usize>,
    /// Completion order of the cold responses, with the file name.
    cold: Vec<(usize, &'static str)>,
    stderr: String,
}

/// Runs the scenario against a server started with `args` and returns the completion
/// order. Every response must be a correct 200 in every architecture.
fn run_scenario(args: &[&str], as_nobody: bool) -> Outcome {
    let source = TempDir::new("amped-slow-src");
    source.write("a.bin", content(0));
    source.write("access-check.txt", b"nobody can read this\n");
    for (i, name) in COLD_FILES.iter().enumerate() {
        source.write(name, content(i as u32 + 1));
    }
    for name in ["a.bin", "access-check.txt"].into_iter().chain(COLD_FILES) {
        // Owned by root (we are root), world-readable, not writable by others.
        std::fs::set_permissions(
            source.path().join(name),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    let slow = SlowFs::mount(source.path(), DELAY).expect(
        "flash-slowfs must mount: as root these tests need FUSE (/dev/fuse) and never skip",
    );
    let root = slow.mountpoint().to_path_buf();

    if as_nobody {
        // The server user must reach the files: the temp dirs are 0755 and the FUSE mount
        // uses allow_other. Check with a real process running as nobody.
        let out = Command::new("cat")
            .arg(root.join("access-check.txt"))
            .uid(NOBODY_UID)
            .gid(NOBODY_UID)
            .output()
            .expect("run cat as nobody");
        assert!(
            out.status.success() && out.stdout == b"nobody can read this\n",
            "nobody cannot read {}/access-check.txt: {} {}",
            root.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // Premise of this case: RWF_NOWAIT cannot probe residency on this FUSE mount, so
        // (with mincore lying to a non-owner) only the loaded-windows model is truthful.
        assert_eq!(
            nowait_read_errno(&root.join("access-check.txt")),
            Some(libc::EOPNOTSUPP),
            "test premise changed: preadv2(RWF_NOWAIT) is supported on the FUSE mount, so \
             this case would no longer exercise the loaded-windows fallback"
        );
        let meta = std::fs::metadata(source.path().join("a.bin")).unwrap();
        assert_eq!(
            meta.uid(),
            0,
            "files must be owned by root, not by the server user"
        );
    }

    let server = Server::start(&root, args);
    if as_nobody {
        assert_eq!(
            uid_of(server.engine_pid()),
            Some(NOBODY_UID),
            "the server must run as nobody"
        );
        for pid in server.helper_pids() {
            assert_eq!(
                uid_of(pid),
                Some(NOBODY_UID),
                "helper {pid} must run as nobody"
            );
        }
    }

    // Warm A through the server, so every residency probe (including the LRU of windows
    // helpers loaded) knows it.
    let hot = content(0);
    let warm = get(&server, "/a.bin");
    assert_eq!(warm.status, 200, "warming /a.bin");
    assert!(warm.body == hot, "warming /a.bin: wrong body");
    assert!(
        slow.reads_of("a.bin") >= 1,
        "a.bin must have been read from the slow disk once (it was cold)"
    );
    for name in COLD_FILES {
        assert_eq!(
            slow.reads_of(name),
            0,
            "{name} must still be cold before the test"
        );
    }

    let seq = Arc::new(AtomicUsize::new(0));

    // All cold requests are on the wire before any hot one.
    let mut cold_threads: Vec<(&'static str, JoinHandle<Result<usize, String>>)> = Vec::new();
    for (i, name) in COLD_FILES.iter().copied().enumerate() {
        let mut stream = connect(&server);
        stream.write_all(&request(name)).expect("send cold request");
        let expected = content(i as u32 + 1);
        let seq = Arc::clone(&seq);
        cold_threads.push((
            name,
            thread::spawn(move || finish(stream, name, &expected, &seq)),
        ));
    }

    // Await the event "the disk is busy with cold reads": helpers (AMPED) or the event
    // loop itself (SPED) are now blocked on the slow filesystem.
    let want = if args.contains(&"sped") { 1 } else { 2 };
    wait_for(
        &format!("reads of at least {want} cold file(s) at the slow disk"),
        || {
            COLD_FILES
                .iter()
                .filter(|name| slow.reads_of(name) > 0)
                .count()
                >= want
        },
    );

    let hot = Arc::new(hot);
    let hot_threads: Vec<JoinHandle<Result<usize, String>>> = (0..HOT_REQUESTS)
        .map(|_| {
            let mut stream = connect(&server);
            let seq = Arc::clone(&seq);
            let hot = Arc::clone(&hot);
            thread::spawn(move || {
                stream
                    .write_all(&request("a.bin"))
                    .map_err(|e| format!("send /a.bin: {e}"))?;
                finish(stream, "a.bin", &hot, &seq)
            })
        })
        .collect();

    let mut errors = Vec::new();
    let mut hot_order = Vec::new();
    for t in hot_threads {
        match t.join().expect("hot client thread") {
            Ok(n) => hot_order.push(n),
            Err(e) => errors.push(e),
        }
    }
    let mut cold_order = Vec::new();
    for (name, t) in cold_threads {
        match t.join().expect("cold client thread") {
            Ok(n) => cold_order.push((n, name)),
            Err(e) => errors.push(e),
        }
    }
    let mut server = server;
    let running = server.is_running();
    let (_, stderr) = server.stop();
    assert!(
        errors.is_empty() && running,
        "server args {args:?}: every request must get a correct 200 (running: {running}); \
         failures: {errors:#?}\nserver stderr:\n{stderr}"
    );
    for name in COLD_FILES {
        assert!(
            slow.reads_of(name) >= 1,
            "{name} was served without reaching the slow disk: the test did not exercise a cold read"
        );
    }
    drop(slow);
    Outcome {
        hot: hot_order,
        cold: cold_order,
        stderr,
    }
}

fn assert_hot_first(args: &[&str], outcome: &Outcome) {
    let last_hot = outcome.hot.iter().max().copied().unwrap();
    let first_cold = outcome.cold.iter().min().copied().unwrap();
    assert!(
        last_hot < first_cold.0,
        "server args {args:?}: every cached response must complete before any cold one, \
         but cold /{} completed as #{} while a cached response completed as #{last_hot}.\n\
         hot order: {:?}\ncold order: {:?}\nserver stderr:\n{}",
        first_cold.1,
        first_cold.0,
        sorted(&outcome.hot),
        outcome.cold,
        outcome.stderr
    );
}

fn sorted(v: &[usize]) -> Vec<usize> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

#[test]
fn amped_serves_cached_files_while_helpers_wait_on_the_disk() {
    if !require_root("mounts FUSE") {
        return;
    }
    let args = ["--arch", "amped"];
    let outcome = run_scenario(&args, false);
    assert_hot_first(&args, &outcome);
}

#[test]
fn amped_as_unprivileged_user_relies_on_loaded_windows() {
    if !require_root("mounts FUSE and runs the server as nobody") {
        return;
    }
    let args = ["--arch", "amped", "--user", "nobody"];
    let outcome = run_scenario(&args, true);
    assert_hot_first(&args, &outcome);
}

#[test]
fn sped_baseline_stalls_cached_files_behind_the_disk() {
    if !require_root("mounts FUSE") {
        return;
    }
    let args = ["--arch", "sped"];
    let outcome = run_scenario(&args, false);
    let last_hot = outcome.hot.iter().max().copied().unwrap();
    let first_cold = outcome.cold.iter().min().copied().unwrap();
    assert!(
        first_cold.0 < last_hot,
        "SPED must stall: some cold response should complete before a cached one, but all \
         {} cached responses (last #{last_hot}) completed before the first cold one (#{}).\n\
         server stderr:\n{}",
        outcome.hot.len(),
        first_cold.0,
        outcome.stderr
    );
}
