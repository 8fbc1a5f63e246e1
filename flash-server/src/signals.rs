//! SIGINT and SIGTERM. The first asks the engine for a graceful shutdown
//! (stop accepting, finish responses in flight, bounded by
//! `--shutdown-timeout`); a second one ends the process at once, as a user
//! pressing Ctrl-C again expects, instead of waiting out the grace period.
//! SIGUSR1 reopens the access log (after logrotate renamed it), like nginx.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{Context, Result};
use flash_core::AccessLogHandle;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

/// Starts watching for the signals. Returns a socket that becomes readable
/// on the first one (the engine's shutdown source). On the second, the
/// demo site directory `demo` (if any) is removed and the process exits
/// with 128 + the signal number; helpers follow by their parent-death signal.
/// SIGUSR1 makes `access_log` (if any) reopen its file, and is ignored
/// without one.
pub fn watch(demo: Option<PathBuf>, access_log: Option<AccessLogHandle>) -> Result<OwnedFd> {
    let (read_end, mut write_end) = UnixStream::pair()?;
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signals = signals.forever().filter(|&signal| {
                if signal != SIGUSR1 {
                    return true;
                }
                if let Some(log) = &access_log {
                    log.reopen();
                }
                false
            });
            if signals.next().is_some() {
                // Nothing to do if the engine has gone: the process is exiting.
                let _ = write_end.write_all(&[1]);
            }
            if let Some(signal) = signals.next() {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                log::warn!("second {name}: exiting without finishing responses in flight");
                if let Some(dir) = &demo {
                    let _ = std::fs::remove_dir_all(dir);
                }
                // _exit, not exit: the main thread may be exiting at the same
                // moment, and exit is not safe to run twice concurrently.
                // Nothing is lost: stdout lines are flushed as they are
                // printed and the log goes unbuffered to stderr.
                // SAFETY: _exit has no preconditions and does not return.
                unsafe { libc::_exit(128 + signal) };
            }
        })
        .context("cannot start the signal thread")?;
    Ok(OwnedFd::from(read_end))
}
