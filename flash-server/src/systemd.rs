//! The two systemd protocols a service speaks, without linking libsystemd:
//! socket activation (`LISTEN_FDS`/`LISTEN_PID`, sd_listen_fds(3)) and
//! readiness notification (`NOTIFY_SOCKET`, sd_notify(3)). Both are plain
//! environment variables and a datagram socket, so they also work under any
//! other manager that implements them (and are tested without systemd).

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

use anyhow::{bail, Result};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Listening sockets passed by the service manager, if it passed any to
/// this process. The variables are removed either way, so no child takes
/// them for its own. Each must be a listening TCP socket.
pub fn listen_fds() -> Result<Option<Vec<TcpListener>>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (an ancestor's variables leaked here).
        return Ok(None);
    }
    let Ok(count) = count.trim().parse::<RawFd>() else {
        bail!("LISTEN_FDS={count:?} is not a number");
    };
    let most = flash_core::MAX_LISTENERS as RawFd;
    if !(1..=most).contains(&count) {
        bail!("LISTEN_FDS={count}: expected 1 to {most} sockets");
    }
    (LISTEN_FDS_START..LISTEN_FDS_START + count)
        .map(|fd| {
            if !crate::fds::is_listening_tcp(fd) {
                bail!("descriptor {fd} from LISTEN_FDS is not a listening TCP socket");
            }
            // SAFETY: the service manager passed `fd` to this process for it
            // to own (sd_listen_fds(3)); nothing else in the process uses it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            crate::fds::set_cloexec(&owned, true)?;
            Ok(TcpListener::from(owned))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Where to send readiness notifications (`NOTIFY_SOCKET`), taken from the
/// environment once so that children do not inherit it.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Reads and removes `NOTIFY_SOCKET`; a notifier that does nothing if unset.
    pub fn from_env() -> Notifier {
        let path = std::env::var_os("NOTIFY_SOCKET");
        std::env::remove_var("NOTIFY_SOCKET");
        let socket = path.and_then(|path| {
            let addr = notify_address(path.as_encoded_bytes())
                .inspect_err(|e| log::warn!("NOTIFY_SOCKET unusable: {e}"))
                .ok()?;
            let socket = UnixDatagram::unbound()
                .inspect_err(|e| log::warn!("cannot notify the service manager: {e}"))
                .ok()?;
            Some((socket, addr))
        });
        Notifier { socket }
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines). Failures are
    /// logged, never fatal: the server serves whether or not anyone listens.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                log::warn!("cannot notify the service manager ({state:?}): {e}");
            }
        }
    }

    /// `READY=1` with the main process id (the supervisor).
    pub fn ready(&self) {
        self.notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    }

    /// `RELOADING=1`, with the monotonic timestamp systemd 253+ asks for.
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }
}

/// `/path` or `@abstract` (sd_notify(3)).
fn notify_address(path: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match path.split_first() {
        Some((b'@', name)) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        Some((b'/', _)) => std::os::unix::net::SocketAddr::from_pathname(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path),
        ),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract name",
        )),
    }
}

/// CLOCK_MONOTONIC in microseconds.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_addresses() {
        assert!(notify_address(b"/run/systemd/notify").is_ok());
        assert!(notify_address(b"@abstract").is_ok());
        assert!(notify_address(b"relative").is_err());
        assert!(notify_address(b"").is_err());
    }
}
