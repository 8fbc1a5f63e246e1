//! Protocol mode: serve the main process over the inherited socket.
//!
//! Blocking loop: receive one request, do the (possibly slow) disk work,
//! send exactly one reply. The only state is the document root. Anything
//! the main process sends that breaks the protocol ends the process with
//! status 2: the main process treats a dead helper as a failed one and
//! respawns it, which is safer than guessing.
use anyhow::{bail, Context};
use flash_core::codec::{self, MAX_WIRE_LEN};
use flash_core::fs::{self, FsError, Resolution, Resolver, SymlinkPolicy};
use flash_core::protocol::{FromHelper, ToHelper, PROTOCOL_VERSION};
use flash_core::watch;
use flash_core::{ipc, sys};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::ExitCode;

/// How the serving loop ended without an I/O failure.
enum End {
    /// The main process closed its end: a normal shutdown.
    HangUp,
    /// The main process broke the protocol.
    Violation(String),
}

/// How to serve, from the command line.
pub struct Options {
    pub policy: SymlinkPolicy,
    pub index_names: Vec<String>,
    /// Inherited inotify instance to add change watches to.
    pub watch_fd: Option<RawFd>,
}

/// Runs protocol mode on descriptor `socket_fd`; see the crate docs for the
/// exit statuses.
pub fn run(root: &Path, options: Options, socket_fd: RawFd) -> anyhow::Result<ExitCode> {
    set_parent_death_signal()?;
    // The server sets this before exec; this covers a helper started by hand.
    sys::ignore_terminal_signals();
    let sock = adopt_socket(socket_fd)?;
    let watch = options.watch_fd.map(adopt_watch_fd).transpose()?;
    // PR_SET_PDEATHSIG only covers a parent that dies from now on. The main
    // process holds the other end of our socket, so if it is already gone the
    // socket shows a hang-up: leave quietly, as for a hang-up later on.
    if peer_gone(sock.as_fd())? {
        return Ok(ExitCode::SUCCESS);
    }
    sys::set_nonblocking(sock.as_fd(), false).context("making the socket blocking")?;
    let resolver = Resolver::open(root, options.policy)
        .with_context(|| format!("cannot open document root {}", root.display()))?
        .with_index_names(options.index_names);

    let hello = FromHelper::Hello {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
    };
    if !reply(sock.as_fd(), &hello, None)? {
        return Ok(ExitCode::SUCCESS);
    }
    match serve(sock.as_fd(), &resolver, watch.as_ref().map(AsFd::as_fd))? {
        End::HangUp => Ok(ExitCode::SUCCESS),
        End::Violation(why) => {
            eprintln!("flash-helper: protocol violation: {why}");
            Ok(ExitCode::from(2))
        }
    }
}

/// The request loop.
fn serve(
    sock: BorrowedFd<'_>,
    resolver: &Resolver,
    inotify: Option<BorrowedFd<'_>>,
) -> anyhow::Result<End> {
    let mut buf = vec![0u8; MAX_WIRE_LEN];
    loop {
        let (n, fd) = match ipc::recv_message(sock, &mut buf) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(End::HangUp),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Ok(End::Violation(format!("bad message: {e}")))
            }
            Err(e) if is_hang_up(&e) => return Ok(End::HangUp),
            Err(e) => return Err(e).context("receiving a request"),
        };
        let request: ToHelper = match codec::decode(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                return Ok(End::Violation(format!(
                    "undecodable frame of {n} bytes: {e}"
                )))
            }
        };
        let sent = match request {
            ToHelper::Resolve {
                id,
                path,
                ends_with_slash,
            } => {
                if fd.is_some() {
                    return Ok(End::Violation(format!(
                        "descriptor attached to Resolve (id {id})"
                    )));
                }
                match resolver.resolve(&path, ends_with_slash) {
                    Ok(Resolution::File { file, meta, index }) => {
                        match watch::settle_watched(file.as_fd(), meta, inotify) {
                            Ok(settled) => {
                                let fd = settled.contents.is_none().then(|| file.as_fd());
                                let msg = FromHelper::Resolved {
                                    id,
                                    meta: settled.meta,
                                    index,
                                    contents: settled.contents,
                                    watch: settled.watch,
                                };
                                reply(sock, &msg, fd)?
                            }
                            Err(error) => reply(sock, &FromHelper::Failed { id, error }, None)?,
                        }
                    }
                    Ok(Resolution::Redirect) => reply(sock, &FromHelper::Redirect { id }, None)?,
                    Err(error) => reply(sock, &FromHelper::Failed { id, error }, None)?,
                }
            }
            ToHelper::Prefetch { id, offset, len } => {
                let answer = match &fd {
                    None => FromHelper::Failed {
                        id,
                        error: FsError::Io { errno: libc::EBADF },
                    },
                    Some(file) => match fs::prefetch(file.as_fd(), offset, len) {
                        Ok(()) => FromHelper::Prefetched { id },
                        Err(error) => FromHelper::Failed { id, error },
                    },
                };
                drop(fd);
                reply(sock, &answer, None)?
            }
        };
        if !sent {
            return Ok(End::HangUp);
        }
    }
}

/// Sends one message; `Ok(false)` when the main process is gone.
fn reply(
    sock: BorrowedFd<'_>,
    msg: &FromHelper,
    fd: Option<BorrowedFd<'_>>,
) -> anyhow::Result<bool> {
    let mut frame = Vec::with_capacity(128);
    codec::encode(msg, &mut frame);
    match ipc::send_message(sock, &frame, fd) {
        Ok(()) => Ok(true),
        Err(e) if is_hang_up(&e) => Ok(false),
        Err(e) => Err(e).context("sending a reply"),
    }
}

fn is_hang_up(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN)
    )
}

/// Takes ownership of the inherited inotify descriptor, close-on-exec.
fn adopt_watch_fd(fd: RawFd) -> anyhow::Result<OwnedFd> {
    // SAFETY: F_SETFD touches no memory; a closed number yields EBADF.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("--watch-fd {fd}"));
    }
    // SAFETY: the descriptor is open (checked above) and was passed to this
    // process for this use alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Asks the kernel to SIGKILL us when our parent dies, so a crashed
/// flash-server leaves no helpers behind.
fn set_parent_death_signal() -> anyhow::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG, sig) takes plain integers and touches
    // no memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("prctl(PR_SET_PDEATHSIG)");
    }
    Ok(())
}

/// Takes ownership of the inherited descriptor after checking it is an open
/// `SOCK_SEQPACKET` socket, and marks it close-on-exec.
fn adopt_socket(fd: RawFd) -> anyhow::Result<OwnedFd> {
    if fd < 0 {
        bail!("--socket-fd {fd}: not a descriptor");
    }
    // SAFETY: F_SETFD on a descriptor number touches no memory; a closed
    // number yields EBADF, which we report.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("--socket-fd {fd}"));
    }
    // SAFETY: the descriptor is open (checked above) and was passed to this
    // process for its exclusive use; nothing else in this process owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `ty` and `len` are valid for writes and `len` holds the size of `ty`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("--socket-fd {fd}: not a socket"));
    }
    if ty != libc::SOCK_SEQPACKET {
        bail!("--socket-fd {fd}: not a SOCK_SEQPACKET socket");
    }
    Ok(sock)
}

/// Whether the other end of `sock` is already closed (without waiting).
fn peer_gone(sock: BorrowedFd<'_>) -> anyhow::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd, as the count says.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        if rc >= 0 {
            return Ok(rc > 0 && pfd.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err).context("poll");
        }
    }
}
