//! The metrics endpoint (`--metrics-listen`): a small blocking HTTP/1.1
//! server in the supervisor, apart from every event loop, answering
//! `GET /metrics` (Prometheus text format, the sums of every slot of the
//! metrics region) and `GET /healthz`.
//!
//! A few threads each serve one connection at a time and close it after one
//! response: scrapers are few and patient. Every wait is bounded (a request
//! must arrive within [`IO_TIMEOUT`] in all, and be at most [`MAX_REQUEST`]
//! bytes; writes time out too), so a stuck or hostile client holds one
//! thread for at most a few seconds and never affects the HTTP server.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flash_core::MetricsRegion;

/// Longest a scraper may take to send its request, and each write's limit.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read; larger gets 431.
pub const MAX_REQUEST: usize = 8 * 1024;

/// Whether the server is healthy (answers `/healthz` with 200, else 503).
pub type Health = Arc<dyn Fn() -> bool + Send + Sync>;

/// Threads answering the endpoint, each one connection at a time: a
/// client that stalls (for at most the 2 s timeouts) holds one of them, so
/// health checks still get through.
const THREADS: usize = 4;

/// Serves the endpoint on `listener` from `THREADS` threads, until the
/// process exits.
pub fn spawn(listener: TcpListener, region: Arc<MetricsRegion>, healthy: Health) -> io::Result<()> {
    listener.set_nonblocking(false)?;
    for i in 0..THREADS {
        let listener = listener.try_clone()?;
        let (region, healthy) = (Arc::clone(&region), Arc::clone(&healthy));
        std::thread::Builder::new()
            .name(format!("metrics-http-{i}"))
            .spawn(move || {
                let mut body = String::with_capacity(16 * 1024);
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(e) = serve(stream, &region, &healthy, &mut body) {
                                log::debug!("metrics endpoint: {e}");
                            }
                        }
                        Err(e) => {
                            // EMFILE and the like: do not spin.
                            log::warn!("metrics endpoint: accept: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
    }
    Ok(())
}

/// Answers one request on `stream`, then closes it.
fn serve(
    mut stream: TcpStream,
    region: &MetricsRegion,
    healthy: &Health,
    body: &mut String,
) -> io::Result<()> {
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = match read_head(&mut stream)? {
        Some(head) => head,
        None => {
            let status = "431 Request Header Fields Too Large";
            return respond(&mut stream, status, "", "", false);
        }
    };
    let mut parts = head.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "bad request\n",
            false,
        );
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" && path != "/healthz" {
        let head_only = method == "HEAD";
        return respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "not found\n",
            head_only,
        );
    }
    if method != "GET" && method != "HEAD" {
        return respond_allow(&mut stream);
    }
    let head_only = method == "HEAD";
    let (status, content_type, text) = if path == "/metrics" {
        body.clear();
        region.totals().write_prometheus(body);
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &**body,
        )
    } else if healthy() {
        ("200 OK", "text/plain", "ok\n")
    } else {
        ("503 Service Unavailable", "text/plain", "unhealthy\n")
    };
    respond(&mut stream, status, content_type, text, head_only)
}

/// Reads up to the end of the request head, within the total time limit;
/// returns its first line, or `None` when the head is too large.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
        let seen = &buf[..len];
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let first = seen[..end].split(|&b| b == b'\r').next().unwrap_or(b"");
            return Ok(Some(String::from_utf8_lossy(first).into_owned()));
        }
        if len == buf.len() {
            return Ok(None);
        }
    }
}

/// Writes a whole response (only its head when `head_only`), and ends the
/// connection.
fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.shutdown(std::net::Shutdown::Write)
}

fn respond_allow(stream: &mut TcpStream) -> io::Result<()> {
    let body = "method not allowed\n";
    let head = format!(
        "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
