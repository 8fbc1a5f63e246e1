//! A worker process: one complete AMPED engine (its own event loop and
//! helper processes) serving the listening sockets its supervisor bound and
//! passed down. The supervisor starts it by running this same executable
//! with the same arguments plus the environment below; the worker reports
//! on its control socket when it serves, and obeys it:
//!
//! | byte | from | meaning |
//! |---|---|---|
//! | `R` | worker | ready: the engine and its helpers run |
//! | `S` | supervisor | stop gracefully (finish responses in flight, exit 0) |
//! | `O` | supervisor | reopen the log files |
//!
//! End of file on the control socket (the supervisor is gone) also stops the
//! worker gracefully: workers never outlive their supervisor for long. The
//! worker keeps its end open until it exits, so the end of the socket tells
//! the supervisor the worker is gone.
//! Signals from a terminal (Ctrl-C reaches the whole process group) are
//! ignored here: the supervisor decides. SIGTERM sent to a worker itself
//! stops it gracefully (the supervisor then starts another).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use flash_core::{AccessLog, AccessLogHandle, MetricsRegion, Server};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

use crate::{access, affinity, engine_config, fds, locate, process, Cli};

/// Environment variable naming the worker's control socket descriptor; its
/// presence makes the process a worker.
pub const CONTROL_ENV: &str = "FLASH_WORKER";
/// The inherited listening sockets, as a comma-separated descriptor list
/// (`FD:proxy` for one that expects a PROXY protocol header).
pub const LISTENERS_ENV: &str = "FLASH_LISTEN_FDS";
/// The CPU this worker's event loop is pinned to (empty: not pinned).
pub const CPU_ENV: &str = "FLASH_CPU";
/// The metrics region's descriptor and this worker's slot in it: `FD:SLOT`.
pub const METRICS_ENV: &str = "FLASH_METRICS";
/// The document root when the supervisor chose it (the demo site).
pub const ROOT_ENV: &str = "FLASH_ROOT";

pub const READY: u8 = b'R';
pub const STOP: u8 = b'S';
pub const REOPEN: u8 = b'O';

/// What the supervisor handed down, read from the environment.
pub struct Inherited {
    control: UnixStream,
    listeners: Vec<TcpListener>,
    /// Indices of the listeners that expect a PROXY protocol header.
    proxied: Vec<usize>,
    root: Option<PathBuf>,
    metrics: Option<(Arc<MetricsRegion>, usize)>,
    cpu: Option<usize>,
}

impl Inherited {
    /// `Some` when this process was started as a worker. The descriptors
    /// are taken over (and closed on exec, so helpers do not inherit them);
    /// the variables are removed.
    pub fn from_env() -> Result<Option<Inherited>> {
        let Some(control) = std::env::var_os(CONTROL_ENV) else {
            return Ok(None);
        };
        let listeners = std::env::var(LISTENERS_ENV).unwrap_or_default();
        let root = std::env::var_os(ROOT_ENV).map(PathBuf::from);
        let metrics = std::env::var(METRICS_ENV).ok();
        let cpu = std::env::var(CPU_ENV).ok().and_then(|c| c.parse().ok());
        for name in [CONTROL_ENV, LISTENERS_ENV, ROOT_ENV, METRICS_ENV, CPU_ENV] {
            std::env::remove_var(name);
        }
        let control = UnixStream::from(take_fd(&control.to_string_lossy())?);
        let mut proxied = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let listeners = listeners
            .split(',')
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, fd)| {
                let fd = match fd.strip_suffix(":proxy") {
                    Some(fd) => {
                        proxied.push(i);
                        fd
                    }
                    None => fd,
                };
                if !seen.insert(fd) {
                    bail!("descriptor {fd} handed down twice");
                }
                Ok(TcpListener::from(take_fd(fd)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let metrics = match metrics.as_deref().and_then(|m| m.split_once(':')) {
            Some((fd, slot)) => {
                let region = MetricsRegion::open(take_fd(fd)?).context("metrics region")?;
                let slot: usize = slot.parse().context("metrics slot")?;
                if slot >= region.len() {
                    bail!("metrics slot {slot} out of range");
                }
                Some((Arc::new(region), slot))
            }
            None => None,
        };
        Ok(Some(Inherited {
            control,
            listeners,
            proxied,
            root,
            metrics,
            cpu,
        }))
    }
}

/// Takes ownership of the inherited descriptor number `text`.
fn take_fd(text: &str) -> Result<OwnedFd> {
    let fd: RawFd = text
        .trim()
        .parse()
        .with_context(|| format!("bad inherited descriptor {text:?}"))?;
    // Only descriptors past stdio, and open ones.
    // SAFETY: F_GETFD reads the flags of a descriptor number; on a closed
    // one it fails with EBADF and touches nothing.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("inherited descriptor {fd} is not open");
    }
    // SAFETY: the supervisor passed `fd` to this process for it alone;
    // nothing else here has taken it (each number is taken once: the
    // listeners are checked for duplicates, the others are distinct sockets).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fds::set_cloexec(&owned, true)?;
    Ok(owned)
}

/// Runs the worker until it is told to stop.
pub fn run(cli: Cli, inherited: Inherited) -> Result<()> {
    let Inherited {
        control,
        listeners,
        proxied,
        root,
        metrics,
        cpu,
    } = inherited;
    let (shutdown, shutdown_trigger) = UnixStream::pair()?;
    watch_signals(&shutdown_trigger)?;
    let (root, helper_path) = locate(&cli, root)?;
    // Opened with the privileges the worker starts with, like nginx's.
    let access_log = access::open(&cli.access_log, cli.log_format)?;
    let log_handle = access_log.as_ref().map(AccessLog::handle);
    if let Some(user) = cli.user.as_deref().map(process::lookup_user).transpose()? {
        // Already that user (a service manager started us as it): nothing
        // to do; otherwise switching needs root, and fails clearly without.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != user.uid {
            process::drop_privileges(&user)?;
        }
    }
    // As the user the worker now runs as: a root it cannot read would
    // otherwise only show as helpers failing to start.
    if let Err(e) = std::fs::read_dir(&root) {
        bail!(
            "document root {} is not readable by this process ({e}); with --user, the user must be able to read it",
            root.display()
        );
    }
    let mut config = engine_config(&cli, root, helper_path);
    config.proxy_protocol.listeners = proxied;
    let mut server = Server::new(config, listeners, Some(OwnedFd::from(shutdown)))
        .context("cannot start the server")?;
    if let Some(log) = access_log {
        server.set_access_log(log);
    }
    if let Some((region, slot)) = &metrics {
        server.set_metrics(region.slot(*slot));
    }
    log::debug!(
        "worker {} serving with {} helper process(es)",
        std::process::id(),
        server.helper_pids().len()
    );
    let mut reporter = control.try_clone()?;
    spawn_control_reader(control, shutdown_trigger, log_handle)?;
    // Ready once the helpers run. A supervisor that is gone cannot be told;
    // the worker serves anyway until its control socket reports the end.
    // Only the event loop: the log's writer thread keeps the whole mask, and
    // helpers (which inherit the pin when respawned) reset theirs at start,
    // to wait on the disk on any CPU.
    if let Some(cpu) = cpu {
        if let Err(e) = affinity::pin_this_thread(cpu) {
            log::warn!("cannot pin the worker to CPU {cpu}: {e}");
        }
    }
    server.notify_when_serving(move || {
        let _ = reporter.write_all(&[READY]);
    });
    server.run().context("event loop failed")?;
    Ok(())
}

/// SIGTERM stops this worker gracefully; SIGINT, SIGHUP and SIGUSR1 are the
/// supervisor's to act on (a terminal sends them to the whole group), so they
/// are caught and dropped here. Handlers, unlike ignored dispositions, do not
/// survive `exec`: helpers keep the default actions.
fn watch_signals(shutdown_trigger: &UnixStream) -> Result<()> {
    let mut trigger = shutdown_trigger.try_clone()?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGTERM {
                    let _ = trigger.write_all(&[1]);
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Reads the supervisor's orders until the control socket ends.
fn spawn_control_reader(
    mut control: UnixStream,
    mut shutdown_trigger: UnixStream,
    access_log: Option<AccessLogHandle>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            // The socket stays open until the process exits: its end is how
            // the supervisor knows this worker is gone (and no longer
            // signals its pid), so it must not end before.
            let mut byte = [0u8; 1];
            loop {
                match control.read(&mut byte) {
                    Ok(1) if byte[0] == REOPEN => {
                        if let Some(log) = &access_log {
                            log.reopen();
                        }
                    }
                    Ok(1) if byte[0] == STOP => {
                        let _ = shutdown_trigger.write_all(&[1]);
                    }
                    Ok(1) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // End of file (the supervisor is gone) or an error.
                    _ => {
                        let _ = shutdown_trigger.write_all(&[1]);
                        // Parked, holding the socket, until the process exits.
                        loop {
                            std::thread::park();
                        }
                    }
                }
            }
        })
        .context("cannot start the control thread")?;
    Ok(())
}
