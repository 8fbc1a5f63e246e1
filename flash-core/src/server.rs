//! The event loop: one thread, one `polling::Poller`, every descriptor
//! non-blocking. Listeners, client connections, helper sockets and the
//! shutdown pipe are all just event sources; a helper's reply wakes the loop
//! exactly like a client's bytes do.

use std::io;
use std::mem;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use flash_http::DateCache;
use log::{info, warn};
use polling::{Event, Events, Poller};
use slab::Slab;

use crate::cache::{Cached, MapCache, PathCache, PathHit};
use crate::config::{Arch, Config};
use crate::connection::{Connection, Flow, Lookup};
use crate::file::OpenFile;
use crate::fs::{FsError, Resolution, Resolver};
use crate::pool::{Completion, HelperPool, JobKind, Outcome, PoolConfig, Waiter};
use crate::reactor;
use crate::residency::{self, Probe, Residency};
use crate::sys;

/// Poller keys: fixed ranges per kind of source.
const SHUTDOWN_KEY: usize = 0;
const LISTENER_BASE: usize = 1;
const HELPER_BASE: usize = 64;
const CONN_BASE: usize = 1024;
/// How often deadlines are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Connections accepted per listener event, so one busy listener cannot starve the rest.
const ACCEPT_BATCH: usize = 64;
/// Pause after the process ran out of descriptors (EMFILE) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Idle connections keep their buffers this long.
const KEEP_BUFFERS: Duration = Duration::from_secs(1);

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
            (_, Backend::Inline { resolver }) => {
                let result = resolver.resolve(path, ends_with_slash);
                Some(self.record(Some((path, ends_with_slash)), result))
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

    /// Turns a resolution into a lookup result, and records it in the path
    /// cache. A file that did not change keeps its `OpenFile` (and so its
    /// cached head); the new descriptor is then simply closed.
    pub fn record(
        &mut self,
        path: Option<(&str, bool)>,
        result: Result<Resolution, FsError>,
    ) -> Lookup {
        let paths = self.paths.as_mut().zip(path);
        match result {
            Ok(Resolution::File {
                file: fd,
                meta,
                is_index,
            }) => {
                let file = match paths
                    .as_ref()
                    .and_then(|(cache, (p, s))| cache.same_file(p, *s, &meta))
                {
                    Some(unchanged) => unchanged,
                    None => {
                        let probe = match &self.backend {
                            Backend::Helpers { residency, .. } => residency.probe_for(&meta),
                            Backend::Inline { .. } => Probe::Mincore,
                        };
                        Rc::new(OpenFile::new(fd, meta, probe))
                    }
                };
                if let Some((cache, (p, s))) = paths {
                    cache.insert(
                        p,
                        s,
                        Cached::File {
                            file: Rc::clone(&file),
                            is_index,
                        },
                        self.now,
                    );
                }
                Lookup::File { file, is_index }
            }
            Ok(Resolution::Redirect) => {
                if let Some((cache, (p, s))) = paths {
                    cache.insert(p, s, Cached::Redirect, self.now);
                }
                Lookup::Redirect
            }
            Err(error) => {
                if let Some((cache, (p, s))) = paths {
                    cache.remove(p, s);
                }
                Lookup::Failed(error)
            }
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
    accept_paused: bool,
    accept_resume_at: Option<Instant>,
    /// Connections that used their step budget, driven again next iteration
    /// (two buffers swapped, so no allocation per iteration).
    yielded: Vec<Waiter>,
    yielded_spare: Vec<Waiter>,
}

impl Server {
    /// Sets up the loop on already-bound listeners. `shutdown` becomes
    /// readable when the server should stop (e.g. a signal pipe).
    pub fn new(
        config: Config,
        listeners: Vec<TcpListener>,
        shutdown: Option<OwnedFd>,
    ) -> io::Result<Server> {
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
            reactor::register_level(
                &poller,
                listener.as_fd(),
                Event::readable(LISTENER_BASE + i),
            )?;
        }
        if let Some(fd) = &shutdown {
            reactor::register_level(&poller, fd.as_fd(), Event::readable(SHUTDOWN_KEY))?;
        }
        let backend = match config.arch {
            Arch::Sped => Backend::Inline {
                resolver: Resolver::open(&config.root, config.symlinks)?,
            },
            Arch::Amped => {
                let pool_config = PoolConfig {
                    helper_path: config.helper_path.clone(),
                    root: config.root.clone(),
                    symlinks: config.symlinks,
                    helpers: config.helpers,
                    max_queue: config.helper_queue,
                    timeout: config.helper_timeout,
                };
                let pool = HelperPool::start(pool_config, &poller, HELPER_BASE)?;
                Backend::Helpers {
                    pool,
                    residency: Residency::new(config.residency_budget),
                }
            }
        };
        let paths = (config.path_cache_entries > 0)
            .then(|| PathCache::new(config.path_cache_entries, config.path_freshness));
        let map_cache_bytes = config.map_cache_bytes;
        Ok(Server {
            conns: Slab::with_capacity(1024),
            ctx: Ctx {
                config,
                poller,
                date: DateCache::new(),
                now: Instant::now(),
                wall: SystemTime::now(),
                backend,
                done: Vec::new(),
                shutting_down: false,
                paths,
                maps: MapCache::new(map_cache_bytes),
                tick: 0,
            },
            listeners,
            shutdown,
            next_serial: 0,
            accept_paused: false,
            accept_resume_at: None,
            yielded: Vec::new(),
            yielded_spare: Vec::new(),
        })
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
                if self.conns.is_empty() || self.ctx.now >= stop_at {
                    info!("shut down with {} connection(s) left", self.conns.len());
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
            for event in events.iter() {
                match event.key {
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
            if self.ctx.now >= next_sweep {
                self.sweep();
                next_sweep = self.ctx.now + SWEEP_EVERY;
            }
            self.maybe_resume_accept();
        }
        for listener in &self.listeners {
            reactor::deregister(&self.ctx.poller, listener.as_fd());
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for idx in keys {
            self.close(idx);
        }
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
        if let Some(conn) = self.conns.try_remove(idx) {
            reactor::deregister(&self.ctx.poller, conn.socket().as_fd());
        }
    }

    fn accept(&mut self, listener: usize) {
        for _ in 0..ACCEPT_BATCH {
            if self.conns.len() >= self.ctx.config.max_connections {
                self.pause_accept(None);
                return;
            }
            let Some(l) = self.listeners.get(listener) else {
                return;
            };
            match sys::accept_nonblocking(l.as_fd()) {
                Ok(fd) => self.add_connection(fd),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
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

    fn add_connection(&mut self, fd: OwnedFd) {
        // Nagle only delays our whole-response writes.
        let _ = sys::set_nodelay(fd.as_fd());
        let entry = self.conns.vacant_entry();
        let idx = entry.key();
        if let Err(e) = reactor::register_edge(&self.ctx.poller, fd.as_fd(), CONN_BASE + idx) {
            warn!("cannot watch a new connection: {e}");
            return;
        }
        self.next_serial += 1;
        let now = self.ctx.now;
        entry.insert(Connection::new(
            TcpStream::from(fd),
            self.next_serial,
            now,
            now + self.ctx.config.header_timeout,
        ));
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
            || self.conns.len() >= self.ctx.config.max_connections
            || self.accept_resume_at.is_some_and(|t| self.ctx.now < t)
        {
            return;
        }
        self.set_accepting(true);
        self.accept_resume_at = None;
    }

    /// Switches the listeners' readiness interest on or off.
    fn set_accepting(&mut self, on: bool) {
        for (i, l) in self.listeners.iter().enumerate() {
            let key = LISTENER_BASE + i;
            let interest = if on {
                Event::readable(key)
            } else {
                Event::none(key)
            };
            let _ = reactor::modify_level(&self.ctx.poller, l.as_fd(), interest);
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
        } = completion;
        let path = path.as_ref().map(|(p, s)| (p.as_str(), *s));
        let found = match outcome {
            Outcome::Resolved { fd, meta, is_index } => self.ctx.record(
                path,
                Ok(Resolution::File {
                    file: fd,
                    meta,
                    is_index,
                }),
            ),
            Outcome::Redirect => self.ctx.record(path, Ok(Resolution::Redirect)),
            Outcome::Failed(error) if path.is_some() => self.ctx.record(path, Err(error)),
            Outcome::Failed(_) | Outcome::Unavailable => {
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
            Outcome::Prefetched { file, offset, len } => {
                if let Backend::Helpers { residency, .. } = &mut self.ctx.backend {
                    residency.note_loaded(&file.meta, offset, offset + len);
                }
                for w in waiters {
                    self.resume(w, |conn, _| {
                        conn.on_pages_ready(offset + len);
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
        if let Backend::Helpers { pool, .. } = &mut self.ctx.backend {
            pool.sweep(now, &self.ctx.poller, &mut self.ctx.done);
        }
        self.deliver_completions();
    }

    fn begin_shutdown(&mut self) {
        info!("shutting down: no new connections, finishing responses in flight");
        self.ctx.shutting_down = true;
        if let Some(fd) = self.shutdown.take() {
            reactor::deregister(&self.ctx.poller, fd.as_fd());
        }
        for listener in mem::take(&mut self.listeners) {
            reactor::deregister(&self.ctx.poller, listener.as_fd());
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle())
            .map(|(k, _)| k)
            .collect();
        for idx in idle {
            self.close(idx);
        }
    }
}
