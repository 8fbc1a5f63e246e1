//! A descriptor sent to a process that has no free descriptor is dropped by
//! the kernel (`MSG_CTRUNC`); `recv_message` reports that as `EMFILE`, so the
//! pool can tell "this process is out of descriptors" from "the helper sent
//! garbage". Its own test binary: it lowers the process's descriptor limit.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use flash_core::ipc::{recv_message, send_message, seqpacket_pair};

fn set_soft_limit(n: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to fill and pass back.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let old = limit.rlim_cur;
        limit.rlim_cur = n;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        old
    }
}

#[test]
fn a_descriptor_that_cannot_be_received_is_emfile_not_garbage() {
    let (a, b) = seqpacket_pair().unwrap();
    let payload = File::open("/dev/null").unwrap();
    send_message(a.as_fd(), b"with fd", Some(payload.as_fd())).unwrap();
    send_message(a.as_fd(), b"with fd", Some(payload.as_fd())).unwrap();

    // Use up every descriptor below a lowered limit.
    let old = set_soft_limit(64);
    let mut hog: Vec<OwnedFd> = Vec::new();
    while let Ok(fd) = payload.as_fd().try_clone_to_owned() {
        hog.push(fd);
    }
    let mut buf = [0u8; 64];
    let err = recv_message(b.as_fd(), &mut buf).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");

    // With a descriptor free again, the next message arrives whole.
    hog.pop();
    let (n, fd) = recv_message(b.as_fd(), &mut buf).unwrap().unwrap();
    assert_eq!(&buf[..n], b"with fd");
    assert!(fd.is_some());
    drop(hog);
    set_soft_limit(old);
}
