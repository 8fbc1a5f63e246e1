//! Files changing under load. 64 keep-alive connections fetch a set of files (small ones,
//! sent from a helper's copy, and larger ones, sent by `sendfile`) while a writer keeps
//! changing every one of them: truncating it to half and to nothing, rewriting it in place
//! (same length, longer, shorter), renaming a new version over it, deleting and re-creating
//! it, and `chmod 000` then back.
//!
//! Every version a file ever held is recorded (its bytes are a function of the version and
//! the offset, never 0, so zero padding is always foreign). For every response:
//!
//! * every body byte at offset `i` is byte `i` of some version the file held ("never a byte
//!   the file did not hold"; a large file rewritten in place while `sendfile` runs may
//!   legitimately mix versions at different offsets: docs/ARCHITECTURE.md, Integrity);
//! * a body shorter than its `Content-Length` comes with the connection closing (else the
//!   client stalls, which counts as malformed);
//! * the status is 200, or 403/404 around `chmod` and delete.
//!
//! The server must survive. When the writer stops, each file gets a final version (renamed
//! over it), and every file must answer with exactly that within the documented window
//! (`--path-cache-ttl`, 1 s; inotify usually makes it immediate); the worst staleness
//! measured is printed. As root the server runs as `nobody`, so that mode 000 denies it.
//!
//! The load lasts `FLASH_FAULT_SECONDS` seconds (default 8).

use std::fs::{self, OpenOptions, Permissions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::harness::{is_root, wait_until, Server, TempDir};
use integration_tests::load::{self, Conn, Exchange, Load, Rng};

/// The server's default path-cache TTL: the documented bound on staleness.
const TTL: Duration = Duration::from_secs(1);
/// Slack over the TTL for a loaded 2-core machine: the sweep's period and scheduling.
const STALE_SLACK: Duration = Duration::from_millis(500);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the wait for every file's final version to be answered (a response of a large
/// file under this load can itself take a second or more on 2 cores, debug build).
const FRESH_DEADLINE: Duration = Duration::from_secs(10);
/// The writer's pace: one change per file set every this long.
const WRITER_PACE: Duration = Duration::from_millis(5);
/// Materialised recent versions per file (older ones are recomputed byte by byte).
const RECENT: usize = 6;
/// Bodies are compared against whole versions in chunks of this size first.
const CHUNK: usize = 4096;

/// The files and their base lengths: small ones (a third longer still ≤ 32 KiB except the
/// last, which then crosses to sendfile) and larger ones.
const FILES: [(&str, usize); 7] = [
    ("/s0.bin", 1000),
    ("/s1.bin", 8 * 1024),
    ("/s2.bin", 20 * 1024),
    ("/s3.bin", 32 * 1024),
    ("/l0.bin", 256 * 1024),
    ("/l1.bin", 700 * 1024),
    ("/l2.bin", 1536 * 1024),
];

fn scenario_time() -> Duration {
    let secs = std::env::var("FLASH_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(8);
    Duration::from_secs(secs)
}

/// Byte `i` of the version with `seed`: never 0, differs between versions at most offsets.
fn version_byte(seed: u64, i: usize) -> u8 {
    let mut x = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    1 + (x % 255) as u8
}

fn version_bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| version_byte(seed, i)).collect()
}

/// Every version one file ever held.
struct History {
    /// `(seed, length)` of every version written, oldest first.
    all: Mutex<Vec<(u64, usize)>>,
    /// The bytes of the latest versions, newest first.
    recent: Mutex<Vec<Arc<Vec<u8>>>>,
    /// Every length the file was cut to (a truncation of an existing inode).
    cuts: Mutex<Vec<usize>>,
}

impl History {
    fn new() -> History {
        History {
            all: Mutex::new(Vec::new()),
            recent: Mutex::new(Vec::new()),
            cuts: Mutex::new(Vec::new()),
        }
    }

    /// Records a version before any of it reaches the file.
    fn record(&self, seed: u64, bytes: Arc<Vec<u8>>) {
        self.all.lock().unwrap().push((seed, bytes.len()));
        let mut recent = self.recent.lock().unwrap();
        recent.insert(0, bytes);
        recent.truncate(RECENT);
    }

    /// Records a cut to `len` bytes before it is made.
    fn record_cut(&self, len: usize) {
        self.cuts.lock().unwrap().push(len);
    }

    /// Checks `body` against every version: returns the first offset holding a byte no
    /// version held there, else `Ok` with the number of runs of zeros explained as the
    /// kernel zeroing bytes in flight (see [`zeroed_in_flight`]).
    fn check(&self, body: &[u8]) -> Result<usize, usize> {
        let cuts = self.cuts.lock().unwrap().clone();
        let mut from = 0;
        let mut zeroed = 0;
        while let Some(at) = self.foreign_byte(body, from) {
            match zeroed_in_flight(body, at, &cuts) {
                Some(end) => {
                    zeroed += 1;
                    from = end;
                }
                None => return Err(at),
            }
        }
        Ok(zeroed)
    }

    /// The first offset from `from` (a multiple of `CHUNK` or the end of a zero run) of
    /// `body` holding a byte no version held there.
    fn foreign_byte(&self, body: &[u8], from: usize) -> Option<usize> {
        let recent = self.recent.lock().unwrap().clone();
        let all = self.all.lock().unwrap().clone();
        let mut start = from;
        while start < body.len() {
            let next = (start / CHUNK + 1) * CHUNK;
            let chunk = &body[start..next.min(body.len())];
            let range = start..start + chunk.len();
            if recent.iter().any(|v| v.get(range.clone()) == Some(chunk)) {
                start = next;
                continue;
            }
            for (k, &b) in chunk.iter().enumerate() {
                let i = start + k;
                let held = recent.iter().any(|v| v.get(i) == Some(&b))
                    || all
                        .iter()
                        .any(|&(seed, len)| i < len && version_byte(seed, i) == b);
                if !held {
                    return Some(i);
                }
            }
            start = next;
        }
        None
    }
}

/// Largest page-cache folio (the PMD size): the kernel zeroes at most to its end.
const MAX_FOLIO: usize = 2 << 20;

/// Whether the foreign byte at `at` starts a run of zeros that the kernel, not the server,
/// put there; returns the end of the run if so.
///
/// `sendfile` to a TCP socket is zero-copy: the bytes it queued stay references to the
/// file's page cache until the client has received them. Truncating the file to `t` zeroes
/// the rest of the folio holding offset `t` (up to a page on tmpfs; on ext4 with large
/// folios, e.g. kernel 6.18, up to hundreds of KiB), and the bytes of that folio still in
/// flight then reach the client as zeros, though `sendfile` had read them while the file
/// held them. Folios are naturally aligned and at most `MAX_FOLIO`, so such zeros lie
/// between a cut `t` (not itself on a `MAX_FOLIO` boundary, where no folio straddles it)
/// and the next `MAX_FOLIO` boundary; where the run starts depends on how far the client
/// had read. Version bytes are never 0, so the run is exact. Any other foreign byte is the
/// server's.
fn zeroed_in_flight(body: &[u8], at: usize, cuts: &[usize]) -> Option<usize> {
    if body[at] != 0 {
        return None;
    }
    let end = at + body[at..].iter().take_while(|&&b| b == 0).count();
    cuts.iter()
        .any(|&t| t % MAX_FOLIO != 0 && t <= at && end <= (t / MAX_FOLIO + 1) * MAX_FOLIO)
        .then_some(end)
}

/// One file being changed.
struct Subject {
    url: &'static str,
    path: PathBuf,
    base: usize,
    index: u64,
    history: History,
    versions: AtomicU64,
    /// When the final version was renamed over the file, and its bytes.
    final_version: Mutex<Option<(Instant, Arc<Vec<u8>>)>>,
    /// The latest a request was sent after the final version and still answered otherwise,
    /// and that answer.
    stale: Mutex<Option<(Duration, String)>>,
    /// The first answer with the final version.
    fresh: Mutex<Option<Instant>>,
}

impl Subject {
    /// Records and returns a new version of `len` bytes.
    fn new_version(&self, len: usize) -> Arc<Vec<u8>> {
        let v = self.versions.fetch_add(1, Ordering::Relaxed);
        let seed = (self.index << 32) | v;
        let bytes = Arc::new(version_bytes(seed, len));
        self.history.record(seed, Arc::clone(&bytes));
        bytes
    }

    /// Writes a new version of `len` bytes over the start of the file, in place (same
    /// inode), then cuts the file to `len` if it was longer.
    fn rewrite_in_place(&self, len: usize) {
        let bytes = self.new_version(len);
        let mut file = OpenOptions::new().write(true).open(&self.path).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.write_all(&bytes).unwrap();
        if file.metadata().unwrap().len() > len as u64 {
            self.history.record_cut(len);
        }
        file.set_len(len as u64).unwrap();
    }

    /// A new version of `len` bytes, mode 0644, renamed over the file.
    fn rename_over(&self, len: usize) {
        let bytes = self.new_version(len);
        let beside = self.path.with_file_name(format!(
            ".{}.new",
            self.path.file_name().unwrap().to_string_lossy()
        ));
        fs::write(&beside, &*bytes).unwrap();
        fs::set_permissions(&beside, Permissions::from_mode(0o644)).unwrap();
        fs::rename(&beside, &self.path).unwrap();
    }

    /// Cuts the file to `len` bytes.
    fn cut(&self, len: usize) {
        self.history.record_cut(len);
        OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap()
            .set_len(len as u64)
            .unwrap();
    }

    fn current_len(&self) -> usize {
        fs::metadata(&self.path).map_or(0, |m| m.len() as usize)
    }

    /// Writes the final version (renamed over the file, whatever state it was left in).
    fn finish(&self) {
        self.rename_over(self.base);
        let bytes = Arc::clone(&self.history.recent.lock().unwrap()[0]);
        *self.final_version.lock().unwrap() = Some((Instant::now(), bytes));
    }

    /// Notes whether a request sent at `sent` after the final version got it.
    fn observe_freshness(&self, sent: Instant, exchange: &Exchange) {
        let Some((written, bytes)) = self.final_version.lock().unwrap().clone() else {
            return;
        };
        if sent < written {
            return;
        }
        match exchange {
            Exchange::Complete {
                status: 200, body, ..
            } if *body == *bytes => {
                self.fresh.lock().unwrap().get_or_insert_with(Instant::now);
            }
            _ => {
                let late = sent.duration_since(written);
                let mut stale = self.stale.lock().unwrap();
                let later = match &*stale {
                    Some((s, _)) => late > *s,
                    None => true,
                };
                if later {
                    *stale = Some((late, describe(exchange)));
                }
            }
        }
    }

    /// Applies change number `step` of the cycle; returns its name.
    fn change(&self, step: usize) -> &'static str {
        let base = self.base;
        match step % 10 {
            0 => {
                self.rewrite_in_place(base);
                "rewrite in place, same length"
            }
            1 => {
                self.cut(self.current_len() / 2);
                "truncate to half"
            }
            2 => {
                self.rewrite_in_place(base + base / 2);
                "rewrite in place, longer"
            }
            3 => {
                self.rename_over(base);
                "rename a new version over it"
            }
            4 => {
                self.cut(0);
                "truncate to 0"
            }
            5 => {
                self.rewrite_in_place(base / 3);
                "rewrite in place, shorter"
            }
            6 => {
                fs::set_permissions(&self.path, Permissions::from_mode(0o000)).unwrap();
                "chmod 000"
            }
            7 => {
                fs::set_permissions(&self.path, Permissions::from_mode(0o644)).unwrap();
                "chmod 644"
            }
            8 => {
                fs::remove_file(&self.path).unwrap();
                "delete"
            }
            _ => {
                let bytes = self.new_version(base);
                fs::write(&self.path, &*bytes).unwrap();
                fs::set_permissions(&self.path, Permissions::from_mode(0o644)).unwrap();
                "re-create"
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    complete: AtomicU64,
    ended_short: AtomicU64,
    denied_or_missing: AtomicU64,
    closed_before_head: AtomicU64,
    foreign: AtomicU64,
    zeroed_in_flight: AtomicU64,
    malformed: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Counts {
    fn judge(&self, subject: &Subject, sent: Instant, exchange: Exchange) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        subject.observe_freshness(sent, &exchange);
        let url = subject.url;
        let (counter, body) = match exchange {
            Exchange::Complete {
                status: 200, body, ..
            } => (&self.complete, body),
            Exchange::EndedShort {
                status: 200, body, ..
            } => (&self.ended_short, body),
            Exchange::Complete {
                status: 403 | 404, ..
            } => {
                self.denied_or_missing.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Exchange::ClosedBeforeHead => {
                self.closed_before_head.fetch_add(1, Ordering::Relaxed);
                return;
            }
            other => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                self.example(format!("GET {url}: {}", describe(&other)));
                return;
            }
        };
        let checked = subject.history.check(&body);
        if let Ok(zeroed) = checked {
            if zeroed > 0 {
                self.zeroed_in_flight.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(at) = checked {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            let run = body[at..].iter().take_while(|&&b| b == body[at]).count();
            let recent = subject.history.recent.lock().unwrap().clone();
            let prefix_of: Vec<(usize, usize)> = recent
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    (
                        k,
                        body.iter()
                            .zip(v.iter())
                            .take_while(|(a, b)| a == b)
                            .count(),
                    )
                })
                .collect();
            self.example(format!(
                "GET {url}: byte {at} of a {}-byte body is {:#04x}, which no version of the \
                 file held there (a run of {run}; common prefix with recent versions {prefix_of:?}, lens {:?})",
                body.len(),
                body[at],
                recent.iter().map(|v| v.len()).collect::<Vec<_>>()
            ));
            return;
        }
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn example(&self, text: String) {
        let mut examples = self.examples.lock().unwrap();
        if examples.len() < 10 {
            examples.push(text);
        }
    }

    fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn describe(exchange: &Exchange) -> String {
    match exchange {
        Exchange::Complete { status, body, .. } => format!("status {status}, {} bytes", body.len()),
        Exchange::EndedShort {
            status,
            content_length,
            body,
        } => format!(
            "status {status}, ended after {} of {content_length} bytes",
            body.len()
        ),
        other => format!("{other:?}"),
    }
}

fn fetch_once(server: &Server, url: &str) -> Exchange {
    let mut conn = Conn::open(server.addr, CLIENT_TIMEOUT).expect("connect");
    if conn.send_get(url).is_err() {
        return Exchange::ClosedBeforeHead;
    }
    conn.read_exchange()
}

fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn files_change_under_load(arch: &str) {
    let root = TempDir::new(&format!("changing-{arch}"));
    let subjects: Vec<Subject> = FILES
        .iter()
        .enumerate()
        .map(|(index, &(url, base))| Subject {
            url,
            path: root.path().join(&url[1..]),
            base,
            index: index as u64 + 1,
            history: History::new(),
            versions: AtomicU64::new(0),
            final_version: Mutex::new(None),
            stale: Mutex::new(None),
            fresh: Mutex::new(None),
        })
        .collect();
    for subject in &subjects {
        subject.rename_over(subject.base);
    }
    let mut args = vec!["--arch", arch];
    if is_root() {
        // Mode 000 must deny the server: root would read anyway.
        args.extend(["--user", "nobody"]);
    }
    let mut server = Server::start(root.path(), &args);

    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let changes = AtomicU64::new(0);
    let duration = scenario_time();
    let started = Instant::now();
    let mut all_fresh = false;
    let mut final_written = started;
    thread::scope(|scope| {
        scope.spawn(|| {
            load::run(
                server.addr,
                Load::standard(CLIENT_TIMEOUT),
                &stop,
                |rng: &mut Rng| subjects[rng.below(subjects.len())].url.to_string(),
                |url, sent, exchange| {
                    let subject = subjects.iter().find(|s| s.url == url).unwrap();
                    counts.judge(subject, sent, exchange);
                },
            )
        });
        // The writer, on this thread: each file goes through the cycle of changes, one
        // change of one file at a time, in turn.
        let mut step = 0;
        while started.elapsed() < duration {
            for subject in &subjects {
                subject.change(step);
                changes.fetch_add(1, Ordering::Relaxed);
                // The pace of the writer.
                thread::sleep(WRITER_PACE);
            }
            step += 1;
        }
        for subject in &subjects {
            subject.finish();
            changes.fetch_add(1, Ordering::Relaxed);
        }
        final_written = Instant::now();
        // Under the same load, every file must now answer with its final content; one more
        // client asks for each in turn, so that every file is asked often.
        all_fresh = wait_until(FRESH_DEADLINE, || {
            for subject in &subjects {
                let sent = Instant::now();
                let exchange = fetch_once(&server, subject.url);
                counts.judge(subject, sent, exchange);
            }
            subjects.iter().all(|s| s.fresh.lock().unwrap().is_some())
        });
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();
    let alive = server.is_running();
    let (_, stderr) = server.stop();

    let stale: Vec<Option<(Duration, String)>> = subjects
        .iter()
        .map(|s| s.stale.lock().unwrap().clone())
        .collect();
    let worst = stale.iter().flatten().max_by_key(|(late, _)| *late).map_or(
        "none (no request sent after it got anything else)".to_string(),
        |(w, what)| format!("{w:.1?} ({what})"),
    );
    let versions: u64 = subjects
        .iter()
        .map(|s| s.versions.load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "changing_files[{arch}]: requests {}, 200 complete {}, ended short {}, 403/404 {}, \
         closed before the head {}, foreign bytes {}, malformed {}, zeroed in flight by the \
         kernel after a truncation {}; changes made {} ({versions} versions) in {elapsed:.1?}; \
         worst staleness after the final write {worst} (the latest a request was sent after it \
         and still answered otherwise); all files fresh {:.1?} after the last final write",
        counts.get(&counts.requests),
        counts.get(&counts.complete),
        counts.get(&counts.ended_short),
        counts.get(&counts.denied_or_missing),
        counts.get(&counts.closed_before_head),
        counts.get(&counts.foreign),
        counts.get(&counts.malformed),
        counts.get(&counts.zeroed_in_flight),
        changes.load(Ordering::Relaxed),
        subjects
            .iter()
            .filter_map(|s| *s.fresh.lock().unwrap())
            .max()
            .map(|t| t.saturating_duration_since(final_written))
            .unwrap_or_default(),
    );
    let examples = counts.examples.lock().unwrap().clone();
    assert!(alive, "the server died\nstderr:\n{}", tail(&stderr));
    assert_eq!(
        counts.get(&counts.foreign),
        0,
        "responses with bytes the file never held: {examples:#?}"
    );
    assert_eq!(
        counts.get(&counts.malformed),
        0,
        "malformed responses: {examples:#?}\nstderr:\n{}",
        tail(&stderr)
    );
    assert!(
        counts.get(&counts.complete) > 0 && counts.get(&counts.denied_or_missing) > 0,
        "the load must have seen both files and their absence"
    );
    assert!(
        all_fresh,
        "files never served their final version within {FRESH_DEADLINE:?}: {:?}",
        subjects
            .iter()
            .filter(|s| s.fresh.lock().unwrap().is_none())
            .map(|s| s.url)
            .collect::<Vec<_>>()
    );
    for (subject, stale) in subjects.iter().zip(&stale) {
        if let Some((stale, _)) = stale {
            assert!(
                *stale <= TTL + STALE_SLACK,
                "{}: a request sent {stale:?} after its final version was written still got \
                 something else, beyond the path-cache TTL {TTL:?} (+ {STALE_SLACK:?})",
                subject.url
            );
        }
    }
    assert!(
        !stderr.contains("panicked"),
        "the server panicked:\n{}",
        tail(&stderr)
    );
}

#[test]
fn amped_serves_only_bytes_files_held_while_they_change_under_load() {
    files_change_under_load("amped");
}

#[test]
fn sped_serves_only_bytes_files_held_while_they_change_under_load() {
    files_change_under_load("sped");
}
