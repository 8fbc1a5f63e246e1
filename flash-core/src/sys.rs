//! Small safe wrappers over the libc calls the main process needs.
//!
//! Every `unsafe` block of the event loop lives here, each with the reason it
//! is sound. None of these calls can wait on the disk: the main process uses
//! `sendfile`/`writev` only on pages it has checked (or, in SPED mode, on
//! purpose), `mincore` only reads residency, and `preadv2` is always called
//! with `RWF_NOWAIT`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`: one call instead of three.
pub fn accept_nonblocking(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed by accept4; the returned
    // descriptor is new and owned by nobody else.
    let fd = cvt(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by accept4 and is owned by us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `bytes`; with `more`, tells TCP that more data follows (MSG_MORE), so
/// a response head and the `sendfile` body after it leave in one segment.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: the pointer and length come from a live slice.
    cvt_size(unsafe { libc::send(sock.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), flags) })
}

/// `writev` of a response head and a body held in memory.
pub fn writev2(sock: BorrowedFd<'_>, head: &[u8], body: &[u8]) -> io::Result<usize> {
    let iov = [
        libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        },
    ];
    let count = if body.is_empty() { 1 } else { 2 };
    // SAFETY: both buffers are live slices; the kernel only reads them.
    cvt_size(unsafe { libc::writev(sock.as_raw_fd(), iov.as_ptr(), count) })
}

/// A region of mapped file memory that user code must never read: only its
/// address goes to the kernel (`mincore`).
#[derive(Clone, Copy, Debug)]
pub struct RawRegion {
    pub ptr: *const u8,
    pub len: usize,
}

/// `sendfile` from `file` at `*offset`, advancing it.
pub fn sendfile(
    sock: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    let mut off = *offset as libc::off_t;
    // SAFETY: both descriptors are live for the call; `off` is a valid pointer.
    let sent =
        cvt_size(unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, count) })?;
    *offset = off as u64;
    Ok(sent)
}

/// Page size of this machine.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

/// Fills `vec` with one residency byte per page of `region` (which must start
/// on a page boundary). Reads page-table state only, never the pages.
pub fn mincore(region: RawRegion, vec: &mut Vec<u8>) -> io::Result<()> {
    let pages = region.len.div_ceil(page_size());
    vec.clear();
    vec.resize(pages, 0);
    // SAFETY: `region` lies inside a live mapping and is page aligned (callers
    // guarantee it); `vec` holds one byte per page as mincore requires.
    cvt(unsafe {
        libc::mincore(
            region.ptr as *mut libc::c_void,
            region.len,
            vec.as_mut_ptr(),
        )
    })?;
    Ok(())
}

/// `preadv2(RWF_NOWAIT)`: reads only what is already in the page cache and
/// fails with EAGAIN instead of waiting for the disk.
pub fn pread_nowait(file: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the iovec describes `buf`, which is live and writable.
    cvt_size(unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    })
}

/// `shutdown(SHUT_WR)`: sends FIN after the last response byte.
pub fn shutdown_write(sock: BorrowedFd<'_>) {
    // SAFETY: shutdown has no memory-safety preconditions. Errors (peer gone)
    // need no handling: the socket is closing anyway.
    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_WR) };
}

/// Makes the coming `close` of `sock` abort the connection (RST) instead of
/// queueing a FIN behind unsent data: the kernel then frees the socket's
/// buffers at once rather than keeping an orphan that a client which never
/// reads could hold for minutes (nginx's `reset_timedout_connection`).
pub fn reset_on_close(sock: BorrowedFd<'_>) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // An error (socket already reset by the peer) needs no handling: the
    // socket is closing anyway.
    let _ = set_option(sock, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
}

/// `setsockopt(sock, level, name, value)`, the option's value being a `T`
/// (a `c_int` for flags and sizes, a `linger`...).
fn set_option<T>(sock: BorrowedFd<'_>, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: the option value points to a live `T` of the size passed; the
    // kernel only reads it, and rejects a size wrong for the option.
    cvt(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// How far a client has taken what was written to its socket, from
/// `TCP_INFO` (Linux 4.6+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpProgress {
    /// Bytes the peer acknowledged (`tcpi_bytes_acked`): what a client has
    /// actually taken, unlike what was written, which the socket buffer may
    /// hold for a long time.
    pub acked: u64,
    /// Bytes written but not yet sent (`tcpi_notsent_bytes`): 0 means the
    /// kernel has nothing waiting on the client.
    pub notsent: u32,
}

/// The client's progress on `sock`; `None` if the kernel does not say.
pub fn tcp_progress(sock: BorrowedFd<'_>) -> Option<TcpProgress> {
    // SAFETY: tcp_info is plain integers; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_notsent_bytes) + 4;
    (rc == 0 && len as usize >= needed).then_some(TcpProgress {
        acked: info.tcpi_bytes_acked,
        notsent: info.tcpi_notsent_bytes,
    })
}

/// Bytes the kernel still holds for the peer of `sock`, sent or not
/// (`SIOCOUTQ`); 0 if it cannot tell.
pub fn queued_bytes(sock: BorrowedFd<'_>) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one c_int to the pointer we own.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc == 0 {
        usize::try_from(queued).unwrap_or(0)
    } else {
        0
    }
}

/// Sets `TCP_NOTSENT_LOWAT` on `sock`: a write is refused (`EAGAIN`), and
/// writability withheld, while more than `bytes` written are still unsent.
/// Set on a listening socket, accepted sockets inherit it.
pub fn set_notsent_lowat(sock: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_option(sock, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, &value)
}

/// Turns off Nagle's algorithm: responses are written whole, so there is no
/// small-write pattern to coalesce, and delaying them costs latency.
pub fn set_nodelay(sock: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    set_option(sock, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one)
}

/// Sets or clears O_NONBLOCK.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL has no memory-safety preconditions.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let new = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if new != flags {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, new) })?;
    }
    Ok(())
}

/// Ignores SIGINT and SIGQUIT, the signals a terminal sends its foreground
/// process group (Ctrl-C, Ctrl-\\). Async-signal-safe, so usable in a child
/// between fork and exec (the disposition survives exec).
pub fn ignore_terminal_signals() {
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: signal(2) is async-signal-safe; SIG_IGN runs no code.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// A close-on-exec duplicate of `fd` numbered 10 or above, in a child
/// between fork and exec (to move a descriptor out of the way of a fixed
/// number). Async-signal-safe.
pub fn dup_in_child(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: fcntl is async-signal-safe and has no memory preconditions.
    cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) })
}

/// Makes `fd` the descriptor number `target` in a child between fork and
/// exec, without close-on-exec. Only async-signal-safe calls.
pub fn install_fd_in_child(fd: RawFd, target: RawFd) -> io::Result<()> {
    if fd == target {
        // dup2 onto itself would keep FD_CLOEXEC; clear it instead.
        // SAFETY: fcntl is async-signal-safe and has no memory preconditions.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
    } else {
        // SAFETY: dup2 is async-signal-safe; the new descriptor has no CLOEXEC.
        cvt(unsafe { libc::dup2(fd, target) })?;
    }
    Ok(())
}

/// Effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// The soft limit on open descriptors (`RLIMIT_NOFILE`).
pub fn descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// The most mappings a process may have (`vm.max_map_count`), read once at
/// start; the kernel's default when unreadable.
pub fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65_530)
}
