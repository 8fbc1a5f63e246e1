//! SOCK_SEQPACKET transport with descriptor passing.
use flash_core::ipc::{recv_message, send_message, seqpacket_pair};
use flash_core::sys::set_nonblocking;
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::mem;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cloexec(fd: RawFd) -> bool {
    // SAFETY: F_GETFD touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert!(flags >= 0);
    flags & libc::FD_CLOEXEC != 0
}

#[test]
fn pair_is_seqpacket_and_cloexec() {
    let (a, b) = seqpacket_pair().unwrap();
    assert!(cloexec(a.as_raw_fd()) && cloexec(b.as_raw_fd()));
    let mut ty: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers with the right length.
    let rc = unsafe {
        libc::getsockopt(
            a.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    assert_eq!(ty, libc::SOCK_SEQPACKET);
}

#[test]
fn messages_keep_boundaries() {
    let (a, b) = seqpacket_pair().unwrap();
    send_message(a.as_fd(), b"one", None).unwrap();
    send_message(a.as_fd(), b"two!", None).unwrap();
    let mut buf = [0u8; 64];
    let (n, fd) = recv_message(b.as_fd(), &mut buf).unwrap().unwrap();
    assert_eq!((&buf[..n], fd.is_none()), (&b"one"[..], true));
    let (n, fd) = recv_message(b.as_fd(), &mut buf).unwrap().unwrap();
    assert_eq!((&buf[..n], fd.is_none()), (&b"two!"[..], true));
}

#[test]
fn descriptor_crosses_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.txt");
    std::fs::write(&path, b"hello through the socket").unwrap();
    let file = File::open(&path).unwrap();

    let (a, b) = seqpacket_pair().unwrap();
    send_message(a.as_fd(), b"take this", Some(file.as_fd())).unwrap();
    drop(file);
    let mut buf = [0u8; 64];
    let (n, fd) = recv_message(b.as_fd(), &mut buf).unwrap().unwrap();
    assert_eq!(&buf[..n], b"take this");
    let fd: OwnedFd = fd.expect("descriptor attached");
    assert!(
        cloexec(fd.as_raw_fd()),
        "received descriptors are close-on-exec"
    );
    let mut got = String::new();
    let mut f = File::from(fd);
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello through the socket");
}

#[test]
fn hang_up_is_none() {
    let (a, b) = seqpacket_pair().unwrap();
    send_message(a.as_fd(), b"last words", None).unwrap();
    drop(a);
    let mut buf = [0u8; 64];
    // Queued messages are still delivered, then the hang-up.
    assert!(recv_message(b.as_fd(), &mut buf).unwrap().is_some());
    assert!(recv_message(b.as_fd(), &mut buf).unwrap().is_none());
    assert!(recv_message(b.as_fd(), &mut buf).unwrap().is_none());
}

#[test]
fn send_to_closed_peer_is_epipe_without_signal() {
    let (a, b) = seqpacket_pair().unwrap();
    drop(b);
    let err = send_message(a.as_fd(), b"anyone?", None).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
}

#[test]
fn empty_message_is_refused() {
    let (a, _b) = seqpacket_pair().unwrap();
    assert_eq!(
        send_message(a.as_fd(), b"", None).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// A pipe whose read end is non-blocking: `writer_closed` tells whether every
/// copy of the write end is gone (read gives EOF rather than EAGAIN).
fn pipe() -> (File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
        0
    );
    // SAFETY: pipe2 succeeded; we own both ends.
    unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn writer_closed(reader: &mut File) -> bool {
    match reader.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        other => panic!("unexpected pipe read result {other:?}"),
    }
}

#[test]
fn truncated_message_is_invalid_data_and_closes_its_descriptor() {
    let (a, b) = seqpacket_pair().unwrap();
    let (mut reader, writer) = pipe();
    send_message(a.as_fd(), &[7u8; 100], Some(writer.as_fd())).unwrap();
    drop(writer);
    assert!(
        !writer_closed(&mut reader),
        "the copy in flight keeps the pipe open"
    );
    let mut small = [0u8; 10];
    let err = recv_message(b.as_fd(), &mut small).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(
        writer_closed(&mut reader),
        "the received descriptor was closed"
    );
    // The next message is unaffected.
    send_message(a.as_fd(), b"ok", None).unwrap();
    let (n, _) = recv_message(b.as_fd(), &mut small).unwrap().unwrap();
    assert_eq!(&small[..n], b"ok");
}

#[test]
fn two_descriptors_are_refused_and_closed() {
    // Build an SCM_RIGHTS message with two descriptors by hand.
    let (a, b) = seqpacket_pair().unwrap();
    let (mut r1, w1) = pipe();
    let (mut r2, w2) = pipe();
    let fds = [w1.as_raw_fd(), w2.as_raw_fd()];
    let data = *b"xx";
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: building and sending a msghdr over valid local buffers.
    unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(8) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(8) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), 8);
        assert_eq!(libc::sendmsg(a.as_raw_fd(), &msg, 0), 2);
    }
    drop((w1, w2));
    let mut buf = [0u8; 16];
    let err = recv_message(b.as_fd(), &mut buf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(writer_closed(&mut r1) && writer_closed(&mut r2));
}

#[test]
fn nonblocking_empty_socket_would_block() {
    let (a, b) = seqpacket_pair().unwrap();
    set_nonblocking(b.as_fd(), true).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        recv_message(b.as_fd(), &mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    send_message(a.as_fd(), b"now", None).unwrap();
    assert_eq!(recv_message(b.as_fd(), &mut buf).unwrap().unwrap().0, 3);
    set_nonblocking(b.as_fd(), false).unwrap();
    // SAFETY: F_GETFL touches no memory.
    let fl = unsafe { libc::fcntl(b.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(fl & libc::O_NONBLOCK, 0);
}

#[test]
fn full_nonblocking_socket_would_block() {
    let (a, _b) = seqpacket_pair().unwrap();
    set_nonblocking(a.as_fd(), true).unwrap();
    let chunk = vec![1u8; 4096];
    let mut sent = 0;
    let err = loop {
        match send_message(a.as_fd(), &chunk, None) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 1_000_000, "socket never filled");
    };
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
}

/// The pool relies on this: a helper that dies with a request unread in its
/// socket shows as a reset (not an orderly hang-up), and must be treated as
/// a crash all the same.
#[test]
fn peer_dying_with_our_message_unread_is_a_reset() {
    let (main, helper) = seqpacket_pair().unwrap();
    send_message(main.as_fd(), b"request", None).unwrap();
    drop(helper);
    let mut buf = [0u8; 64];
    let err = recv_message(main.as_fd(), &mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}
