//! Message transport between the main process and a helper:
//! `SOCK_SEQPACKET` Unix sockets with an optional `SCM_RIGHTS` descriptor.
//!
//! A seqpacket socket keeps message boundaries (one `sendmsg` is one
//! `recvmsg`), is reliable and ordered, and reports a peer that went away as a
//! zero-length read, which is exactly what the helper protocol needs. This
//! module only moves bytes and descriptors: it does not frame or interpret
//! them (see [`crate::codec`] and [`crate::protocol`]) and it does not choose
//! blocking or non-blocking mode (the main process makes its end
//! non-blocking with [`crate::sys::set_nonblocking`]; helpers block). `EINTR` is retried
//! here; `WouldBlock` is returned to the caller as an `io::Error`.
//!
//! The `unsafe` here is confined to thin wrappers over `socketpair`,
//! `sendmsg`, `recvmsg` and `fcntl`.
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

/// Control buffer size for receiving. Room for several descriptors so a
/// misbehaving peer's extra descriptors arrive (and are closed by us) instead
/// of being lost in a truncated control message; anything but exactly one
/// descriptor in one `SCM_RIGHTS` message is rejected anyway.
const CMSG_BUF_WORDS: usize = 16; // 128 bytes, u64-aligned

/// A connected SOCK_SEQPACKET pair, both ends close-on-exec.
///
/// Both ends start in blocking mode. To hand one end to a helper, clear its
/// close-on-exec flag in the child only (e.g. [`crate::sys::install_fd_in_child`]
/// inside `CommandExt::pre_exec`) and pass its number as `--socket-fd N`.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [RawFd; 2] = [-1, -1];
    // SAFETY: `fds` is a valid, writable array of two ints, as socketpair requires.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by
    // nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message, with `fd` attached when given. MSG_NOSIGNAL.
///
/// `bytes` must not be empty: a zero-length message would be read as a
/// hang-up by [`recv_message`], so it is refused with `InvalidInput`. A peer
/// that went away yields `EPIPE`; a full socket buffer on a non-blocking
/// socket yields `WouldBlock` (nothing was sent).
pub fn send_message(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty message (indistinguishable from hang-up)",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cmsg_buf = [0u64; CMSG_BUF_WORDS];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let raw: RawFd = fd.as_raw_fd();
        // SAFETY: CMSG_SPACE is pure arithmetic.
        let space = unsafe { libc::CMSG_SPACE(mem::size_of::<RawFd>() as libc::c_uint) } as usize;
        debug_assert!(space <= mem::size_of_val(&cmsg_buf));
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, u64-aligned bytes that
        // outlive this block, so CMSG_FIRSTHDR returns a valid header pointer
        // with room for one int of data after it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as libc::c_uint) as _;
            ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), raw);
        }
    }
    loop {
        // SAFETY: `msg` and everything it points to (iov, bytes, cmsg_buf)
        // are valid for the duration of the call; `sock` is an open fd.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            // Seqpacket sends are atomic: all or an error.
            if n as usize != bytes.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short seqpacket send",
                ));
            }
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives one message into `buf`. Ok(None) on hang-up (peer closed).
/// A truncated message or control data is an error (InvalidData); received
/// descriptors are close-on-exec.
///
/// On success returns the message length and the descriptor that came with
/// it, if any. Unexpected control data (anything but one `SCM_RIGHTS`
/// message carrying exactly one descriptor) or a message longer than `buf`
/// (`MSG_TRUNC`) yield `InvalidData`, after closing every descriptor that
/// did arrive. A truncated control message with no descriptor installed
/// (`MSG_CTRUNC`: the kernel could not install a descriptor sent to us,
/// because this process is out of descriptors) yields the OS error
/// `EMFILE`; the message is consumed. On a
/// non-blocking socket with nothing to read, the error is `WouldBlock`.
pub fn recv_message(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg_buf = [0u64; CMSG_BUF_WORDS];
    let (n, msg_flags, fds, foreign_cmsg) = loop {
        // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&cmsg_buf) as _;
        // SAFETY: `msg` points at `buf` (via iov) and `cmsg_buf`, both valid
        // and writable for their stated lengths for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // Take ownership of every descriptor first, so that any early return
        // below closes them.
        let (fds, foreign) = collect_fds(&msg);
        break (n as usize, msg.msg_flags, fds, foreign);
    };
    if msg_flags & libc::MSG_TRUNC != 0 {
        return Err(invalid("message longer than the receive buffer"));
    }
    if msg_flags & libc::MSG_CTRUNC != 0 {
        // Nothing installed: the kernel had no free descriptor for us. Some
        // installed: the peer sent more than our buffer holds (garbage).
        if fds.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        return Err(invalid("control data truncated"));
    }
    if foreign_cmsg {
        return Err(invalid("unexpected control message"));
    }
    if fds.len() > 1 {
        return Err(invalid("more than one descriptor attached"));
    }
    let fd = fds.into_iter().next();
    if n == 0 {
        if fd.is_some() {
            return Err(invalid("descriptor attached to an empty message"));
        }
        return Ok(None);
    }
    Ok(Some((n, fd)))
}

/// Walks the control messages of a received `msg`, taking ownership of every
/// descriptor found in `SCM_RIGHTS` messages. The flag tells whether any
/// other kind of control message was present.
fn collect_fds(msg: &libc::msghdr) -> (Vec<OwnedFd>, bool) {
    let mut fds = Vec::new();
    let mut foreign = false;
    // SAFETY: `msg` was filled by a successful recvmsg, so msg_control /
    // msg_controllen describe valid control data inside our buffer and the
    // CMSG_* macros walk it within bounds. Descriptors in SCM_RIGHTS data were
    // just installed in this process for us and are owned by nobody else.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let hdr = ptr::read_unaligned(cmsg);
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let header = data.offset_from(cmsg.cast::<u8>()) as usize;
                let count =
                    (hdr.cmsg_len as usize).saturating_sub(header) / mem::size_of::<RawFd>();
                for i in 0..count {
                    let raw = ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            } else {
                foreign = true;
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    (fds, foreign)
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}
