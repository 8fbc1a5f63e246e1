//! Files changing under load. 64 keep-alive connections fetch a set of files (small ones,
//! sent from a helper's copy, and larger ones, sent by `sendfile`) while a writer keeps
//! changing every one of them: truncating it to half and to nothing, rewriting it in place
//! (same length, longer, shorter), renaming a new version over it, deleting and re-creating
//! it, and `chmod 000` then back.
//!
//! Every version a file ever held is recorded (its bytes are a function of the version and
//! the offset, never 0, so zero padding is always foreign), and every cut of a file with
//! when it was made. For every response, sent at one instant and received whole by another:
//!
//! * the body is a sequence of runs, each equal to one single version at those offsets and,
//!   unless at the start or the end of the body, at least `MIN_RUN` bytes long ("never a
//!   byte the file did not hold"; a large file rewritten in place while `sendfile` runs may
//!   legitimately mix versions, page by page or where a `write()` raced the copy:
//!   docs/ARCHITECTURE.md, Integrity). Versions differ at almost every offset, so a byte
//!   held by *some* version proves little; a run of one version does;
//! * the only other bytes allowed are runs of zeros within the folio holding a cut made
//!   while that response was in flight (see [`zeroed_in_flight`]);
//! * a small file's body (≤ `INLINE_MAX`, sent from the helper's copy) is counted as one
//!   version whole, one version's start (cut, or read while being written), or neither:
//!   the server does not promise more (a same-size write can race the helper's read unseen,
//!   and a file that keeps changing is sent by `sendfile`), so "neither" is reported, and
//!   must still pass the run check;
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

use flash_core::fs::INLINE_MAX;
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

/// Largest page-cache folio (the PMD size): the kernel zeroes at most to its end.
const MAX_FOLIO: usize = 2 << 20;

/// Shortest run of one version a body may hold between two others (a run at the start or
/// the end of the body may be shorter), unless it or a run beside it is of a version that
/// was being written into the file while the response was in flight. Legitimate switches of
/// version come from pages read at different moments (page-aligned: runs of pages) and
/// from a `write()` racing a copy out of the page cache (`sendfile`'s zero-copy bytes are
/// copied to the client only when it reads them). Both copies run forward, so a race
/// mostly leaves one switch; but where they cross, the wide, not strictly ordered stores
/// and loads of the kernel's copies tear a cache line: runs of 32 and 48 bytes inside one
/// 64-byte line, between runs of the version being written and the one it overwrote, were
/// seen (in about one run of this test in three). Every other run between two others
/// measured (over 40 runs) was at least 64 bytes (a few times; then 192, 253, 4096, ...).
/// So a run under `MIN_RUN` is accepted only beside or of a version written while the
/// response was in flight, or just before zeros of a cut made while it was in flight (the
/// kernel zeroing the page races the copy the same way: runs of 11 and 32 bytes of the
/// file's own content between such zeros were seen, in about one run of the SPED test in
/// five), counted as torn; any other is rejected (the byte-by-byte check this replaced let
/// runs of up to ~30 wrong bytes of any version through).
const MIN_RUN: usize = 64;

/// A cut of the file to `len` bytes: when the `ftruncate` was called and when it returned
/// (`None`: not yet).
#[derive(Clone, Copy, Debug)]
struct Cut {
    len: usize,
    from: Instant,
    to: Option<Instant>,
}

impl Cut {
    /// Whether the cut overlapped `[sent, received]`: it could then zero bytes of that
    /// response still in flight.
    fn during(&self, sent: Instant, received: Instant) -> bool {
        self.from <= received && self.to.map_or(true, |to| to >= sent)
    }

    /// The bytes the kernel may have zeroed: from the cut to the end of the naturally
    /// aligned folio holding it (at most `MAX_FOLIO`; none if the cut is on a folio
    /// boundary, where no folio straddles it).
    fn zeroable(&self) -> std::ops::Range<usize> {
        if self.len % MAX_FOLIO == 0 {
            return self.len..self.len;
        }
        self.len..(self.len / MAX_FOLIO + 1) * MAX_FOLIO
    }
}

/// What a body was found to be made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Explained {
    /// Runs of a single version, in order: `(start, end, version index)`.
    runs: Vec<(usize, usize, usize)>,
    /// Runs of zeros the kernel put there (see [`Cut`]), as `(start, end)`.
    zeros: Vec<(usize, usize)>,
    /// Runs shorter than `MIN_RUN` between two others, of a version being written while
    /// the response was in flight.
    torn: usize,
}

impl Explained {
    /// The shortest run that is neither at the start nor at the end of the body (the one
    /// `MIN_RUN` bounds), if any.
    fn shortest_inner_run(&self, len: usize) -> Option<usize> {
        self.runs
            .iter()
            .filter(|&&(start, end, _)| start > 0 && end < len)
            .map(|&(start, end, _)| end - start)
            .min()
    }
}

/// Why a body cannot be explained.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Unexplained {
    /// At `at`, a byte that no version held there, or a run of zeros no cut in flight
    /// explains (`zeros`: its length).
    Foreign { at: usize, zeros: usize },
    /// A run of one version, `start..end`, shorter than `MIN_RUN` between two others, none
    /// of them of a version written while the response was in flight; `versions`: those of
    /// the run before it (if adjacent), of it, of the run after it (if any).
    ShortRun {
        start: usize,
        end: usize,
        versions: [Option<usize>; 3],
    },
}

/// Every version one file ever held.
struct History {
    /// `(seed, length)` of every version written, oldest first.
    all: Mutex<Vec<(u64, usize)>>,
    /// The bytes of the latest versions, newest first, with their index in `all`.
    recent: Mutex<Vec<(usize, Arc<Vec<u8>>)>>,
    /// Every cut of the file (a truncation of an existing inode), oldest first.
    cuts: Mutex<Vec<Cut>>,
    /// Every write of a version into the file itself (not renamed over it): the version's
    /// index in `all`, when the write began and when it returned (`None`: not yet).
    writes: Mutex<Vec<(usize, Instant, Option<Instant>)>>,
}

/// The versions as one check sees them.
struct Versions {
    all: Vec<(u64, usize)>,
    /// By index in `all`: the bytes, if materialised.
    bytes: Vec<Option<Arc<Vec<u8>>>>,
    /// By index in `all`: whether the version was being written into the file while the
    /// response was in flight (a copy racing that write may hold short runs of it).
    racing: Vec<bool>,
}

impl Versions {
    fn len_of(&self, v: usize) -> usize {
        self.all[v].1
    }

    fn byte(&self, v: usize, i: usize) -> Option<u8> {
        let (seed, len) = self.all[v];
        if i >= len {
            return None;
        }
        Some(match &self.bytes[v] {
            Some(bytes) => bytes[i],
            None => version_byte(seed, i),
        })
    }

    /// The end of the longest stretch from `from` where `body` equals version `v`.
    fn match_forward(&self, v: usize, body: &[u8], from: usize) -> usize {
        let end = body.len().min(self.len_of(v));
        let mut i = from;
        if let Some(bytes) = &self.bytes[v] {
            while i < end {
                let next = (i + CHUNK).min(end);
                if body[i..next] != bytes[i..next] {
                    break;
                }
                i = next;
            }
        }
        while i < end && self.byte(v, i) == Some(body[i]) {
            i += 1;
        }
        i
    }

    /// The start of the longest stretch ending at `to` (exclusive) and not starting before
    /// `floor` where `body` equals version `v`.
    fn match_backward(&self, v: usize, body: &[u8], to: usize, floor: usize) -> usize {
        let mut i = to;
        while i > floor && self.byte(v, i - 1) == Some(body[i - 1]) {
            i -= 1;
        }
        i
    }
}

impl History {
    fn new() -> History {
        History {
            all: Mutex::new(Vec::new()),
            recent: Mutex::new(Vec::new()),
            cuts: Mutex::new(Vec::new()),
            writes: Mutex::new(Vec::new()),
        }
    }

    /// Records a version before any of it reaches the file.
    fn record(&self, seed: u64, bytes: Arc<Vec<u8>>) {
        let mut all = self.all.lock().unwrap();
        all.push((seed, bytes.len()));
        let mut recent = self.recent.lock().unwrap();
        recent.insert(0, (all.len() - 1, bytes));
        recent.truncate(RECENT);
    }

    /// The newest version's bytes.
    fn latest(&self) -> Arc<Vec<u8>> {
        Arc::clone(&self.recent.lock().unwrap()[0].1)
    }

    /// Cuts the file to `len` bytes with `cut`, recording when.
    fn cut_with(&self, len: usize, cut: impl FnOnce()) {
        let k = {
            let mut cuts = self.cuts.lock().unwrap();
            cuts.push(Cut {
                len,
                from: Instant::now(),
                to: None,
            });
            cuts.len() - 1
        };
        cut();
        self.cuts.lock().unwrap()[k].to = Some(Instant::now());
    }

    /// Writes the latest version into the file with `write`, recording when.
    fn write_with(&self, write: impl FnOnce()) {
        let k = {
            let v = self.all.lock().unwrap().len() - 1;
            let mut writes = self.writes.lock().unwrap();
            writes.push((v, Instant::now(), None));
            writes.len() - 1
        };
        write();
        self.writes.lock().unwrap()[k].2 = Some(Instant::now());
    }

    fn versions(&self) -> Versions {
        // As `record` does: `all`, then `recent` (so that both agree).
        let all_locked = self.all.lock().unwrap();
        let all = all_locked.clone();
        let mut bytes = vec![None; all.len()];
        for (v, b) in self.recent.lock().unwrap().iter() {
            bytes[*v] = Some(Arc::clone(b));
        }
        drop(all_locked);
        let racing = vec![false; all.len()];
        Versions { all, bytes, racing }
    }

    /// What `body` is as a snapshot: one version whole, one version's start (the file cut,
    /// or read while being written), or neither.
    fn snapshot(&self, body: &[u8]) -> Snapshot {
        let versions = self.versions();
        let mut found = Snapshot::Neither;
        for v in (0..versions.all.len()).rev() {
            if body.len() <= versions.len_of(v) && versions.match_forward(v, body, 0) == body.len()
            {
                if body.len() == versions.len_of(v) {
                    return Snapshot::Whole;
                }
                found = Snapshot::Start;
            }
        }
        found
    }

    /// Explains `body`, a response sent at `sent` and received whole by `received`, as a
    /// sequence of runs, each equal to one version at those offsets and at least `MIN_RUN`
    /// long unless at the start or the end of the body, and runs of zeros each lying where
    /// a cut made while the response was in flight may have zeroed bytes (see
    /// [`zeroed_in_flight`]).
    fn check(
        &self,
        body: &[u8],
        sent: Instant,
        received: Instant,
    ) -> Result<Explained, Unexplained> {
        let mut versions = self.versions();
        for &(v, from, to) in self.writes.lock().unwrap().iter() {
            if v < versions.racing.len() && from <= received && to.map_or(true, |to| to >= sent) {
                versions.racing[v] = true;
            }
        }
        let cuts: Vec<Cut> = self
            .cuts
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.during(sent, received))
            .copied()
            .collect();
        explain(body, &versions, &cuts)
    }
}

/// What a small file's body is (see [`History::snapshot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Snapshot {
    Whole,
    Start,
    Neither,
}

/// See [`History::check`]. Greedy: at each point where the current run stops matching, the
/// next run is the version matching furthest ahead, starting as early as it matches (but
/// leaving the run before it `MIN_RUN` long). Versions differ at almost every offset, so
/// where a switch really happened only the right version matches on.
fn explain(body: &[u8], versions: &Versions, cuts: &[Cut]) -> Result<Explained, Unexplained> {
    let mut explained = Explained::default();
    // Where the run being extended starts, if it is a run of a version (not of zeros).
    let mut p = 0;
    while p < body.len() {
        if body[p] == 0 {
            let end = p + body[p..].iter().take_while(|&&b| b == 0).count();
            if !zeroed_in_flight(p..end, cuts) {
                return Err(Unexplained::Foreign {
                    at: p,
                    zeros: end - p,
                });
            }
            check_last_run(&mut explained, versions, p, None)?;
            explained.zeros.push((p, end));
            p = end;
            continue;
        }
        // The previous run, if a version's, may give up its tail to the next one, down to
        // MIN_RUN (any length if it is the first run).
        let prev = explained
            .runs
            .last()
            .filter(|&&(_, end, _)| end == p)
            .copied();
        let floor = match prev {
            Some((0, _, _)) => 1,
            Some((start, _, _)) => start + MIN_RUN,
            None => p,
        };
        let mut best: Option<(usize, usize, usize)> = None;
        for v in 0..versions.all.len() {
            if versions.byte(v, p) != Some(body[p]) {
                continue;
            }
            let end = versions.match_forward(v, body, p);
            let start = if floor < p {
                versions.match_backward(v, body, p, floor)
            } else {
                p
            };
            let better = match best {
                None => true,
                Some((s, e, _)) => end > e || (end == e && start < s),
            };
            if better {
                best = Some((start, end, v));
            }
        }
        let Some((start, end, v)) = best else {
            return Err(Unexplained::Foreign { at: p, zeros: 0 });
        };
        if let Some(last) = explained.runs.last_mut().filter(|r| r.1 == p) {
            last.1 = start;
        }
        check_last_run(&mut explained, versions, start, Some(v))?;
        explained.runs.push((start, end, v));
        p = end;
    }
    Ok(explained)
}

/// Fails if the last run, ending at `end` with something else after it (a run of version
/// `next`, or zeros), is shorter than `MIN_RUN`, unless it or a run beside it is of a
/// version being written into the file while the response was in flight (a cache line torn
/// between that version and the one it overwrote: see `MIN_RUN`), or the zeros after it
/// are a cut's in flight (`next` is `None` only then: the kernel's zeroing of the page tears
/// a cache line against the copy to the client just as a write does; the run's bytes are
/// still those the file held at those offsets), which it counts.
fn check_last_run(
    explained: &mut Explained,
    versions: &Versions,
    end: usize,
    next: Option<usize>,
) -> Result<(), Unexplained> {
    let runs = &explained.runs;
    let Some(&(start, e, v)) = runs.last() else {
        return Ok(());
    };
    if e != end || start == 0 || end - start >= MIN_RUN {
        return Ok(());
    }
    let before = runs
        .len()
        .checked_sub(2)
        .map(|k| runs[k])
        .filter(|r| r.1 == start)
        .map(|r| r.2);
    if next.is_none()
        || [Some(v), before, next]
            .into_iter()
            .flatten()
            .any(|v| versions.racing[v])
    {
        explained.torn += 1;
        Ok(())
    } else {
        Err(Unexplained::ShortRun {
            start,
            end,
            versions: [before, Some(v), next],
        })
    }
}

/// Whether the zeros at `zeros` are the kernel's, not the server's.
///
/// `sendfile` to a TCP socket is zero-copy: the bytes it queued stay references to the
/// file's page cache until the client has received them. Truncating the file to `t` zeroes
/// the rest of the folio holding offset `t` (up to a page on tmpfs; on ext4 with large
/// folios, e.g. kernel 6.18, up to hundreds of KiB), and the bytes of that folio still in
/// flight then reach the client as zeros, though `sendfile` had read them while the file
/// held them. So such zeros lie within `[t, end of the folio holding t)` (folios are
/// naturally aligned and at most `MAX_FOLIO`) for a cut `t` made while the response was in
/// flight (`cuts` holds only those). Version bytes are never 0, so the run is exact. Any
/// other zero is the server's.
fn zeroed_in_flight(zeros: std::ops::Range<usize>, cuts: &[Cut]) -> bool {
    cuts.iter().any(|c| {
        let r = c.zeroable();
        r.start <= zeros.start && zeros.end <= r.end
    })
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
        self.history.write_with(|| file.write_all(&bytes).unwrap());
        if file.metadata().unwrap().len() > len as u64 {
            self.history
                .cut_with(len, || file.set_len(len as u64).unwrap());
        }
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
        let file = OpenOptions::new().write(true).open(&self.path).unwrap();
        self.history
            .cut_with(len, || file.set_len(len as u64).unwrap());
    }

    fn current_len(&self) -> usize {
        fs::metadata(&self.path).map_or(0, |m| m.len() as usize)
    }

    /// Writes the final version (renamed over the file, whatever state it was left in).
    fn finish(&self) {
        self.rename_over(self.base);
        let bytes = self.history.latest();
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
                self.history
                    .write_with(|| fs::write(&self.path, &*bytes).unwrap());
                fs::set_permissions(&self.path, Permissions::from_mode(0o644)).unwrap();
                "re-create"
            }
        }
    }
}

struct Counts {
    requests: AtomicU64,
    complete: AtomicU64,
    ended_short: AtomicU64,
    denied_or_missing: AtomicU64,
    closed_before_head: AtomicU64,
    foreign: AtomicU64,
    /// Bodies of a small file (announced length ≤ `INLINE_MAX`): one version whole, one
    /// version's start, neither (see [`History::snapshot`]).
    small_whole: AtomicU64,
    small_start: AtomicU64,
    small_neither: AtomicU64,
    /// Bodies holding more than one run (versions mixed).
    mixed: AtomicU64,
    /// The shortest run seen between two others in a body that passed.
    shortest_run: AtomicU64,
    /// Runs shorter than `MIN_RUN` of a version written while the response was in flight.
    torn_runs: AtomicU64,
    /// Bodies with zeros from a cut in flight, and the runs of such zeros.
    zeroed_in_flight: AtomicU64,
    zero_runs: AtomicU64,
    malformed: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            requests: AtomicU64::new(0),
            complete: AtomicU64::new(0),
            ended_short: AtomicU64::new(0),
            denied_or_missing: AtomicU64::new(0),
            closed_before_head: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            small_whole: AtomicU64::new(0),
            small_start: AtomicU64::new(0),
            small_neither: AtomicU64::new(0),
            mixed: AtomicU64::new(0),
            shortest_run: AtomicU64::new(u64::MAX),
            torn_runs: AtomicU64::new(0),
            zeroed_in_flight: AtomicU64::new(0),
            zero_runs: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            examples: Mutex::new(Vec::new()),
        }
    }
}

impl Counts {
    fn judge(&self, subject: &Subject, sent: Instant, exchange: Exchange) {
        let received = Instant::now();
        self.requests.fetch_add(1, Ordering::Relaxed);
        subject.observe_freshness(sent, &exchange);
        let url = subject.url;
        let (counter, body, announced) = match exchange {
            Exchange::Complete {
                status: 200, body, ..
            } => {
                let len = body.len();
                (&self.complete, body, len)
            }
            Exchange::EndedShort {
                status: 200,
                body,
                content_length,
            } => (&self.ended_short, body, content_length),
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
        if announced as u64 <= INLINE_MAX {
            let counter = match subject.history.snapshot(&body) {
                Snapshot::Whole if announced == body.len() => &self.small_whole,
                Snapshot::Whole | Snapshot::Start => &self.small_start,
                Snapshot::Neither => &self.small_neither,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        match subject.history.check(&body, sent, received) {
            Ok(explained) => {
                if explained.runs.len() > 1 {
                    self.mixed.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(shortest) = explained.shortest_inner_run(body.len()) {
                    self.shortest_run
                        .fetch_min(shortest as u64, Ordering::Relaxed);
                }
                self.torn_runs
                    .fetch_add(explained.torn as u64, Ordering::Relaxed);
                if !explained.zeros.is_empty() {
                    self.zeroed_in_flight.fetch_add(1, Ordering::Relaxed);
                    self.zero_runs
                        .fetch_add(explained.zeros.len() as u64, Ordering::Relaxed);
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                self.foreign.fetch_add(1, Ordering::Relaxed);
                let lens: Vec<usize> = subject
                    .history
                    .recent
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(_, v)| v.len())
                    .collect();
                self.example(format!(
                    "GET {url}: a {}-byte body (of {announced} announced) is no sequence of \
                     runs of versions the file held: {} (recent versions' lengths {lens:?})",
                    body.len(),
                    match why {
                        Unexplained::Foreign { at, zeros: 0 } => format!(
                            "byte {at} is {:#04x}, which no version held there",
                            body[at]
                        ),
                        Unexplained::Foreign { at, zeros } => format!(
                            "{zeros} zeros at {at}, where no cut made while the response was \
                             in flight zeroed bytes"
                        ),
                        Unexplained::ShortRun {
                            start,
                            end,
                            versions,
                        } => format!(
                            "bytes {start}..{end} are a run of one version shorter than \
                             {MIN_RUN} bytes between two others, and none of them (versions \
                             {versions:?} of {}) was being written while the response was in \
                             flight",
                            subject.history.all.lock().unwrap().len()
                        ),
                    }
                ));
            }
        }
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
         closed before the head {}, foreign bytes {}, malformed {}; small-file bodies one \
         version whole {}, one version's start {}, neither {}; bodies mixing versions {}, shortest run between two others \
         {} bytes (MIN_RUN {MIN_RUN}; shorter, of a version written meanwhile: {}); zeroed in flight by the kernel after a truncation {} \
         ({} runs of zeros); changes made {} ({versions} versions) in {elapsed:.1?}; \
         worst staleness after the final write {worst} (the latest a request was sent after it \
         and still answered otherwise); all files fresh {:.1?} after the last final write",
        counts.get(&counts.requests),
        counts.get(&counts.complete),
        counts.get(&counts.ended_short),
        counts.get(&counts.denied_or_missing),
        counts.get(&counts.closed_before_head),
        counts.get(&counts.foreign),
        counts.get(&counts.malformed),
        counts.get(&counts.small_whole),
        counts.get(&counts.small_start),
        counts.get(&counts.small_neither),
        counts.get(&counts.mixed),
        match counts.get(&counts.shortest_run) {
            u64::MAX => "none".to_string(),
            n => n.to_string(),
        },
        counts.get(&counts.torn_runs),
        counts.get(&counts.zeroed_in_flight),
        counts.get(&counts.zero_runs),
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

/// The checker itself: bodies the server must never send are rejected, bodies it
/// legitimately sends are accepted.
mod checker {
    use super::*;

    const LEN: usize = 700 * 1024;

    /// A history of 8 versions of `len` bytes (the oldest two not materialised), with the
    /// instant a response was sent and the instant it was received.
    fn versions_of(len: usize) -> (History, Vec<Vec<u8>>, Instant, Instant) {
        let history = History::new();
        let versions: Vec<Vec<u8>> = (0..8u64)
            .map(|v| {
                let bytes = version_bytes((9 << 32) | v, len);
                history.record((9 << 32) | v, Arc::new(bytes.clone()));
                bytes
            })
            .collect();
        let t0 = Instant::now();
        (
            history,
            versions,
            t0 + Duration::from_millis(100),
            t0 + Duration::from_millis(200),
        )
    }

    /// Records a cut to `len` made `from_ms..to_ms` after the history's start (the
    /// response is in flight from 100 to 200).
    fn cut(history: &History, sent: Instant, len: usize, from_ms: u64, to_ms: u64) {
        let t0 = sent - Duration::from_millis(100);
        history.cuts.lock().unwrap().push(Cut {
            len,
            from: t0 + Duration::from_millis(from_ms),
            to: Some(t0 + Duration::from_millis(to_ms)),
        });
    }

    /// `pieces` of `(version, end)` (`None`: zeros), each from the previous end.
    fn body(versions: &[Vec<u8>], pieces: &[(Option<usize>, usize)]) -> Vec<u8> {
        let mut body = Vec::new();
        for &(v, end) in pieces {
            let start = body.len();
            match v {
                Some(v) => body.extend_from_slice(&versions[v][start..end]),
                None => body.resize(end, 0),
            }
        }
        body
    }

    #[test]
    fn rejects_a_short_run_of_another_version() {
        let (history, versions, sent, received) = versions_of(LEN);
        // 16 bytes of an old version (not materialised) and of a recent one, amid the
        // latest: every byte is one some version held at its offset, so a byte-by-byte
        // check passes them.
        // A version written before the request was sent, rewritten since, is no excuse.
        history.writes.lock().unwrap().push((
            5,
            sent - Duration::from_millis(50),
            Some(sent - Duration::from_millis(40)),
        ));
        for wrong in [1, 5] {
            let bad = body(
                &versions,
                &[(Some(7), 5000), (Some(wrong), 5016), (Some(7), LEN)],
            );
            assert!((5000..5016).all(|i| versions.iter().any(|v| v[i] == bad[i])));
            assert!(
                matches!(
                    history.check(&bad, sent, received),
                    Err(Unexplained::ShortRun { .. })
                ),
                "{:?}",
                history.check(&bad, sent, received)
            );
        }
        // Just shorter than MIN_RUN, right after a page boundary, is still too short.
        let bad = body(
            &versions,
            &[
                (Some(7), 8192),
                (Some(3), 8192 + MIN_RUN - 1),
                (Some(7), LEN),
            ],
        );
        assert!(matches!(
            history.check(&bad, sent, received),
            Err(Unexplained::ShortRun { .. })
        ));
        // A byte no version held.
        let mut bad = versions[7].clone();
        bad[300_000] = (1..=255u8)
            .find(|b| versions.iter().all(|v| v[300_000] != *b))
            .unwrap();
        assert_eq!(
            history.check(&bad, sent, received),
            Err(Unexplained::Foreign {
                at: 300_000,
                zeros: 0
            })
        );
    }

    #[test]
    fn rejects_zeros_no_cut_in_flight_explains() {
        let (history, versions, sent, received) = versions_of(LEN);
        // A cut to 400,000 made before the request: it zeroes nothing of this response.
        cut(&history, sent, 400_000, 10, 11);
        let rejected = |pieces: &[(Option<usize>, usize)]| {
            let bad = body(&versions, pieces);
            let verdict = history.check(&bad, sent, received);
            assert!(
                matches!(verdict, Err(Unexplained::Foreign { zeros: 1.., .. })),
                "{pieces:?}: {verdict:?}"
            );
        };
        rejected(&[(Some(7), 450_000), (None, 460_000), (Some(7), LEN)]);
        // A padded tail: the body cut at 400,000 and filled with zeros to its length.
        rejected(&[(Some(7), 400_000), (None, LEN)]);
        // ... or at the length announced, with no cut at all.
        rejected(&[(Some(7), 123_456), (None, LEN)]);
        // A cut to 300,000 while the response was in flight: zeros before it are not its.
        cut(&history, sent, 300_000, 150, 151);
        rejected(&[(Some(7), 100_000), (None, 100_100), (Some(7), LEN)]);
        rejected(&[(Some(7), 299_999), (None, 300_100), (Some(7), LEN)]);
        // One that started after the response was received neither.
        cut(&history, sent, 50_000, 201, 202);
        rejected(&[(Some(7), 60_000), (None, 60_100), (Some(7), LEN)]);
        // Past the end of the largest folio that could hold the cut in flight.
        let (history, versions, sent, received) = versions_of(MAX_FOLIO + MAX_FOLIO / 4);
        cut(&history, sent, 1_900_000, 150, 151);
        for pieces in [
            &[
                (Some(7), 2_200_000),
                (None, 2_200_100),
                (Some(7), 2_300_000),
            ][..],
            &[(Some(7), 1_900_000), (None, MAX_FOLIO + 1)][..],
        ] {
            let bad = body(&versions, pieces);
            assert!(matches!(
                history.check(&bad, sent, received),
                Err(Unexplained::Foreign { zeros: 1.., .. })
            ));
        }
        // A cut in flight on a boundary of the largest folio zeroes nothing.
        cut(&history, sent, MAX_FOLIO, 150, 151);
        let bad = body(&versions, &[(Some(7), MAX_FOLIO), (None, MAX_FOLIO + 100)]);
        assert!(history.check(&bad, sent, received).is_err());
    }

    #[test]
    fn accepts_what_the_server_legitimately_sends() {
        let (history, versions, sent, received) = versions_of(LEN);
        let accepted = |pieces: &[(Option<usize>, usize)]| {
            let good = body(&versions, pieces);
            let verdict = history.check(&good, sent, received);
            assert!(verdict.is_ok(), "{pieces:?}: {verdict:?}");
            verdict.unwrap()
        };
        // One version whole, old or recent.
        assert_eq!(accepted(&[(Some(0), LEN)]).runs, vec![(0, LEN, 0)]);
        accepted(&[(Some(7), LEN)]);
        // Pages read at different moments, across a rewrite in place.
        let mixed = accepted(&[(Some(7), 8192), (Some(6), 65_536), (Some(7), LEN)]);
        assert_eq!(mixed.runs.len(), 3);
        assert_eq!(mixed.shortest_inner_run(LEN), Some(65_536 - 8192));
        // A write racing a copy: a switch anywhere in a page, runs of MIN_RUN allowed.
        accepted(&[(Some(5), 12_345), (Some(7), LEN)]);
        accepted(&[
            (Some(5), 12_345),
            (Some(1), 12_345 + MIN_RUN),
            (Some(7), LEN),
        ]);
        // A cache line torn by a write racing the copy: 32 bytes of the version being
        // written while the response was in flight, amid the old one.
        let torn = &[
            (Some(7), 988_752 % LEN),
            (Some(4), 988_784 % LEN),
            (Some(7), LEN),
        ];
        assert!(history
            .check(&body(&versions, torn), sent, received)
            .is_err());
        history
            .writes
            .lock()
            .unwrap()
            .push((4, sent + Duration::from_millis(50), None));
        assert_eq!(accepted(torn).torn, 1);
        // ... or 32 bytes the write had not reached yet, amid bytes it had.
        let torn = &[(Some(4), 21_637), (Some(0), 21_669), (Some(4), LEN)];
        assert_eq!(accepted(torn).torn, 1);
        // Short runs at the start and at the end.
        accepted(&[(Some(6), 10), (Some(7), LEN - 10), (Some(2), LEN)]);
        // Zeros right after a cut made while the response was in flight, up to the end of
        // its folio (256 KiB here: 358,400 lies in 256..512 KiB), the rest intact.
        cut(&history, sent, 358_400, 199, 250);
        let zeroed = accepted(&[(Some(7), 358_400), (None, 524_288), (Some(7), LEN)]);
        assert_eq!(zeroed.zeros, vec![(358_400, 524_288)]);
        // ... or from where the client had read to, then a newer version written since.
        accepted(&[(Some(7), 400_000), (None, 450_000), (Some(6), LEN)]);
        // ... or to the end of a body cut short.
        accepted(&[(Some(7), 358_400), (None, 358_500)]);
        // A small file's body: one version whole, its start, or neither.
        let (history, versions, _, _) = versions_of(20 * 1024);
        assert_eq!(history.snapshot(&versions[0]), Snapshot::Whole);
        assert_eq!(history.snapshot(&versions[7]), Snapshot::Whole);
        assert_eq!(history.snapshot(&versions[7][..10_240]), Snapshot::Start);
        let mixed = body(&versions, &[(Some(7), 4096), (Some(6), 20 * 1024)]);
        assert_eq!(history.snapshot(&mixed), Snapshot::Neither);
    }
}
