//! Listening sockets with a backlog the server chooses. `TcpListener::bind`
//! listens with a backlog of 128, which a burst of connections overflows
//! long before the event loop gets to them; Linux lets `listen` be called
//! again on a listening socket to change it.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

/// Used when `net.core.somaxconn` cannot be read (the kernel's own default
/// since Linux 5.4).
pub const FALLBACK_BACKLOG: u32 = 4096;

/// The kernel's cap on listen backlogs (`net.core.somaxconn`), if readable.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Binds `addr` and listens with `backlog` (the kernel caps it at somaxconn).
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    let backlog = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
    // SAFETY: listen takes a descriptor and an integer; the descriptor is
    // owned by `listener`, which is alive for the whole call.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}
