//! A bounded HTTP load for the tests that disturb the server while it serves: keep-alive
//! connections spread over a few client threads, each thread sending one request on every
//! one of its connections, then reading the answers in turn, until told to stop. Every
//! exchange is classified strictly ([`Exchange`]) and handed to the test's judge, which
//! knows what the file should hold.
//!
//! A response is read by its own framing only (status line, headers, exactly
//! `Content-Length` body bytes); bytes beyond it, a head that does not parse, a body that
//! stops without the connection closing (the client times out) all show as
//! [`Exchange::Garbled`] or [`Exchange::TimedOut`], never as something acceptable.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Largest `Content-Length` the client believes (the tests serve files of a few MiB).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Longest head the client reads before calling it garbled.
const MAX_HEAD: usize = 16 * 1024;

/// How one request on a connection ended.
#[derive(Debug)]
pub enum Exchange {
    /// A whole response: `Content-Length` body bytes read. `close`: the server said
    /// `Connection: close`, so the client does not reuse the connection.
    Complete {
        status: u16,
        body: Vec<u8>,
        close: bool,
    },
    /// The head came, then the connection closed (EOF or reset) before `content_length`
    /// bytes of body: an honest way for a server to give up on a response.
    EndedShort {
        status: u16,
        content_length: usize,
        body: Vec<u8>,
    },
    /// The connection closed (EOF or reset) before any byte of a response, or could not be
    /// written to because the server had closed it.
    ClosedBeforeHead,
    /// Something no correct server sends: an unparsable status line or header, no
    /// `Content-Length`, a head cut by a close, bytes after the response.
    Garbled(String),
    /// Nothing (more) came within the read timeout: a stall.
    TimedOut(String),
}

/// One keep-alive client connection.
pub struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects to `addr` with `timeout` for reads and writes.
    pub fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let reader = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
        Ok(Conn {
            writer: stream,
            reader,
        })
    }

    /// Sends `GET path` (keep-alive). An error means the server closed the connection.
    pub fn send_get(&mut self, path: &str) -> io::Result<()> {
        self.writer
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
    }

    /// Reads one response to a GET.
    pub fn read_exchange(&mut self) -> Exchange {
        let mut head = Vec::new();
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) if head.is_empty() => return Exchange::ClosedBeforeHead,
                Ok(0) => {
                    return Exchange::Garbled(format!(
                        "the connection closed within the head: {:?}",
                        String::from_utf8_lossy(&head)
                    ))
                }
                Ok(_) => {}
                Err(e) if is_reset(&e) && head.is_empty() && line.is_empty() => {
                    return Exchange::ClosedBeforeHead
                }
                Err(e) if is_timeout(&e) => {
                    return Exchange::TimedOut(format!(
                        "{e} reading the head after {:?}",
                        String::from_utf8_lossy(&head)
                    ))
                }
                Err(e) => return Exchange::Garbled(format!("{e} reading the head")),
            }
            head.extend_from_slice(&line);
            if head.len() > MAX_HEAD {
                return Exchange::Garbled(format!("a head over {MAX_HEAD} bytes"));
            }
            if !line.ends_with(b"\n") {
                return Exchange::Garbled(format!(
                    "the connection closed within the head: {:?}",
                    String::from_utf8_lossy(&head)
                ));
            }
            let Ok(text) = String::from_utf8(line) else {
                return Exchange::Garbled(format!(
                    "a head line that is not UTF-8 in {:?}",
                    String::from_utf8_lossy(&head)
                ));
            };
            let text = text.trim_end_matches(['\r', '\n']).to_string();
            if text.is_empty() {
                break;
            }
            lines.push(text);
        }
        let status = lines.first().and_then(|l| {
            let rest = l.strip_prefix("HTTP/1.1 ")?;
            let code = rest.get(..3)?;
            (code.bytes().all(|b| b.is_ascii_digit()) && rest.as_bytes().get(3) == Some(&b' '))
                .then(|| code.parse::<u16>().ok())?
        });
        let Some(status) = status else {
            return Exchange::Garbled(format!("bad status line in {lines:?}"));
        };
        let mut content_length = None;
        let mut close = false;
        for line in &lines[1..] {
            let Some((name, value)) = line.split_once(':') else {
                return Exchange::Garbled(format!("bad header line {line:?}"));
            };
            if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
                return Exchange::Garbled(format!("bad header name in {line:?}"));
            }
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                match value.parse::<usize>() {
                    Ok(n) if content_length.is_none() && n <= MAX_BODY => content_length = Some(n),
                    _ => return Exchange::Garbled(format!("bad Content-Length in {lines:?}")),
                }
            } else if name.eq_ignore_ascii_case("connection") {
                close = value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("close"));
            }
        }
        let Some(content_length) = content_length else {
            return Exchange::Garbled(format!("no Content-Length in {lines:?}"));
        };
        let mut body = vec![0u8; content_length];
        let mut filled = 0;
        while filled < content_length {
            match self.reader.read(&mut body[filled..]) {
                Ok(0) => {
                    body.truncate(filled);
                    return Exchange::EndedShort {
                        status,
                        content_length,
                        body,
                    };
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_reset(&e) => {
                    body.truncate(filled);
                    return Exchange::EndedShort {
                        status,
                        content_length,
                        body,
                    };
                }
                Err(e) if is_timeout(&e) => {
                    return Exchange::TimedOut(format!(
                        "{e} after {filled} of {content_length} body bytes (status {status}): \
                         a short body on an open connection"
                    ))
                }
                Err(e) => {
                    return Exchange::Garbled(format!(
                        "{e} after {filled} of {content_length} body bytes"
                    ))
                }
            }
        }
        // One request at a time: anything already here is beyond the response.
        if !self.reader.buffer().is_empty() {
            return Exchange::Garbled(format!(
                "{} bytes after a response of status {status} with Content-Length \
                 {content_length}",
                self.reader.buffer().len()
            ));
        }
        Exchange::Complete {
            status,
            body,
            close,
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// xorshift64*: cheap, deterministic per seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The shape of a load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub threads: usize,
    pub conns_per_thread: usize,
    /// Read and write timeout of each connection: longer than any legitimate wait.
    pub timeout: Duration,
}

impl Load {
    /// 64 keep-alive connections over 8 threads.
    pub fn standard(timeout: Duration) -> Load {
        Load {
            threads: 8,
            conns_per_thread: 8,
            timeout,
        }
    }
}

/// Runs `load` against `addr` until `stop` is set. For each request, `pick` chooses the
/// path (given the thread's random source), and `judge` gets the path, the instant the
/// request was sent and how it ended. A connection that ended otherwise than with a
/// complete keep-alive response is replaced by a new one. Returns when every thread has
/// finished its round.
pub fn run<P, J>(addr: SocketAddr, load: Load, stop: &AtomicBool, pick: P, judge: J)
where
    P: Fn(&mut Rng) -> String + Sync,
    J: Fn(&str, Instant, Exchange) + Sync,
{
    std::thread::scope(|scope| {
        for t in 0..load.threads {
            let (pick, judge) = (&pick, &judge);
            scope.spawn(move || {
                let mut rng = Rng::new(0x5EED + t as u64);
                let mut conns: Vec<Option<Conn>> =
                    (0..load.conns_per_thread).map(|_| None).collect();
                let mut sent: Vec<Option<(String, Instant)>> = vec![None; conns.len()];
                while !stop.load(Ordering::Relaxed) {
                    for (conn, sent) in conns.iter_mut().zip(&mut sent) {
                        let path = pick(&mut rng);
                        if conn.is_none() {
                            *conn = Some(
                                Conn::open(addr, load.timeout).expect("connect to the server"),
                            );
                        }
                        let at = Instant::now();
                        if conn.as_mut().is_some_and(|c| c.send_get(&path).is_err()) {
                            *conn = None;
                            judge(&path, at, Exchange::ClosedBeforeHead);
                            continue;
                        }
                        *sent = Some((path, at));
                    }
                    for (conn, sent) in conns.iter_mut().zip(&mut sent) {
                        let (Some(c), Some((path, at))) = (conn.as_mut(), sent.take()) else {
                            continue;
                        };
                        let exchange = c.read_exchange();
                        if !matches!(exchange, Exchange::Complete { close: false, .. }) {
                            *conn = None;
                        }
                        judge(&path, at, exchange);
                    }
                }
            });
        }
    });
}
