//! `flash-fault-helper`: a test-only stand-in for `flash-helper` that sometimes talks
//! garbage. flash-server is started with `--helper-path` pointing here; flash has no
//! production hook for faulty helpers, and must not have one.
//!
//! At each start it decides, at random, to be either
//!
//! * a real helper: it `exec`s `flash-helper` with the same arguments (and the inherited
//!   socket and inotify descriptors), so nothing of it remains; or
//! * a garbage helper: it says `Hello` like a real one (or, in one shape, garbage instead of
//!   `Hello`), waits for a request, and answers it with one of the shapes of [`Shape`]:
//!   random bytes, a length prefix beyond the maximum frame, a message longer than any
//!   frame, a well-framed but undecodable payload, trailing bytes after a valid message, a
//!   reply with a wrong job id, a reply of the wrong kind, a reply with a descriptor nobody
//!   asked for, a second `Hello`, or a truncated frame followed by exiting.
//!
//! The main process must then kill and replace it and answer the request 503 (or close).
//! Should a second request arrive after the garbage (the main process kept the helper), the
//! event is logged as `survived`, which the tests count as a failure.
//!
//! Environment (inherited through flash-server):
//!
//! * `FLASH_FAULT_HELPER_CONTROL=FILE`: FILE holds `N`: one start in N is a garbage helper
//!   (0: never). Read at every start, so a test can switch garbage off to let the pool heal.
//!   Unset or unreadable: 3.
//! * `FLASH_FAULT_HELPER_LOG=FILE`: one line is appended per event: `real PID`,
//!   `garbage PID SHAPE` (when the garbage is sent), `survived PID SHAPE`.
//! * `FLASH_FAULT_HELPER_REAL=PATH`: the real helper; default `flash-helper` in this
//!   executable's directory.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{SystemTime, UNIX_EPOCH};

use flash_core::codec::{self, MAX_FRAME, MAX_WIRE_LEN};
use flash_core::fs::FsError;
use flash_core::ipc;
use flash_core::protocol::{FromHelper, ToHelper, PROTOCOL_VERSION};

/// One in this many starts is a garbage helper unless the control file says otherwise.
const DEFAULT_ONE_IN: u64 = 3;

/// The kinds of garbage, one chosen per garbage helper.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Garbage instead of `Hello`.
    PreHello,
    /// 1 to 200 random bytes whose prefix does not match their length.
    RandomBytes,
    /// A length prefix beyond `MAX_FRAME` (and a few bytes after it).
    HugeLength,
    /// A correctly prefixed message longer than the receive buffer (`MSG_TRUNC`).
    Oversized,
    /// A correct prefix around a payload that is no message (unknown variant).
    Undecodable,
    /// A valid reply followed by bytes the prefix also counts.
    TrailingBytes,
    /// A valid `Failed` reply for a job id that was never sent.
    WrongId,
    /// A valid reply with the right id but of the wrong kind for the request.
    WrongKind,
    /// A valid `Failed` reply with a descriptor attached.
    UnaskedDescriptor,
    /// `Hello` again instead of a reply.
    SecondHello,
    /// The first half of a frame (its prefix claims more), then exit.
    TruncatedThenExit,
}

const SHAPES: [Shape; 11] = [
    Shape::PreHello,
    Shape::RandomBytes,
    Shape::HugeLength,
    Shape::Oversized,
    Shape::Undecodable,
    Shape::TrailingBytes,
    Shape::WrongId,
    Shape::WrongKind,
    Shape::UnaskedDescriptor,
    Shape::SecondHello,
    Shape::TruncatedThenExit,
];

/// xorshift64*, seeded from the pid and the clock.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng((u64::from(std::process::id()) << 32 ^ nanos) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn log(line: &str) {
    let Some(path) = std::env::var_os("FLASH_FAULT_HELPER_LOG") else {
        return;
    };
    // One write(2) on an O_APPEND file: lines from concurrent helpers never mix.
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

fn one_in() -> u64 {
    std::env::var_os("FLASH_FAULT_HELPER_CONTROL")
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_ONE_IN)
}

fn real_helper() -> PathBuf {
    if let Some(path) = std::env::var_os("FLASH_FAULT_HELPER_REAL") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("own executable path");
    exe.with_file_name("flash-helper")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rng = Rng::new();
    let n = one_in();
    if n == 0 || rng.below(n) != 0 {
        log(&format!("real {}", std::process::id()));
        let real = real_helper();
        // Only returns on failure.
        let err = Command::new(&real).arg0(&real).args(&args).exec();
        eprintln!("flash-fault-helper: cannot exec {}: {err}", real.display());
        return ExitCode::FAILURE;
    }
    let socket_fd = args
        .iter()
        .position(|a| a == "--socket-fd")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<i32>().ok());
    let Some(socket_fd) = socket_fd else {
        eprintln!("flash-fault-helper: no --socket-fd in {args:?}");
        return ExitCode::from(2);
    };
    let shape = SHAPES[rng.below(SHAPES.len() as u64) as usize];
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: flash-server installed the socket as this descriptor for us; it stays open
    // for the life of the process.
    let sock = unsafe { BorrowedFd::borrow_raw(socket_fd) };
    set_blocking(sock);
    garbage_helper(sock, shape, &mut rng);
    ExitCode::SUCCESS
}

fn set_blocking(sock: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we hold, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(sock.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(sock.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

/// 1 to `max` random bytes, never a frame whose prefix matches its length.
fn random_garbage(rng: &mut Rng, max: u64) -> Vec<u8> {
    let len = 1 + rng.below(max) as usize;
    let mut bytes = rng.bytes(len);
    if bytes.len() >= 4
        && u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize == bytes.len() - 4
    {
        bytes[0] ^= 1;
    }
    bytes
}

fn frame(msg: &FromHelper) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode(msg, &mut out);
    out
}

fn send(sock: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> bool {
    ipc::send_message(sock, bytes, fd).is_ok()
}

/// Serves as a garbage helper until the main process hangs up or kills us.
fn garbage_helper(sock: BorrowedFd<'_>, shape: Shape, rng: &mut Rng) {
    let pid = std::process::id();
    let hello = frame(&FromHelper::Hello {
        version: PROTOCOL_VERSION,
        pid,
    });
    if let Shape::PreHello = shape {
        log(&format!("garbage {pid} {shape:?}"));
        send(sock, &random_garbage(rng, 64), None);
    } else if !send(sock, &hello, None) {
        return;
    }
    let mut buf = vec![0u8; MAX_WIRE_LEN];
    let mut answered = false;
    loop {
        // The descriptor of a Prefetch is closed when dropped.
        let (len, _fd) = match ipc::recv_message(sock, &mut buf) {
            Ok(Some(message)) => message,
            _ => return,
        };
        if answered {
            // The main process should have killed us after the first garbage.
            log(&format!("survived {pid} {shape:?}"));
        }
        let Ok(request) = codec::decode::<ToHelper>(&buf[..len]) else {
            return;
        };
        let id = request.id();
        log(&format!("garbage {pid} {shape:?}"));
        answered = true;
        let failed = frame(&FromHelper::Failed {
            id,
            error: FsError::NotFound,
        });
        let bytes = match shape {
            // Before Hello: the main process never sends a request; if it does, keep
            // talking garbage.
            Shape::PreHello | Shape::RandomBytes => random_garbage(rng, 200),
            Shape::HugeLength => {
                let claimed = MAX_FRAME as u32 + 1 + rng.below(u64::from(u32::MAX) / 2) as u32;
                let mut bytes = claimed.to_le_bytes().to_vec();
                bytes.extend(rng.bytes(16));
                bytes
            }
            Shape::Oversized => {
                let payload = MAX_FRAME + 1 + rng.below(4096) as usize;
                let mut bytes = (payload as u32).to_le_bytes().to_vec();
                bytes.extend(rng.bytes(payload));
                bytes
            }
            Shape::Undecodable => {
                // Variant 200 of a five-variant enum, then noise.
                let mut payload = vec![200u8];
                let noise = rng.below(32) as usize;
                payload.extend(rng.bytes(noise));
                let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
                bytes.extend(payload);
                bytes
            }
            Shape::TrailingBytes => {
                let mut bytes = failed.clone();
                bytes.extend([1, 2, 3]);
                let payload = (bytes.len() - 4) as u32;
                bytes[..4].copy_from_slice(&payload.to_le_bytes());
                bytes
            }
            Shape::WrongId => frame(&FromHelper::Failed {
                id: id ^ (1 << 40) ^ (1 + rng.below(1000)),
                error: FsError::NotFound,
            }),
            Shape::WrongKind => match request {
                ToHelper::Resolve { .. } => frame(&FromHelper::Prefetched { id }),
                ToHelper::Prefetch { .. } => frame(&FromHelper::Redirect { id }),
            },
            Shape::UnaskedDescriptor => {
                // Our stdin (/dev/null) rides along with a reply that takes none.
                send(sock, &failed, Some(std::io::stdin().as_fd()));
                continue;
            }
            Shape::SecondHello => hello.clone(),
            Shape::TruncatedThenExit => {
                let mut bytes = failed.clone();
                let claimed = (bytes.len() - 4 + 50) as u32;
                bytes[..4].copy_from_slice(&claimed.to_le_bytes());
                send(sock, &bytes, None);
                return;
            }
        };
        send(sock, &bytes, None);
    }
}
