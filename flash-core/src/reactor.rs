//! Registration of descriptors with the `polling` poller.
//!
//! `Poller::add` is unsafe because the poller must not outlive the
//! registration of a closed descriptor. Every owner in this crate calls
//! [`deregister`] before dropping a registered descriptor (connections in
//! `server.rs`, helper sockets in `pool.rs`, listeners at shutdown), which is
//! the invariant these wrappers rely on.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use polling::{Event, PollMode, Poller};

/// Level-triggered: listeners, helper sockets, the shutdown pipe.
pub fn register_level(poller: &Poller, fd: BorrowedFd<'_>, interest: Event) -> io::Result<()> {
    // SAFETY: the caller deregisters `fd` before closing it (module invariant).
    unsafe { poller.add_with_mode(fd.as_raw_fd(), interest, PollMode::Level) }
}

/// Edge-triggered for both directions: client connections. Registered once;
/// the connection tracks readiness itself, so no `epoll_ctl` per request.
pub fn register_edge(poller: &Poller, fd: BorrowedFd<'_>, key: usize) -> io::Result<()> {
    // SAFETY: the caller deregisters `fd` before closing it (module invariant).
    unsafe { poller.add_with_mode(fd.as_raw_fd(), Event::all(key), PollMode::Edge) }
}

/// Changes the interest of a level-triggered registration.
pub fn modify_level(poller: &Poller, fd: BorrowedFd<'_>, interest: Event) -> io::Result<()> {
    poller.modify_with_mode(fd, interest, PollMode::Level)
}

/// Removes `fd` from the poller; must precede closing it.
pub fn deregister(poller: &Poller, fd: BorrowedFd<'_>) {
    // An error means it was not registered; nothing to undo.
    let _ = poller.delete(fd);
}
