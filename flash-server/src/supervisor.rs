//! The supervisor: the process an operator starts. It binds the listening
//! sockets once (or takes them from systemd), starts `--workers` worker
//! processes that share them, and then only watches: a worker that dies is
//! restarted with backoff (its accepted connections are lost, the queued
//! ones wait in the shared accept queue for the others), SIGHUP reloads the
//! configuration by starting a new generation of workers and stopping the
//! old one once the new one serves, SIGUSR1 has the workers reopen their log
//! files, and SIGINT/SIGTERM stop everything gracefully (a second one at once).
//!
//! All of it is one loop over an event channel fed by a signal thread and
//! one thread per worker (which reads the worker's control socket and reaps
//! it), so every state change happens in [`Supervisor::handle`].

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use log::{error, info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

use crate::demo_site::DemoSite;
use crate::systemd::{self, Notifier};
use flash_core::MetricsRegion;

use crate::{access, affinity, fds, listen, locate, metrics_http, process, settings, worker, Cli};

/// Time a new worker gets to report that it serves, beyond
/// `--helper-timeout` (which bounds each of its helpers' start).
const START_MARGIN: Duration = Duration::from_secs(5);
/// Extra time beyond `--shutdown-timeout` before a stopping worker is
/// killed: a worker's own exit after its responses takes up to 5 s to
/// finish its access log and 1 s to reap its helpers.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A worker that ran at least this long before dying is restarted at once;
/// quicker deaths in a row wait `RESTART_BASE` doubled per death, up to
/// `RESTART_MAX`, so a worker that cannot start does not spin.
const STABLE_RUN: Duration = Duration::from_secs(10);
const RESTART_BASE: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(10);
/// The most workers (and so the most per-slot state) one supervisor runs.
pub const MAX_WORKERS: usize = 256;

/// What the supervisor's loop reacts to.
enum Event {
    Signal(i32),
    /// Worker `id` reported that it serves.
    Ready(u64),
    /// Worker `id` exited (and was reaped).
    Exited(u64, ExitStatus),
}

/// Where a worker is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Started, not yet serving; killed if not ready by the instant.
    Starting(Instant),
    Serving,
    /// Told to stop; killed if still running at the instant.
    Stopping(Instant),
    /// Sent SIGKILL (too slow to start or to stop); its exit is awaited,
    /// with no deadline (nothing more can be done to it).
    Killed,
}

struct Worker {
    id: u64,
    /// Its slot of the metrics region.
    metrics_slot: usize,
    /// The worker's place among its generation's `--workers` (restarts keep it).
    slot: usize,
    generation: u64,
    pid: u32,
    /// The pid while it may be signalled: cleared (under the lock) by the
    /// reaping thread just before it reaps, so a kill never reaches a
    /// recycled pid.
    killable: Arc<Mutex<Option<u32>>>,
    control: UnixStream,
    phase: Phase,
    started: Instant,
}

impl Worker {
    fn tell(&mut self, order: u8) {
        // A worker that is gone cannot be told; its exit is on its way.
        let _ = self.control.write_all(&[order]);
    }

    fn kill(&self) {
        if let Some(pid) = *self.killable.lock().unwrap_or_else(|e| e.into_inner()) {
            // SAFETY: kill has no memory-safety preconditions; `pid` is an
            // unreaped child of this process (see `killable`).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// A configuration the workers of one generation run with.
struct Plan {
    cli: Cli,
    /// Each worker slot's CPU, if workers are pinned (`--cpu-affinity`).
    cpus: Option<Vec<usize>>,
    /// The command line the workers are given: `cli` with the
    /// configuration file's settings spelled out (they never read the file,
    /// so they run exactly what was checked here).
    args: Vec<OsString>,
    workers: usize,
    listeners: Vec<Bound>,
}

impl Plan {
    /// `listening on http://ADDR` per address, the PROXY ones after the
    /// plain ones (as the workers number them) and marked.
    fn print_listeners(&self) {
        for bound in &self.listeners {
            let proxied = if bound.proxy { " (PROXY protocol)" } else { "" };
            println!("listening on http://{}{proxied}", bound.addr);
        }
    }
}

/// The listening sockets of one address: one per worker slot, in one
/// `SO_REUSEPORT` group (or the one socket the service manager passed,
/// which all workers then share), and the address it was asked for (port 0
/// binds a free port; a reload asking for port 0 again keeps the sockets).
struct Bound {
    asked: Option<SocketAddr>,
    addr: SocketAddr,
    /// Every connection starts with a PROXY protocol header (`--proxy-protocol`).
    proxy: bool,
    sockets: Vec<TcpListener>,
}

impl Bound {
    fn try_clone(&self) -> Result<Bound> {
        Ok(Bound {
            asked: self.asked,
            addr: self.addr,
            proxy: self.proxy,
            sockets: self
                .sockets
                .iter()
                .map(TcpListener::try_clone)
                .collect::<std::io::Result<_>>()?,
        })
    }

    /// The sockets worker `slot` of `workers` accepts from: its own of the
    /// group, or the shared one (from the service manager).
    fn sockets_for(&self, slot: usize, workers: usize) -> impl Iterator<Item = &TcpListener> {
        let shared = self.sockets.len() == 1;
        self.sockets
            .iter()
            .enumerate()
            .filter(move |(i, _)| shared || i % workers == slot)
            .map(|(_, s)| s)
    }
}

/// A reload in progress: the new generation starting beside the old.
struct Reload {
    generation: u64,
    plan: Plan,
}

/// A restart waiting out its backoff.
struct Restart {
    at: Instant,
    slot: usize,
}

pub struct Supervisor {
    /// The command line, re-read (with its configuration file) on reload.
    args: Vec<OsString>,
    events: Receiver<Event>,
    sender: Sender<Event>,
    plan: Plan,
    /// The generation serving (restarts join it).
    generation: u64,
    /// The highest generation number given out.
    last_generation: u64,
    workers: Vec<Worker>,
    next_id: u64,
    reload: Option<Reload>,
    restarts: VecDeque<Restart>,
    /// Quick deaths in a row, per slot (for the backoff).
    failures: Vec<u32>,
    /// Set once stopping: kill what is left at this instant.
    stopping: Option<Instant>,
    /// Listeners came from the service manager: they are kept on reload.
    socket_activated: bool,
    notifier: Notifier,
    demo: Option<DemoSite>,
    /// Counters and gauges of all workers, one slot each.
    metrics: Arc<MetricsRegion>,
    /// Slots of the region no running worker uses.
    free_slots: Vec<usize>,
    /// What `/healthz` reports.
    health: Arc<Health>,
    /// Signals that came while the first workers started.
    deferred: Vec<i32>,
}

/// What `/healthz` answers from: healthy while a worker serves and the
/// server is not stopping (so a balancer drains it first).
#[derive(Default)]
pub struct Health {
    serving: AtomicUsize,
    stopping: AtomicBool,
}

impl Health {
    fn healthy(&self) -> bool {
        self.serving.load(Ordering::Relaxed) > 0 && !self.stopping.load(Ordering::Relaxed)
    }
}

/// Runs the server with the command line `args` (and the configuration
/// file it names): binds, starts the workers, supervises until stopped.
pub fn run(args: &[OsString]) -> Result<()> {
    let args = args.to_vec();
    let (cli, expanded) = settings::load_expanded::<Cli>(&args)?;
    let notifier = Notifier::from_env();
    let inherited = systemd::listen_fds()?;
    let (sender, events) = mpsc::channel();
    // From here on a signal no longer kills the process before the demo
    // site is removed; one that arrives during startup is handled as soon
    // as the loop runs.
    watch_signals(sender.clone())?;
    let demo = match &cli.root {
        Some(_) => None,
        None => Some(DemoSite::create().context("cannot write the demo site")?),
    };
    if let (Some(demo), Some(user)) = (&demo, &cli.user) {
        let user = process::lookup_user(user)?;
        demo.give_to(user.uid, user.gid)
            .with_context(|| format!("cannot give the demo site to user {}", user.name))?;
    }
    let demo_root = demo.as_ref().map(|d| d.path().to_path_buf());
    locate(&cli, demo_root.clone())?;
    process::raise_descriptor_limit();
    let socket_activated = inherited.is_some();
    let listeners = match inherited {
        Some(listeners) => {
            info!(
                "using {} listening socket(s) from the service manager (--listen ignored)",
                listeners.len()
            );
            listeners
                .into_iter()
                .map(|socket| {
                    Ok(Bound {
                        asked: None,
                        addr: socket.local_addr()?,
                        proxy: false,
                        sockets: vec![socket],
                    })
                })
                .collect::<Result<Vec<_>>>()?
        }
        None => bind_all(&cli, &[], worker_count(&cli)?)?,
    };
    let cpus = apply_cpu_plan(&cli, worker_count(&cli)?, &listeners);
    if socket_activated && !cli.proxy_protocol.is_empty() {
        warn!("--proxy-protocol is ignored with sockets from the service manager: they are served as plain listeners");
    }
    let workers = worker_count(&cli)?;
    let what = match &demo {
        Some(demo) => format!("the demo site from {}", demo.path().display()),
        None => cli
            .root
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    };
    let arch = match cli.arch {
        crate::ArchArg::Amped => format!("AMPED, {} helper process(es) each", cli.helpers),
        crate::ArchArg::Sped => "SPED".to_owned(),
    };
    // Room for two generations of the most workers (old and new during a
    // reload); a restarted worker reuses the slot of the one it replaces.
    let slots = 2 * MAX_WORKERS;
    let metrics = Arc::new(MetricsRegion::create(slots).context("metrics region")?);
    let health = Arc::new(Health::default());
    let metrics_addr = match cli.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (metrics)"))?;
            let local = listener.local_addr()?;
            let health = Arc::clone(&health);
            metrics_http::spawn(
                listener,
                Arc::clone(&metrics),
                Arc::new(move || health.healthy()),
            )?;
            Some(local)
        }
        None => None,
    };
    let mut supervisor = Supervisor {
        args,
        events,
        sender,
        plan: Plan {
            cli,
            cpus,
            args: expanded,
            workers,
            listeners,
        },
        generation: 1,
        last_generation: 1,
        workers: Vec::new(),
        next_id: 1,
        reload: None,
        restarts: VecDeque::new(),
        failures: vec![0; MAX_WORKERS],
        stopping: None,
        socket_activated,
        notifier,
        demo,
        metrics,
        free_slots: (0..slots).rev().collect(),
        health,
        deferred: Vec::new(),
    };
    supervisor.start_generation()?;
    info!("serving {what} ({workers} worker(s), {arch})");
    supervisor.plan.print_listeners();
    if let Some(addr) = metrics_addr {
        println!("metrics on http://{addr}");
    }
    supervisor.notifier.ready();
    supervisor.supervise()
}

/// `--workers`: a number, or `auto` (one per core).
pub fn worker_count(cli: &Cli) -> Result<usize> {
    let n = match cli.workers {
        crate::Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        crate::Workers::Count(n) => n,
    };
    if n == 0 || n > MAX_WORKERS {
        bail!("--workers {n}: between 1 and {MAX_WORKERS}");
    }
    Ok(n.min(MAX_WORKERS))
}

/// The CPU of each worker slot when workers are pinned, with each group's
/// connections steered to the worker on the CPU that receives them; `None`
/// (and no steering: the kernel's hash) otherwise.
fn cpu_plan(cli: &Cli, workers: usize, listeners: &[Bound]) -> Option<Vec<usize>> {
    if cli.cpu_affinity == crate::CpuAffinity::Off {
        return None;
    }
    let allowed = affinity::allowed_cpus()
        .inspect_err(|e| warn!("cannot read the CPU affinity ({e}): workers not pinned"))
        .ok()?;
    let cpus = affinity::plan(workers, &allowed)?;
    for bound in listeners.iter().filter(|b| b.sockets.len() == workers) {
        if let Err(e) = listen::steer_by_cpu(&bound.sockets[0], workers) {
            warn!(
                "cannot steer connections to {} by CPU ({e}): workers not pinned",
                bound.addr
            );
            return None;
        }
    }
    Some(cpus)
}

/// Pins the workers of `plan` as it says, or takes any steering a previous
/// plan attached off its groups (the kernel's hash spreads again).
fn apply_cpu_plan(cli: &Cli, workers: usize, listeners: &[Bound]) -> Option<Vec<usize>> {
    let cpus = cpu_plan(cli, workers, listeners);
    if cpus.is_none() {
        for bound in listeners.iter().filter(|b| b.sockets.len() > 1) {
            listen::stop_steering(&bound.sockets[0]);
        }
    }
    cpus
}

/// Binds every `--listen` address with a socket per worker, reusing the
/// sockets of `current` whose address is asked again (a reload keeps them,
/// and their queues), joining more to a group if there are more workers.
fn bind_all(cli: &Cli, current: &[Bound], workers: usize) -> Result<Vec<Bound>> {
    let addresses = crate::listen_addrs(cli).len() + cli.proxy_protocol.len();
    if addresses > flash_core::MAX_LISTENERS {
        bail!(
            "{addresses} listen addresses: at most {}",
            flash_core::MAX_LISTENERS
        );
    }
    let somaxconn = listen::somaxconn();
    let backlog = cli
        .backlog
        .or(somaxconn)
        .unwrap_or(listen::FALLBACK_BACKLOG);
    if let Some(cap) = somaxconn.filter(|&cap| backlog > cap) {
        warn!("--backlog {backlog} exceeds net.core.somaxconn; the kernel caps it at {cap}");
    }
    let plain = crate::listen_addrs(cli)
        .into_iter()
        .map(|addr| (addr, false));
    let proxied = cli.proxy_protocol.iter().map(|&addr| (addr, true));
    plain
        .chain(proxied)
        .map(|(addr, proxy)| {
            let context = || format!("cannot listen on {addr}");
            if let Some(bound) = current
                .iter()
                .find(|b| b.asked == Some(addr) && b.proxy == proxy)
            {
                let mut bound = bound.try_clone()?;
                // One socket per worker: sockets beyond are closed once the
                // old workers (which drain their queues as they stop) exit.
                bound.sockets.truncate(workers.max(1));
                let more = workers.saturating_sub(bound.sockets.len());
                bound
                    .sockets
                    .extend(listen::join(bound.addr, backlog, more).with_context(context)?);
                return Ok(bound);
            }
            let sockets = listen::bind_group(addr, backlog, workers).with_context(context)?;
            Ok(Bound {
                asked: Some(addr),
                addr: sockets[0].local_addr()?,
                proxy,
                sockets,
            })
        })
        .collect()
}

/// Forwards the signals the supervisor acts on to its loop.
fn watch_signals(sender: Sender<Event>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if sender.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

impl Supervisor {
    /// Starts the first generation and waits until it serves. A worker that
    /// cannot start is a configuration the operator must fix: the error is
    /// returned (the worker's own message is on stderr already).
    fn start_generation(&mut self) -> Result<()> {
        for slot in 0..self.plan.workers {
            self.spawn(slot, self.generation)?;
        }
        while self
            .workers
            .iter()
            .any(|w| matches!(w.phase, Phase::Starting(_)))
        {
            let deadline = self.next_deadline();
            let event = match self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => {
                    if self
                        .workers
                        .iter()
                        .any(|w| matches!(w.phase, Phase::Starting(t) if Instant::now() >= t))
                    {
                        self.kill_all();
                        bail!(
                            "a worker did not start in time (--helper-timeout + {START_MARGIN:?})"
                        );
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => bail!("event channel closed"),
            };
            match event {
                Event::Ready(id) => self.on_ready(id),
                Event::Exited(id, status) => {
                    self.remove(id);
                    self.stop_all_now();
                    bail!("a worker exited during startup ({})", describe(status));
                }
                Event::Signal(signal) if signal == SIGINT || signal == SIGTERM => {
                    // A stop asked for while starting is a stop like any
                    // other: graceful (a worker that serves already may have
                    // taken connections), exit 0. The loop does it.
                    self.deferred.push(signal);
                    return Ok(());
                }
                // Acted on once the server runs; each signal once, however
                // often it came.
                Event::Signal(signal) => {
                    if !self.deferred.contains(&signal) {
                        self.deferred.push(signal);
                    }
                }
            }
        }
        Ok(())
    }

    /// The loop after startup; returns when every worker has stopped.
    fn supervise(mut self) -> Result<()> {
        for signal in std::mem::take(&mut self.deferred) {
            self.handle(Event::Signal(signal));
        }
        loop {
            if self.stopping.is_some() && self.workers.is_empty() {
                info!("all workers stopped");
                drop(self.demo.take());
                return Ok(());
            }
            let deadline = self.next_deadline();
            match self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("event channel closed"),
            }
            self.on_time(Instant::now());
        }
    }

    /// The single place where the supervisor's state changes on an event.
    fn handle(&mut self, event: Event) {
        match event {
            Event::Signal(signal) if signal == SIGINT || signal == SIGTERM => {
                if self.stopping.is_some() {
                    // Second signal: no more waiting.
                    let name = if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    warn!("second {name}: exiting without finishing responses in flight");
                    self.kill_all();
                    drop(self.demo.take());
                    // SAFETY: _exit has no preconditions and does not return.
                    unsafe { libc::_exit(128 + signal) };
                }
                self.begin_stop();
            }
            Event::Signal(SIGHUP) => self.begin_reload(),
            Event::Signal(SIGUSR1) => {
                info!("reopening log files");
                if let Err(e) = access::prepare_reopen(&self.plan.cli) {
                    error!("{e:#}");
                }
                for w in &mut self.workers {
                    w.tell(worker::REOPEN);
                }
            }
            Event::Signal(_) => {}
            Event::Ready(id) => self.on_ready(id),
            Event::Exited(id, status) => self.on_exit(id, status),
        }
    }

    /// Deadlines: workers too slow to start or stop, restarts due.
    fn on_time(&mut self, now: Instant) {
        let mut late_starters = Vec::new();
        for w in &mut self.workers {
            match w.phase {
                Phase::Starting(t) if now >= t => {
                    warn!("worker {} did not start in time: killed", w.pid);
                    w.kill();
                    w.phase = Phase::Killed;
                    late_starters.push(w.generation);
                }
                Phase::Stopping(t) if now >= t => {
                    warn!(
                        "worker {} still running {STOP_GRACE:?} past the shutdown timeout: killed",
                        w.pid
                    );
                    w.kill();
                    w.phase = Phase::Killed;
                }
                _ => {}
            }
        }
        // A late starter of the current generation is restarted when its
        // exit comes (`on_exit`); one of a new generation ends the reload.
        if late_starters
            .iter()
            .any(|&g| self.reload.as_ref().is_some_and(|r| r.generation == g))
        {
            self.abandon_reload("a new worker did not start in time");
        }
        while self.restarts.front().is_some_and(|r| now >= r.at) {
            let Some(restart) = self.restarts.pop_front() else {
                break;
            };
            if self.stopping.is_none() {
                if let Err(e) = self.spawn(restart.slot, self.generation) {
                    error!("cannot restart a worker: {e:#}");
                    self.schedule_restart(restart.slot);
                }
            }
        }
        self.update_health();
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let phases = self.workers.iter().filter_map(|w| match w.phase {
            Phase::Starting(t) | Phase::Stopping(t) => Some(t),
            Phase::Serving | Phase::Killed => None,
        });
        let restarts = self.restarts.iter().map(|r| r.at);
        phases.chain(restarts).fold(far, Instant::min)
    }

    fn on_ready(&mut self, id: u64) {
        let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
            return;
        };
        if let Phase::Starting(_) = w.phase {
            w.phase = Phase::Serving;
        }
        let generation = w.generation;
        self.update_health();
        if let Some(reload) = &self.reload {
            let complete = reload.generation == generation
                && self
                    .workers
                    .iter()
                    .filter(|w| w.generation == generation)
                    .all(|w| w.phase == Phase::Serving);
            if complete {
                self.finish_reload();
            }
        }
    }

    /// Forgets worker `id`, which exited: its metrics slot's gauges go back
    /// to zero (its counters stay in the sums) and the slot is free again.
    fn remove(&mut self, id: u64) -> Option<Worker> {
        let at = self.workers.iter().position(|w| w.id == id)?;
        let w = self.workers.swap_remove(at);
        self.metrics.clear_gauges(w.metrics_slot);
        self.free_slots.push(w.metrics_slot);
        self.update_health();
        Some(w)
    }

    fn update_health(&self) {
        let serving = self
            .workers
            .iter()
            .filter(|w| w.phase == Phase::Serving)
            .count();
        self.health.serving.store(serving, Ordering::Relaxed);
        self.health
            .stopping
            .store(self.stopping.is_some(), Ordering::Relaxed);
    }

    fn on_exit(&mut self, id: u64, status: ExitStatus) {
        let Some(w) = self.remove(id) else {
            return;
        };
        if self.stopping.is_some() || matches!(w.phase, Phase::Stopping(_)) {
            // Asked to stop (shutdown, or the old generation of a reload).
            if !status.success() {
                warn!(
                    "worker {} exited while stopping ({})",
                    w.pid,
                    describe(status)
                );
            }
            return;
        }
        if let Some(reload) = &self.reload {
            if reload.generation == w.generation {
                error!("a new worker exited ({}) before serving", describe(status));
                self.abandon_reload("a new worker could not start");
                return;
            }
        }
        if w.generation != self.generation {
            // Of an abandoned reload (killed), or a generation replaced.
            return;
        }
        // Unexpected, or killed for not starting: restart it, after a
        // pause if it keeps dying.
        let lived = w.started.elapsed();
        if lived >= STABLE_RUN {
            self.failures[w.slot] = 0;
        }
        let delay = self.backoff(w.slot);
        warn!(
            "worker {} exited ({}) after {:.1}s; restarting it{}",
            w.pid,
            describe(status),
            lived.as_secs_f64(),
            if delay.is_zero() {
                String::new()
            } else {
                format!(" in {delay:?}")
            }
        );
        self.push_restart(Instant::now() + delay, w.slot);
    }

    fn push_restart(&mut self, at: Instant, slot: usize) {
        self.restarts.push_back(Restart { at, slot });
        self.restarts.make_contiguous().sort_by_key(|r| r.at);
    }

    /// The pause before the next restart of `slot`, counting this death.
    fn backoff(&mut self, slot: usize) -> Duration {
        let failures = self.failures[slot];
        self.failures[slot] = failures.saturating_add(1);
        if failures == 0 {
            return Duration::ZERO;
        }
        RESTART_BASE
            .saturating_mul(1 << (failures - 1).min(16))
            .min(RESTART_MAX)
    }

    fn schedule_restart(&mut self, slot: usize) {
        let delay = self.backoff(slot).max(RESTART_BASE);
        self.push_restart(Instant::now() + delay, slot);
    }

    /// SIGHUP: re-read the command line and configuration; start a new
    /// generation with it; the old one stops once the new one serves.
    fn begin_reload(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if self.reload.is_some() {
            warn!("reload already in progress; SIGHUP ignored");
            return;
        }
        info!("reloading the configuration");
        let plan = match self.load_plan() {
            Ok(plan) => plan,
            Err(e) => {
                error!("reload refused, the running workers keep serving: {e:#}");
                return;
            }
        };
        self.notifier.reloading();
        // Never reused: the workers of an abandoned reload may still be
        // exiting when the next one starts.
        self.last_generation += 1;
        let generation = self.last_generation;
        let workers = plan.workers;
        self.reload = Some(Reload { generation, plan });
        for slot in 0..workers {
            if let Err(e) = self.spawn(slot, generation) {
                error!("reload failed: cannot start a worker: {e:#}");
                self.abandon_reload("a new worker could not be started");
                return;
            }
        }
    }

    /// The new configuration, checked as far as possible before any worker runs it.
    fn load_plan(&self) -> Result<Plan> {
        let (cli, args) = settings::load_expanded::<Cli>(&self.args)?;
        locate(&cli, self.demo.as_ref().map(|d| d.path().to_path_buf()))?;
        if let Some(user) = &cli.user {
            process::lookup_user(user)?;
        }
        let workers = worker_count(&cli)?;
        let listeners = if self.socket_activated {
            self.plan
                .listeners
                .iter()
                .map(Bound::try_clone)
                .collect::<Result<Vec<_>>>()?
        } else {
            bind_all(&cli, &self.plan.listeners, workers)?
        };
        let cpus = apply_cpu_plan(&cli, workers, &listeners);
        Ok(Plan {
            cli,
            cpus,
            args,
            workers,
            listeners,
        })
    }

    /// Every new worker serves: the old generation stops, the new plan rules.
    fn finish_reload(&mut self) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        let old = self.generation;
        self.generation = reload.generation;
        self.plan = reload.plan;
        self.restarts.clear();
        let stop_at = after(self.plan.cli.shutdown_timeout.saturating_add(STOP_GRACE));
        for w in self.workers.iter_mut().filter(|w| w.generation == old) {
            w.tell(worker::STOP);
            w.phase = Phase::Stopping(stop_at);
        }
        // Old-only listeners: the old workers closed theirs on STOP.
        self.update_health();
        info!("configuration reloaded ({} worker(s))", self.plan.workers);
        self.plan.print_listeners();
        self.notifier.ready();
    }

    /// The new generation cannot serve: it goes, the old one stays.
    fn abandon_reload(&mut self, why: &str) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        error!("reload abandoned ({why}); the running workers keep serving");
        for w in self
            .workers
            .iter_mut()
            .filter(|w| w.generation == reload.generation)
        {
            w.kill();
            w.phase = Phase::Killed;
        }
        self.update_health();
        self.notifier.ready();
    }

    /// SIGINT/SIGTERM: every worker finishes its responses and exits.
    fn begin_stop(&mut self) {
        info!("stopping: workers finish the responses in flight");
        self.notifier.stopping();
        let stop_at = after(self.plan.cli.shutdown_timeout.saturating_add(STOP_GRACE));
        self.stopping = Some(stop_at);
        self.update_health();
        self.reload = None;
        self.restarts.clear();
        for w in &mut self.workers {
            w.tell(worker::STOP);
            w.phase = match w.phase {
                Phase::Stopping(t) => Phase::Stopping(t.min(stop_at)),
                Phase::Killed => Phase::Killed,
                _ => Phase::Stopping(stop_at),
            };
        }
        // The supervisor's copies: no new connection is queued from now on.
        self.plan.listeners.clear();
    }

    fn kill_all(&self) {
        for w in &self.workers {
            w.kill();
        }
    }

    /// Startup failed: kill what started and wait for it (bounded).
    fn stop_all_now(&mut self) {
        self.kill_all();
        let deadline = Instant::now() + STOP_GRACE;
        while !self.workers.is_empty() {
            match self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Event::Exited(id, _)) => {
                    self.remove(id);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    /// Starts a worker for `slot` of `generation`, with that generation's plan.
    fn spawn(&mut self, slot: usize, generation: u64) -> Result<()> {
        let Some(metrics_slot) = self.free_slots.pop() else {
            bail!("no free metrics slot (too many workers at once)");
        };
        let spawned = self.spawn_in_slot(slot, generation, metrics_slot);
        if spawned.is_err() {
            self.free_slots.push(metrics_slot);
        }
        spawned
    }

    fn spawn_in_slot(&mut self, slot: usize, generation: u64, metrics_slot: usize) -> Result<()> {
        let plan = match &self.reload {
            Some(reload) if reload.generation == generation => &reload.plan,
            _ => &self.plan,
        };
        let (ours, theirs) = UnixStream::pair().context("control socket")?;
        // Everything that can fail is done before the process exists, so a
        // failure leaves no unwatched child behind.
        let id = self.next_id;
        self.next_id += 1;
        let killable = Arc::new(Mutex::new(None));
        let (hand_child, child_handed) = mpsc::channel();
        watch_worker(
            id,
            child_handed,
            ours.try_clone()?,
            Arc::clone(&killable),
            self.sender.clone(),
        )?;
        fds::set_cloexec(&theirs, false)?;
        let workers = plan.workers;
        let start_timeout = plan.cli.helper_timeout.saturating_add(START_MARGIN);
        let sockets: Vec<(&TcpListener, bool)> = plan
            .listeners
            .iter()
            .flat_map(|b| b.sockets_for(slot, workers).map(|s| (s, b.proxy)))
            .collect();
        // `FD` for a plain listener, `FD:proxy` for a PROXY protocol one.
        let listener_fds: Vec<String> = sockets
            .iter()
            .map(|(s, proxy)| {
                let fd = s.as_raw_fd();
                if *proxy {
                    format!("{fd}:proxy")
                } else {
                    fd.to_string()
                }
            })
            .collect();
        let sockets: Vec<&TcpListener> = sockets.into_iter().map(|(s, _)| s).collect();
        let mut command = Command::new(worker_program());
        command
            .args(plan.args.iter().skip(1))
            .env(worker::CONTROL_ENV, theirs.as_raw_fd().to_string())
            .env(worker::LISTENERS_ENV, listener_fds.join(","))
            .env(
                worker::CPU_ENV,
                plan.cpus
                    .as_ref()
                    .and_then(|cpus| cpus.get(slot))
                    .map_or(String::new(), usize::to_string),
            )
            .env(
                worker::METRICS_ENV,
                format!("{}:{metrics_slot}", self.metrics.fd().as_raw_fd()),
            )
            .stdin(Stdio::null());
        if let Some(arg0) = self.args.first() {
            std::os::unix::process::CommandExt::arg0(&mut command, arg0);
        }
        if let Some(demo) = &self.demo {
            command.env(worker::ROOT_ENV, demo.path());
        }
        // Exactly these descriptors reach the worker: inheritable only for
        // this spawn (only this thread spawns processes).
        let metrics_fd = self.metrics.fd();
        for socket in &sockets {
            fds::set_cloexec(*socket, false)?;
        }
        fds::set_cloexec(&metrics_fd, false)?;
        let spawned = command.spawn();
        for socket in &sockets {
            fds::set_cloexec(*socket, true)?;
        }
        fds::set_cloexec(&metrics_fd, true)?;
        let child = spawned.context("cannot start a worker process")?;
        // The child has its copy; ours would keep its end from ever closing.
        drop(theirs);
        let pid = child.id();
        *killable.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
        // The watcher exists already: once handed the child it always reaps it.
        let _ = hand_child.send(child);
        self.workers.push(Worker {
            id,
            metrics_slot,
            slot,
            generation,
            pid,
            killable,
            control: ours,
            phase: Phase::Starting(after(start_timeout)),
            started: Instant::now(),
        });
        Ok(())
    }
}

/// This executable, by name (so workers show as `flash-server` in `ps`),
/// or through /proc if it was deleted (replaced by a package upgrade: the
/// running version's workers must match it).
fn worker_program() -> PathBuf {
    match std::env::current_exe() {
        Ok(path) if path.is_file() => path,
        _ => PathBuf::from("/proc/self/exe"),
    }
}

/// One thread per worker: gets the child once it is spawned (or nothing,
/// if spawning failed), forwards its reports, then reaps it.
fn watch_worker(
    id: u64,
    child: Receiver<std::process::Child>,
    mut control: UnixStream,
    killable: Arc<Mutex<Option<u32>>>,
    sender: Sender<Event>,
) -> Result<()> {
    std::thread::Builder::new()
        .name(format!("worker-{id}"))
        .spawn(move || {
            let Ok(mut child) = child.recv() else {
                return;
            };
            let mut byte = [0u8; 1];
            let mut reported = false;
            while let Ok(1) = control.read(&mut byte) {
                // Once: a worker repeating itself cannot flood the loop.
                if byte[0] == worker::READY && !reported {
                    reported = true;
                    if sender.send(Event::Ready(id)).is_err() {
                        break;
                    }
                }
            }
            // The control socket ended: the worker is exiting (or exited).
            *killable.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let status = child
                .wait()
                .unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL));
            let _ = sender.send(Event::Exited(id, status));
        })
        .context("cannot start a worker watcher thread")?;
    Ok(())
}

/// The instant `wait` from now, the wait capped as the engine caps its
/// timeouts (`--helper-timeout 100y` must not overflow the clock).
fn after(wait: Duration) -> Instant {
    Instant::now() + wait.min(flash_core::config::MAX_TIMEOUT)
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}
