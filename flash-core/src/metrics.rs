//! Counters and gauges of the engine, in memory shared between processes.
//!
//! A [`MetricsRegion`] is a `memfd` mapped `MAP_SHARED`: a header (magic,
//! version, slot count, slot size) followed by one cache-line-aligned
//! [`Slot`] of `AtomicU64` per worker. A supervisor creates it, hands its
//! descriptor to each worker (which maps it with [`MetricsRegion::open`],
//! validating the header), and at scrape time sums the slots
//! ([`MetricsRegion::totals`]). Each engine updates only its own slot
//! through a [`WorkerMetrics`] handle, with `Relaxed` adds and stores: no
//! locks, no system calls, no allocation, and no cache line shared between
//! workers (slots are 64-byte aligned).
//!
//! Counters only ever grow, also across a worker's restart in the same slot
//! (the new worker keeps adding to them), so sums stay monotone; gauges
//! describe a live process and are zeroed by [`MetricsRegion::clear_gauges`]
//! when the worker owning the slot exits.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};

/// Identifies a metrics region ("FLASHMET").
const MAGIC: u64 = u64::from_be_bytes(*b"FLASHMET");
/// Layout version: bump when [`Slot`] changes.
const VERSION: u64 = 1;
/// Most slots a region may have (a sanity bound on a mapped header).
pub const MAX_SLOTS: usize = 4096;

/// Upper bounds (seconds) of the request duration histogram; a last,
/// implicit bucket is `+Inf`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The same bounds in nanoseconds, for the hot path (no float math).
const DURATION_BUCKETS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// Histogram buckets stored per slot (the finite ones and `+Inf`).
pub const BUCKETS: usize = DURATION_BUCKETS.len() + 1;

/// The request method, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodClass {
    /// `GET`
    Get = 0,
    /// `HEAD`
    Head = 1,
    /// `OPTIONS`
    Options = 2,
    /// Any other method, or a request too malformed to have one.
    Other = 3,
}

/// Label values of [`MethodClass`], in its order.
pub const METHOD_LABELS: [&str; 4] = ["GET", "HEAD", "OPTIONS", "other"];

/// A cache whose hits and misses are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    /// Pathname translation cache (`PathCache`); a hit on an aging entry
    /// (served while a helper revalidates it) counts as a hit.
    Path = 0,
    /// Each file's prepared 200 response head.
    ResponseHead = 1,
    /// Mapped 8 MiB chunks used for `mincore` (`MapCache`).
    MappedFile = 2,
}

/// Label values of [`CacheKind`], in its order.
pub const CACHE_LABELS: [&str; 3] = ["path", "response_head", "mapped_file"];

/// A residency probe, as counted (mirrors `residency::Probe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// `mincore` on a mapping.
    Mincore = 0,
    /// `preadv2(RWF_NOWAIT)`.
    NoWaitRead = 1,
    /// The "loaded recently" model, where no probe can tell.
    Model = 2,
}

/// Label values of [`ProbeKind`], in its order.
pub const PROBE_LABELS: [&str; 3] = ["mincore", "rwf_nowait", "model"];

/// Kinds of helper jobs, in the order counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobClass {
    /// Find, open and stat a path.
    Resolve = 0,
    /// Bring a window of a file into the page cache.
    Prefetch = 1,
}

/// Label values of [`JobClass`], in its order.
pub const JOB_LABELS: [&str; 2] = ["resolve", "prefetch"];

/// One worker's counters and gauges. `repr(C)` and only `AtomicU64`s (any
/// bit pattern, including the zeros of a fresh memfd, is valid), aligned to
/// a cache line so two workers never write the same line.
#[repr(C, align(64))]
pub struct Slot {
    /// Responses by status class: index 0 is 1xx ... 4 is 5xx.
    pub requests_by_class: [AtomicU64; 5],
    /// Requests by [`MethodClass`].
    pub requests_by_method: [AtomicU64; 4],
    /// Bytes written to clients (heads and bodies).
    pub sent_bytes: AtomicU64,
    /// Request durations per bucket (not cumulative; last is `+Inf`).
    pub duration_buckets: [AtomicU64; BUCKETS],
    /// Sum of request durations in nanoseconds.
    pub duration_sum_ns: AtomicU64,
    /// Cache hits by [`CacheKind`].
    pub cache_hits: [AtomicU64; 3],
    /// Cache misses by [`CacheKind`].
    pub cache_misses: [AtomicU64; 3],
    /// Residency answers "resident" by [`ProbeKind`].
    pub probe_resident: [AtomicU64; 3],
    /// Residency answers "not resident" (a prefetch follows) by [`ProbeKind`].
    pub probe_not_resident: [AtomicU64; 3],
    /// Helper jobs submitted (coalesced ones not counted) by [`JobClass`].
    pub helper_jobs: [AtomicU64; 2],
    /// Helpers started again after one died, hung or misbehaved.
    pub helpers_respawned: AtomicU64,
    /// Connections closed to make room for new clients at the limit.
    pub connections_shed: AtomicU64,
    /// Clients cut off for reading too slowly (or not at all).
    pub slow_readers_cut: AtomicU64,
    /// Times the process ran out of descriptors (cached ones were closed).
    pub descriptor_exhaustion: AtomicU64,
    /// Access log lines dropped (written by the access log's owner).
    pub access_log_dropped_lines: AtomicU64,
    // ---- gauges (from here to the end; see `GAUGES_START`) ----
    /// Open client connections.
    pub open_connections: AtomicU64,
    /// Helper jobs waiting for a helper.
    pub helper_jobs_queued: AtomicU64,
    /// Helpers working on a job.
    pub helpers_busy: AtomicU64,
    /// Entries of the path cache.
    pub path_cache_entries: AtomicU64,
    /// Bytes of small files held in memory by the path cache.
    pub contents_cache_bytes: AtomicU64,
    /// File descriptors the path cache keeps open.
    pub cached_descriptors: AtomicU64,
    /// Mappings of the mapped-file cache.
    pub mappings: AtomicU64,
    /// Bytes (whole pages) the mapped-file cache has mapped.
    pub mapped_bytes: AtomicU64,
    /// Pads the slot to whole cache lines (room for new fields).
    _reserved: [AtomicU64; 3],
}

/// Gauges: the fields from `open_connections` to the padding, as word
/// indices, so [`MetricsRegion::clear_gauges`] cannot miss a gauge added
/// among them.
const GAUGES: std::ops::Range<usize> =
    std::mem::offset_of!(Slot, open_connections) / 8..std::mem::offset_of!(Slot, _reserved) / 8;
const SLOT_WORDS: usize = size_of::<Slot>() / 8;

impl Slot {
    /// The slot as a flat array of words (same layout: `repr(C)`, all `AtomicU64`).
    fn words(&self) -> &[AtomicU64; SLOT_WORDS] {
        // SAFETY: `Slot` is `repr(C)` and consists only of `AtomicU64`s
        // (alignment padding included in `size_of` is a multiple of 8 and
        // covered by the compile-time check below), so it has the layout of
        // `[AtomicU64; SLOT_WORDS]`, with at least that alignment.
        unsafe { &*(self as *const Slot).cast::<[AtomicU64; SLOT_WORDS]>() }
    }
}

// Every byte of a slot belongs to an `AtomicU64` field (all fields have
// alignment 8, so the only possible padding is at the end, which
// `_reserved` fills): the word view reads no padding.
const _: () = assert!(
    size_of::<Slot>() == std::mem::offset_of!(Slot, _reserved) + 3 * 8
        && size_of::<Slot>() % 64 == 0
);

/// The sum of all slots at one moment (each value read `Relaxed`, so the
/// values are each exact but not one atomic snapshot). Each field is the
/// sum of the [`Slot`] field of the same name, documented there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Snapshot {
    pub requests_by_class: [u64; 5],
    pub requests_by_method: [u64; 4],
    pub sent_bytes: u64,
    pub duration_buckets: [u64; BUCKETS],
    pub duration_sum_ns: u64,
    pub cache_hits: [u64; 3],
    pub cache_misses: [u64; 3],
    pub probe_resident: [u64; 3],
    pub probe_not_resident: [u64; 3],
    pub helper_jobs: [u64; 2],
    pub helpers_respawned: u64,
    pub connections_shed: u64,
    pub slow_readers_cut: u64,
    pub descriptor_exhaustion: u64,
    pub access_log_dropped_lines: u64,
    pub open_connections: u64,
    pub helper_jobs_queued: u64,
    pub helpers_busy: u64,
    pub path_cache_entries: u64,
    pub contents_cache_bytes: u64,
    pub cached_descriptors: u64,
    pub mappings: u64,
    pub mapped_bytes: u64,
}

impl Snapshot {
    /// Requests counted by the histogram (all buckets).
    pub fn duration_count(&self) -> u64 {
        self.duration_buckets.iter().sum()
    }

    fn add(&mut self, s: &Slot) {
        fn sum<const N: usize>(into: &mut [u64; N], from: &[AtomicU64; N]) {
            for (a, b) in into.iter_mut().zip(from) {
                *a = a.wrapping_add(b.load(Relaxed));
            }
        }
        fn one(into: &mut u64, from: &AtomicU64) {
            *into = into.wrapping_add(from.load(Relaxed));
        }
        sum(&mut self.requests_by_class, &s.requests_by_class);
        sum(&mut self.requests_by_method, &s.requests_by_method);
        one(&mut self.sent_bytes, &s.sent_bytes);
        sum(&mut self.duration_buckets, &s.duration_buckets);
        one(&mut self.duration_sum_ns, &s.duration_sum_ns);
        sum(&mut self.cache_hits, &s.cache_hits);
        sum(&mut self.cache_misses, &s.cache_misses);
        sum(&mut self.probe_resident, &s.probe_resident);
        sum(&mut self.probe_not_resident, &s.probe_not_resident);
        sum(&mut self.helper_jobs, &s.helper_jobs);
        one(&mut self.helpers_respawned, &s.helpers_respawned);
        one(&mut self.connections_shed, &s.connections_shed);
        one(&mut self.slow_readers_cut, &s.slow_readers_cut);
        one(&mut self.descriptor_exhaustion, &s.descriptor_exhaustion);
        one(
            &mut self.access_log_dropped_lines,
            &s.access_log_dropped_lines,
        );
        one(&mut self.open_connections, &s.open_connections);
        one(&mut self.helper_jobs_queued, &s.helper_jobs_queued);
        one(&mut self.helpers_busy, &s.helpers_busy);
        one(&mut self.path_cache_entries, &s.path_cache_entries);
        one(&mut self.contents_cache_bytes, &s.contents_cache_bytes);
        one(&mut self.cached_descriptors, &s.cached_descriptors);
        one(&mut self.mappings, &s.mappings);
        one(&mut self.mapped_bytes, &s.mapped_bytes);
    }
}

/// Writes `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family of one sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A family with one label, one sample per label value.
fn labelled(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) {
    family(out, name, kind, help);
    for (value_of_label, value) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value_of_label}\"}} {value}");
    }
}

fn zip<'a, const N: usize>(labels: &[&'a str; N], values: &[u64; N]) -> [(&'a str, u64); N] {
    std::array::from_fn(|i| (labels[i], values[i]))
}

impl Snapshot {
    /// Appends the snapshot in the Prometheus text exposition format
    /// (version 0.0.4: `# HELP`, `# TYPE`, samples; counters end in
    /// `_total`, units in the names).
    ///
    /// Written by hand rather than with `prometheus-client`: its `text`
    /// encoder writes OpenMetrics 1.0 (counter families named without
    /// `_total` while their samples have it, `# EOF`), not the 0.0.4 format
    /// served as `text/plain; version=0.0.4` (a separate Prometheus-text
    /// encoder only appeared in its latest release); and its metric types
    /// own in-process atomics, whereas these values are sums read from
    /// shared memory at scrape time: a custom `Collector` can emit const
    /// counters and gauges, but has no const histogram, so the histogram
    /// would be hand-written anyway. The format is a few lines per family.
    pub fn write_prometheus(&self, out: &mut String) {
        labelled(
            out,
            "flash_http_requests_total",
            "counter",
            "HTTP responses by status class.",
            "code",
            &zip(
                &["1xx", "2xx", "3xx", "4xx", "5xx"],
                &self.requests_by_class,
            ),
        );
        labelled(
            out,
            "flash_http_requests_by_method_total",
            "counter",
            "HTTP requests answered, by method (other: any other method, or none parsed).",
            "method",
            &zip(&METHOD_LABELS, &self.requests_by_method),
        );
        single(
            out,
            "flash_http_sent_bytes_total",
            "counter",
            "Bytes written to clients (response heads and bodies).",
            self.sent_bytes,
        );
        let name = "flash_http_request_duration_seconds";
        family(
            out,
            name,
            "histogram",
            "Time from the first byte of a request to the last byte of its response.",
        );
        let mut cumulative = 0;
        for (i, count) in self.duration_buckets.iter().enumerate() {
            cumulative += count;
            match DURATION_BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(out, "{name}_sum {}", self.duration_sum_ns as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cumulative}");
        single(
            out,
            "flash_open_connections",
            "gauge",
            "Client connections open.",
            self.open_connections,
        );
        single(
            out,
            "flash_connections_shed_total",
            "counter",
            "Connections closed to make room for new clients at the connection limit.",
            self.connections_shed,
        );
        single(
            out,
            "flash_slow_readers_cut_total",
            "counter",
            "Clients cut off for reading their response too slowly.",
            self.slow_readers_cut,
        );
        single(
            out,
            "flash_descriptor_exhaustion_total",
            "counter",
            "Times the process ran out of file descriptors (cached ones were closed).",
            self.descriptor_exhaustion,
        );
        single(
            out,
            "flash_helper_jobs_queued",
            "gauge",
            "Disk jobs waiting for a helper process.",
            self.helper_jobs_queued,
        );
        single(
            out,
            "flash_helpers_busy",
            "gauge",
            "Helper processes working on a job.",
            self.helpers_busy,
        );
        labelled(
            out,
            "flash_helper_jobs_total",
            "counter",
            "Disk jobs submitted to helpers (identical jobs in flight are coalesced and counted once).",
            "kind",
            &zip(&JOB_LABELS, &self.helper_jobs),
        );
        single(
            out,
            "flash_helpers_respawned_total",
            "counter",
            "Helper processes started again after one died, hung or misbehaved.",
            self.helpers_respawned,
        );
        labelled(
            out,
            "flash_cache_hits_total",
            "counter",
            "Cache lookups answered from the cache.",
            "cache",
            &zip(&CACHE_LABELS, &self.cache_hits),
        );
        labelled(
            out,
            "flash_cache_misses_total",
            "counter",
            "Cache lookups that missed.",
            "cache",
            &zip(&CACHE_LABELS, &self.cache_misses),
        );
        let name = "flash_residency_probes_total";
        family(
            out,
            name,
            "counter",
            "Residency checks of a file window before sending it, by probe and answer.",
        );
        for (i, probe) in PROBE_LABELS.iter().enumerate() {
            for (result, values) in [
                ("resident", &self.probe_resident),
                ("not_resident", &self.probe_not_resident),
            ] {
                let _ = writeln!(
                    out,
                    "{name}{{probe=\"{probe}\",result=\"{result}\"}} {}",
                    values[i]
                );
            }
        }
        single(
            out,
            "flash_path_cache_entries",
            "gauge",
            "Entries of the pathname translation cache.",
            self.path_cache_entries,
        );
        single(
            out,
            "flash_cached_contents_bytes",
            "gauge",
            "Bytes of small files held in memory by the path cache.",
            self.contents_cache_bytes,
        );
        single(
            out,
            "flash_cached_descriptors",
            "gauge",
            "File descriptors held open by the path cache.",
            self.cached_descriptors,
        );
        single(
            out,
            "flash_mappings",
            "gauge",
            "Mappings held by the mapped-file cache.",
            self.mappings,
        );
        single(
            out,
            "flash_mapped_bytes",
            "gauge",
            "Bytes (whole pages) mapped by the mapped-file cache.",
            self.mapped_bytes,
        );
        single(
            out,
            "flash_access_log_dropped_lines_total",
            "counter",
            "Access log lines dropped because the log could not keep up.",
            self.access_log_dropped_lines,
        );
    }
}

/// The region's first 64 bytes.
#[repr(C, align(64))]
struct Header {
    magic: u64,
    version: u64,
    slots: u64,
    slot_size: u64,
}

const HEADER_SIZE: usize = size_of::<Header>();

/// Why a descriptor cannot be used as a metrics region.
#[derive(Debug)]
pub enum RegionError {
    /// A system call failed (memfd_create, ftruncate, fstat, mmap).
    Io(io::Error),
    /// The descriptor's size does not fit a header, or not its slot count.
    BadSize { size: u64 },
    /// Not a metrics region, or one of another layout version.
    BadHeader,
    /// Zero slots, or more than [`MAX_SLOTS`].
    BadSlotCount(usize),
}

impl std::fmt::Display for RegionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionError::Io(e) => write!(f, "metrics region: {e}"),
            RegionError::BadSize { size } => {
                write!(f, "metrics region: size {size} does not match its header")
            }
            RegionError::BadHeader => {
                write!(f, "metrics region: bad magic or layout version")
            }
            RegionError::BadSlotCount(n) => {
                write!(f, "metrics region: {n} slots (1 to {MAX_SLOTS} allowed)")
            }
        }
    }
}

impl std::error::Error for RegionError {}

impl From<io::Error> for RegionError {
    fn from(e: io::Error) -> RegionError {
        RegionError::Io(e)
    }
}

impl From<RegionError> for io::Error {
    fn from(e: RegionError) -> io::Error {
        match e {
            RegionError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// A shared-memory array of [`Slot`]s (see the module documentation).
pub struct MetricsRegion {
    /// The memfd (kept so it can be handed to workers).
    fd: OwnedFd,
    map: MmapRaw,
    slots: usize,
}

fn region_size(slots: usize) -> usize {
    HEADER_SIZE + slots * size_of::<Slot>()
}

/// `memfd_create` with close-on-exec (a worker gets the descriptor handed
/// down explicitly, not by accident in every child) and sealing allowed.
fn memfd(name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string; the call has no
    // other memory effects.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl MetricsRegion {
    /// A new region of `slots` zeroed slots (1 ..= [`MAX_SLOTS`]).
    pub fn create(slots: usize) -> Result<MetricsRegion, RegionError> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(RegionError::BadSlotCount(slots));
        }
        let fd = memfd(c"flash-metrics")?;
        let file = File::from(fd);
        // Pages of a memfd read as zeros: every counter starts at 0.
        file.set_len(region_size(slots) as u64)?;
        // Sealed at its size: a worker (which gets the descriptor) cannot
        // shrink it under the supervisor's mapping (SIGBUS there).
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on a descriptor owned by `file`; F_ADD_SEALS takes an int.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        let fd = OwnedFd::from(file);
        let map = MmapOptions::new()
            .len(region_size(slots))
            .map_raw(fd.as_raw_fd())?;
        let region = MetricsRegion { fd, map, slots };
        let header = region.header_words();
        header[1].store(VERSION, Relaxed);
        header[2].store(slots as u64, Relaxed);
        header[3].store(size_of::<Slot>() as u64, Relaxed);
        // The magic last: a region is recognisable only once complete.
        header[0].store(MAGIC, Relaxed);
        Ok(region)
    }

    /// Maps a region created by [`MetricsRegion::create`] (e.g. in another
    /// process, from an inherited descriptor), after checking its size,
    /// magic, version and slot layout.
    pub fn open(fd: OwnedFd) -> Result<MetricsRegion, RegionError> {
        let file = File::from(fd);
        let size = file.metadata()?.len();
        if size < HEADER_SIZE as u64 || size > region_size(MAX_SLOTS) as u64 {
            return Err(RegionError::BadSize { size });
        }
        let fd = OwnedFd::from(file);
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw(fd.as_raw_fd())?;
        let mut region = MetricsRegion { fd, map, slots: 0 };
        let header = region.header_words();
        let [magic, version, slots, slot_size] = [0, 1, 2, 3].map(|i| header[i].load(Relaxed));
        if magic != MAGIC || version != VERSION || slot_size != size_of::<Slot>() as u64 {
            return Err(RegionError::BadHeader);
        }
        let slots = usize::try_from(slots).unwrap_or(usize::MAX);
        if slots == 0 || slots > MAX_SLOTS {
            return Err(RegionError::BadSlotCount(slots));
        }
        if region_size(slots) as u64 != size {
            return Err(RegionError::BadSize { size });
        }
        region.slots = slots;
        Ok(region)
    }

    /// The memfd, to be inherited by a worker (which calls [`MetricsRegion::open`]
    /// on it). It is close-on-exec: the spawner must pass it explicitly.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots
    }

    /// Whether the region has no slots (never true for a valid region).
    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }

    fn header_words(&self) -> &[AtomicU64; 4] {
        // SAFETY: the mapping is page-aligned and at least HEADER_SIZE
        // (32 used) bytes long (checked by `create` and `open`); any bit
        // pattern is a valid AtomicU64, and all access is atomic, so
        // other processes writing the shared page is no data race.
        unsafe { &*self.map.as_ptr().cast::<[AtomicU64; 4]>() }
    }

    fn slot_ref(&self, i: usize) -> &Slot {
        assert!(i < self.slots, "metrics slot {i} out of {}", self.slots);
        // SAFETY: slot `i` lies inside the mapping (i < slots, and the
        // mapping is region_size(slots) long); it starts at a multiple of
        // 64 from a page-aligned base, so it is aligned for `Slot`; `Slot`
        // is all `AtomicU64`s, valid for any bit pattern and safe to share
        // with other processes. The reference lives no longer than `self`,
        // which owns the mapping.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(HEADER_SIZE + i * size_of::<Slot>())
                .cast::<Slot>()
        }
    }

    /// The handle an engine updates for slot `i` (panics if `i` is out of range).
    pub fn slot(self: &Arc<Self>, i: usize) -> WorkerMetrics {
        let slot = NonNull::from(self.slot_ref(i));
        WorkerMetrics {
            _region: Arc::clone(self),
            slot,
        }
    }

    /// The sum of all slots.
    pub fn totals(&self) -> Snapshot {
        let mut total = Snapshot::default();
        for i in 0..self.slots {
            total.add(self.slot_ref(i));
        }
        total
    }

    /// Zeroes the gauges of slot `i` (its worker exited: it holds no
    /// connections, caches or helpers any more); its counters stay, so sums
    /// never go down when a restarted worker reuses the slot.
    pub fn clear_gauges(&self, i: usize) {
        for word in &self.slot_ref(i).words()[GAUGES] {
            word.store(0, Relaxed);
        }
    }
}

/// An engine's handle on its slot: cheap to clone, updated with `Relaxed`
/// atomics. Keeps the region mapped while it lives.
#[derive(Clone)]
pub struct WorkerMetrics {
    _region: Arc<MetricsRegion>,
    slot: NonNull<Slot>,
}

// SAFETY: the pointer targets a slot of the mapping `_region` keeps alive;
// a `Slot` is only atomics, so it may be used from any thread.
unsafe impl Send for WorkerMetrics {}
// SAFETY: as above; shared access is all through atomics.
unsafe impl Sync for WorkerMetrics {}

impl Deref for WorkerMetrics {
    type Target = Slot;

    fn deref(&self) -> &Slot {
        // SAFETY: `slot` points into the mapping owned by `_region`, which
        // this handle keeps alive; see `MetricsRegion::slot_ref`.
        unsafe { self.slot.as_ref() }
    }
}

impl WorkerMetrics {
    /// A handle on a private one-slot region: what an engine counts into
    /// when nobody collects its metrics.
    pub fn private() -> Result<WorkerMetrics, RegionError> {
        Ok(Arc::new(MetricsRegion::create(1)?).slot(0))
    }

    /// One response finished (or was abandoned): its status, method and
    /// duration (from the first byte of the request to the last byte of the response).
    pub fn request_done(&self, status: u16, method: MethodClass, duration: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests_by_class[class].fetch_add(1, Relaxed);
        self.requests_by_method[method as usize].fetch_add(1, Relaxed);
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = DURATION_BUCKETS_NS.partition_point(|&bound| bound < ns);
        self.duration_buckets[bucket].fetch_add(1, Relaxed);
        self.duration_sum_ns.fetch_add(ns, Relaxed);
    }

    /// Bytes written to a client.
    #[inline]
    pub fn add_sent_bytes(&self, n: u64) {
        self.sent_bytes.fetch_add(n, Relaxed);
    }

    /// A cache lookup: hit or miss.
    #[inline]
    pub fn cache_lookup(&self, cache: CacheKind, hit: bool) {
        let counters = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counters[cache as usize].fetch_add(1, Relaxed);
    }

    /// A residency probe's answer for a window.
    #[inline]
    pub fn probe(&self, probe: ProbeKind, resident: bool) {
        let counters = if resident {
            &self.probe_resident
        } else {
            &self.probe_not_resident
        };
        counters[probe as usize].fetch_add(1, Relaxed);
    }

    /// Adds `n` access log lines dropped (for the access log's writer: call
    /// it with each batch dropped, not with a running total).
    pub fn add_access_log_dropped_lines(&self, n: u64) {
        self.access_log_dropped_lines.fetch_add(n, Relaxed);
    }

    /// Increments a counter field.
    #[inline]
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Sets a gauge field.
    #[inline]
    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_slots_are_summed_and_gauges_cleared() {
        let region = Arc::new(MetricsRegion::create(2).unwrap());
        let (a, b) = (region.slot(0), region.slot(1));
        a.request_done(200, MethodClass::Get, Duration::from_micros(100));
        b.request_done(404, MethodClass::Head, Duration::from_secs(20));
        b.request_done(304, MethodClass::Get, Duration::from_millis(3));
        a.add_sent_bytes(10);
        b.add_sent_bytes(32);
        WorkerMetrics::set(&a.open_connections, 3);
        WorkerMetrics::set(&b.open_connections, 4);
        a.cache_lookup(CacheKind::Path, true);
        b.cache_lookup(CacheKind::Path, false);
        let t = region.totals();
        assert_eq!(t.requests_by_class, [0, 1, 1, 1, 0]);
        assert_eq!(t.requests_by_method, [2, 1, 0, 0]);
        assert_eq!(t.sent_bytes, 42);
        assert_eq!(t.open_connections, 7);
        assert_eq!(t.duration_count(), 3);
        assert_eq!(t.duration_buckets[0], 1, "100 µs in the first bucket");
        assert_eq!(t.duration_buckets[3], 1, "3 ms in the 5 ms bucket");
        assert_eq!(t.duration_buckets[BUCKETS - 1], 1, "20 s in +Inf");
        assert_eq!((t.cache_hits[0], t.cache_misses[0]), (1, 1));

        // Worker b exits; a restarted worker reuses its slot.
        region.clear_gauges(1);
        let t = region.totals();
        assert_eq!(t.open_connections, 3, "b's gauge is gone");
        assert_eq!(t.sent_bytes, 42, "b's counters stay");
        assert_eq!(t.requests_by_class, [0, 1, 1, 1, 0]);
        region.slot(1).add_sent_bytes(1);
        assert_eq!(region.totals().sent_bytes, 43);
    }

    #[test]
    fn a_worker_maps_the_same_counters() {
        let region = Arc::new(MetricsRegion::create(3).unwrap());
        let fd = region.fd().try_clone_to_owned().unwrap();
        let seen = Arc::new(MetricsRegion::open(fd).unwrap());
        assert_eq!(seen.len(), 3);
        seen.slot(2).add_sent_bytes(5);
        WorkerMetrics::inc(&seen.slot(2).helpers_respawned);
        assert_eq!(region.totals().sent_bytes, 5);
        assert_eq!(region.totals().helpers_respawned, 1);
    }

    #[test]
    fn bad_descriptors_are_rejected() {
        // Not a region: a memfd of the right size but no header.
        let fd = memfd(c"not-metrics").unwrap();
        let file = File::from(fd);
        file.set_len(region_size(1) as u64).unwrap();
        assert!(matches!(
            MetricsRegion::open(file.into()),
            Err(RegionError::BadHeader)
        ));
        // Too small for a header.
        let file = File::from(memfd(c"tiny").unwrap());
        file.set_len(8).unwrap();
        assert!(matches!(
            MetricsRegion::open(file.into()),
            Err(RegionError::BadSize { .. })
        ));
        // A region is sealed at its size: no worker can shrink it under the
        // supervisor's mapping (or grow it).
        let region = MetricsRegion::create(2).unwrap();
        let sealed = File::from(region.fd().try_clone_to_owned().unwrap());
        assert!(sealed.set_len(8).is_err(), "shrinking a region must fail");
        assert!(sealed.set_len(region_size(2) as u64 + 64).is_err());
        // A valid header whose size does not match its slot count (a copy
        // of the region, one cache line longer).
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &sealed, &mut bytes).unwrap();
        let copy = File::from(memfd(c"copy").unwrap());
        std::io::Write::write_all(&mut &copy, &bytes).unwrap();
        copy.set_len(region_size(2) as u64 + 64).unwrap();
        assert!(matches!(
            MetricsRegion::open(copy.into()),
            Err(RegionError::BadSize { .. })
        ));
        // Not a memfd at all: /dev/null has size 0.
        let null = File::open("/dev/null").unwrap();
        assert!(MetricsRegion::open(null.into()).is_err());
        assert!(matches!(
            MetricsRegion::create(0),
            Err(RegionError::BadSlotCount(0))
        ));
    }

    #[test]
    fn exposition_is_cumulative_and_typed() {
        let region = Arc::new(MetricsRegion::create(1).unwrap());
        let m = region.slot(0);
        m.request_done(200, MethodClass::Get, Duration::from_micros(100));
        m.request_done(200, MethodClass::Get, Duration::from_millis(700));
        let mut text = String::new();
        region.totals().write_prometheus(&mut text);
        assert!(text.contains("flash_http_requests_total{code=\"2xx\"} 2\n"));
        assert!(text.contains("flash_http_request_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("flash_http_request_duration_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(text.contains("flash_http_request_duration_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("flash_http_request_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("flash_http_request_duration_seconds_count 2\n"));
        assert!(text.contains("flash_http_request_duration_seconds_sum 0.7001\n"));
        assert!(text.contains("# TYPE flash_open_connections gauge\n"));
    }

    #[test]
    fn slots_do_not_share_cache_lines() {
        assert_eq!(size_of::<Slot>() % 64, 0);
        assert_eq!(std::mem::align_of::<Slot>(), 64);
        let region = Arc::new(MetricsRegion::create(2).unwrap());
        let (a, b) = (region.slot(0), region.slot(1));
        let (pa, pb) = (&*a as *const Slot as usize, &*b as *const Slot as usize);
        assert_eq!(pa % 64, 0);
        assert_eq!(pb - pa, size_of::<Slot>());
    }
}
