//! A crawl of a tree far larger than every cache: 200,000 distinct small
//! files, each fetched once over one keep-alive connection (pipelined), each
//! answered 200 with exactly its bytes. The server's resources must stay
//! bounded by its configuration, not grow with the number of files served:
//! memory mappings, descriptors and resident memory (read from `/proc`). The
//! same crawl under a low descriptor limit (`prlimit --nofile=N:N`) must
//! neither fail requests nor leave the server wedged afterwards.
//!
//! The tree is made once and shared by the tests of this file that run at
//! the same time (it is removed when the last of them is done).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::harness::{
    proc_stats, read_response, request, seeded_bytes, Launch, ProcStats, Server, TempDir,
    IO_TIMEOUT,
};

const DIRS: usize = 200;
const FILES_PER_DIR: usize = 1000;
const FILES: usize = DIRS * FILES_PER_DIR;
/// Requests in flight on the crawling connection.
const WINDOW: usize = 32;
/// Bound on one whole crawl: a crawl that gets slower and slower fails
/// instead of running on (a debug build crawls in well under a minute).
const CRAWL_LIMIT: Duration = Duration::from_secs(240);
/// Clients that must each get a 200 right after a crawl.
const LATE_CLIENTS: usize = 20;

/// `/dNNN/fNNNN.txt`: the request path of file `i`.
fn file_path(i: usize) -> String {
    format!("/d{:03}/f{:04}.txt", i / FILES_PER_DIR, i % FILES_PER_DIR)
}

/// The bytes of file `i`: its own path and a newline, then bytes seeded by
/// `i`; 20 to 200 bytes in all. Distinct for every file.
fn file_content(i: usize) -> Vec<u8> {
    let len = 20 + (i.wrapping_mul(2_654_435_761) >> 7) % 181;
    let mut content = file_path(i).into_bytes();
    content.push(b'\n');
    let pad = len - content.len();
    content.extend(seeded_bytes(pad, i as u32));
    content
}

/// The tree, shared by the tests that hold it; created on first use.
fn tree() -> Arc<TempDir> {
    static TREE: Mutex<Weak<TempDir>> = Mutex::new(Weak::new());
    let mut shared = TREE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tree) = shared.upgrade() {
        return tree;
    }
    let started = Instant::now();
    // A page and an inode per file: about 1 GiB on tmpfs.
    let tree = Arc::new(TempDir::new_in_memory("crawl", 1 << 30));
    let root = tree.path().to_path_buf();
    // Two writers: creating 200k files is mostly system time.
    thread::scope(|scope| {
        for part in 0..2 {
            let root = &root;
            scope.spawn(move || {
                for d in (part..DIRS).step_by(2) {
                    std::fs::create_dir(root.join(format!("d{d:03}"))).expect("create dir");
                    for f in 0..FILES_PER_DIR {
                        let i = d * FILES_PER_DIR + f;
                        let rel = &file_path(i)[1..];
                        std::fs::write(root.join(rel), file_content(i)).expect("write file");
                    }
                }
            });
        }
    });
    println!(
        "crawl tree: {FILES} files in {DIRS} directories created in {:.1?} under {}",
        started.elapsed(),
        root.display()
    );
    *shared = Arc::downgrade(&tree);
    tree
}

/// Samples the server's `/proc` figures until stopped; keeps the maxima.
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<ProcStats>,
}

impl Monitor {
    fn start(pid: u32) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut peak = ProcStats::default();
            while !flag.load(Ordering::Relaxed) {
                match proc_stats(pid) {
                    Some(now) => peak = peak.max(now),
                    None => break,
                }
                // Reading /proc/PID/maps costs the server its mmap lock: not too often.
                thread::sleep(Duration::from_millis(200));
            }
            if let Some(now) = proc_stats(pid) {
                peak = peak.max(now);
            }
            peak
        });
        Monitor { stop, thread }
    }

    fn finish(self) -> ProcStats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("monitor thread")
    }
}

struct Crawl {
    /// Files answered 200 with their exact bytes, in order.
    served: usize,
    /// Why the crawl stopped early.
    failure: Option<String>,
    elapsed: Duration,
    /// Connections used (a server may close a keep-alive connection
    /// with `Connection: close`; the crawl then continues on a new one).
    connections: usize,
}

fn open(server: &Server) -> (TcpStream, BufReader<TcpStream>) {
    let stream = server.connect();
    let reader = BufReader::with_capacity(64 * 1024, stream.try_clone().expect("clone socket"));
    (stream, reader)
}

/// Reads one response into `body` (reusing the buffers: the crawl reads
/// 200,000 of them); returns the status and whether it says
/// `Connection: close`. The same checks as `harness::read_response`.
fn read_lean(
    reader: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> std::io::Result<(u16, bool)> {
    let bad = |what: &str, line: &[u8]| {
        std::io::Error::new(
            ErrorKind::InvalidData,
            format!("{what}: {:?}", String::from_utf8_lossy(line)),
        )
    };
    line.clear();
    if reader.read_until(b'\n', line)? == 0 {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = line
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok())
        .ok_or_else(|| bad("bad status line", line))?;
    let (mut length, mut close) = (None, false);
    loop {
        line.clear();
        if reader.read_until(b'\n', line)? == 0 {
            return Err(bad("connection closed in the head", line));
        }
        let field = line.trim_ascii_end();
        if field.is_empty() {
            break;
        }
        let colon = field
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("bad header", field))?;
        let (name, value) = (&field[..colon], field[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        }
    }
    let length: usize = length.ok_or_else(|| bad("no Content-Length", b""))?;
    body.resize(length, 0);
    reader.read_exact(body)?;
    Ok((status, close))
}

/// Fetches every file in order over keep-alive, `WINDOW` requests in
/// flight, checking each response; stops at the first wrong one.
fn crawl(server: &Server) -> Crawl {
    let started = Instant::now();
    let (mut writer, mut reader) = open(server);
    let mut connections = 1;
    let mut sent = 0;
    let mut done = 0;
    let mut batch = Vec::with_capacity(WINDOW * 48);
    let (mut line, mut body) = (Vec::new(), Vec::new());
    let failure = loop {
        if done == FILES {
            break None;
        }
        if started.elapsed() > CRAWL_LIMIT {
            break Some(format!("not done within {CRAWL_LIMIT:?}"));
        }
        if sent < FILES && sent - done <= WINDOW / 2 {
            batch.clear();
            while sent < FILES && sent - done < WINDOW {
                batch.extend_from_slice(&request("GET", &file_path(sent), ""));
                sent += 1;
            }
            if let Err(e) = writer.write_all(&batch) {
                break Some(format!("sending requests up to #{sent}: {e}"));
            }
        }
        let path = file_path(done);
        let close = match read_lean(&mut reader, &mut line, &mut body) {
            Ok((200, close)) => close,
            Ok((status, _)) => {
                break Some(format!(
                    "{path} (#{done}): status {status} ({:?})",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ))
            }
            Err(e) => break Some(format!("{path} (#{done}): no response: {e}")),
        };
        if body != file_content(done) {
            break Some(format!(
                "{path} (#{done}): body differs from the file ({} bytes, starts {:?})",
                body.len(),
                String::from_utf8_lossy(&body[..body.len().min(16)])
            ));
        }
        done += 1;
        if close {
            // Allowed: the rest of the pipeline is resent on a new connection.
            (writer, reader) = open(server);
            connections += 1;
            sent = done;
        }
    };
    Crawl {
        served: done,
        failure,
        elapsed: started.elapsed(),
        connections,
    }
}

/// `LATE_CLIENTS` new connections, all open at once, each asking for one
/// file; the failures.
fn late_clients(server: &Server) -> Vec<String> {
    let clients: Vec<(usize, std::io::Result<TcpStream>)> = (0..LATE_CLIENTS)
        .map(|k| {
            let i = (k * 9973) % FILES;
            let stream = TcpStream::connect(server.addr).and_then(|mut s| {
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                s.write_all(&request("GET", &file_path(i), "Connection: close\r\n"))?;
                Ok(s)
            });
            (i, stream)
        })
        .collect();
    // One IO_TIMEOUT for all of them, not one each.
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut failures = Vec::new();
    for (i, stream) in clients {
        let result = stream.and_then(|s| {
            let left = deadline.saturating_duration_since(Instant::now());
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            read_response(&mut BufReader::new(s), false)
        });
        match result {
            Ok(r) if r.status == 200 && r.body == file_content(i) => {}
            Ok(r) => failures.push(format!(
                "{}: status {}, {} bytes",
                file_path(i),
                r.status,
                r.body.len()
            )),
            Err(e) => failures.push(format!("{}: {e}", file_path(i))),
        }
    }
    failures
}

struct Outcome {
    crawl: Crawl,
    peak: ProcStats,
    late_failures: Vec<String>,
    running: bool,
    stderr: String,
}

fn run(label: &str, prefix: &[&str], args: &[&str]) -> Outcome {
    let tree = tree();
    let mut server = Server::launch(&Launch {
        root: Some(tree.path()),
        args,
        prefix,
        ..Launch::default()
    })
    .unwrap_or_else(|e| panic!("{label}: flash-server should start: {e}"));
    let monitor = Monitor::start(server.engine_pid());
    let crawl = crawl(&server);
    let peak = monitor.finish();
    let late_failures = if server.is_running() {
        late_clients(&server)
    } else {
        vec!["the server is gone".to_string()]
    };
    let running = server.is_running();
    let (_, stderr) = server.stop();
    println!(
        "{label}: {} of {FILES} files in {:.1?} ({:.0} requests/s, {} connection(s)); server \
         peaks: {} mappings, {} descriptors, VmRSS {} KiB, VmHWM {} KiB; {} of {LATE_CLIENTS} \
         late clients failed",
        crawl.served,
        crawl.elapsed,
        crawl.served as f64 / crawl.elapsed.as_secs_f64(),
        crawl.connections,
        peak.mappings,
        peak.descriptors,
        peak.rss_kib,
        peak.hwm_kib,
        late_failures.len(),
    );
    Outcome {
        crawl,
        peak,
        late_failures,
        running,
        stderr,
    }
}

/// The last lines of the server's stderr, for failure messages.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn assert_served_all(label: &str, outcome: &Outcome) {
    assert!(
        outcome.crawl.failure.is_none() && outcome.crawl.served == FILES,
        "{label}: every one of the {FILES} files must be served 200 with its bytes; stopped \
         after {} at: {}\n(server running: {}; peaks: {:?})\nserver stderr (tail):\n{}",
        outcome.crawl.served,
        outcome.crawl.failure.as_deref().unwrap_or("-"),
        outcome.running,
        outcome.peak,
        tail(&outcome.stderr)
    );
    assert!(
        outcome.late_failures.is_empty(),
        "{label}: after the crawl, new clients must be served at once: {:?}\nserver stderr \
         (tail):\n{}",
        outcome.late_failures,
        tail(&outcome.stderr)
    );
}

/// Resources follow the configuration, not the number of files served:
/// `--cache-memory 32M` bounds the mapped bytes, and nothing per file
/// served may stay behind.
#[test]
fn crawl_of_200k_files_keeps_mappings_descriptors_and_memory_bounded() {
    let label = "crawl (--cache-memory 32M)";
    let outcome = run(label, &[], &["--cache-memory", "32M"]);
    assert_served_all(label, &outcome);
    let peak = outcome.peak;
    assert!(
        peak.mappings < 1_000,
        "{label}: the server had {} memory mappings (limit 1,000): mappings must not grow \
         with the files served",
        peak.mappings
    );
    assert!(
        peak.descriptors < 600,
        "{label}: the server had {} descriptors open (limit 600): descriptors must not grow \
         with the files served",
        peak.descriptors
    );
    let limit_kib = (32 + 64) * 1024;
    assert!(
        peak.hwm_kib < limit_kib,
        "{label}: peak resident memory (VmHWM) {} KiB, limit {limit_kib} KiB (--cache-memory \
         32M + 64M)",
        peak.hwm_kib
    );
}

#[test]
fn crawl_under_nofile_256_serves_everything_and_stays_responsive() {
    let label = "crawl (prlimit --nofile=256:256)";
    let outcome = run(label, &["prlimit", "--nofile=256:256"], &[]);
    assert_served_all(label, &outcome);
}

#[test]
fn crawl_under_nofile_1024_serves_everything_and_stays_responsive() {
    let label = "crawl (prlimit --nofile=1024:1024)";
    let outcome = run(label, &["prlimit", "--nofile=1024:1024"], &[]);
    assert_served_all(label, &outcome);
}
