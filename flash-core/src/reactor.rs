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

/// Listening sockets: level-triggered with `EPOLLEXCLUSIVE`. Several
/// worker processes wait on one shared listener, each in its own epoll
/// instance; without the flag every connection wakes all of them and all
/// but one find nothing to accept (the thundering herd). The kernel then
/// wakes one waiter per connection instead. `polling` has no way to ask for
/// the flag, so this calls `epoll_ctl` on the poller's own epoll descriptor
/// with the same event layout `polling` reads back (the key in `u64`).
/// Such a registration cannot be modified (the kernel refuses `EPOLL_CTL_MOD`
/// on it): pause accepting with [`deregister`] and register it again.
pub fn register_listener(poller: &Poller, fd: BorrowedFd<'_>, key: usize) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
        u64: key as u64,
    };
    // SAFETY: both descriptors are valid for the call; `event` is a valid
    // epoll_event. The caller deregisters `fd` before closing it (module
    // invariant), as for every other registration.
    let rc = unsafe {
        libc::epoll_ctl(
            poller.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            &mut event,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Edge-triggered for both directions: client connections. Registered once;
/// the connection tracks readiness itself, so no `epoll_ctl` per request.
pub fn register_edge(poller: &Poller, fd: BorrowedFd<'_>, key: usize) -> io::Result<()> {
    // SAFETY: the caller deregisters `fd` before closing it (module invariant).
    unsafe { poller.add_with_mode(fd.as_raw_fd(), Event::all(key), PollMode::Edge) }
}

/// Removes `fd` from the poller; must precede closing it.
pub fn deregister(poller: &Poller, fd: BorrowedFd<'_>) {
    // An error means it was not registered; nothing to undo.
    let _ = poller.delete(fd);
}
