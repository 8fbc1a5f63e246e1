//! API CONTRACT STUB — SOCK_SEQPACKET messages with an optional descriptor (SCM_RIGHTS).
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// A connected SOCK_SEQPACKET pair, both ends close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    todo!()
}

/// Sends one message, with `fd` attached when given. MSG_NOSIGNAL.
pub fn send_message(sock: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let _ = (sock, bytes, fd);
    todo!()
}

/// Receives one message into `buf`. Ok(None) on hang-up (peer closed).
/// A truncated message or control data is an error (InvalidData); received
/// descriptors are close-on-exec.
pub fn recv_message(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    let _ = (sock, buf);
    todo!()
}
