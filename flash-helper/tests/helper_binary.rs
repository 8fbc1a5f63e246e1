//! The real flash-helper binary, in text mode and in protocol mode.
use flash_core::codec::{decode, encode, MAX_WIRE_LEN};
use flash_core::fs::FsError;
use flash_core::ipc::{recv_message, send_message, seqpacket_pair};
use flash_core::protocol::{FromHelper, ToHelper, PROTOCOL_VERSION};
use flash_core::sys::install_fd_in_child;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_flash-helper");
const MTIME: u64 = 1_795_321_800; // 2026-11-22T04:30:00Z

/// root/: a.txt ("hello", fixed mtime), docs/index.html, empty/,
/// link_in -> a.txt, link_out -> ../outside.txt, big.bin (300 KiB)
fn tree() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(tmp.path().join("outside.txt"), "secret").unwrap();
    fs::write(root.join("a.txt"), "hello").unwrap();
    File::options()
        .write(true)
        .open(root.join("a.txt"))
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME))
        .unwrap();
    fs::create_dir(root.join("docs")).unwrap();
    fs::write(root.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    symlink("a.txt", root.join("link_in")).unwrap();
    symlink("../outside.txt", root.join("link_out")).unwrap();
    fs::write(root.join("big.bin"), vec![7u8; 300 * 1024]).unwrap();
    (tmp, root)
}

/// Runs text mode with `input` on a piped stdin.
fn text_mode(root: &Path, extra: &[&str], input: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("--root")
        .arg(root)
        .arg("--text")
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A helper that fails at start exits before reading its input: a
    // broken pipe here is part of that outcome, not a test failure.
    let written = child.stdin.take().unwrap().write_all(input.as_bytes());
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("text mode did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn assert_timed(line: &str, prefix: &str) {
    assert!(
        line.starts_with(prefix),
        "{line:?} should start with {prefix:?}"
    );
    assert!(line.ends_with(" ms)"), "{line:?} should end with a timing");
}

#[test]
fn text_mode_commands() {
    let (_tmp, root) = tree();
    let ino = fs::metadata(root.join("a.txt")).unwrap().ino();
    let dev = fs::metadata(root.join("a.txt")).unwrap().dev();
    let input = "\
resolve /a.txt
resolve /docs
resolve /docs/
resolve /nope.html
resolve /empty/
resolve /link_in
resolve /link_out
resolve /a.txt?x=1
resolve /%61.txt
resolve /../outside.txt
resolve relative

prefetch /big.bin 0 1048576
prefetch /big.bin 4096 10
prefetch /nope 0 1
prefetch /big.bin x y
frobnicate
resolve
help
quit
resolve /a.txt
";
    let out = text_mode(&root, &[], input);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        !stdout.contains("flash-helper>"),
        "no prompt when stdin is not a terminal"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let mut it = lines.iter();
    let mut next = || *it.next().expect("more output");

    assert_timed(
        next(),
        &format!("file /a.txt size=5 mtime=2026-11-22T04:30:00Z ino={ino} dev={dev} index=no ("),
    );
    assert_timed(next(), "redirect /docs -> /docs/ (");
    assert_timed(next(), "file /docs/ size=13 mtime=");
    assert!(lines[2].contains(" index=yes ("), "{}", lines[2]);
    assert_timed(next(), "not found /nope.html (");
    assert_timed(next(), "forbidden /empty/ (");
    assert_timed(
        next(),
        &format!("file /link_in size=5 mtime=2026-11-22T04:30:00Z ino={ino} "),
    );
    assert_timed(next(), "forbidden /link_out (");
    assert_timed(next(), "file /a.txt?x=1 size=5 ");
    assert_timed(next(), "file /%61.txt size=5 ");
    assert!(next().starts_with("bad path /../outside.txt: 400"));
    assert!(next().starts_with("bad path relative: 400"));
    assert_timed(next(), "prefetched /big.bin 0+1048576 (");
    assert_timed(next(), "prefetched /big.bin 4096+10 (");
    assert_timed(next(), "not found /nope (");
    assert!(next().starts_with("usage: resolve PATH | prefetch PATH OFFSET LEN | help | quit"));
    assert!(next().starts_with("usage: "), "unknown command");
    assert!(next().starts_with("usage: "), "resolve without a path");
    assert_eq!(next(), "commands:");
    // Rest of help, then nothing after quit.
    let rest: Vec<&str> = it.copied().collect();
    assert!(rest
        .iter()
        .any(|l| l.trim_start().starts_with("prefetch PATH OFFSET LEN")));
    assert!(
        !rest.iter().any(|l| l.starts_with("file ")),
        "commands after quit ran: {rest:?}"
    );
}

#[test]
fn text_mode_symlinks_never_and_end_of_input() {
    let (_tmp, root) = tree();
    // No quit: end of input ends the session.
    let out = text_mode(
        &root,
        &["--symlinks", "never"],
        "resolve /link_in\nresolve /a.txt\n",
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_timed(lines[0], "forbidden /link_in (");
    assert_timed(lines[1], "file /a.txt size=5 ");
}

#[test]
fn text_mode_bad_root_fails() {
    let out = text_mode(Path::new("/nonexistent/flash-root"), &[], "quit\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("document root"));
}

#[test]
fn no_mode_prints_usage_and_exits_2() {
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("flash-server"), "{stderr}");
    assert!(stderr.contains("--text"), "{stderr}");
    // --root alone is still no mode.
    let out = Command::new(BIN).args(["--root", "/"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Both modes at once is a usage error.
    let out = Command::new(BIN)
        .args(["--root", "/", "--text", "--socket-fd", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

// ---- protocol mode ----

/// A helper in protocol mode and the main process's end of its socket.
struct Helper {
    child: Child,
    sock: OwnedFd,
    buf: Vec<u8>,
}

impl Helper {
    fn spawn(root: &Path, extra: &[&str]) -> Helper {
        let (ours, theirs) = seqpacket_pair().unwrap();
        // Never hang a test on a silent helper.
        let tv = libc::timeval {
            tv_sec: 20,
            tv_usec: 0,
        };
        // SAFETY: valid pointer to a timeval of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                ours.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let child_fd = theirs.as_raw_fd();
        let mut cmd = Command::new(BIN);
        cmd.arg("--root")
            .arg(root)
            .args(["--socket-fd", &child_fd.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: the closure only calls fcntl (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || install_fd_in_child(child_fd, child_fd));
        }
        let child = cmd.spawn().unwrap();
        drop(theirs);
        Helper {
            child,
            sock: ours,
            buf: vec![0; MAX_WIRE_LEN],
        }
    }

    fn send(&self, msg: &ToHelper, fd: Option<std::os::fd::BorrowedFd<'_>>) {
        let mut frame = Vec::new();
        encode(msg, &mut frame);
        send_message(self.sock.as_fd(), &frame, fd).unwrap();
    }

    fn recv(&mut self) -> Option<(FromHelper, Option<OwnedFd>)> {
        let (n, fd) = recv_message(self.sock.as_fd(), &mut self.buf).unwrap()?;
        Some((decode(&self.buf[..n]).unwrap(), fd))
    }

    fn hello(&mut self) {
        let (msg, fd) = self.recv().expect("hello");
        assert!(fd.is_none());
        assert_eq!(
            msg,
            FromHelper::Hello {
                version: PROTOCOL_VERSION,
                pid: self.child.id()
            }
        );
    }

    fn ask(
        &mut self,
        msg: &ToHelper,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> (FromHelper, Option<OwnedFd>) {
        self.send(msg, fd);
        let reply = self.recv().expect("a reply");
        assert_eq!(reply.0.id(), Some(msg.id()), "reply to the right request");
        reply
    }

    fn resolve(&mut self, id: u64, path: &str, slash: bool) -> (FromHelper, Option<OwnedFd>) {
        self.ask(
            &ToHelper::Resolve {
                id,
                path: path.into(),
                ends_with_slash: slash,
            },
            None,
        )
    }

    /// Waits for exit (killing the helper after a deadline); returns the
    /// status and stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        drop(self.sock);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!("helper did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }

    /// Waits for exit without hanging up first.
    fn exit_on_its_own(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!("helper did not exit on its own");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.finish()
    }
}

fn read_all(fd: OwnedFd) -> Vec<u8> {
    let mut v = Vec::new();
    File::from(fd).read_to_end(&mut v).unwrap();
    v
}

#[test]
fn protocol_hello_resolve_prefetch_hang_up() {
    let (_tmp, root) = tree();
    let mut h = Helper::spawn(&root, &[]);
    h.hello();

    let (msg, fd) = h.resolve(1, "a.txt", false);
    let FromHelper::Resolved {
        meta,
        index: None,
        contents: Some(contents),
        ..
    } = msg
    else {
        panic!("{msg:?}")
    };
    assert_eq!(meta.size, 5);
    assert_eq!(meta.mtime_secs, MTIME as i64);
    assert!(
        fd.is_none(),
        "a small file travels whole, without its descriptor"
    );
    assert_eq!(contents, b"hello");

    // A file larger than INLINE_MAX travels as a descriptor.
    let big = vec![b'x'; flash_core::fs::INLINE_MAX as usize + 1];
    std::fs::write(root.join("over-inline.bin"), &big).unwrap();
    let (msg, fd) = h.resolve(5, "over-inline.bin", false);
    assert!(
        matches!(
            msg,
            FromHelper::Resolved {
                id: 5,
                contents: None,
                ..
            }
        ),
        "{msg:?}"
    );
    assert_eq!(read_all(fd.expect("Resolved carries the file")), big);

    let (msg, fd) = h.resolve(2, "docs", false);
    assert_eq!((msg, fd.is_none()), (FromHelper::Redirect { id: 2 }, true));
    let (msg, fd) = h.resolve(3, "docs", true);
    assert!(
        matches!(
            msg,
            FromHelper::Resolved {
                id: 3,
                index: Some(0),
                ref contents,
                ..
            } if contents.as_deref() == Some(b"<h1>docs</h1>")
        ),
        "{msg:?}"
    );
    assert!(fd.is_none());
    let (msg, fd) = h.resolve(4, "nope", false);
    assert_eq!(
        (msg, fd.is_none()),
        (
            FromHelper::Failed {
                id: 4,
                error: FsError::NotFound
            },
            true
        )
    );
    let (msg, _) = h.resolve(5, "empty", true);
    assert_eq!(
        msg,
        FromHelper::Failed {
            id: 5,
            error: FsError::Forbidden
        }
    );
    let (msg, _) = h.resolve(6, "../outside.txt", false);
    assert_eq!(
        msg,
        FromHelper::Failed {
            id: 6,
            error: FsError::Forbidden
        }
    );
    let (msg, _) = h.resolve(7, "link_out", false);
    assert_eq!(
        msg,
        FromHelper::Failed {
            id: 7,
            error: FsError::Forbidden
        }
    );
    let (msg, fd) = h.resolve(8, "link_in", false);
    assert!(
        matches!(msg, FromHelper::Resolved { id: 8, ref contents, .. } if contents.as_deref() == Some(b"hello")),
        "{msg:?}"
    );
    assert!(fd.is_none());

    let big = File::open(root.join("big.bin")).unwrap();
    let (msg, fd) = h.ask(
        &ToHelper::Prefetch {
            id: 9,
            offset: 0,
            len: 1 << 20,
        },
        Some(big.as_fd()),
    );
    assert_eq!(
        (msg, fd.is_none()),
        (FromHelper::Prefetched { id: 9 }, true)
    );
    let (msg, _) = h.ask(
        &ToHelper::Prefetch {
            id: 10,
            offset: 0,
            len: 10,
        },
        None,
    );
    assert_eq!(
        msg,
        FromHelper::Failed {
            id: 10,
            error: FsError::Io { errno: libc::EBADF }
        }
    );
    let dir = File::open(&root).unwrap();
    let (msg, _) = h.ask(
        &ToHelper::Prefetch {
            id: 11,
            offset: 0,
            len: 10,
        },
        Some(dir.as_fd()),
    );
    assert_eq!(
        msg,
        FromHelper::Failed {
            id: 11,
            error: FsError::Io {
                errno: libc::EISDIR
            }
        }
    );

    // Hang-up: the helper exits 0.
    let (status, stderr) = h.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn protocol_symlinks_never() {
    let (_tmp, root) = tree();
    let mut h = Helper::spawn(&root, &["--symlinks", "never"]);
    h.hello();
    let (msg, _) = h.resolve(1, "link_in", false);
    assert_eq!(
        msg,
        FromHelper::Failed {
            id: 1,
            error: FsError::Forbidden
        }
    );
    assert_eq!(h.finish().0.code(), Some(0));
}

#[test]
fn protocol_garbage_exits_2() {
    let (_tmp, root) = tree();
    let mut h = Helper::spawn(&root, &[]);
    h.hello();
    send_message(h.sock.as_fd(), b"\x05\x00\x00\x00garbage", None).unwrap();
    assert!(h.recv().is_none(), "no reply, just a hang-up");
    let (status, stderr) = h.exit_on_its_own();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("protocol violation"), "{stderr}");
}

#[test]
fn protocol_oversize_message_exits_2() {
    let (_tmp, root) = tree();
    let mut h = Helper::spawn(&root, &[]);
    h.hello();
    send_message(h.sock.as_fd(), &vec![0u8; MAX_WIRE_LEN + 1], None).unwrap();
    assert!(h.recv().is_none());
    assert_eq!(h.exit_on_its_own().0.code(), Some(2));
}

#[test]
fn protocol_unexpected_descriptor_exits_2() {
    let (_tmp, root) = tree();
    let mut h = Helper::spawn(&root, &[]);
    h.hello();
    let f = File::open(root.join("a.txt")).unwrap();
    h.send(
        &ToHelper::Resolve {
            id: 1,
            path: "a.txt".into(),
            ends_with_slash: false,
        },
        Some(f.as_fd()),
    );
    assert!(h.recv().is_none());
    let (status, stderr) = h.exit_on_its_own();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("descriptor"), "{stderr}");
}

#[test]
fn protocol_bad_root_exits_1_without_hello() {
    let mut h = Helper::spawn(Path::new("/nonexistent/flash-root"), &[]);
    assert!(
        h.recv().is_none(),
        "no Hello from a helper that cannot serve"
    );
    let (status, stderr) = h.exit_on_its_own();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("document root"), "{stderr}");
}

#[test]
fn protocol_bad_socket_fd_exits_1() {
    let out = Command::new(BIN)
        .args(["--root", "/", "--socket-fd", "987"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // A descriptor that is not a seqpacket socket (stdin, /dev/null).
    let out = Command::new(BIN)
        .args(["--root", "/", "--socket-fd", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("socket"));
}
