//! One client connection: a state machine driven by readiness events and by
//! completions of the two asynchronous steps, "find the file" and "make the
//! bytes ready".
//!
//! ```text
//!  Reading --head parsed--> Resolving --lookup done--> Sending --all sent--> Reading (keep-alive)
//!     |                        (inline in SPED)          |  ^                  \-> Lingering -> closed
//!     \--bad request--> Sending (error page, close)      v  |
//!                                             AwaitingPages (helper prefetch, AMPED)
//! ```
//!
//! The request head stays in the read buffer until its response is built,
//! so a lookup that completes later re-parses it instead of copying it.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::mem;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use flash_http::{
    boundary_from, is_hidden, parse_proxy_header, parse_request, percent_encode_path,
    plan_multipart, select, write_error_response, ErrorExtra, Method, Parse, ProxyParse, Request,
    RequestError, ResponseHead, Segment, Selection, Status, Validators,
};
use log::{debug, warn};

use crate::access_log::{Entry, RequestSpans};
use crate::cache::Cached;
use crate::config::HiddenFiles;
use crate::file::{Contents, OpenFile};
use crate::fs::FsError;
use crate::metrics::{CacheKind, MethodClass};
use crate::pool::Waiter;
use crate::server::Ctx;
use crate::sys;

/// First allocation of a connection's read buffer.
const READ_CHUNK: usize = 4096;
// A PROXY header always fits the first buffer, so its parser reaches a
// verdict before the buffer could be full.
const _: () = assert!(flash_http::PROXY_MAX_LEN <= READ_CHUNK);
/// Longest a client that keeps up with the minimum rate may take to drain
/// what the kernel holds for it after its last response (the socket buffer,
/// bounded by `TCP_NOTSENT_LOWAT` plus what is in flight).
const MAX_DRAIN: Duration = Duration::from_secs(600);
/// How long a closing connection drains what the client still sends, so the
/// final response is not destroyed by a TCP reset.
const LINGER: Duration = Duration::from_secs(2);

/// Result of finding a file: from the path cache, a helper, or inline.
#[derive(Clone)]
pub enum Lookup {
    File {
        file: Rc<OpenFile>,
        content_type: &'static str,
    },
    Redirect,
    Failed(FsError),
    Unavailable,
}

impl From<Cached> for Lookup {
    fn from(cached: Cached) -> Lookup {
        match cached {
            Cached::File { file, content_type } => Lookup::File { file, content_type },
            Cached::Redirect => Lookup::Redirect,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Reading,
    Resolving,
    Sending,
    AwaitingPages,
    Lingering,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Keep,
    Close,
    /// Used its share of this loop iteration; drive it again soon.
    Yield,
}

/// State-machine steps one connection may take per turn (a request takes
/// about four), so a client streaming pipelined requests or garbage cannot
/// starve the others or the timers.
const STEP_BUDGET: usize = 256;

enum Step {
    Continue,
    Wait,
    Close,
}

/// The file part of a response: the current range, and what follows it
/// (multipart literals and ranges).
struct Body {
    file: Rc<OpenFile>,
    pos: u64,
    end: u64,
    /// Bytes before this offset are known resident (or need no check).
    ready_until: u64,
    rest: VecDeque<Segment>,
}

/// How the response being sent advances: the send timeout closes a client
/// that takes nothing at all, the minimum send rate one that takes too
/// little over a window (it would hold a descriptor and kernel buffers for
/// as long as it likes).
#[derive(Clone, Copy, Debug)]
struct SendProgress {
    /// How long a write may be waited for (the send timeout; less for a 408).
    stall_after: Duration,
    /// Close if nothing more is written by then.
    stall_at: Instant,
    /// The rate window, begun when the response first had to wait for the
    /// client (most responses never do, and never pay for the measure).
    window: Option<RateWindow>,
}

/// Start of a rate window, and the bytes the client had acknowledged then.
/// Acknowledged, not written: a client reading slowly frees socket buffer
/// space (and so lets the server write) only in large steps, so what was
/// written says little about the rate it reads at.
#[derive(Clone, Copy, Debug)]
struct RateWindow {
    start: Instant,
    acked: u64,
}

/// What a client's progress is judged in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A response is being written: a client that took everything the
    /// kernel had for it is never at fault (the server did not write: the
    /// disk, or a missed wakeup).
    Sending,
    /// After the last response, while the kernel still holds bytes of it:
    /// nothing more is written, so only what the client takes counts.
    Draining,
}

/// Why a client reading a response was cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowReader {
    /// Nothing written for `--send-timeout`.
    Stalled,
    /// Less than `--min-send-rate` acknowledged over `--send-rate-window`.
    BelowMinRate,
}

impl SendProgress {
    fn new(now: Instant, stall_after: Duration) -> SendProgress {
        SendProgress {
            stall_after,
            stall_at: now + stall_after,
            window: None,
        }
    }

    /// When the connection must be looked at if nothing more is written.
    fn deadline(&self, config: &crate::Config) -> Instant {
        match self.window {
            Some(w) => self.stall_at.min(w.start + config.send_rate_window),
            None => self.stall_at,
        }
    }

    /// Bytes were written at `now`.
    fn wrote(&mut self, now: Instant) {
        self.stall_at = now + self.stall_after;
    }

    /// The client has bytes to take: the rate window starts if it has not.
    fn waiting(&mut self, now: Instant, sock: BorrowedFd<'_>, config: &crate::Config) {
        if self.window.is_none() && config.min_send_rate > 0 {
            self.window = sys::tcp_progress(sock).map(|p| RateWindow {
                start: now,
                acked: p.acked,
            });
        }
    }

    /// At a deadline: whether the client keeps up (the stall limit, then the
    /// rate window).
    fn check(
        &mut self,
        now: Instant,
        sock: BorrowedFd<'_>,
        config: &crate::Config,
        phase: Phase,
    ) -> Result<(), SlowReader> {
        if now >= self.stall_at {
            return Err(SlowReader::Stalled);
        }
        self.check_window(now, sock, config, phase)
    }

    /// A window that ended is judged and, if the client kept up, a new one
    /// begins. What the client acknowledged is weighed against the time that
    /// really passed (deadlines are seen at the sweep, a little late).
    fn check_window(
        &mut self,
        now: Instant,
        sock: BorrowedFd<'_>,
        config: &crate::Config,
        phase: Phase,
    ) -> Result<(), SlowReader> {
        let Some(w) = self
            .window
            .filter(|w| now >= w.start + config.send_rate_window)
        else {
            return Ok(());
        };
        let Some(progress) = sys::tcp_progress(sock) else {
            self.window = None;
            return Ok(());
        };
        let needed = config.min_send_rate as f64 * (now - w.start).as_secs_f64();
        let taken = progress.acked.saturating_sub(w.acked) as f64;
        let server_lagged = phase == Phase::Sending && progress.notsent == 0;
        if taken < needed && !server_lagged {
            return Err(SlowReader::BelowMinRate);
        }
        self.window = Some(RateWindow {
            start: now,
            acked: progress.acked,
        });
        Ok(())
    }
}

/// The response in progress, from its head being built to its last byte
/// handed to the kernel (or the connection's close before): what the
/// metrics count and the access log writes, once, at its end.
#[derive(Clone, Copy, Debug)]
struct Answer {
    status: u16,
    method: MethodClass,
    /// When the request's first byte was read.
    began_at: Instant,
    /// Where its request head starts in the read buffer (it stays there
    /// until the response ends), and whether there is one (a 408 for a
    /// request body that never came has none).
    head_at: usize,
    has_request: bool,
    /// Length of the response head: bytes sent beyond it are body bytes
    /// (measured only for the access log).
    head_len: usize,
    /// Bytes of the response handed to the kernel.
    sent: u64,
}

pub struct Connection {
    socket: TcpStream,
    pub serial: u64,
    /// The client: the peer's address at accept, or the source a PROXY
    /// header named (what logs and access rules should see).
    pub client: SocketAddr,
    /// When the state last became `Lingering` (its FIN was sent).
    linger_began: Instant,
    /// A PROXY listener's connection whose header has not been read yet:
    /// nothing else is read or answered before it.
    awaiting_proxy: bool,
    state: State,
    /// Fully initialised; `read_start..read_end` holds unconsumed bytes.
    read_buf: Vec<u8>,
    read_start: usize,
    read_end: usize,
    /// The response head (or a whole small response) not yet sent.
    write_buf: Vec<u8>,
    write_pos: usize,
    body: Option<Body>,
    /// Request-body bytes still to skip (read after the response is sent,
    /// within the body timeout).
    discard: u64,
    keep_alive: bool,
    /// Some byte of the current response has left.
    response_started: bool,
    /// Bytes of a request not yet complete have arrived (header timeout runs).
    request_begun: bool,
    readable: bool,
    writable: bool,
    pub deadline: Option<Instant>,
    /// Progress of the response being sent (meaningful in `Sending`).
    progress: SendProgress,
    /// When the connection was accepted or last finished a response.
    last_active: Instant,
    /// At least one response was completed on it.
    has_served: bool,
    /// When the first byte of the current request head was read.
    request_began_at: Instant,
    /// Method of the request being answered.
    method: MethodClass,
    /// The response in progress, if one was begun.
    answer: Option<Answer>,
}

/// How readily a connection is closed to make room for a new client:
/// lower first, then the longest waiting first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expendable {
    /// Costs a slot and gives nothing now: idle keep-alive, or lingering
    /// after its last response.
    Idle,
    /// A request head or body that has not finished arriving (or nothing
    /// sent at all since it was accepted).
    Unfinished,
}

impl Connection {
    pub fn new(
        socket: TcpStream,
        client: SocketAddr,
        serial: u64,
        now: Instant,
        header_deadline: Instant,
    ) -> Connection {
        Connection {
            socket,
            serial,
            client,
            awaiting_proxy: false,
            linger_began: now,
            state: State::Reading,
            read_buf: Vec::new(),
            read_start: 0,
            read_end: 0,
            write_buf: Vec::new(),
            write_pos: 0,
            body: None,
            discard: 0,
            keep_alive: true,
            response_started: false,
            request_begun: false,
            readable: false,
            writable: true,
            deadline: Some(header_deadline),
            progress: SendProgress::new(now, Duration::ZERO),
            last_active: now,
            has_served: false,
            request_began_at: now,
            method: MethodClass::Other,
            answer: None,
        }
    }

    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// The connection came through a PROXY listener: its first bytes must
    /// be a PROXY header, within the header timeout already running since
    /// the accept.
    pub fn expect_proxy_header(&mut self) {
        self.awaiting_proxy = true;
    }

    /// Records readiness reported by the (edge-triggered) poller.
    pub fn on_ready(&mut self, readable: bool, writable: bool) {
        self.readable |= readable;
        self.writable |= writable;
    }

    /// Whether (and how readily) this connection may be closed to make room
    /// for a new client, with the instant it has been waiting since. A
    /// response in progress is never expendable.
    pub fn expendable(&self) -> Option<(Expendable, Instant)> {
        match self.state {
            State::Lingering => Some((Expendable::Idle, self.last_active)),
            State::Reading if self.is_idle() && self.has_served => {
                Some((Expendable::Idle, self.last_active))
            }
            State::Reading if !self.response_started => {
                Some((Expendable::Unfinished, self.last_active))
            }
            _ => None,
        }
    }

    /// Lingering: the last response is complete and the write side shut;
    /// only the client's remaining bytes are drained until its FIN.
    pub fn is_lingering(&self) -> bool {
        self.state == State::Lingering
    }

    /// Whether this connection was sent its FIN at least `enough` ago (or
    /// is not lingering at all): at exit, a client is given a moment to see
    /// the FIN before the socket closes, so bytes it sends meanwhile are
    /// read and dropped instead of answered with a reset.
    pub fn lingered(&self, now: Instant, enough: Duration) -> bool {
        self.state != State::Lingering || now >= self.linger_began + enough
    }

    /// Idle: between requests, nothing buffered, nothing owed.
    pub fn is_idle(&self) -> bool {
        self.state == State::Reading && !self.request_begun && self.read_start == self.read_end
    }

    /// At shutdown: an idle connection (a keep-alive one between requests,
    /// or a new one that has sent nothing yet) gets `grace` for a request to
    /// arrive, which is then answered with `Connection: close`. Closing at
    /// once would fail a request already on its way, or leave a client that
    /// was just accepted with no answer at all.
    pub fn stop_when_idle(&mut self, now: Instant, grace: Duration) {
        if self.is_idle() {
            let until = now + grace;
            self.deadline = Some(self.deadline.map_or(until, |d| d.min(until)));
        }
    }

    /// Ends an idle connection politely: FIN now, then the client's bytes
    /// are read and dropped until its own FIN. A plain `close` would answer a
    /// request crossing it with a reset; this way the client sees the end of
    /// a keep-alive connection, which HTTP clients retry on a new one
    /// (RFC 9112, section 9.3.1).
    fn linger(&mut self, now: Instant) {
        sys::shutdown_write(self.socket.as_fd());
        self.state = State::Lingering;
        self.linger_began = now;
        self.deadline = Some(now + LINGER);
    }

    /// Gives back buffer memory of a connection idle since `before`, so idle
    /// keep-alive connections cost almost nothing.
    pub fn release_buffers_if_idle(&mut self, before: Instant) {
        if self.is_idle()
            && self.last_active < before
            && self.read_buf.capacity() + self.write_buf.capacity() > 0
        {
            self.read_buf = Vec::new();
            self.write_buf = Vec::new();
            self.read_start = 0;
            self.read_end = 0;
            self.write_pos = 0;
        }
    }

    /// Runs the state machine as far as readiness and completions allow.
    pub fn drive(&mut self, me: Waiter, ctx: &mut Ctx) -> Flow {
        for _ in 0..STEP_BUDGET {
            let step = match self.state {
                State::Reading => self.read_step(me, ctx),
                State::Sending => self.send_step(me, ctx),
                State::Resolving | State::AwaitingPages => Step::Wait,
                State::Lingering => self.linger_step(),
            };
            match step {
                Step::Continue => continue,
                Step::Wait => return Flow::Keep,
                Step::Close => return Flow::Close,
            }
        }
        Flow::Yield
    }

    /// A deadline passed.
    pub fn on_timeout(&mut self, ctx: &mut Ctx) -> Flow {
        self.deadline = None;
        if ctx.shutting_down && self.is_idle() {
            self.linger(ctx.now);
            return Flow::Keep;
        }
        if self.awaiting_proxy {
            // The peer is a proxy, not an HTTP client: no 408 for it.
            ctx.note_bad_proxy_header(self.client, "no complete PROXY header in time");
            return Flow::Close;
        }
        if self.state == State::Reading
            && (self.request_begun || self.discard > 0)
            && !self.response_started
        {
            debug!("request head or body timeout");
            self.method = MethodClass::Other;
            self.respond_fatal(ctx, Status::REQUEST_TIMEOUT);
            // The 408 gets the linger time to leave, not a full send timeout.
            self.progress = SendProgress::new(ctx.now, ctx.config.send_timeout.min(LINGER));
            self.deadline = Some(self.progress.deadline(&ctx.config));
            return Flow::Keep;
        }
        match self.state {
            State::Sending => {
                match self
                    .progress
                    .check(ctx.now, self.socket.as_fd(), &ctx.config, Phase::Sending)
                {
                    Ok(()) => {
                        self.deadline = Some(self.progress.deadline(&ctx.config));
                        // The client keeps up, yet no writable edge came: try
                        // once more rather than trust that none was missed (one
                        // call per window for a connection that waits).
                        self.writable = true;
                        Flow::Keep
                    }
                    Err(why) => self.cut_off(ctx, why),
                }
            }
            State::Resolving | State::AwaitingPages => {
                // The pool answers every job within its timeouts; this is
                // the net under that promise, so no bug can wedge a client.
                warn!("no answer from the helpers in time; giving up on the request");
                self.abandon_body(ctx)
            }
            State::Reading | State::Lingering => self.close_or_drain(ctx),
        }
    }

    /// An idle or lingering connection timed out. If the kernel still holds
    /// bytes of an earlier response for the client (it fitted in the socket
    /// buffer, so no rate window ran while it was written), the client gets
    /// the minimum rate to take them: closing now would either leave an
    /// orphan socket holding them for as long as the client stalls, or cut
    /// a slow but honest download short. Below the rate, a reset.
    fn close_or_drain(&mut self, ctx: &mut Ctx) -> Flow {
        let sock = self.socket.as_fd();
        if ctx.config.min_send_rate == 0 || sys::queued_bytes(sock) == 0 {
            return Flow::Close;
        }
        if self.state == State::Reading {
            // No new request is taken while draining.
            sys::shutdown_write(sock);
            self.state = State::Lingering;
            self.linger_began = ctx.now;
        }
        if self.progress.window.is_none() {
            self.progress = SendProgress::new(ctx.now, MAX_DRAIN);
            self.progress.waiting(ctx.now, sock, &ctx.config);
        } else if let Err(why) = self
            .progress
            .check(ctx.now, sock, &ctx.config, Phase::Draining)
        {
            return self.cut_off(ctx, why);
        }
        if self.progress.window.is_none() {
            // The kernel does not report progress: no way to judge it.
            return Flow::Close;
        }
        self.deadline = Some(self.progress.deadline(&ctx.config));
        Flow::Keep
    }

    /// How long a connection waits for the helpers before giving up: by
    /// then the pool's own limits have passed even for a job that waited in
    /// the queue, crashed its helper, waited again and ran again (four
    /// helper timeouts, each seen up to a sweep late).
    fn helper_deadline(ctx: &Ctx) -> Instant {
        ctx.now + 5 * ctx.config.helper_timeout + Duration::from_secs(2)
    }

    /// Closes a client that does not read its response (fast enough), with
    /// a reset so the kernel frees the unsent bytes at once.
    fn cut_off(&mut self, ctx: &mut Ctx, why: SlowReader) -> Flow {
        debug!("closing a slow reader: {why:?}");
        sys::reset_on_close(self.socket.as_fd());
        ctx.note_slow_reader(why);
        Flow::Close
    }

    // ---- reading and parsing -------------------------------------------

    fn read_step(&mut self, me: Waiter, ctx: &mut Ctx) -> Step {
        if self.awaiting_proxy {
            return self.proxy_step(ctx);
        }
        if self.discard > 0 {
            let skipped = self.discard.min((self.read_end - self.read_start) as u64);
            self.read_start += skipped as usize;
            self.discard -= skipped;
            if self.discard > 0 {
                return self.fill(ctx);
            }
            // The body is done: the next head's timer runs if it began,
            // else the connection is idle.
            if self.read_start < self.read_end || self.request_begun {
                self.begin_request(ctx);
            } else {
                self.deadline = Some(ctx.now + ctx.config.idle_timeout);
            }
        }
        if self.read_start < self.read_end {
            // Parse from a buffer taken out of `self`, so the request can
            // borrow it while the response is written into `self`.
            let buf = mem::take(&mut self.read_buf);
            let step = match parse_request(&buf[self.read_start..self.read_end], &ctx.config.limits)
            {
                Ok(Parse::Complete(req)) => Some(self.on_request(me, ctx, &req)),
                Ok(Parse::Partial) => None,
                Err(e) => Some(self.on_bad_request(ctx, e)),
            };
            self.read_buf = buf;
            if let Some(step) = step {
                return step;
            }
        }
        self.fill(ctx)
    }

    /// Reads more bytes into the buffer.
    fn fill(&mut self, ctx: &mut Ctx) -> Step {
        if !self.readable {
            return Step::Wait;
        }
        if self.read_start == self.read_end {
            self.read_start = 0;
            self.read_end = 0;
        } else if self.read_end == self.read_buf.len() && self.read_start > 0 {
            self.read_buf.copy_within(self.read_start..self.read_end, 0);
            self.read_end -= self.read_start;
            self.read_start = 0;
        }
        if self.read_end == self.read_buf.len() {
            // Grow up to a little over the head limit: the parser reports an
            // oversized head before the buffer would need more.
            let cap = ctx.config.limits.max_head_bytes + READ_CHUNK;
            let new_len = (self.read_buf.len() * 2).clamp(READ_CHUNK, cap.max(READ_CHUNK));
            if new_len <= self.read_buf.len() {
                // Only a discard can get here with a full buffer: drop it all.
                self.read_start = 0;
                self.read_end = 0;
            } else {
                self.read_buf.resize(new_len, 0);
            }
        }
        match self.socket.read(&mut self.read_buf[self.read_end..]) {
            Ok(0) => Step::Close,
            Ok(n) => {
                // No shortcut on a short read: without EPOLLRDHUP (which
                // `polling` does not expose) a FIN that came with the data
                // raises no new edge, so only reading to EAGAIN sees it.
                self.read_end += n;
                if !self.request_begun
                    && !self.awaiting_proxy
                    && (self.read_end - self.read_start) as u64 > self.discard
                {
                    self.begin_request(ctx);
                }
                Step::Continue
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.readable = false;
                Step::Wait
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Continue,
            Err(_) => Step::Close,
        }
    }

    /// Reads the PROXY header that must start the connection. The buffer
    /// always has room for one (`PROXY_MAX_LEN` is at most `READ_CHUNK`),
    /// so the parser reaches a verdict before the buffer could fill. A bad
    /// header is a close without an answer: the peer is a proxy, and HTTP
    /// bytes sent back would reach the client as if from this server.
    fn proxy_step(&mut self, ctx: &mut Ctx) -> Step {
        if self.read_start == self.read_end {
            return self.fill(ctx);
        }
        match parse_proxy_header(&self.read_buf[self.read_start..self.read_end]) {
            Ok(ProxyParse::Incomplete) => self.fill(ctx),
            Ok(ProxyParse::Header(header)) => {
                self.read_start += header.consumed;
                self.awaiting_proxy = false;
                let peer = self.client;
                if let Some(source) = header.source {
                    self.client = source;
                }
                // The hook for the access log's client: what is logged
                // here is the field itself.
                debug!(
                    "PROXY v{} header from {peer}: client {}{}",
                    header.version,
                    self.client,
                    match header.source {
                        Some(_) => "",
                        None => " (LOCAL or UNKNOWN: the proxy itself)",
                    }
                );
                // What follows is the first request, with its own timer.
                if self.read_start < self.read_end {
                    self.begin_request(ctx);
                } else if !ctx.shutting_down {
                    // (Stopping: the idle grace already set stays.)
                    self.deadline = Some(ctx.now + ctx.config.header_timeout);
                }
                Step::Continue
            }
            Err(e) => {
                ctx.note_bad_proxy_header(self.client, &e.to_string());
                Step::Close
            }
        }
    }

    /// Bytes of a new request head arrived: its header timer starts.
    fn begin_request(&mut self, ctx: &Ctx) {
        self.request_begun = true;
        self.request_began_at = ctx.now;
        self.deadline = Some(ctx.now + ctx.config.header_timeout);
    }

    fn on_bad_request(&mut self, ctx: &mut Ctx, error: RequestError) -> Step {
        debug!("bad request: {error:?}");
        // The stream cannot be resynchronised: answer, then close (the
        // head is logged from where it starts, so that is kept first).
        self.method = MethodClass::Other;
        self.respond_fatal(ctx, error.status());
        self.read_start = self.read_end;
        Step::Continue
    }

    fn on_request(&mut self, me: Waiter, ctx: &mut Ctx, req: &Request<'_>) -> Step {
        self.request_begun = false;
        self.deadline = None;
        self.method = match req.method {
            Method::Get => MethodClass::Get,
            Method::Head => MethodClass::Head,
            Method::Options => MethodClass::Options,
            Method::NotAllowed => MethodClass::Other,
        };
        match req.method {
            Method::Get | Method::Head
                if ctx.config.hidden == HiddenFiles::Deny && is_hidden(&req.path) =>
            {
                // `/.git/config`, `/.env`: as if they did not exist.
                self.respond_simple(ctx, req, Status::NOT_FOUND, ErrorExtra::None)
            }
            Method::Get | Method::Head if !req.asterisk => {
                match ctx.lookup(me, &req.path, req.ends_with_slash) {
                    Some(found) => self.respond(ctx, req, found),
                    None => {
                        // The head stays buffered until the helper answers.
                        self.state = State::Resolving;
                        self.deadline = Some(Self::helper_deadline(ctx));
                        return Step::Wait;
                    }
                }
            }
            Method::Options => self.respond_simple(ctx, req, Status::NO_CONTENT, ErrorExtra::Allow),
            Method::NotAllowed => {
                self.respond_simple(ctx, req, Status::METHOD_NOT_ALLOWED, ErrorExtra::Allow)
            }
            Method::Get | Method::Head => {
                self.respond_simple(ctx, req, Status::BAD_REQUEST, ErrorExtra::None)
            }
        }
        Step::Continue
    }

    /// The helper (or inline resolver) found the file for the buffered request.
    pub fn on_lookup(&mut self, ctx: &mut Ctx, found: Lookup) {
        if self.state != State::Resolving {
            return;
        }
        let buf = mem::take(&mut self.read_buf);
        match parse_request(&buf[self.read_start..self.read_end], &ctx.config.limits) {
            Ok(Parse::Complete(req)) => self.respond(ctx, &req, found),
            _ => {
                // Cannot happen: the same bytes parsed before.
                self.respond_fatal(ctx, Status::INTERNAL_SERVER_ERROR);
            }
        }
        self.read_buf = buf;
    }

    /// A helper brought the pages up to `until` into memory.
    pub fn on_pages_ready(&mut self, ctx: &Ctx, until: u64) {
        if self.state != State::AwaitingPages {
            return;
        }
        // The wait was the disk's, not the client's: its clocks start anew.
        self.progress = SendProgress::new(ctx.now, ctx.config.send_timeout);
        self.deadline = Some(self.progress.deadline(&ctx.config));
        if let Some(body) = &mut self.body {
            // Trust the helper for this window without asking again: a file
            // truncated meanwhile then ends the send instead of looping.
            body.ready_until = body.ready_until.max(until);
        }
        self.state = State::Sending;
    }

    /// A prefetch could not be done.
    pub fn on_pages_failed(&mut self, ctx: &mut Ctx) -> Flow {
        if self.state != State::AwaitingPages {
            return Flow::Keep;
        }
        self.abandon_body(ctx)
    }

    /// The body cannot be made ready: answer 503 if nothing has left yet,
    /// else close (the head already promised the bytes).
    fn abandon_body(&mut self, ctx: &mut Ctx) -> Flow {
        if self.response_started {
            return Flow::Close;
        }
        self.write_buf.clear();
        self.write_pos = 0;
        self.body = None;
        self.respond_fatal(ctx, Status::SERVICE_UNAVAILABLE);
        Flow::Keep
    }

    // ---- building responses --------------------------------------------

    /// Consumes the head (and schedules the body discard) of the request now answered.
    fn consume_request(&mut self, ctx: &Ctx, req: &Request<'_>) {
        self.read_start += req.head_len;
        self.discard = req.body_len;
        self.start_sending(ctx);
    }

    /// A response is ready: the send timeout and rate window start now.
    fn start_sending(&mut self, ctx: &Ctx) {
        self.state = State::Sending;
        self.progress = SendProgress::new(ctx.now, ctx.config.send_timeout);
        self.deadline = Some(self.progress.deadline(&ctx.config));
    }

    fn respond_simple(
        &mut self,
        ctx: &mut Ctx,
        req: &Request<'_>,
        status: Status,
        extra: ErrorExtra<'_>,
    ) {
        self.keep_alive = req.keep_alive && !ctx.shutting_down;
        self.respond_error(ctx, status, extra, req.method == Method::Head);
        self.consume_request(ctx, req);
    }

    /// An error after which the connection closes (it says so in its head).
    fn respond_fatal(&mut self, ctx: &mut Ctx, status: Status) {
        self.keep_alive = false;
        self.respond_error(ctx, status, ErrorExtra::None, false);
    }

    fn respond_error(
        &mut self,
        ctx: &mut Ctx,
        status: Status,
        extra: ErrorExtra<'_>,
        head_only: bool,
    ) {
        let date = ctx.date.get(ctx.wall);
        write_error_response(
            &mut self.write_buf,
            status,
            date,
            self.keep_alive,
            extra,
            head_only,
        );
        self.begin_answer(ctx, status);
        self.start_sending(ctx);
    }

    fn respond(&mut self, ctx: &mut Ctx, req: &Request<'_>, found: Lookup) {
        self.keep_alive = req.keep_alive && !ctx.shutting_down;
        let head_only = req.method == Method::Head;
        match found {
            Lookup::File { file, content_type } => {
                self.respond_file(ctx, req, file, content_type);
            }
            Lookup::Redirect => {
                // The same target with the slash added; the query is kept.
                let query = req.query.unwrap_or_default();
                let mut location = String::with_capacity(req.path.len() + query.len() + 3);
                location.push('/');
                location.push_str(&percent_encode_path(&req.path));
                location.push('/');
                if let Some(query) = req.query {
                    location.push('?');
                    location.push_str(query);
                }
                self.respond_error(
                    ctx,
                    Status::MOVED_PERMANENTLY,
                    ErrorExtra::Location(&location),
                    head_only,
                );
            }
            Lookup::Failed(error) => {
                let status = match error {
                    FsError::NotFound => Status::NOT_FOUND,
                    FsError::Forbidden | FsError::NotAFile => Status::FORBIDDEN,
                    FsError::Io { errno } => {
                        warn!("I/O error {errno} on /{}", req.path);
                        Status::INTERNAL_SERVER_ERROR
                    }
                };
                self.respond_error(ctx, status, ErrorExtra::None, head_only);
            }
            Lookup::Unavailable => self.respond_error(
                ctx,
                Status::SERVICE_UNAVAILABLE,
                ErrorExtra::None,
                head_only,
            ),
        }
        self.consume_request(ctx, req);
    }

    fn respond_file(
        &mut self,
        ctx: &mut Ctx,
        req: &Request<'_>,
        file: Rc<OpenFile>,
        ctype: &'static str,
    ) {
        let len = file.len();
        let validators = Validators {
            len,
            mtime_secs: file.mtime_secs(),
            etag: file.etag.as_str(),
        };
        let selection = select(req, &validators);
        let (status, range) = match &selection {
            Selection::Full => (Status::OK, 0..len),
            Selection::Single(r) => (Status::PARTIAL_CONTENT, r.start..r.end),
            Selection::Multi(_) => (Status::PARTIAL_CONTENT, 0..0),
            Selection::NotModified => (Status::NOT_MODIFIED, 0..0),
            Selection::PreconditionFailed => {
                return self.respond_error(
                    ctx,
                    Status::PRECONDITION_FAILED,
                    ErrorExtra::None,
                    req.method == Method::Head,
                )
            }
            Selection::Unsatisfiable => {
                return self.respond_error(
                    ctx,
                    Status::RANGE_NOT_SATISFIABLE,
                    ErrorExtra::UnsatisfiedRange(len),
                    req.method == Method::Head,
                )
            }
        };
        let multipart = match &selection {
            Selection::Multi(ranges) => Some(plan_multipart(
                ranges,
                len,
                ctype,
                &boundary_from(
                    self.serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ file.mtime_secs() ^ len,
                ),
            )),
            _ => None,
        };
        let date = ctx.date.get(ctx.wall);
        // The plain 200 keep-alive head is the hot one: built once per file.
        let cacheable = ctx.config.header_cache && self.keep_alive && selection == Selection::Full;
        let cached_head = cacheable && file.write_cached_head(&mut self.write_buf, ctype, date);
        if cacheable {
            ctx.metrics
                .cache_lookup(CacheKind::ResponseHead, cached_head);
        }
        if !cached_head {
            let start = self.write_buf.len();
            let mut head = ResponseHead::new(&mut self.write_buf, status, date);
            match (&selection, &multipart) {
                (Selection::NotModified, _) => {}
                (_, Some(plan)) => {
                    head.header("Content-Type", &plan.content_type)
                        .content_length(plan.content_length);
                }
                (Selection::Single(r), None) => {
                    head.header("Content-Type", ctype)
                        .content_range(*r, len)
                        .content_length(r.end - r.start);
                }
                _ => {
                    head.header("Content-Type", ctype).content_length(len);
                }
            }
            head.last_modified(file.mtime_secs())
                .header("ETag", file.etag.as_str())
                .header("Accept-Ranges", "bytes")
                .connection(self.keep_alive);
            head.finish();
            if cacheable {
                file.cache_head(ctype, &self.write_buf[start..]);
            }
        }
        self.begin_answer(ctx, status);
        if req.method == Method::Head || status == Status::NOT_MODIFIED {
            return;
        }
        let rest = multipart
            .map(|plan| plan.segments.into())
            .unwrap_or_default();
        if range.start < range.end || !VecDeque::is_empty(&rest) {
            let ready_until = if ctx.checks_residency() { 0 } else { u64::MAX };
            self.body = Some(Body {
                file,
                pos: range.start,
                end: range.end,
                ready_until,
                rest,
            });
        }
    }

    // ---- metrics and access log ----------------------------------------

    /// A response with `status` was built into the write buffer. The
    /// request head is found again when the line is written (the buffer
    /// may be lent out now); a replacement (a 503 for a body that could not
    /// be read from the disk) only changes the status.
    fn begin_answer(&mut self, ctx: &Ctx, status: Status) {
        let head_len = match ctx.access_log {
            Some(_) => self
                .write_buf
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(self.write_buf.len(), |i| i + 4),
            None => 0,
        };
        match &mut self.answer {
            Some(answer) => {
                answer.status = status.0;
                answer.head_len = head_len;
            }
            None => {
                self.answer = Some(Answer {
                    status: status.0,
                    method: self.method,
                    began_at: self.request_began_at,
                    head_at: self.read_start,
                    has_request: self.discard == 0 && self.read_start < self.read_end,
                    head_len,
                    sent: 0,
                })
            }
        }
    }

    /// Counts the response begun, if any, and writes its access log line:
    /// when its last byte was handed to the kernel, or when the connection
    /// closes before (cut off, reset, shutdown; then with the bytes that
    /// left), so every response built is counted and logged once.
    pub fn end_answer(&mut self, ctx: &mut Ctx) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        let duration = ctx.now.saturating_duration_since(answer.began_at);
        ctx.metrics
            .request_done(answer.status, answer.method, duration);
        let Some(access_log) = ctx.access_log.as_mut() else {
            return;
        };
        let head = match answer.has_request {
            true => self
                .read_buf
                .get(answer.head_at..self.read_end)
                .unwrap_or_default(),
            false => &[],
        };
        let spans = RequestSpans::scan(head);
        let span = |(s, e): (usize, usize)| head.get(s..e).unwrap_or_default();
        let entry = Entry {
            client: self.client,
            request_line: span(spans.line),
            status: answer.status,
            body_bytes: answer.sent.saturating_sub(answer.head_len as u64),
            total_bytes: answer.sent,
            referer: spans.referer.map(span),
            user_agent: spans.user_agent.map(span),
            duration,
        };
        access_log.record(&entry, ctx.wall);
    }

    // ---- sending -------------------------------------------------------

    fn send_step(&mut self, me: Waiter, ctx: &mut Ctx) -> Step {
        let head_pending = self.write_pos < self.write_buf.len();
        if let Some(body) = &mut self.body {
            if body.pos < body.end {
                let Body {
                    file,
                    pos,
                    end,
                    ready_until,
                    ..
                } = body;
                let sock = self.socket.as_fd();
                let result = match file.contents() {
                    Contents::InMemory(bytes) => {
                        if !self.writable {
                            return Step::Wait;
                        }
                        // Head (or multipart literal) and bytes in one writev.
                        let head = &self.write_buf[self.write_pos..];
                        let bytes = &bytes[*pos as usize..*end as usize];
                        sys::writev2(sock, head, bytes).inspect(|&n| {
                            let from_head = n.min(head.len());
                            self.write_pos += from_head;
                            *pos += (n - from_head) as u64;
                        })
                    }
                    Contents::Descriptor(fd) => {
                        if *pos >= *ready_until {
                            let until = ctx.resident_until(file, *pos, *end);
                            if until > *pos {
                                *ready_until = until;
                            } else {
                                return match ctx.prefetch(me, file, *pos) {
                                    true => {
                                        self.state = State::AwaitingPages;
                                        self.deadline = Some(Self::helper_deadline(ctx));
                                        Step::Wait
                                    }
                                    false => match self.abandon_body(ctx) {
                                        Flow::Close => Step::Close,
                                        Flow::Keep | Flow::Yield => Step::Continue,
                                    },
                                };
                            }
                        }
                        if !self.writable {
                            return Step::Wait;
                        }
                        if head_pending {
                            // The head first, corked: the file's bytes follow.
                            let head = &self.write_buf[self.write_pos..];
                            sys::send(sock, head, true).inspect(|&n| self.write_pos += n)
                        } else {
                            let count = (*end.min(ready_until) - *pos) as usize;
                            match sys::sendfile(sock, fd.as_fd(), pos, count) {
                                Ok(0) => {
                                    warn!(
                                        "file shrank while being sent (inode {}); response cut short, closing the connection",
                                        file.meta.ino
                                    );
                                    return Step::Close;
                                }
                                other => other,
                            }
                        }
                    }
                };
                return self.after_write(ctx, result);
            }
            if !head_pending {
                match body.rest.pop_front() {
                    Some(Segment::Literal(bytes)) => {
                        self.write_buf = bytes;
                        self.write_pos = 0;
                    }
                    Some(Segment::File(r)) => {
                        body.pos = r.start;
                        body.end = r.end;
                        // Ranges come in request order, not file order:
                        // what was checked for the last one says nothing here.
                        body.ready_until = body.ready_until.min(r.start);
                    }
                    None => self.body = None,
                }
                return Step::Continue;
            }
        }
        if head_pending {
            if !self.writable {
                return Step::Wait;
            }
            // MSG_MORE only when file bytes follow (never after the last literal).
            let more = self
                .body
                .as_ref()
                .is_some_and(|b| b.pos < b.end || !b.rest.is_empty());
            let result = sys::send(self.socket.as_fd(), &self.write_buf[self.write_pos..], more);
            if let Ok(n) = result {
                self.write_pos += n;
            }
            return self.after_write(ctx, result);
        }
        self.finish_response(ctx)
    }

    fn after_write(&mut self, ctx: &mut Ctx, result: io::Result<usize>) -> Step {
        match result {
            Ok(n) => {
                if let Some(answer) = &mut self.answer {
                    answer.sent += n as u64;
                }
                ctx.metrics.add_sent_bytes(n as u64);
                self.response_started = true;
                self.progress.wrote(ctx.now);
                // Only the window here: the stall limit is for deadlines (a
                // send timeout of 0 means "never wait", not "never write").
                if let Err(why) = self.progress.check_window(
                    ctx.now,
                    self.socket.as_fd(),
                    &ctx.config,
                    Phase::Sending,
                ) {
                    self.cut_off(ctx, why);
                    return Step::Close;
                }
                self.deadline = Some(self.progress.deadline(&ctx.config));
                Step::Continue
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable = false;
                // Waiting for the client to read: the send timeout (and the
                // rate window) run even if nothing was written yet.
                self.progress
                    .waiting(ctx.now, self.socket.as_fd(), &ctx.config);
                self.deadline = Some(self.progress.deadline(&ctx.config));
                Step::Wait
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Continue,
            Err(e) => {
                debug!("send failed: {e}");
                Step::Close
            }
        }
    }

    fn finish_response(&mut self, ctx: &mut Ctx) -> Step {
        self.end_answer(ctx);
        // A timeout from here on judges the drain of what the kernel still
        // holds with a window of its own.
        self.progress.window = None;
        self.write_buf.clear();
        self.write_pos = 0;
        self.body = None;
        self.response_started = false;
        self.last_active = ctx.now;
        self.has_served = true;
        if !self.keep_alive || ctx.shutting_down {
            sys::shutdown_write(self.socket.as_fd());
            self.state = State::Lingering;
            self.linger_began = ctx.now;
            self.deadline = Some(ctx.now + LINGER);
            return Step::Continue;
        }
        self.state = State::Reading;
        self.request_begun = (self.read_end - self.read_start) as u64 > self.discard;
        if self.request_begun {
            // A pipelined request: its bytes were waiting for this response.
            self.request_began_at = ctx.now;
        }
        self.deadline = Some(
            ctx.now
                + if self.discard > 0 {
                    // The rest of the request body must arrive within this.
                    ctx.config.body_timeout
                } else if self.request_begun {
                    ctx.config.header_timeout
                } else {
                    ctx.config.idle_timeout
                },
        );
        Step::Continue
    }

    fn linger_step(&mut self) -> Step {
        let mut sink = [0u8; 16 * 1024];
        match self.socket.read(&mut sink) {
            Ok(0) => Step::Close,
            // One read per step: the step budget bounds an endless sender.
            Ok(_) => Step::Continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Continue,
            Err(_) => Step::Close,
        }
    }
}
