//! Descriptors handed from the supervisor to its workers: which ones a
//! child inherits (`FD_CLOEXEC`), and what an inherited one is.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Sets or clears `FD_CLOEXEC`: cleared, the descriptor survives `exec` into
/// the next child spawned; set, no child gets it.
pub fn set_cloexec(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor the caller owns; F_GETFD/F_SETFD only
    // read and write its flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether `fd` is an open, listening TCP (IPv4 or IPv6) socket.
pub fn is_listening_tcp(fd: RawFd) -> bool {
    let int_option = |level, name| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes of an int; an
        // invalid descriptor only makes the call fail.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    let domain = int_option(libc::SOL_SOCKET, libc::SO_DOMAIN);
    matches!(domain, Some(libc::AF_INET | libc::AF_INET6))
        && int_option(libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && int_option(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
}

/// At start: stdin, stdout and stderr are open (on /dev/null if the parent
/// closed them, so no socket lands on descriptor 0 to be clobbered by a
/// child's stdio), and every descriptor from 3 up that the parent left
/// inheritable is made close-on-exec, so none leaks into workers or helpers
/// (the ones meant for this process are taken over explicitly).
pub fn sanitize_inherited() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads a descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: a NUL-terminated path; the lowest free descriptor,
            // which is `fd` since the lower ones are open, is returned.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on the
    // descriptors in the range (Linux 5.11+; on older kernels it fails with
    // ENOSYS or EINVAL and nothing changes).
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}
