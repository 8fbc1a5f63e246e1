//! The event loop: one thread, one `polling::Poller`, every descriptor
//! non-blocking. Listeners, client connections, helper sockets and the
//! shutdown pipe are all just event sources; a helper's reply wakes the loop
//! exactly like a client's bytes do.

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use flash_http::{content_type, DateCache};
use log::{debug, info, warn};
use polling::{Event, Events, Poller};
use slab::Slab;

use crate::access_log::{AccessLog, AccessLogHandle, EXIT_FLUSH_TIMEOUT};
use crate::cache::{Cached, MapCache, PathCache, PathHit, PathLimits};
use crate::config::{Arch, Config};
use crate::connection::{Connection, Flow, Lookup, SlowReader};
use crate::file::OpenFile;
use crate::fs::{FsError, Resolution, Resolver};
use crate::metrics::{CacheKind, ProbeKind, WorkerMetrics};
use crate::pool::{Completion, Found, FoundFile, HelperPool, JobKind, Outcome, PoolConfig, Waiter};
use crate::reactor;
use crate::residency::{self, Probe, Residency};
use crate::sys;
use crate::watch::{self, Watches};

/// Poller keys: fixed ranges per kind of source.
const SHUTDOWN_KEY: usize = 0;
/// The inotify instance reporting changes of cached files.
const WATCH_KEY: usize = 1;
const LISTENER_BASE: usize = 2;
const HELPER_BASE: usize = 64;
/// The most listeners one engine serves.
pub const MAX_LISTENERS: usize = HELPER_BASE - LISTENER_BASE;
const CONN_BASE: usize = 1024;
/// At shutdown, how long an idle connection may still bring a request
/// (answered with `Connection: close`) before it is sent its FIN.
const STOP_IDLE_GRACE: Duration = Duration::from_millis(500);
/// At shutdown, how long each connection that was sent its FIN (idle ones,
/// finished responses) gets to close its side before the process exits and
/// closes it itself.
const EXIT_LINGER: Duration = Duration::from_millis(500);
/// How often deadlines are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Connections accepted per listener event, so one busy listener cannot starve the rest.
const ACCEPT_BATCH: usize = 64;
/// At shutdown, accept batches taken from each listener's queue (at most
/// `DRAIN_BATCHES * ACCEPT_BATCH` connections, the most a backlog of
/// somaxconn 4096 holds).
const DRAIN_BATCHES: usize = 64;
/// Connections that may yield in one iteration before the lists of them
/// grow: allocated up front, so the first yield (which comes whenever a
/// client's burst outlasts its step budget) allocates nothing.
const YIELD_CAPACITY: usize = 256;
/// Pause after the process ran out of descriptors (EMFILE) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Idle connections keep their buffers this long.
const KEEP_BUFFERS: Duration = Duration::from_secs(1);
/// Conditions that could be logged per event (running out of descriptors)
/// are logged at most this often.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Descriptors kept free for what the server cannot do without: stdio, the
/// poller (3), the shutdown socket, the inotify instance, a helper's start
/// (socketpair, exec status pipe, /dev/null), with room to spare.
const RESERVED_DESCRIPTORS: usize = 24;
/// Share of the remaining descriptors the path cache may keep open.
const CACHE_DESCRIPTOR_SHARE: usize = 4;
/// Unsent bytes the kernel may hold per connection (inherited from the
/// listeners): beyond it a write waits, so a response larger than this is
/// judged by the minimum send rate, and a client that stops reading pins at
/// most this much unsent data (plus what is in flight), not the up to 4 MB
/// the send buffer would grow to.
const NOTSENT_LOWAT: u32 = 128 * 1024;
/// Share of `vm.max_map_count` the mapped-file cache may use, and its cap.
const MAP_COUNT_SHARE: usize = 16;
const MAX_MAPPINGS: usize = 1024;

/// Counts events that could each be logged (running out of descriptors,
/// shedding connections, cutting off slow readers) so one line sums them,
/// written at most once per `LOG_INTERVAL`.
struct LogThrottle {
    pending: u64,
    next: Instant,
}

impl LogThrottle {
    fn new(now: Instant) -> LogThrottle {
        LogThrottle {
            pending: 0,
            next: now,
        }
    }

    /// Counts one event; `Some(events since the last line)` when a line may
    /// be written now.
    fn count(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        if now < self.next {
            return None;
        }
        self.next = now + LOG_INTERVAL;
        Some(mem::take(&mut self.pending))
    }
}

/// What resolving a path found (from a helper, or inline).
pub enum Resolved {
    File(FoundFile),
    /// A directory named without its trailing slash.
    Redirect,
}

fn is_out_of_descriptors(errno: i32) -> bool {
    errno == libc::EMFILE || errno == libc::ENFILE
}

/// Where disk work happens.
// One per server: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    /// Inline in the event loop (SPED).
    Inline { resolver: Resolver },
    /// In helper processes (AMPED), with residency checks before sending.
    Helpers {
        pool: HelperPool,
        residency: Residency,
    },
}

/// Everything a connection may touch besides itself.
pub struct Ctx {
    pub config: Config,
    pub poller: Poller,
    pub date: DateCache,
    /// Time of the current loop iteration.
    pub now: Instant,
    pub wall: SystemTime,
    pub backend: Backend,
    /// Finished helper jobs not yet delivered to their connections.
    pub done: Vec<Completion>,
    pub shutting_down: bool,
    /// Pathname translation cache (None when switched off).
    pub paths: Option<PathCache>,
    pub maps: MapCache,
    /// Loop iterations so far (memoises answers within one iteration).
    pub tick: u64,
    /// Times the process ran out of descriptors.
    shed_log: LogThrottle,
    /// Clients cut off for reading too slowly.
    slow_reader_log: LogThrottle,
    /// The access log, if one is kept (without it no log work is done).
    pub access_log: Option<AccessLog>,
    /// This engine's counters and gauges (a private region unless
    /// [`Server::set_metrics`] gave it a slot of a shared one).
    pub metrics: WorkerMetrics,
    /// Mapped-file cache lookups already added to `metrics` (hits, misses).
    published_map_lookups: (u64, u64),
    /// Access log lines dropped already added to `metrics`.
    published_log_drops: u64,
    /// Connections to PROXY listeners closed for a missing or bad header.
    proxy_log: LogThrottle,
}

impl Ctx {
    /// Finds the file for a request: `Some` when the answer is known now
    /// (a path cache hit, or inline resolution), `None` when a helper will
    /// answer later.
    pub fn lookup(&mut self, me: Waiter, path: &str, ends_with_slash: bool) -> Option<Lookup> {
        let hit = match &mut self.paths {
            Some(paths) => paths.get(path, ends_with_slash, self.now),
            None => PathHit::Miss,
        };
        if self.paths.is_some() {
            self.metrics
                .cache_lookup(CacheKind::Path, !matches!(hit, PathHit::Miss));
        }
        match (hit, &mut self.backend) {
            (PathHit::Fresh(cached), _) => Some(cached.into()),
            (PathHit::Aging(cached), Backend::Helpers { pool, .. }) => {
                // Serve from the cache while a helper revalidates the entry.
                let job = JobKind::Resolve {
                    path: path.to_owned(),
                    ends_with_slash,
                };
                if pool
                    .submit(job, Waiter::PATH_CACHE, &self.poller, &mut self.done)
                    .is_err()
                {
                    if let Some(paths) = &mut self.paths {
                        paths.revalidation_failed(path, ends_with_slash);
                    }
                }
                Some(cached.into())
            }
            (_, Backend::Inline { .. }) => {
                let mut result = self.resolve_inline(path, ends_with_slash);
                if matches!(result, Err(FsError::Io { errno }) if is_out_of_descriptors(errno)) {
                    // Make room and try once more.
                    self.shed_descriptors();
                    result = self.resolve_inline(path, ends_with_slash);
                }
                Some(self.record(path, ends_with_slash, result, self.now))
            }
            (PathHit::Miss, Backend::Helpers { pool, .. }) => {
                let job = JobKind::Resolve {
                    path: path.to_owned(),
                    ends_with_slash,
                };
                match pool.submit(job, me, &self.poller, &mut self.done) {
                    Ok(()) => None,
                    Err(_) => Some(Lookup::Unavailable),
                }
            }
        }
    }

    /// SPED: what a helper does, done here (blocking on the disk by design).
    fn resolve_inline(&mut self, path: &str, ends_with_slash: bool) -> Result<Resolved, FsError> {
        let Backend::Inline { resolver } = &self.backend else {
            return Err(FsError::Io {
                errno: libc::EINVAL,
            });
        };
        match resolver.resolve(path, ends_with_slash)? {
            Resolution::Redirect => Ok(Resolved::Redirect),
            Resolution::File { file, meta, index } => {
                let inotify = self
                    .paths
                    .as_ref()
                    .and_then(PathCache::watches)
                    .map(Watches::fd);
                let settled = watch::settle_watched(file.as_fd(), meta, inotify)?;
                let found = match settled.contents {
                    Some(bytes) => Found::Contents(bytes),
                    None => Found::Descriptor(file),
                };
                Ok(Resolved::File(FoundFile {
                    found,
                    meta: settled.meta,
                    index,
                    watch: settled.watch,
                }))
            }
        }
    }

    /// Turns a resolution into a lookup result, and records it in the path
    /// cache. A file that did not change keeps its `OpenFile` (and so its
    /// cached head); the new descriptor or copy is then simply dropped.
    /// `asked_at`: when the resolution was asked for; if change events were
    /// lost since, the answer is served but not cached.
    pub fn record(
        &mut self,
        path: &str,
        ends_with_slash: bool,
        result: Result<Resolved, FsError>,
        asked_at: Instant,
    ) -> Lookup {
        match result {
            Ok(Resolved::File(FoundFile {
                found,
                meta,
                index,
                watch,
            })) => {
                let content_type =
                    match index.and_then(|i| self.config.index_names.get(usize::from(i))) {
                        Some(name) => content_type(name),
                        None => content_type(path),
                    };
                let unchanged = self
                    .paths
                    .as_ref()
                    .and_then(|cache| cache.same_file(path, ends_with_slash, &meta));
                let file = match (unchanged, found) {
                    // A small file's fresh copy always wins: metadata can
                    // look unchanged across a same-size rewrite within one
                    // timestamp tick.
                    (_, Found::Contents(bytes)) => {
                        Rc::new(OpenFile::in_memory(bytes.into_boxed_slice(), meta))
                    }
                    (Some(unchanged), Found::Descriptor(_)) => unchanged,
                    (None, Found::Descriptor(fd)) => {
                        let probe = match &self.backend {
                            Backend::Helpers { residency, .. } => residency.probe_for(&meta),
                            Backend::Inline { .. } => Probe::Mincore,
                        };
                        Rc::new(OpenFile::with_descriptor(fd, meta, probe))
                    }
                };
                if let Some(cache) = &mut self.paths {
                    if cache.changes_lost_since(asked_at) {
                        cache.refuse(path, ends_with_slash, watch);
                    } else {
                        cache.insert(
                            path,
                            ends_with_slash,
                            Cached::File {
                                file: Rc::clone(&file),
                                content_type,
                            },
                            self.now,
                            watch,
                        );
                    }
                }
                Lookup::File { file, content_type }
            }
            Ok(Resolved::Redirect) => {
                if let Some(cache) = &mut self.paths {
                    cache.insert(path, ends_with_slash, Cached::Redirect, self.now, None);
                }
                Lookup::Redirect
            }
            Err(error) => {
                if let Some(cache) = &mut self.paths {
                    cache.remove(path, ends_with_slash);
                }
                Lookup::Failed(error)
            }
        }
    }

    /// The process ran out of descriptors: close the cached ones (they can
    /// be opened again), logged at most once per interval.
    pub fn shed_descriptors(&mut self) {
        WorkerMetrics::inc(&self.metrics.descriptor_exhaustion);
        let closed = self.paths.as_mut().map_or(0, PathCache::shed_descriptors);
        if let Some(times) = self.shed_log.count(self.now) {
            warn!("out of descriptors ({times} time(s) since the last report): closed {closed} cached file(s); accepting pauses briefly");
        }
    }

    /// A client was cut off for not reading its response (fast enough),
    /// logged at most once per interval.
    pub fn note_slow_reader(&mut self, why: SlowReader) {
        WorkerMetrics::inc(&self.metrics.slow_readers_cut);
        if let Some(count) = self.slow_reader_log.count(self.now) {
            let (rate, window) = (self.config.min_send_rate, self.config.send_rate_window);
            warn!("closed {count} slow reader(s) (latest: {why:?}; minimum {rate} bytes/s over {window:?}, send timeout {:?})", self.config.send_timeout);
        }
    }

    /// A connection to a PROXY listener was closed without a valid header
    /// (logged at most once per interval: a misconfigured proxy would
    /// otherwise log every connection).
    pub fn note_bad_proxy_header(&mut self, peer: SocketAddr, why: &str) {
        debug!("closing a connection from {peer} on a PROXY listener: {why}");
        if let Some(count) = self.proxy_log.count(self.now) {
            warn!("closed {count} connection(s) on PROXY listeners without a valid PROXY header (latest from {peer}: {why})");
        }
    }

    /// Whether bytes must be known resident before they are sent.
    pub fn checks_residency(&self) -> bool {
        matches!(self.backend, Backend::Helpers { .. })
    }

    /// How far from `start` the bytes are known resident. Asked once per
    /// file window per loop iteration: the many requests for one hot file
    /// that an iteration serves share one `mincore`.
    pub fn resident_until(&mut self, file: &OpenFile, start: u64, end: u64) -> u64 {
        let Backend::Helpers { residency, .. } = &mut self.backend else {
            return end;
        };
        if let Some(until) = file.memo_resident_until(self.tick, start) {
            return until.min(end);
        }
        let until = residency.resident_until(file, &mut self.maps, start, end);
        if file.holds_descriptor() {
            let probe = match file.probe.get() {
                Probe::Mincore => ProbeKind::Mincore,
                Probe::NoWaitRead => ProbeKind::NoWaitRead,
                Probe::LoadedRecently => ProbeKind::Model,
            };
            self.metrics.probe(probe, until > start);
        }
        if until > start {
            file.memo_residency(self.tick, start, until);
        }
        until
    }

    /// Asks a helper to load the window holding `offset`; false if refused.
    pub fn prefetch(&mut self, me: Waiter, file: &Rc<OpenFile>, offset: u64) -> bool {
        let Backend::Helpers { pool, .. } = &mut self.backend else {
            return false;
        };
        if !file.holds_descriptor() {
            return false;
        }
        let start = residency::window_start(offset);
        let len = residency::WINDOW.min(file.len() - start);
        let job = JobKind::Prefetch {
            file: Rc::clone(file),
            offset: start,
            len,
        };
        pool.submit(job, me, &self.poller, &mut self.done).is_ok()
    }
}

pub struct Server {
    conns: Slab<Connection>,
    ctx: Ctx,
    listeners: Vec<TcpListener>,
    shutdown: Option<OwnedFd>,
    next_serial: u64,
    /// `--max-connections`, or fewer when descriptors do not allow more.
    max_connections: usize,
    /// Connections closed to make room at the limit.
    room_log: LogThrottle,
    /// Connections to PROXY listeners refused for an untrusted peer.
    untrusted_log: LogThrottle,
    accept_paused: bool,
    accept_resume_at: Option<Instant>,
    /// Connections that used their step budget, driven again next iteration
    /// (two buffers swapped, so no allocation per iteration).
    yielded: Vec<Waiter>,
    yielded_spare: Vec<Waiter>,
    /// Called once the engine can serve (see `notify_when_serving`).
    on_serving: Option<Box<dyn FnOnce()>>,
}

impl Server {
    /// Sets up the loop on already-bound listeners. `shutdown` becomes
    /// readable when the server should stop (e.g. a signal pipe).
    pub fn new(
        config: Config,
        listeners: Vec<TcpListener>,
        shutdown: Option<OwnedFd>,
    ) -> io::Result<Server> {
        let config = config.with_timeouts_capped();
        if listeners.len() > HELPER_BASE - LISTENER_BASE || config.helpers > CONN_BASE - HELPER_BASE
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many listeners or helpers",
            ));
        }
        let poller = Poller::new()?;
        for (i, listener) in listeners.iter().enumerate() {
            listener.set_nonblocking(true)?;
            if let Err(e) = sys::set_notsent_lowat(listener.as_fd(), NOTSENT_LOWAT) {
                warn!(
                    "cannot set TCP_NOTSENT_LOWAT ({e}): slow readers may hold more kernel memory"
                );
            }
            reactor::register_listener(&poller, listener.as_fd(), LISTENER_BASE + i)?;
        }
        if let Some(fd) = &shutdown {
            reactor::register_level(&poller, fd.as_fd(), Event::readable(SHUTDOWN_KEY))?;
        }
        // Descriptors: a reserve for what the server cannot do without, a
        // share of the rest for the path cache, the remainder for clients.
        let helpers = match config.arch {
            Arch::Amped => config.helpers,
            Arch::Sped => 0,
        };
        let reserve = RESERVED_DESCRIPTORS + listeners.len() + 2 * helpers;
        let usable = sys::descriptor_limit().saturating_sub(reserve).max(2);
        let cache_descriptors = (usable / CACHE_DESCRIPTOR_SHARE).min(config.path_cache_entries);
        let max_connections = config
            .max_connections
            .min(usable - cache_descriptors)
            .max(1);
        if max_connections < config.max_connections {
            info!(
                "descriptor limit {}: serving at most {max_connections} connections at once",
                sys::descriptor_limit()
            );
        }
        let max_mappings = (sys::max_map_count() / MAP_COUNT_SHARE).clamp(16, MAX_MAPPINGS);

        let paths = (config.path_cache_entries > 0).then(|| {
            let watches = Watches::new()
                .inspect_err(|e| {
                    warn!("no change notification (inotify: {e}); relying on --path-cache-ttl")
                })
                .ok();
            PathCache::new(
                PathLimits {
                    entries: config.path_cache_entries,
                    descriptors: cache_descriptors,
                    memory: config.map_cache_bytes,
                },
                config.path_freshness,
                watches,
            )
        });
        if let Some(watches) = paths.as_ref().and_then(PathCache::watches) {
            reactor::register_level(&poller, watches.fd(), Event::readable(WATCH_KEY))?;
        }
        let backend = match config.arch {
            Arch::Sped => Backend::Inline {
                resolver: Resolver::open(&config.root, config.symlinks)?
                    .with_index_names(config.index_names.clone()),
            },
            Arch::Amped => {
                let pool_config = PoolConfig {
                    helper_path: config.helper_path.clone(),
                    root: config.root.clone(),
                    symlinks: config.symlinks,
                    index_names: config.index_names.clone(),
                    helpers: config.helpers,
                    max_queue: config.helper_queue,
                    timeout: config.helper_timeout,
                };
                let watch_fd = paths
                    .as_ref()
                    .and_then(PathCache::watches)
                    .map(|w| w.fd().try_clone_to_owned())
                    .transpose()?;
                let pool = HelperPool::start(pool_config, &poller, HELPER_BASE, watch_fd)?;
                Backend::Helpers {
                    pool,
                    residency: Residency::new(config.residency_budget),
                }
            }
        };
        let map_cache_bytes = config.map_cache_bytes;
        let now = Instant::now();
        let metrics = WorkerMetrics::private()?;
        let mut server = Server {
            conns: Slab::with_capacity(1024),
            ctx: Ctx {
                config,
                poller,
                date: DateCache::new(),
                now,
                wall: SystemTime::now(),
                backend,
                done: Vec::new(),
                shutting_down: false,
                paths,
                maps: MapCache::new(map_cache_bytes, max_mappings),
                tick: 0,
                shed_log: LogThrottle::new(now),
                slow_reader_log: LogThrottle::new(now),
                access_log: None,
                metrics: metrics.clone(),
                published_map_lookups: (0, 0),
                published_log_drops: 0,
                proxy_log: LogThrottle::new(now),
            },
            listeners,
            shutdown,
            next_serial: 0,
            max_connections,
            room_log: LogThrottle::new(now),
            untrusted_log: LogThrottle::new(now),
            accept_paused: false,
            accept_resume_at: None,
            yielded: Vec::with_capacity(YIELD_CAPACITY),
            yielded_spare: Vec::with_capacity(YIELD_CAPACITY),
            on_serving: None,
        };
        // The pool counts into the same slot as the rest of the engine.
        server.set_metrics(metrics);
        Ok(server)
    }

    /// Counts into `metrics` (a slot of a region the supervisor reads)
    /// instead of the engine's private one. Call before [`Server::run`]:
    /// what was counted before stays in the old region.
    pub fn set_metrics(&mut self, metrics: WorkerMetrics) {
        if let Backend::Helpers { pool, .. } = &mut self.ctx.backend {
            pool.set_metrics(metrics.clone());
        }
        self.ctx.metrics = metrics;
    }

    /// Publishes the gauges (and the mapped-file cache's lookups) to the
    /// metrics slot: a few relaxed stores per loop iteration, so a scrape
    /// sees the state as of the last iteration.
    fn publish_metrics(&mut self) {
        let ctx = &mut self.ctx;
        let m = &ctx.metrics;
        WorkerMetrics::set(&m.open_connections, self.conns.len() as u64);
        if let Backend::Helpers { pool, .. } = &ctx.backend {
            WorkerMetrics::set(&m.helper_jobs_queued, pool.queued() as u64);
            WorkerMetrics::set(&m.helpers_busy, pool.busy() as u64);
        }
        let (entries, contents, descriptors) = ctx.paths.as_ref().map_or((0, 0, 0), |p| {
            (p.len() as u64, p.memory(), p.descriptors() as u64)
        });
        WorkerMetrics::set(&m.path_cache_entries, entries);
        WorkerMetrics::set(&m.contents_cache_bytes, contents);
        WorkerMetrics::set(&m.cached_descriptors, descriptors);
        WorkerMetrics::set(&m.mappings, ctx.maps.mappings() as u64);
        WorkerMetrics::set(&m.mapped_bytes, ctx.maps.mapped_bytes());
        // Counters only grow (also across a restart into a reused slot):
        // add what is new since the last look.
        let (hits, misses) = ctx.maps.lookups();
        let (old_hits, old_misses) = ctx.published_map_lookups;
        let kind = CacheKind::MappedFile as usize;
        m.cache_hits[kind].fetch_add(hits - old_hits, std::sync::atomic::Ordering::Relaxed);
        m.cache_misses[kind].fetch_add(misses - old_misses, std::sync::atomic::Ordering::Relaxed);
        ctx.published_map_lookups = (hits, misses);
        if let Some(log) = &ctx.access_log {
            let dropped = log.dropped_lines();
            m.add_access_log_dropped_lines(dropped - ctx.published_log_drops);
            ctx.published_log_drops = dropped;
        }
    }

    /// Has `f` called (once, from `run`) when the engine can serve: at once
    /// in SPED, when every helper has started in AMPED. A supervisor learns
    /// from it that a worker serves, not merely that it runs.
    pub fn notify_when_serving(&mut self, f: impl FnOnce() + 'static) {
        self.on_serving = Some(Box::new(f));
    }

    fn serving(&self) -> bool {
        match &self.ctx.backend {
            Backend::Inline { .. } => true,
            Backend::Helpers { pool, .. } => pool.all_started(),
        }
    }

    /// Keeps an access log: one line per response from now on. Its lines
    /// are handed to its writer thread once per loop iteration and
    /// finished (within a bound) when [`Server::run`] returns.
    pub fn set_access_log(&mut self, log: AccessLog) {
        self.ctx.access_log = Some(log);
    }

    /// A handle on the access log set, if any (its drop count, reopen).
    pub fn access_log(&self) -> Option<AccessLogHandle> {
        self.ctx.access_log.as_ref().map(AccessLog::handle)
    }

    /// Process ids of the helper processes (empty in SPED mode).
    pub fn helper_pids(&self) -> Vec<u32> {
        match &self.ctx.backend {
            Backend::Helpers { pool, .. } => pool.pids(),
            Backend::Inline { .. } => Vec::new(),
        }
    }

    /// Serves until shut down; then finishes in-flight responses (bounded by
    /// the shutdown timeout) and returns.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::new();
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        let mut stop_at: Option<Instant> = None;
        loop {
            if let Some(stop_at) = stop_at {
                // A lingering connection owes nothing: its response is
                // complete and its FIN sent; waiting out its linger would
                // only delay the exit.
                // Lingering ones get a moment to see their FIN, so a
                // request crossing it is not answered by a reset at exit.
                let now = self.ctx.now;
                let owing = self.conns.iter().filter(|(_, c)| !c.is_lingering()).count();
                let lingered = self.conns.iter().all(|(_, c)| c.lingered(now, EXIT_LINGER));
                if (owing == 0 && lingered) || now >= stop_at {
                    info!("shut down with {owing} response(s) unfinished");
                    break;
                }
            }
            let wake_at = self
                .accept_resume_at
                .map_or(next_sweep, |t| t.min(next_sweep));
            events.clear();
            // Connections that yielded have work now: only look for events.
            let timeout = if self.yielded.is_empty() {
                wake_at.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.ctx.poller.wait(&mut events, Some(timeout)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.ctx.now = Instant::now();
            self.ctx.wall = SystemTime::now();
            self.ctx.tick += 1;
            // Changes first: no request in this batch may be answered from
            // an entry the kernel already reported stale.
            // (A full batch may have left the inotify event for the next
            // wait while a helper reply in it is delivered now: read anyway.)
            if events.len() >= events.capacity().get() || events.iter().any(|e| e.key == WATCH_KEY)
            {
                if let Some(paths) = &mut self.ctx.paths {
                    paths.apply_changes();
                }
            }
            for event in events.iter() {
                match event.key {
                    WATCH_KEY => {}
                    SHUTDOWN_KEY => {
                        if stop_at.is_none() {
                            stop_at = Some(self.ctx.now + self.ctx.config.shutdown_timeout);
                            self.begin_shutdown();
                        }
                    }
                    key if key < HELPER_BASE => self.accept(key - LISTENER_BASE),
                    key if key < CONN_BASE => {
                        if let Backend::Helpers { pool, .. } = &mut self.ctx.backend {
                            pool.on_event(key, &self.ctx.poller, &mut self.ctx.done);
                        }
                    }
                    key => {
                        let idx = key - CONN_BASE;
                        if let Some(conn) = self.conns.get_mut(idx) {
                            conn.on_ready(event.readable, event.writable);
                            self.drive(idx);
                        }
                    }
                }
            }
            self.deliver_completions();
            self.drive_yielded();
            if self.on_serving.is_some() && self.serving() {
                if let Some(notify) = self.on_serving.take() {
                    notify();
                }
            }
            if let Backend::Helpers { pool, .. } = &mut self.ctx.backend {
                if pool.take_out_of_descriptors() {
                    self.ctx.shed_descriptors();
                }
            }
            if self.ctx.now >= next_sweep {
                self.sweep();
                next_sweep = self.ctx.now + SWEEP_EVERY;
            }
            self.maybe_resume_accept();
            if let Some(log) = &mut self.ctx.access_log {
                log.flush(self.ctx.now);
            }
            self.publish_metrics();
        }
        for listener in &self.listeners {
            reactor::deregister(&self.ctx.poller, listener.as_fd());
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for idx in keys {
            self.close(idx);
        }
        if let Some(log) = self.ctx.access_log.take() {
            log.close(EXIT_FLUSH_TIMEOUT);
        }
        self.publish_metrics();
        Ok(())
    }

    fn drive(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        let me = Waiter {
            conn: idx,
            serial: conn.serial,
        };
        match conn.drive(me, &mut self.ctx) {
            Flow::Keep => {}
            Flow::Close => self.close(idx),
            Flow::Yield => self.yielded.push(me),
        }
    }

    /// Gives the connections that used up their step budget another turn.
    fn drive_yielded(&mut self) {
        std::mem::swap(&mut self.yielded, &mut self.yielded_spare);
        let mut turn = std::mem::take(&mut self.yielded_spare);
        for w in turn.drain(..) {
            if self.conns.get(w.conn).is_some_and(|c| c.serial == w.serial) {
                self.drive(w.conn);
            }
        }
        self.yielded_spare = turn;
    }

    fn close(&mut self, idx: usize) {
        if let Some(mut conn) = self.conns.try_remove(idx) {
            reactor::deregister(&self.ctx.poller, conn.socket().as_fd());
            // A response cut short is counted and logged with the bytes that left.
            conn.end_answer(&mut self.ctx);
        }
    }

    fn accept(&mut self, listener: usize) {
        for _ in 0..ACCEPT_BATCH {
            // At the limit, a connection to close once a client is accepted.
            let make_room = if self.conns.len() >= self.max_connections {
                match self.expendable_connection() {
                    Some(victim) => Some(victim),
                    None => {
                        self.pause_accept(None);
                        return;
                    }
                }
            } else {
                None
            };
            let Some(l) = self.listeners.get(listener) else {
                return;
            };
            match sys::accept_nonblocking(l.as_fd()) {
                Ok(fd) => {
                    let socket = TcpStream::from(fd);
                    let Some((client, proxied)) = self.admit(&socket, listener) else {
                        continue;
                    };
                    if let Some(victim) = make_room {
                        self.close_for_room(victim);
                    }
                    self.add_connection(socket, client, proxied)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE) => {
                        self.ctx.shed_descriptors();
                        self.pause_accept(Some(self.ctx.now + ACCEPT_BACKOFF));
                        return;
                    }
                    Some(libc::ENOBUFS | libc::ENOMEM) => {
                        warn!("accept: {e}; pausing accepts");
                        self.pause_accept(Some(self.ctx.now + ACCEPT_BACKOFF));
                        return;
                    }
                    // The client gave up, or a signal: try the next one.
                    _ => continue,
                },
            }
        }
    }

    /// At the connection limit, the connection to close for a new client:
    /// the one that costs most and gives least — idle keep-alive or
    /// lingering first, then the slowest unfinished request (oldest first),
    /// never a response in progress. `None` when every connection is busy
    /// responding.
    fn expendable_connection(&self) -> Option<usize> {
        self.conns
            .iter()
            // Ties (accepted in one loop iteration) go by accept order.
            .filter_map(|(k, c)| {
                c.expendable()
                    .map(|(kind, since)| (k, (kind, since, c.serial)))
            })
            .min_by_key(|&(_, rank)| rank)
            .map(|(k, _)| k)
    }

    /// Closes `victim` to make room, logged at most once per interval.
    fn close_for_room(&mut self, victim: usize) {
        self.close(victim);
        WorkerMetrics::inc(&self.ctx.metrics.connections_shed);
        if let Some(closed) = self.room_log.count(self.ctx.now) {
            warn!(
                "at the connection limit ({}): closed {closed} idle or slow connection(s) to make room",
                self.max_connections
            );
        }
    }

    /// The client's address, and whether a PROXY header must come first;
    /// `None` (the socket is dropped, so closed) when the peer is gone or
    /// is not trusted to send the PROXY header this listener expects.
    fn admit(&mut self, socket: &TcpStream, listener: usize) -> Option<(SocketAddr, bool)> {
        // The peer may already have reset the connection (ENOTCONN).
        let client = socket.peer_addr().ok()?;
        let policy = &self.ctx.config.proxy_protocol;
        let proxied = policy.expects_header(listener);
        if proxied && !policy.trusts(client.ip()) {
            debug!("refusing {client} on a PROXY listener: not a trusted network");
            if let Some(count) = self.untrusted_log.count(self.ctx.now) {
                warn!("refused {count} connection(s) to PROXY listeners from untrusted peers (latest: {client}; see --proxy-trusted)");
            }
            return None;
        }
        Some((client, proxied))
    }

    fn add_connection(&mut self, socket: TcpStream, client: SocketAddr, proxied: bool) {
        // Nagle only delays our whole-response writes.
        let _ = sys::set_nodelay(socket.as_fd());
        let entry = self.conns.vacant_entry();
        let idx = entry.key();
        if let Err(e) = reactor::register_edge(&self.ctx.poller, socket.as_fd(), CONN_BASE + idx) {
            warn!("cannot watch a new connection: {e}");
            return;
        }
        self.next_serial += 1;
        let now = self.ctx.now;
        let conn = entry.insert(Connection::new(
            socket,
            client,
            self.next_serial,
            now,
            now + self.ctx.config.header_timeout,
        ));
        if proxied {
            conn.expect_proxy_header();
        }
    }

    fn pause_accept(&mut self, resume_at: Option<Instant>) {
        if !self.accept_paused {
            self.set_accepting(false);
        }
        self.accept_resume_at = resume_at;
    }

    fn maybe_resume_accept(&mut self) {
        if !self.accept_paused
            || self.ctx.shutting_down
            || self.conns.len() >= self.max_connections
            || self.accept_resume_at.is_some_and(|t| self.ctx.now < t)
        {
            return;
        }
        self.set_accepting(true);
        self.accept_resume_at = None;
    }

    /// Switches accepting on or off. An exclusive registration cannot be
    /// modified, so a pause removes it (other workers sharing the listener
    /// then take the connections) and a resume adds it again.
    fn set_accepting(&mut self, on: bool) {
        for (i, l) in self.listeners.iter().enumerate() {
            if on {
                if let Err(e) =
                    reactor::register_listener(&self.ctx.poller, l.as_fd(), LISTENER_BASE + i)
                {
                    warn!("cannot resume accepting on a listener: {e}");
                }
            } else {
                reactor::deregister(&self.ctx.poller, l.as_fd());
            }
        }
        self.accept_paused = !on;
    }

    /// Hands finished helper jobs to the connections waiting for them.
    fn deliver_completions(&mut self) {
        while !self.ctx.done.is_empty() {
            for completion in mem::take(&mut self.ctx.done) {
                self.deliver(completion);
            }
        }
    }

    fn deliver(&mut self, completion: Completion) {
        let Completion {
            waiters,
            outcome,
            path,
            submitted,
        } = completion;
        let path = path.as_ref().map(|(p, s)| (p.as_str(), *s));
        let found = match (outcome, path) {
            (Outcome::Resolved(file), Some((p, s))) => {
                self.ctx.record(p, s, Ok(Resolved::File(file)), submitted)
            }
            (Outcome::Redirect, Some((p, s))) => {
                self.ctx.record(p, s, Ok(Resolved::Redirect), submitted)
            }
            (Outcome::Failed(error), Some((p, s))) => self.ctx.record(p, s, Err(error), submitted),
            (Outcome::Resolved(_) | Outcome::Redirect, None) => Lookup::Unavailable,
            (Outcome::Failed(_) | Outcome::Unavailable, _) => {
                if let (Some(paths), Some((p, s))) = (&mut self.ctx.paths, path) {
                    paths.revalidation_failed(p, s);
                }
                // A failed lookup or a failed prefetch: told apart by state.
                for w in waiters {
                    self.resume(w, |conn, ctx| {
                        conn.on_lookup(ctx, Lookup::Unavailable);
                        conn.on_pages_failed(ctx)
                    });
                }
                return;
            }
            (Outcome::Prefetched { file, offset, len }, _) => {
                if let Backend::Helpers { residency, .. } = &mut self.ctx.backend {
                    residency.note_loaded(&file.meta, offset, offset + len);
                }
                for w in waiters {
                    self.resume(w, |conn, ctx| {
                        conn.on_pages_ready(ctx, offset + len);
                        Flow::Keep
                    });
                }
                return;
            }
        };
        for w in waiters {
            self.resume(w, |conn, ctx| {
                conn.on_lookup(ctx, found.clone());
                Flow::Keep
            });
        }
    }

    /// Applies `f` to the waiting connection if it still exists, then drives it.
    fn resume(&mut self, w: Waiter, f: impl FnOnce(&mut Connection, &mut Ctx) -> Flow) {
        let Some(conn) = self.conns.get_mut(w.conn).filter(|c| c.serial == w.serial) else {
            return;
        };
        if f(conn, &mut self.ctx) == Flow::Close {
            self.close(w.conn);
        } else {
            self.drive(w.conn);
        }
    }

    /// Deadlines of connections and helpers; buffer release of idle connections.
    fn sweep(&mut self) {
        let now = self.ctx.now;
        let keep_buffers_since = now.checked_sub(KEEP_BUFFERS).unwrap_or(now);
        let mut expired = Vec::new();
        for (idx, conn) in self.conns.iter_mut() {
            if conn.deadline.is_some_and(|d| d <= now) {
                expired.push(idx);
            }
            conn.release_buffers_if_idle(keep_buffers_since);
        }
        for idx in expired {
            let Some(conn) = self.conns.get_mut(idx) else {
                continue;
            };
            match conn.on_timeout(&mut self.ctx) {
                Flow::Close => self.close(idx),
                Flow::Keep | Flow::Yield => self.drive(idx),
            }
        }
        if let Some(paths) = &mut self.ctx.paths {
            paths.expire(now);
        }
        if self.accept_paused && self.accept_resume_at.is_none() && !self.ctx.shutting_down {
            // Paused at the limit with every connection busy: look again,
            // some may have become idle (accept pauses again if not).
            self.set_accepting(true);
        }
        if let Backend::Helpers { pool, .. } = &mut self.ctx.backend {
            pool.sweep(now, &self.ctx.poller, &mut self.ctx.done);
        }
        self.deliver_completions();
    }

    fn begin_shutdown(&mut self) {
        info!("shutting down: no new connections, finishing responses in flight");
        // Connections already queued on the listeners are taken and served:
        // a socket this worker alone accepts from (after a reload to fewer
        // workers) is closed with it, and its queue with it.
        if !self.accept_paused {
            for listener in 0..self.listeners.len() {
                for _ in 0..DRAIN_BATCHES {
                    let before = self.next_serial;
                    self.accept(listener);
                    if self.next_serial - before < ACCEPT_BATCH as u64 {
                        break;
                    }
                }
            }
        }
        self.ctx.shutting_down = true;
        if let Some(fd) = self.shutdown.take() {
            reactor::deregister(&self.ctx.poller, fd.as_fd());
        }
        for listener in mem::take(&mut self.listeners) {
            reactor::deregister(&self.ctx.poller, listener.as_fd());
        }
        for (_, conn) in self.conns.iter_mut() {
            conn.stop_when_idle(self.ctx.now, STOP_IDLE_GRACE);
        }
    }
}
