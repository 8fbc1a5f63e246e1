//! SIGINT and SIGTERM. The first asks the engine for a graceful shutdown
//! (stop accepting, finish responses in flight, bounded by
//! `--shutdown-timeout`); a second one ends the process at once, as a user
//! pressing Ctrl-C again expects, instead of waiting out the grace period.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Starts watching for the signals. Returns a socket that becomes readable
/// on the first one (the engine's shutdown source). On the second, the
/// demo site directory `demo` (if any) is removed and the process exits
/// with 128 + the signal number; helpers follow by their parent-death signal.
pub fn watch(demo: Option<PathBuf>) -> Result<OwnedFd> {
    let (read_end, mut write_end) = UnixStream::pair()?;
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signals = signals.forever();
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
