//! The access log: one line per response, in the Apache/nginx "combined"
//! format (plus the duration) or as JSON objects.
//!
//! The event loop never writes the log itself: it formats each line into a
//! buffer it owns (reused, so the cached fast path allocates nothing; the
//! timestamp is formatted once per second) and, once per loop iteration,
//! hands the buffer to a writer thread that owns the file. The hand-off
//! holds a mutex only to swap or append buffers, never across I/O, and
//! wakes the writer only for a full batch (or when it sleeps idle): under
//! load the writer writes every 100 ms or 32 KiB, so a line may reach the
//! file up to 100 ms after its response. What
//! waits for the writer is bounded by [`MAX_PENDING`]: lines beyond it are
//! dropped and counted ([`AccessLogHandle::dropped_lines`]), so a log that
//! cannot keep up (a full disk, a pipe nobody reads) never slows or stalls
//! the server.
//!
//! Lines never interleave mid-line when several processes share the
//! destination: a regular file is opened `O_APPEND` and written a batch of
//! whole lines per `write`; anything else (a pipe, a FIFO, a terminal) in
//! writes of at most `PIPE_BUF` bytes, each ending at a line end (every
//! line is shorter than that: long fields are cut, see [`FIELD_MAX`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::mem;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flash_http::civil_from_days;
use log::warn;

/// Bytes of formatted lines that may wait for the writer thread (in the
/// engine's buffer and the hand-off buffer together; the batch the writer
/// is writing comes on top). Lines that do not fit are dropped and counted.
pub const MAX_PENDING: usize = 1 << 20;
/// The engine hands its buffer over as soon as it holds this much, not
/// only at the end of a loop iteration.
const HAND_OFF_AT: usize = 64 * 1024;
/// Capacity of each of the three buffers that circulate between the engine
/// and the writer: the most any of them can hold (the bound plus one line),
/// so none ever grows, even while the writer lags (the engine allocates
/// nothing per request). Pages are only touched as lines fill them.
const BUFFER_CAPACITY: usize = MAX_PENDING + PIPE_BUF;
/// The writer is woken when this much waits for it (or when it sleeps
/// with nothing pending); otherwise it looks every [`WRITE_EVERY`]. Waking
/// it at every loop iteration (a futex wake, two context switches and a
/// `write` per iteration, on the engine's CPU) cost ~5% of a 1 KiB request.
const WAKE_AT: usize = 32 * 1024;
/// Longest a handed-off line waits for the writer while the log is busy.
const WRITE_EVERY: Duration = Duration::from_millis(100);
/// Longest write to a pipe (POSIX `PIPE_BUF` on Linux): such writes are
/// atomic, so lines of several processes never mix.
const PIPE_BUF: usize = 4096;
/// Longest output of one variable field (request line, target, Referer,
/// User-Agent) after escaping; a longer one is cut and ends with `...`.
/// Keeps every line below `PIPE_BUF`.
pub const FIELD_MAX: usize = 768;
/// Drops are warned about at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long the engine waits at exit for the writer to finish the lines.
pub const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// The process's standard output (written in `PIPE_BUF` pieces unless
    /// it is a regular file).
    Stdout,
    /// A file, opened `O_APPEND | O_CREAT` with mode 0640 (a FIFO works
    /// too, if a reader has it open).
    File(PathBuf),
}

/// How a line looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Apache/nginx "combined", then the duration in seconds.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// One response, as the connection saw it.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// The client (for a proxied connection, the proxied client).
    pub client: SocketAddr,
    /// The request line as received (without CR LF); empty if none arrived.
    pub request_line: &'a [u8],
    /// The status code sent.
    pub status: u16,
    /// Body bytes handed to the kernel (nginx's `$body_bytes_sent`).
    pub body_bytes: u64,
    /// All bytes handed to the kernel, head included (nginx's `$bytes_sent`).
    pub total_bytes: u64,
    /// The `Referer` field value, if the request had one.
    pub referer: Option<&'a [u8]>,
    /// The `User-Agent` field value, if the request had one.
    pub user_agent: Option<&'a [u8]>,
    /// From the first byte of the request to the last byte of the response
    /// handed to the kernel.
    pub duration: Duration,
}

/// The engine's side of the access log: formats lines and hands them to
/// the writer thread. Owned by the [`Server`](crate::Server)
/// (see [`Server::set_access_log`](crate::Server::set_access_log)).
pub struct AccessLog {
    format: LogFormat,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// Lines formatted since the last hand-off.
    buf: Vec<u8>,
    /// Bytes the hand-off buffer held after the last hand-off (the writer
    /// may have taken them since: an upper bound).
    handed_pending: usize,
    /// The second `time` is formatted for, and its two renderings.
    time_secs: u64,
    time_combined: [u8; 26],
    time_iso: [u8; 25],
    /// Drops already warned about, and when the next warning may come.
    dropped_warned: u64,
    next_warning: Option<Instant>,
}

/// A handle on an access log for other threads (signal handling, metrics).
#[derive(Clone)]
pub struct AccessLogHandle {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Lines dropped because the writer could not keep up.
    dropped: AtomicU64,
    /// Lines taken by the writer and not yet written.
    in_flight: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Lines handed off, waiting for the writer.
    pending: Vec<u8>,
    reopen: bool,
    closing: bool,
    /// The writer found nothing pending and sleeps until woken (the next
    /// hand-off wakes it; otherwise hand-offs wake it only at [`WAKE_AT`]).
    parked: bool,
    /// The writer has written everything and exited.
    finished: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only buffers behind: usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AccessLogHandle {
    /// Makes the writer thread reopen the log's path (after logrotate
    /// renamed the file): lines handed off from now on go to the new file.
    /// Standard output is not reopened. Never waits on I/O.
    pub fn reopen(&self) {
        self.shared.lock().reopen = true;
        self.shared.wake.notify_one();
    }

    /// Lines dropped so far because the log could not keep up.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// The destination, as the writer thread holds it.
struct Sink {
    target: LogTarget,
    file: File,
    /// Not a regular file: write in `PIPE_BUF` pieces.
    pipe: bool,
}

impl Sink {
    fn open(target: &LogTarget) -> io::Result<Sink> {
        let file = match target {
            // A descriptor of our own: the writer must not go through
            // `Stdout`'s line buffer, which could split a batch anywhere.
            LogTarget::Stdout => File::from(io::stdout().as_fd().try_clone_to_owned()?),
            LogTarget::File(path) => {
                // O_NONBLOCK only for the open: a FIFO without a reader then
                // fails (ENXIO) instead of blocking the caller forever.
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(path)?;
                crate::sys::set_nonblocking(file.as_fd(), false)?;
                file
            }
        };
        let kind = file.metadata()?.file_type();
        let pipe = !kind.is_file() && !kind.is_block_device();
        Ok(Sink {
            target: target.clone(),
            file,
            pipe,
        })
    }

    /// Writes whole lines: in one batch to a regular file (`O_APPEND`),
    /// in pieces of at most `PIPE_BUF` ending at a line end to anything
    /// else. Counts down `in_flight` as lines leave.
    fn write_lines(&mut self, mut bytes: &[u8], in_flight: &AtomicU64) -> io::Result<()> {
        while !bytes.is_empty() {
            let piece = if self.pipe {
                piece_len(bytes)
            } else {
                bytes.len()
            };
            self.file.write_all(&bytes[..piece])?;
            let lines = bytes[..piece].iter().filter(|&&b| b == b'\n').count();
            in_flight.fetch_sub(lines as u64, Ordering::Relaxed);
            bytes = &bytes[piece..];
        }
        Ok(())
    }
}

/// The longest prefix of `bytes` of at most `PIPE_BUF` bytes that ends at a
/// line end (a longer line, which the formatter never makes, goes whole).
fn piece_len(bytes: &[u8]) -> usize {
    if bytes.len() <= PIPE_BUF {
        return bytes.len();
    }
    match bytes[..PIPE_BUF].iter().rposition(|&b| b == b'\n') {
        Some(end) => end + 1,
        None => bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |end| end + 1),
    }
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// The writer thread: takes handed-off lines and writes them, reopens on
/// request, finishes what is pending when the log closes.
fn writer(shared: Arc<Shared>, mut sink: Sink) {
    // Buffers circulate (engine -> hand-off -> writer -> hand-off ->
    // engine); each has room for the most it can hold, so none grows.
    let mut batch = Vec::with_capacity(BUFFER_CAPACITY);
    loop {
        let (reopen, closing) = {
            let mut state = shared.lock();
            // Write when WAKE_AT bytes wait, on reopen or close, or
            // WRITE_EVERY after the lines started waiting: one write per
            // batch of hundreds of lines under load, not per loop iteration.
            let mut deadline = Instant::now() + WRITE_EVERY;
            while !state.reopen && !state.closing && state.pending.len() < WAKE_AT {
                if state.pending.is_empty() {
                    state.parked = true;
                    state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                    deadline = Instant::now() + WRITE_EVERY;
                    continue;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                state = shared
                    .wake
                    .wait_timeout(state, deadline - now)
                    .map(|(s, _)| s)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            state.parked = false;
            // The engine gets this (empty) buffer back: buffers circulate.
            mem::swap(&mut state.pending, &mut batch);
            shared
                .in_flight
                .fetch_add(count_lines(&batch), Ordering::Relaxed);
            (mem::take(&mut state.reopen), state.closing)
        };
        // Lines handed off before the reopen request go to the old file.
        if let Err(e) = sink.write_lines(&batch, &shared.in_flight) {
            let lost = shared.in_flight.swap(0, Ordering::Relaxed);
            shared.dropped.fetch_add(lost, Ordering::Relaxed);
            warn!("access log: write failed ({e}); {lost} line(s) lost");
        }
        batch.clear();
        if reopen && sink.target != LogTarget::Stdout {
            match Sink::open(&sink.target) {
                Ok(new) => sink = new,
                Err(e) => warn!("access log: cannot reopen ({e}); still writing to the old file"),
            }
        }
        if closing && shared.lock().pending.is_empty() {
            break;
        }
    }
    shared.lock().finished = true;
    shared.wake.notify_all();
}

impl AccessLog {
    /// Lines dropped so far because the log could not keep up.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Opens the destination (in the calling thread, so errors show at
    /// start and the file is opened with the caller's privileges) and
    /// starts the writer thread.
    pub fn open(target: LogTarget, format: LogFormat) -> io::Result<AccessLog> {
        let sink = Sink::open(&target)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Vec::with_capacity(BUFFER_CAPACITY),
                ..State::default()
            }),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        });
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || writer(shared, sink)
            })?;
        Ok(AccessLog {
            format,
            shared,
            writer: Some(writer),
            buf: Vec::with_capacity(BUFFER_CAPACITY),
            handed_pending: 0,
            time_secs: u64::MAX,
            time_combined: [0; 26],
            time_iso: [0; 25],
            dropped_warned: 0,
            next_warning: None,
        })
    }

    /// A handle for other threads: reopen, drop count.
    pub fn handle(&self) -> AccessLogHandle {
        AccessLogHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Formats one line (dropped and counted if the pending lines are at
    /// their bound). `wall` is the time of the response's end.
    pub fn record(&mut self, entry: &Entry<'_>, wall: SystemTime) {
        self.set_time(wall);
        let start = self.buf.len();
        match self.format {
            LogFormat::Combined => self.combined(entry),
            LogFormat::Json => self.json(entry),
        }
        self.buf.push(b'\n');
        if self.buf.len() + self.handed_pending > MAX_PENDING {
            self.buf.truncate(start);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else if self.buf.len() >= HAND_OFF_AT {
            self.hand_off();
        }
    }

    /// Hands the formatted lines to the writer (once per loop iteration),
    /// and warns about drops at most once per 10 s. Never waits on I/O.
    pub fn flush(&mut self, now: Instant) {
        if !self.buf.is_empty() {
            self.hand_off();
        }
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_warned && !matches!(self.next_warning, Some(t) if now < t) {
            warn!(
                "access log: {} line(s) dropped because the log cannot keep up ({dropped} in all)",
                dropped - self.dropped_warned
            );
            self.dropped_warned = dropped;
            self.next_warning = Some(now + WARN_EVERY);
        }
    }

    fn hand_off(&mut self) {
        let mut state = self.shared.lock();
        if state.pending.is_empty() {
            mem::swap(&mut state.pending, &mut self.buf);
        } else if state.pending.len() + self.buf.len() <= state.pending.capacity().min(MAX_PENDING)
        {
            // Within the capacity: the hand-off buffer never grows (no
            // allocation) while the writer keeps up.
            state.pending.extend_from_slice(&self.buf);
            self.buf.clear();
        } else {
            // The writer is behind: keep the lines here (bounded by
            // `record`) until it takes what waits, and make sure it looks.
            self.handed_pending = state.pending.len();
            state.parked = false;
            drop(state);
            self.shared.wake.notify_one();
            return;
        }
        self.handed_pending = state.pending.len();
        // A busy writer looks by itself within WRITE_EVERY: wake it only for
        // a full batch or when it sleeps with nothing to do.
        let wake = state.parked || state.pending.len() >= WAKE_AT;
        state.parked &= !wake;
        drop(state);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Hands off what is left and lets the writer finish it, waiting up to
    /// `timeout`; then reports (and counts) the lines it could not write.
    /// Returns the number of lines dropped in all.
    pub fn close(mut self, timeout: Duration) -> u64 {
        self.finish(timeout)
    }

    fn finish(&mut self, timeout: Duration) -> u64 {
        let Some(writer) = self.writer.take() else {
            return self.shared.dropped.load(Ordering::Relaxed);
        };
        // Whatever the writer has not taken counts as dropped if it stays stuck.
        let mut left = count_lines(&self.buf);
        {
            let mut state = self.shared.lock();
            if state.pending.len() + self.buf.len() <= MAX_PENDING {
                state.pending.extend_from_slice(&self.buf);
                left = 0;
            }
            self.buf.clear();
            state.closing = true;
        }
        self.shared.wake.notify_all();
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while !state.finished {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .shared
                .wake
                .wait_timeout(state, deadline - now)
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        if state.finished {
            drop(state);
            let _ = writer.join();
        } else {
            // The writer is stuck (a pipe nobody reads): its lines are lost
            // when the process exits; the thread is left to that.
            left += count_lines(&state.pending) + self.shared.in_flight.load(Ordering::Relaxed);
            drop(state);
        }
        let dropped = self.shared.dropped.fetch_add(left, Ordering::Relaxed) + left;
        if dropped > 0 {
            warn!("access log: {dropped} line(s) dropped in all because the log could not keep up");
        }
        dropped
    }

    fn set_time(&mut self, wall: SystemTime) {
        let secs = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .min(253_402_300_799);
        if secs == self.time_secs {
            return;
        }
        self.time_secs = secs;
        let (year, month, day) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        // 03/Dec/2026:17:46:35 +0000
        let c = &mut self.time_combined;
        c.copy_from_slice(b"00/Jan/0000:00:00:00 +0000");
        put_digits(&mut c[0..2], day);
        c[3..6].copy_from_slice(MONTHS[(month - 1) as usize]);
        put_digits(&mut c[7..11], year);
        put_digits(&mut c[12..14], h);
        put_digits(&mut c[15..17], m);
        put_digits(&mut c[18..20], s);
        // 2026-12-03T17:46:35+00:00 (nginx's $time_iso8601 in UTC)
        let i = &mut self.time_iso;
        i.copy_from_slice(b"0000-00-00T00:00:00+00:00");
        put_digits(&mut i[0..4], year);
        put_digits(&mut i[5..7], month);
        put_digits(&mut i[8..10], day);
        put_digits(&mut i[11..13], h);
        put_digits(&mut i[14..16], m);
        put_digits(&mut i[17..19], s);
    }

    /// `%h - - [%d/%b/%Y:%H:%M:%S +0000] "%r" %s %b "%{Referer}i" "%{User-agent}i" DURATION`
    fn combined(&mut self, e: &Entry<'_>) {
        let buf = &mut self.buf;
        push_ip(buf, e.client.ip());
        buf.extend_from_slice(b" - - [");
        buf.extend_from_slice(&self.time_combined);
        buf.extend_from_slice(b"] \"");
        escape_nginx_or_dash(buf, Some(e.request_line).filter(|l| !l.is_empty()));
        buf.extend_from_slice(b"\" ");
        push_u64(buf, u64::from(e.status));
        buf.push(b' ');
        push_u64(buf, e.body_bytes);
        buf.extend_from_slice(b" \"");
        escape_nginx_or_dash(buf, e.referer);
        buf.extend_from_slice(b"\" \"");
        escape_nginx_or_dash(buf, e.user_agent);
        buf.extend_from_slice(b"\" ");
        push_seconds(buf, e.duration);
    }

    fn json(&mut self, e: &Entry<'_>) {
        let buf = &mut self.buf;
        buf.extend_from_slice(b"{\"time\":\"");
        buf.extend_from_slice(&self.time_iso);
        buf.extend_from_slice(b"\",\"client\":\"");
        push_ip(buf, e.client.ip());
        buf.extend_from_slice(b"\",\"request\":");
        json_string_or_null(
            buf,
            Some(e.request_line).filter(|l| !l.is_empty()),
            FIELD_MAX,
        );
        let parts = split_request_line(e.request_line);
        let [method, target, protocol] = parts.map_or([None; 3], |p| p.map(Some));
        buf.extend_from_slice(b",\"method\":");
        json_string_or_null(buf, method, 32);
        buf.extend_from_slice(b",\"target\":");
        json_string_or_null(buf, target, FIELD_MAX);
        buf.extend_from_slice(b",\"protocol\":");
        json_string_or_null(buf, protocol, 32);
        buf.extend_from_slice(b",\"status\":");
        push_u64(buf, u64::from(e.status));
        buf.extend_from_slice(b",\"body_bytes\":");
        push_u64(buf, e.body_bytes);
        buf.extend_from_slice(b",\"bytes\":");
        push_u64(buf, e.total_bytes);
        buf.extend_from_slice(b",\"referer\":");
        json_string_or_null(buf, e.referer, FIELD_MAX);
        buf.extend_from_slice(b",\"user_agent\":");
        json_string_or_null(buf, e.user_agent, FIELD_MAX);
        buf.extend_from_slice(b",\"duration\":");
        push_seconds(buf, e.duration);
        buf.push(b'}');
    }
}

impl Drop for AccessLog {
    /// A log dropped without [`AccessLog::close`] still gets its lines
    /// handed off; the writer finishes them in the background.
    fn drop(&mut self) {
        if self.writer.is_some() {
            let mut state = self.shared.lock();
            if state.pending.len() + self.buf.len() <= MAX_PENDING {
                state.pending.extend_from_slice(&self.buf);
            }
            state.closing = true;
            drop(state);
            self.shared.wake.notify_all();
        }
    }
}

/// `METHOD SP TARGET SP PROTOCOL`: the three parts, when the line has them.
fn split_request_line(line: &[u8]) -> Option<[&[u8]; 3]> {
    let first = line.iter().position(|&b| b == b' ')?;
    let last = line.iter().rposition(|&b| b == b' ')?;
    (first < last).then(|| [&line[..first], &line[first + 1..last], &line[last + 1..]])
}

/// Seconds with millisecond precision: `0.002`.
fn push_seconds(buf: &mut Vec<u8>, d: Duration) {
    let millis = d.as_millis();
    let _ = write!(buf, "{}.{:03}", millis / 1000, millis % 1000);
}

fn put_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Bytes nginx escapes in its access log: `"`, `\` and all outside
/// printable ASCII.
fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b)
}

/// `value` in decimal, without the formatting machinery.
fn push_u64(buf: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// A client address: IPv4 by hand (the common case, per line), IPv6 through
/// its `Display`.
fn push_ip(buf: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                push_u64(buf, u64::from(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// Escapes like nginx's access log: `"`, `\` and bytes outside printable
/// ASCII as `\xHH`; `-` for an absent value; cut at [`FIELD_MAX`] bytes.
fn escape_nginx_or_dash(buf: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(value) = value else {
        buf.push(b'-');
        return;
    };
    // Most values need no escaping: copy the clean start at once (as much
    // as the loop below would have copied byte by byte before a cut).
    let clean = value
        .iter()
        .position(|&b| needs_escape(b))
        .unwrap_or(value.len())
        .min(FIELD_MAX - 3);
    buf.extend_from_slice(&value[..clean]);
    let start = buf.len() - clean;
    for &b in &value[clean..] {
        if buf.len() - start > FIELD_MAX - 4 {
            buf.extend_from_slice(b"...");
            return;
        }
        if needs_escape(b) {
            buf.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            buf.push(b);
        }
    }
}

/// A JSON string (or `null`): `"` and `\` escaped, control characters and
/// bytes that are not UTF-8 as `\u00HH`; cut at `max` output bytes.
fn json_string_or_null(buf: &mut Vec<u8>, value: Option<&[u8]>, max: usize) {
    let Some(mut rest) = value else {
        buf.extend_from_slice(b"null");
        return;
    };
    let start = buf.len();
    buf.push(b'"');
    let limit = start + max;
    'outer: while !rest.is_empty() {
        let (valid, invalid) = match std::str::from_utf8(rest) {
            Ok(s) => (s, 0),
            Err(e) => {
                let valid = e.valid_up_to();
                // Cannot fail: from_utf8 just said these bytes are valid.
                let s = std::str::from_utf8(&rest[..valid]).unwrap_or_default();
                (s, e.error_len().unwrap_or(rest.len() - valid))
            }
        };
        for c in valid.chars() {
            if buf.len() + 6 > limit {
                buf.extend_from_slice(b"...");
                break 'outer;
            }
            match c {
                '"' => buf.extend_from_slice(b"\\\""),
                '\\' => buf.extend_from_slice(b"\\\\"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => push_u00(buf, c as u8),
                c => {
                    let mut tmp = [0u8; 4];
                    buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                }
            }
        }
        let bad = &rest[valid.len()..valid.len() + invalid];
        for &b in bad {
            if buf.len() + 6 > limit {
                buf.extend_from_slice(b"...");
                break 'outer;
            }
            push_u00(buf, b);
        }
        rest = &rest[valid.len() + invalid..];
    }
    buf.push(b'"');
}

fn push_u00(buf: &mut Vec<u8>, b: u8) {
    buf.extend_from_slice(&[
        b'\\',
        b'u',
        b'0',
        b'0',
        HEX[usize::from(b >> 4)],
        HEX[usize::from(b & 15)],
    ]);
}

/// Where the parts of a request a log line needs are in the bytes of its
/// head: offsets relative to the head's start, so they stay valid while the
/// head stays in the connection's buffer (it does until the response ends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestSpans {
    /// The request line (without its line end).
    pub line: (usize, usize),
    /// The `Referer` value, trimmed.
    pub referer: Option<(usize, usize)>,
    /// The `User-Agent` value, trimmed.
    pub user_agent: Option<(usize, usize)>,
}

impl RequestSpans {
    /// Finds the request line and the two fields in (the start of) a
    /// request head; tolerant of garbage (a 400's head) and of a head
    /// cut short (a 408's).
    pub fn scan(head: &[u8]) -> RequestSpans {
        let mut spans = RequestSpans::default();
        let mut lines = LineIter { head, pos: 0 };
        // Empty lines before the request line are allowed (RFC 9112 2.2).
        let first = lines.by_ref().find(|&(s, e)| e > s);
        let Some((s, e)) = first else {
            return spans;
        };
        spans.line = (s, e);
        for (s, e) in lines {
            if s == e {
                break;
            }
            let line = &head[s..e];
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = &line[..colon];
            let slot = if name.eq_ignore_ascii_case(b"referer") {
                &mut spans.referer
            } else if name.eq_ignore_ascii_case(b"user-agent") {
                &mut spans.user_agent
            } else {
                continue;
            };
            if slot.is_none() {
                let mut vs = s + colon + 1;
                let mut ve = e;
                while vs < ve && matches!(head[vs], b' ' | b'\t') {
                    vs += 1;
                }
                while ve > vs && matches!(head[ve - 1], b' ' | b'\t') {
                    ve -= 1;
                }
                *slot = Some((vs, ve));
            }
        }
        spans
    }
}

/// Lines of a head: `(start, end)` without CR LF (or a bare LF); the last,
/// unterminated piece too.
struct LineIter<'a> {
    head: &'a [u8],
    pos: usize,
}

impl Iterator for LineIter<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.pos >= self.head.len() {
            return None;
        }
        let start = self.pos;
        let (end, next) = match self.head[start..].iter().position(|&b| b == b'\n') {
            Some(i) => (start + i, start + i + 1),
            None => (self.head.len(), self.head.len()),
        };
        self.pos = next;
        let end = if end > start && self.head[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        Some((start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(line: &'a [u8], ua: Option<&'a [u8]>) -> Entry<'a> {
        Entry {
            client: "127.0.0.1:5555".parse().unwrap(),
            request_line: line,
            status: 200,
            body_bytes: 12,
            total_bytes: 200,
            referer: None,
            user_agent: ua,
            duration: Duration::from_micros(2500),
        }
    }

    fn formatted(format: LogFormat, e: &Entry<'_>) -> String {
        let mut log = AccessLog::open(LogTarget::File("/dev/null".into()), format).unwrap();
        log.record(e, UNIX_EPOCH + Duration::from_secs(1_780_508_795));
        let line = String::from_utf8(log.buf.clone()).unwrap();
        log.buf.clear();
        line
    }

    /// The clean-prefix copy gives exactly what escaping byte by byte gave,
    /// cut included.
    #[test]
    fn escaping_with_a_clean_prefix_matches_byte_by_byte() {
        fn reference(value: &[u8]) -> Vec<u8> {
            let mut buf = Vec::new();
            for &b in value {
                if buf.len() > FIELD_MAX - 4 {
                    buf.extend_from_slice(b"...");
                    return buf;
                }
                if needs_escape(b) {
                    buf.extend_from_slice(&[
                        b'\\',
                        b'x',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 15)],
                    ]);
                } else {
                    buf.push(b);
                }
            }
            buf
        }
        let mut cases: Vec<Vec<u8>> = vec![b"".to_vec(), b"curl/8.5.0".to_vec()];
        for len in [
            FIELD_MAX - 5,
            FIELD_MAX - 4,
            FIELD_MAX - 3,
            FIELD_MAX - 2,
            FIELD_MAX,
            2000,
        ] {
            cases.push(vec![b'a'; len]);
            for at in [
                0,
                1,
                len / 2,
                len.saturating_sub(5),
                len.saturating_sub(3),
                len - 1,
            ] {
                let mut v = vec![b'a'; len];
                v[at] = b'"';
                cases.push(v);
            }
        }
        for value in cases {
            let mut buf = b"prefix ".to_vec();
            escape_nginx_or_dash(&mut buf, Some(&value));
            assert_eq!(&buf[7..], &reference(&value)[..], "len {}", value.len());
        }
    }

    #[test]
    fn combined_line() {
        let e = entry(b"GET /a?b HTTP/1.1", Some(b"x\"y\\z\x01\xff"));
        assert_eq!(
            formatted(LogFormat::Combined, &e),
            "127.0.0.1 - - [03/Jun/2026:17:46:35 +0000] \"GET /a?b HTTP/1.1\" 200 12 \"-\" \"x\\x22y\\x5Cz\\x01\\xFF\" 0.002\n"
        );
    }

    #[test]
    fn json_line() {
        let e = entry(b"GET /\xc3\xa9 HTTP/1.1", Some(b"a\"\\\x01\xff\xc3\xa9"));
        assert_eq!(
            formatted(LogFormat::Json, &e),
            "{\"time\":\"2026-06-03T17:46:35+00:00\",\"client\":\"127.0.0.1\",\"request\":\"GET /\u{e9} HTTP/1.1\",\"method\":\"GET\",\"target\":\"/\u{e9}\",\"protocol\":\"HTTP/1.1\",\"status\":200,\"body_bytes\":12,\"bytes\":200,\"referer\":null,\"user_agent\":\"a\\\"\\\\\\u0001\\u00FF\u{e9}\",\"duration\":0.002}\n"
        );
    }

    #[test]
    fn long_fields_are_cut_below_pipe_buf() {
        let long = vec![b'\x01'; 10_000];
        for format in [LogFormat::Combined, LogFormat::Json] {
            let mut e = entry(&long, Some(&long));
            e.referer = Some(&long);
            let line = formatted(format, &e);
            assert!(line.len() < PIPE_BUF, "{} bytes", line.len());
            assert!(line.ends_with('\n'));
        }
    }

    #[test]
    fn spans_of_a_head() {
        let head =
            b"\r\nGET / HTTP/1.1\r\nHost: h\r\nuser-agent:  curl/8 \r\nReferer: r\r\n\r\nGET /next";
        let s = RequestSpans::scan(head);
        assert_eq!(&head[s.line.0..s.line.1], b"GET / HTTP/1.1");
        let ua = s.user_agent.unwrap();
        assert_eq!(&head[ua.0..ua.1], b"curl/8");
        let r = s.referer.unwrap();
        assert_eq!(&head[r.0..r.1], b"r");
        let partial = RequestSpans::scan(b"GET /slow");
        assert_eq!(partial.line, (0, 9));
        assert_eq!(RequestSpans::scan(b"").line, (0, 0));
    }

    #[test]
    fn pipe_pieces_end_at_line_ends() {
        let mut bytes = Vec::new();
        for i in 0..1000 {
            bytes.extend_from_slice(format!("line {i} {}\n", "x".repeat(i % 90)).as_bytes());
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = piece_len(rest);
            assert!(n <= PIPE_BUF);
            assert_eq!(rest[n - 1], b'\n');
            rest = &rest[n..];
        }
    }
}
