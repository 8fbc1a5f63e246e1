//! The helper pool: the helper processes that do the disk work for the main
//! process (AMPED), and the jobs waiting for them.
//!
//! - Each helper handles one job at a time, over its own SOCK_SEQPACKET
//!   socketpair, registered in the main loop like any other socket.
//! - Jobs wait in a bounded FIFO queue when every helper is busy; a full
//!   queue refuses new work (the caller answers 503).
//! - Identical outstanding jobs are coalesced: two clients asking for the
//!   same cold file cost one disk operation.
//! - Path resolution and prefetch compete for helpers, but prefetches may
//!   occupy at most `helpers - reserved` slots, so a burst of cold reads never
//!   stops the server from resolving paths of cached files (the paper's
//!   separate pathname-translation helpers).
//! - A helper that hangs up, sends a malformed frame, or overruns its
//!   deadline is killed and respawned; its job is retried once if the helper
//!   crashed on its own, else its waiters get `Outcome::Unavailable`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use polling::{Event, Poller};

use crate::codec;
use crate::file::OpenFile;
use crate::fs::{FileMeta, FsError, SymlinkPolicy};
use crate::ipc;
use crate::metrics::{JobClass, WorkerMetrics};
use crate::protocol::{FromHelper, ToHelper, PROTOCOL_VERSION};
use crate::reactor;
use crate::sys;

/// Who is waiting for a job: a connection slot and its serial number (a slot
/// reused by a later connection has another serial, so stale results are dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub conn: usize,
    pub serial: u64,
}

impl Waiter {
    /// Not a connection: the path cache revalidating an entry.
    pub const PATH_CACHE: Waiter = Waiter {
        conn: usize::MAX,
        serial: 0,
    };
}

pub enum JobKind {
    Resolve {
        path: String,
        ends_with_slash: bool,
    },
    Prefetch {
        file: Rc<OpenFile>,
        offset: u64,
        len: u64,
    },
}

/// How a resolved file's bytes arrived.
pub enum Found {
    /// The whole (small) file.
    Contents(Vec<u8>),
    /// Its open descriptor.
    Descriptor(OwnedFd),
}

/// A regular file a resolution found.
pub struct FoundFile {
    pub found: Found,
    pub meta: FileMeta,
    /// Which index name it is, when a directory was requested.
    pub index: Option<u8>,
    /// The change watch added for it, if any.
    pub watch: Option<i32>,
}

/// What a finished job produced.
pub enum Outcome {
    Resolved(FoundFile),
    Redirect,
    Prefetched {
        file: Rc<OpenFile>,
        offset: u64,
        len: u64,
    },
    Failed(FsError),
    /// No helper could do it (crashed twice, hung, garbage, queue timeout).
    Unavailable,
}

pub struct Completion {
    pub waiters: Vec<Waiter>,
    pub outcome: Outcome,
    /// For a resolve job: the path and trailing-slash flag it was for.
    pub path: Option<(String, bool)>,
    /// When the job was submitted (what it found may predate later events).
    pub submitted: Instant,
}

impl Completion {
    fn new(job: Job, outcome: Outcome) -> Completion {
        let path = match job.kind {
            JobKind::Resolve {
                path,
                ends_with_slash,
            } => Some((path, ends_with_slash)),
            JobKind::Prefetch { .. } => None,
        };
        Completion {
            waiters: job.waiters,
            outcome,
            path,
            submitted: job.submitted,
        }
    }
}

/// Refused: the queue is full.
#[derive(Debug)]
pub struct QueueFull;

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub helper_path: PathBuf,
    pub root: PathBuf,
    pub symlinks: SymlinkPolicy,
    pub index_names: Vec<String>,
    pub helpers: usize,
    pub max_queue: usize,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum JobKey {
    Resolve(String, bool),
    Prefetch { dev: u64, ino: u64, offset: u64 },
}

struct Job {
    kind: JobKind,
    waiters: Vec<Waiter>,
    crashes: u8,
    queued_at: Instant,
    submitted: Instant,
}

impl Job {
    fn key(&self) -> JobKey {
        match &self.kind {
            JobKind::Resolve {
                path,
                ends_with_slash,
            } => JobKey::Resolve(path.clone(), *ends_with_slash),
            JobKind::Prefetch { file, offset, .. } => JobKey::Prefetch {
                dev: file.meta.dev,
                ino: file.meta.ino,
                offset: *offset,
            },
        }
    }

    fn is_prefetch(&self) -> bool {
        matches!(self.kind, JobKind::Prefetch { .. })
    }
}

enum SlotState {
    /// Not running; respawn at the instant given.
    Down {
        respawn_at: Instant,
    },
    /// Spawned, waiting for its Hello.
    Starting {
        deadline: Instant,
    },
    Idle,
    Busy {
        job: u64,
        deadline: Instant,
    },
}

struct Slot {
    state: SlotState,
    process: Option<(Child, OwnedFd)>,
}

pub struct HelperPool {
    config: PoolConfig,
    key_base: usize,
    slots: Vec<Slot>,
    jobs: HashMap<u64, Job>,
    by_key: HashMap<JobKey, u64>,
    queue: VecDeque<u64>,
    next_id: u64,
    max_busy_prefetch: usize,
    /// Killed helpers not yet reaped.
    zombies: Vec<Child>,
    frame: Vec<u8>,
    recv_buf: Vec<u8>,
    /// The inotify instance helpers add change watches to (their fd 4).
    watch_fd: Option<OwnedFd>,
    /// This process ran out of descriptors since the last look.
    out_of_descriptors: bool,
    /// Where jobs submitted and helpers respawned are counted.
    metrics: WorkerMetrics,
    /// The first helpers are started: later spawns are respawns.
    started: bool,
}

/// Where a helper finds its socket and the inotify instance.
const HELPER_SOCKET_FD: i32 = 3;
const HELPER_WATCH_FD: i32 = 4;

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl HelperPool {
    /// Spawns the helpers; their sockets get poller keys `key_base + slot`.
    /// `watch_fd`: an inotify instance the helpers add change watches to.
    pub fn start(
        config: PoolConfig,
        poller: &Poller,
        key_base: usize,
        watch_fd: Option<OwnedFd>,
    ) -> io::Result<HelperPool> {
        let helpers = config.helpers.max(1);
        let reserved = if helpers == 1 {
            0
        } else {
            (helpers / 4).max(1)
        };
        let mut pool = HelperPool {
            slots: (0..helpers)
                .map(|_| Slot {
                    state: SlotState::Down {
                        respawn_at: Instant::now(),
                    },
                    process: None,
                })
                .collect(),
            config,
            key_base,
            jobs: HashMap::new(),
            by_key: HashMap::new(),
            queue: VecDeque::new(),
            next_id: 1,
            max_busy_prefetch: helpers - reserved,
            zombies: Vec::new(),
            frame: Vec::with_capacity(256),
            recv_buf: vec![0; codec::MAX_WIRE_LEN],
            watch_fd,
            out_of_descriptors: false,
            metrics: WorkerMetrics::private()?,
            started: false,
        };
        for slot in 0..helpers {
            // At start a helper that cannot be spawned is a configuration error.
            pool.spawn(slot, poller)?;
        }
        pool.started = true;
        Ok(pool)
    }

    /// Counts into `metrics` from now on (jobs by kind, respawns).
    pub fn set_metrics(&mut self, metrics: WorkerMetrics) {
        self.metrics = metrics;
    }

    /// Jobs waiting for a helper.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Helpers working on a job.
    pub fn busy(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Busy { .. }))
            .count()
    }

    /// Whether every helper has started (said Hello) and none is down: the
    /// pool can serve. A helper that cannot start (its user cannot read the
    /// root, its binary is wrong) keeps this false.
    pub fn all_started(&self) -> bool {
        self.slots
            .iter()
            .all(|s| matches!(s.state, SlotState::Idle | SlotState::Busy { .. }))
    }

    /// Process ids of the running helpers.
    pub fn pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| s.process.as_ref().map(|(c, _)| c.id()))
            .collect()
    }

    /// Queues a job (or joins an identical one in flight).
    pub fn submit(
        &mut self,
        kind: JobKind,
        waiter: Waiter,
        poller: &Poller,
        done: &mut Vec<Completion>,
    ) -> Result<(), QueueFull> {
        let job = Job {
            kind,
            waiters: vec![waiter],
            crashes: 0,
            queued_at: Instant::now(),
            submitted: Instant::now(),
        };
        let key = job.key();
        if let Some(id) = self.by_key.get(&key) {
            if let Some(existing) = self.jobs.get_mut(id) {
                existing.waiters.push(waiter);
                return Ok(());
            }
        }
        let idle = self
            .slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Idle));
        if self.queue.len() >= self.config.max_queue && !idle {
            return Err(QueueFull);
        }
        let id = self.next_id;
        self.next_id += 1;
        let class = match job.kind {
            JobKind::Resolve { .. } => JobClass::Resolve,
            JobKind::Prefetch { .. } => JobClass::Prefetch,
        };
        WorkerMetrics::inc(&self.metrics.helper_jobs[class as usize]);
        self.by_key.insert(key, id);
        self.jobs.insert(id, job);
        self.queue.push_back(id);
        self.dispatch(poller, done);
        Ok(())
    }

    /// Hands queued jobs to idle helpers.
    fn dispatch(&mut self, poller: &Poller, done: &mut Vec<Completion>) {
        while !self.queue.is_empty() {
            let Some(slot) = self
                .slots
                .iter()
                .position(|s| matches!(s.state, SlotState::Idle))
            else {
                return;
            };
            let busy_prefetch = self
                .slots
                .iter()
                .filter(|s| matches!(s.state, SlotState::Busy { job, .. } if self.jobs.get(&job).is_some_and(Job::is_prefetch)))
                .count();
            let may_prefetch = busy_prefetch < self.max_busy_prefetch;
            let Some(pos) = self
                .queue
                .iter()
                .position(|id| may_prefetch || !self.jobs[id].is_prefetch())
            else {
                return;
            };
            let Some(id) = self.queue.remove(pos) else {
                return;
            };
            match self.send_job(slot, id) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    // The request cannot be framed (a path longer than any
                    // file system allows): no file by that name.
                    if let Some(job) = self.take_job(id) {
                        done.push(Completion::new(job, Outcome::Failed(FsError::NotFound)));
                    }
                }
                Err(e) => {
                    warn!("helper {slot}: send failed ({e}); restarting it");
                    self.queue.push_front(id);
                    self.retire(slot, poller, done, false);
                }
            }
        }
    }

    fn send_job(&mut self, slot: usize, id: u64) -> io::Result<()> {
        let job = &self.jobs[&id];
        let (_, sock) = self.slots[slot]
            .process
            .as_ref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        self.frame.clear();
        let fd = match &job.kind {
            JobKind::Resolve {
                path,
                ends_with_slash,
            } => {
                // A path too long for a frame (only with raised limits) fails
                // this job, not the server.
                codec::try_encode(
                    &ToHelper::Resolve {
                        id,
                        path: path.clone(),
                        ends_with_slash: *ends_with_slash,
                    },
                    &mut self.frame,
                )
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                None
            }
            JobKind::Prefetch { file, offset, len } => {
                let fd = file.fd().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "file held in memory")
                })?;
                codec::encode(
                    &ToHelper::Prefetch {
                        id,
                        offset: *offset,
                        len: *len,
                    },
                    &mut self.frame,
                );
                Some(fd)
            }
        };
        // One outstanding message per helper, so the socket buffer never fills.
        ipc::send_message(sock.as_fd(), &self.frame, fd)?;
        self.slots[slot].state = SlotState::Busy {
            job: id,
            deadline: Instant::now() + self.config.timeout,
        };
        Ok(())
    }

    /// The socket of helper `key - key_base` is readable (a reply or a hang-up).
    pub fn on_event(&mut self, key: usize, poller: &Poller, done: &mut Vec<Completion>) {
        let Some(slot) = key
            .checked_sub(self.key_base)
            .filter(|&s| s < self.slots.len())
        else {
            return;
        };
        loop {
            let Some((_, sock)) = self.slots[slot].process.as_ref() else {
                return;
            };
            match ipc::recv_message(sock.as_fd(), &mut self.recv_buf) {
                Ok(Some((len, fd))) => {
                    if let Err(why) = self.on_message(slot, len, fd, done) {
                        warn!("helper {slot}: {why}; killing it");
                        self.retire(slot, poller, done, false);
                        break;
                    }
                }
                // A helper that dies with our request unread in its socket
                // shows as a reset rather than an orderly hang-up: both are
                // a crash, and the job gets its one retry.
                Ok(None) => {
                    warn!("helper {slot} exited; respawning it");
                    self.retire(slot, poller, done, true);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    warn!("helper {slot} died with a request unread; respawning it");
                    self.retire(slot, poller, done, true);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_descriptors(&e) => {
                    self.out_of_descriptors = true;
                    let SlotState::Busy { job, .. } = self.slots[slot].state else {
                        // A descriptor nobody asked for: garbage.
                        warn!("helper {slot}: sent a descriptor unasked; killing it");
                        self.retire(slot, poller, done, false);
                        break;
                    };
                    // The helper answered, but the descriptor it sent could
                    // not be received: this process is out of them. Not the
                    // helper's fault; its job is tried once more after the
                    // server has made room (or gets 503).
                    self.slots[slot].state = SlotState::Idle;
                    self.retry_or_fail(job, done);
                }
                Err(e) => {
                    warn!("helper {slot}: {e}; killing it");
                    self.retire(slot, poller, done, false);
                    break;
                }
            }
        }
        self.dispatch(poller, done);
    }

    fn on_message(
        &mut self,
        slot: usize,
        len: usize,
        fd: Option<OwnedFd>,
        done: &mut Vec<Completion>,
    ) -> Result<(), String> {
        let msg: FromHelper =
            codec::decode(&self.recv_buf[..len]).map_err(|e| format!("malformed frame ({e:?})"))?;
        match (&self.slots[slot].state, msg) {
            (SlotState::Starting { .. }, FromHelper::Hello { version, pid }) => {
                if version != PROTOCOL_VERSION {
                    return Err(format!(
                        "protocol version {version}, expected {PROTOCOL_VERSION}"
                    ));
                }
                debug!("helper {slot} (pid {pid}) ready");
                self.slots[slot].state = SlotState::Idle;
                Ok(())
            }
            (&SlotState::Busy { job, .. }, reply) if reply.id() == Some(job) => {
                let job = self.take_job(job).ok_or("reply for an unknown job")?;
                let outcome = match (reply, &job.kind, fd) {
                    (
                        FromHelper::Resolved {
                            meta,
                            index,
                            contents,
                            watch,
                            ..
                        },
                        JobKind::Resolve { .. },
                        fd,
                    ) => match (contents, fd) {
                        (Some(bytes), None) if bytes.len() as u64 == meta.size => {
                            Some(Outcome::Resolved(FoundFile {
                                found: Found::Contents(bytes),
                                meta,
                                index,
                                watch,
                            }))
                        }
                        (None, Some(fd)) => Some(Outcome::Resolved(FoundFile {
                            found: Found::Descriptor(fd),
                            meta,
                            index,
                            watch,
                        })),
                        _ => None,
                    },
                    (FromHelper::Redirect { .. }, JobKind::Resolve { .. }, None) => {
                        Some(Outcome::Redirect)
                    }
                    (
                        FromHelper::Prefetched { .. },
                        JobKind::Prefetch { file, offset, len },
                        None,
                    ) => Some(Outcome::Prefetched {
                        file: Rc::clone(file),
                        offset: *offset,
                        len: *len,
                    }),
                    (FromHelper::Failed { error, .. }, _, None) => Some(Outcome::Failed(error)),
                    _ => None,
                };
                let Some(outcome) = outcome else {
                    // The job is gone; its waiters must still get an answer.
                    done.push(Completion::new(job, Outcome::Unavailable));
                    return Err("reply does not match its request".into());
                };
                done.push(Completion::new(job, outcome));
                self.slots[slot].state = SlotState::Idle;
                Ok(())
            }
            (_, other) => Err(format!("unexpected message {other:?}")),
        }
    }

    fn take_job(&mut self, id: u64) -> Option<Job> {
        let job = self.jobs.remove(&id)?;
        self.by_key.remove(&job.key());
        Some(job)
    }

    /// Kills helper `slot`, answers or requeues its job, and respawns it.
    fn retire(&mut self, slot: usize, poller: &Poller, done: &mut Vec<Completion>, crashed: bool) {
        if let Some((mut child, sock)) = self.slots[slot].process.take() {
            reactor::deregister(poller, sock.as_fd());
            drop(sock);
            let _ = child.kill();
            match child.try_wait() {
                Ok(Some(_)) => {}
                _ => self.zombies.push(child),
            }
        }
        if let SlotState::Busy { job, .. } = self.slots[slot].state {
            if crashed {
                self.retry_or_fail(job, done);
            } else if let Some(j) = self.take_job(job) {
                done.push(Completion::new(j, Outcome::Unavailable));
            }
        }
        let never_started = matches!(self.slots[slot].state, SlotState::Starting { .. });
        if never_started {
            // It died before its Hello (bad root, wrong binary): respawning
            // at once would fork in a loop. Let the sweep retry in a second.
            warn!("helper {slot} failed to start; retrying in 1s");
            self.slots[slot].state = SlotState::Down {
                respawn_at: Instant::now() + Duration::from_secs(1),
            };
            return;
        }
        self.slots[slot].state = SlotState::Down {
            respawn_at: Instant::now(),
        };
        if let Err(e) = self.spawn(slot, poller) {
            warn!("helper {slot}: respawn failed ({e}); retrying in 1s");
            self.slots[slot].state = SlotState::Down {
                respawn_at: Instant::now() + Duration::from_secs(1),
            };
        }
    }

    /// Queues `job` again at the front if it has not been retried yet, else
    /// answers its waiters with `Unavailable`.
    fn retry_or_fail(&mut self, job: u64, done: &mut Vec<Completion>) {
        match self.jobs.get_mut(&job) {
            Some(j) if j.crashes == 0 => {
                j.crashes += 1;
                // Its wait starts again: the queue timeout is for waiting.
                j.queued_at = Instant::now();
                self.queue.push_front(job);
            }
            _ => {
                if let Some(j) = self.take_job(job) {
                    done.push(Completion::new(j, Outcome::Unavailable));
                }
            }
        }
    }

    /// Whether this process ran out of descriptors (receiving a helper's
    /// descriptor, or starting a helper) since the last call.
    pub fn take_out_of_descriptors(&mut self) -> bool {
        std::mem::take(&mut self.out_of_descriptors)
    }

    fn spawn(&mut self, slot: usize, poller: &Poller) -> io::Result<()> {
        let result = self.try_spawn(slot, poller);
        if self.started && result.is_ok() {
            WorkerMetrics::inc(&self.metrics.helpers_respawned);
        }
        if result.as_ref().is_err_and(is_out_of_descriptors) {
            self.out_of_descriptors = true;
        }
        result
    }

    fn try_spawn(&mut self, slot: usize, poller: &Poller) -> io::Result<()> {
        let (ours, theirs) = ipc::seqpacket_pair()?;
        let child_fd = theirs.as_raw_fd();
        let watch_fd = self.watch_fd.as_ref().map(|fd| fd.as_raw_fd());
        let mut command = Command::new(&self.config.helper_path);
        command
            .arg("--root")
            .arg(&self.config.root)
            .arg("--symlinks")
            .arg(match self.config.symlinks {
                SymlinkPolicy::WithinRoot => "within-root",
                SymlinkPolicy::Never => "never",
            })
            .arg("--socket-fd")
            .arg(HELPER_SOCKET_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for name in &self.config.index_names {
            command.arg("--index").arg(name);
        }
        if watch_fd.is_some() {
            command.arg("--watch-fd").arg(HELPER_WATCH_FD.to_string());
        }
        // SAFETY: the closure runs between fork and exec and only calls
        // async-signal-safe functions (fcntl/dup2), as pre_exec requires.
        // The socket is installed first: were the inotify descriptor number
        // 3, moving it to 4 afterwards would not undo the socket's dup2.
        unsafe {
            command.pre_exec(move || {
                // A Ctrl-C in the terminal (SIGINT to the whole foreground
                // group) is for the server, which then stops its helpers
                // itself. Ignored dispositions survive exec. (Not a process
                // group of their own: that would make helpers writing to
                // the terminal background jobs, stopped under `tostop`.)
                sys::ignore_terminal_signals();
                // Keep the inotify instance out of the way of fd 3 first.
                let watch = match watch_fd {
                    Some(fd) if fd == HELPER_SOCKET_FD => Some(sys::dup_in_child(fd)?),
                    other => other,
                };
                sys::install_fd_in_child(child_fd, HELPER_SOCKET_FD)?;
                if let Some(fd) = watch {
                    sys::install_fd_in_child(fd, HELPER_WATCH_FD)?;
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            if is_out_of_descriptors(&e) {
                // Keep the errno: the caller sheds descriptors on it.
                return e;
            }
            io::Error::new(
                e.kind(),
                format!(
                    "cannot start helper {}: {e}",
                    self.config.helper_path.display()
                ),
            )
        })?;
        drop(theirs);
        sys::set_nonblocking(ours.as_fd(), true)?;
        reactor::register_level(poller, ours.as_fd(), Event::readable(self.key_base + slot))?;
        self.slots[slot] = Slot {
            state: SlotState::Starting {
                deadline: Instant::now() + self.config.timeout,
            },
            process: Some((child, ours)),
        };
        Ok(())
    }

    /// Timer work: kill helpers past their deadline, expire queued jobs that
    /// waited too long, respawn helpers that could not be started, reap.
    pub fn sweep(&mut self, now: Instant, poller: &Poller, done: &mut Vec<Completion>) {
        for slot in 0..self.slots.len() {
            match self.slots[slot].state {
                SlotState::Starting { deadline } | SlotState::Busy { deadline, .. }
                    if now >= deadline =>
                {
                    warn!("helper {slot} missed its deadline; killing it");
                    self.retire(slot, poller, done, false);
                }
                SlotState::Down { respawn_at } if now >= respawn_at => {
                    if let Err(e) = self.spawn(slot, poller) {
                        warn!("helper {slot}: respawn failed ({e})");
                        self.slots[slot].state = SlotState::Down {
                            respawn_at: now + Duration::from_secs(1),
                        };
                    }
                }
                _ => {}
            }
        }
        while let Some(&id) = self.queue.front() {
            if self
                .jobs
                .get(&id)
                .is_some_and(|j| now.duration_since(j.queued_at) < self.config.timeout)
            {
                break;
            }
            self.queue.pop_front();
            if let Some(job) = self.take_job(id) {
                done.push(Completion::new(job, Outcome::Unavailable));
            }
        }
        self.zombies
            .retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_))));
        self.dispatch(poller, done);
    }

    /// Jobs queued or in flight.
    pub fn outstanding(&self) -> usize {
        self.jobs.len()
    }
}

impl Drop for HelperPool {
    /// Kills the helpers and reaps them, waiting a bounded time: a helper
    /// stuck in the kernel (a hung network file system) must not hang the
    /// server's exit.
    fn drop(&mut self) {
        let mut children: Vec<Child> = self
            .slots
            .iter_mut()
            .filter_map(|s| s.process.take())
            .map(|(c, _)| c)
            .collect();
        children.append(&mut self.zombies);
        for child in &mut children {
            let _ = child.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while !children.is_empty() && Instant::now() < deadline {
            children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
            if !children.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
