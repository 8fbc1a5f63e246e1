//! End-to-end connection handling of the real `flash-server`: persistence
//! (HTTP/1.1 and 1.0 rules), pipelining, requests split into single bytes,
//! request bodies that are read and discarded, header and idle timeouts,
//! the connection limit, and graceful shutdown on SIGTERM.
//!
//! Waits are reads bounded by IO_TIMEOUT (or a short explicit bound where
//! the point is that nothing arrives); sleeps only pace a deliberately slow
//! client, never stand in for an event.

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use integration_tests::harness::{
    assert_closed, connect, get, random_bytes, read_response, reads_eof, request, seeded_bytes,
    signal, Response, Server, TempDir, IO_TIMEOUT,
};

const SPED: &[&str] = &["--arch", "sped"];
const AMPED: &[&str] = &[];

// ---- helpers ----------------------------------------------------------

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read_ok(reader: &mut BufReader<TcpStream>, body: &[u8]) -> Response {
    let resp = read_response(reader, false).expect("response");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.body == body,
        "body differs: got {} bytes, want {}",
        resp.body.len(),
        body.len()
    );
    resp
}

/// Asserts that nothing arrives on `r` within `bound` (the read times out);
/// the socket keeps that read timeout.
fn assert_silent(r: &mut BufReader<TcpStream>, bound: Duration, what: &str) {
    r.get_ref().set_read_timeout(Some(bound)).unwrap();
    let mut byte = [0u8; 1];
    let read = r.get_mut().read(&mut byte);
    assert!(
        matches!(&read, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
        "{what}: {read:?}"
    );
}

/// A root with `a.txt` and `b.txt`.
fn ab_root(tag: &str) -> TempDir {
    let root = TempDir::new(tag);
    root.write("a.txt", "content of a");
    root.write("b.txt", "content of b, a little longer");
    root
}

// ---- persistence ---------------------------------------------------------

#[test]
fn http11_is_keep_alive_by_default() {
    let root = ab_root("conn-ka11");
    let server = Server::start(root.path(), &[]);
    let (mut w, mut r) = connect(&server);
    for (path, body) in [
        ("/a.txt", &b"content of a"[..]),
        ("/b.txt", b"content of b, a little longer"),
        ("/a.txt", b"content of a"),
    ] {
        w.write_all(&request("GET", path, "")).unwrap();
        let resp = read_ok(&mut r, body);
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
    // Still open and idle: nothing more arrives within a short bound.
    assert_silent(
        &mut r,
        Duration::from_millis(200),
        "an idle keep-alive connection stays open and silent",
    );
}

#[test]
fn connection_close_is_honoured() {
    let root = ab_root("conn-close");
    let server = Server::start(root.path(), &[]);
    let (mut w, mut r) = connect(&server);
    w.write_all(&request("GET", "/a.txt", "")).unwrap();
    read_ok(&mut r, b"content of a");
    w.write_all(&request("GET", "/b.txt", "Connection: close\r\n"))
        .unwrap();
    let resp = read_ok(&mut r, b"content of b, a little longer");
    assert_eq!(resp.header("connection"), Some("close"));
    assert_closed(&mut r, "after Connection: close");

    // Also for error responses and token lists.
    let (mut w, mut r) = connect(&server);
    w.write_all(&request("GET", "/missing", "Connection: foo, Close\r\n"))
        .unwrap();
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 404);
    assert_eq!(resp.header("connection"), Some("close"));
    assert_closed(&mut r, "404 with Connection: close");
}

#[test]
fn requests_after_a_closing_one_are_not_answered() {
    let root = ab_root("conn-after-close");
    let server = Server::start(root.path(), &[]);
    for first in [
        &b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"[..],
        b"GET /a.txt HTTP/1.0\r\n\r\n",
    ] {
        let (mut w, mut r) = connect(&server);
        let mut bytes = first.to_vec();
        bytes.extend(request("GET", "/b.txt", ""));
        w.write_all(&bytes).unwrap();
        read_ok(&mut r, b"content of a");
        assert_closed(&mut r, &text(first));
    }
}

#[test]
fn http10_closes_by_default() {
    let root = ab_root("conn-http10");
    let server = Server::start(root.path(), &[]);
    let (mut w, mut r) = connect(&server);
    w.write_all(b"GET /a.txt HTTP/1.0\r\n\r\n").unwrap();
    let resp = read_ok(&mut r, b"content of a");
    assert_eq!(resp.header("connection"), Some("close"));
    assert_closed(&mut r, "HTTP/1.0 without keep-alive");
}

#[test]
fn http10_with_keep_alive_stays_open() {
    let root = ab_root("conn-http10-ka");
    let server = Server::start(root.path(), &[]);
    let (mut w, mut r) = connect(&server);
    w.write_all(b"GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let resp = read_ok(&mut r, b"content of a");
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    w.write_all(b"GET /b.txt HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        .unwrap();
    read_ok(&mut r, b"content of b, a little longer");
    // Without the token, the third request ends the connection.
    w.write_all(b"HEAD /a.txt HTTP/1.0\r\n\r\n").unwrap();
    let head = read_response(&mut r, true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("connection"), Some("close"));
    assert_closed(&mut r, "HTTP/1.0 HEAD without keep-alive");
}

// ---- pipelining ------------------------------------------------------------

fn check_pipelining(args: &[&str]) {
    let root = TempDir::new("conn-pipeline");
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            (
                format!("f{i:02}.txt"),
                format!("file number {i} {}", "x".repeat(i * 37)).into_bytes(),
            )
        })
        .collect();
    for (name, body) in &files {
        root.write(name, body);
    }
    let server = Server::start(root.path(), args);

    // 12 GETs, with a 404 after the 5th and a HEAD after the 8th, in one write.
    let mut bytes = Vec::new();
    let mut expect: Vec<(u16, bool, Vec<u8>)> = Vec::new();
    for (i, (name, body)) in files.iter().enumerate() {
        if i == 5 {
            bytes.extend(request("GET", "/missing.txt", ""));
            expect.push((404, false, Vec::new()));
        }
        if i == 8 {
            bytes.extend(request("HEAD", &format!("/{name}"), ""));
            expect.push((200, true, Vec::new()));
        }
        let extra = if i == files.len() - 1 {
            "Connection: close\r\n"
        } else {
            ""
        };
        bytes.extend(request("GET", &format!("/{name}"), extra));
        expect.push((200, false, body.clone()));
    }
    let (mut w, mut r) = connect(&server);
    w.write_all(&bytes).unwrap();
    for (i, (status, head_only, body)) in expect.iter().enumerate() {
        let resp =
            read_response(&mut r, *head_only).unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(resp.status, *status, "response {i}: {resp:?}");
        if *status == 200 && !head_only {
            assert_eq!(text(&resp.body), text(body), "response {i}");
        }
        if *head_only {
            assert_eq!(
                resp.header("content-length"),
                Some(files[8].1.len().to_string().as_str())
            );
        }
    }
    assert_closed(&mut r, "after the pipelined Connection: close");
}

#[test]
fn pipelined_requests_answered_in_order() {
    check_pipelining(AMPED);
}

#[test]
fn pipelined_requests_answered_in_order_sped() {
    check_pipelining(SPED);
}

fn check_pipelined_large_bodies(args: &[&str]) {
    // Bodies above the small-response path, so they go out in several writes.
    let root = TempDir::new("conn-pipeline-big");
    let bodies: Vec<Vec<u8>> = (0..10)
        .map(|i| random_bytes(100_000 + i * 4096, i as u64 + 7))
        .collect();
    for (i, body) in bodies.iter().enumerate() {
        root.write(&format!("big{i}.bin"), body);
    }
    let server = Server::start(root.path(), args);
    let mut bytes = Vec::new();
    for i in 0..bodies.len() {
        bytes.extend(request("GET", &format!("/big{i}.bin"), ""));
    }
    let (mut w, mut r) = connect(&server);
    w.write_all(&bytes).unwrap();
    for (i, body) in bodies.iter().enumerate() {
        let resp = read_response(&mut r, false).unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(resp.status, 200);
        assert!(resp.body == *body, "body {i} differs");
    }
}

#[test]
fn pipelined_large_bodies_intact() {
    check_pipelined_large_bodies(AMPED);
}

#[test]
fn pipelined_large_bodies_intact_sped() {
    check_pipelined_large_bodies(SPED);
}

#[test]
fn request_sent_one_byte_at_a_time() {
    let root = ab_root("conn-bytewise");
    let server = Server::start(root.path(), &[]);
    let (mut w, mut r) = connect(&server);
    w.set_nodelay(true).unwrap();
    let mut bytes = request("GET", "/a.txt", "User-Agent: drip\r\n");
    bytes.extend(request("GET", "/b.txt", "Connection: close\r\n"));
    for b in &bytes {
        w.write_all(std::slice::from_ref(b)).unwrap();
        w.flush().unwrap();
    }
    read_ok(&mut r, b"content of a");
    read_ok(&mut r, b"content of b, a little longer");
    assert_closed(&mut r, "after the byte-wise Connection: close");
}

#[test]
fn request_body_is_discarded_and_the_next_request_served() {
    let root = ab_root("conn-body");
    let server = Server::start(root.path(), &[]);

    // Small body and the next request in one write.
    let (mut w, mut r) = connect(&server);
    let mut bytes = request("GET", "/a.txt", "Content-Length: 5\r\n");
    bytes.extend_from_slice(b"hello");
    bytes.extend(request("GET", "/b.txt", ""));
    w.write_all(&bytes).unwrap();
    read_ok(&mut r, b"content of a");
    read_ok(&mut r, b"content of b, a little longer");

    // A body that looks like a request must not be executed as one.
    let fake = request("GET", "/b.txt", "");
    let mut bytes = request(
        "GET",
        "/a.txt",
        &format!("Content-Length: {}\r\n", fake.len()),
    );
    bytes.extend_from_slice(&fake);
    bytes.extend(request("GET", "/a.txt", ""));
    w.write_all(&bytes).unwrap();
    read_ok(&mut r, b"content of a");
    read_ok(&mut r, b"content of a");

    // A body sent after its response arrived, in pieces.
    w.write_all(&request("GET", "/a.txt", "Content-Length: 10\r\n"))
        .unwrap();
    read_ok(&mut r, b"content of a");
    w.set_nodelay(true).unwrap();
    w.write_all(b"01234").unwrap();
    w.flush().unwrap();
    w.write_all(b"56789").unwrap();
    w.write_all(&request("GET", "/b.txt", "")).unwrap();
    read_ok(&mut r, b"content of b, a little longer");

    // A body larger than any read buffer (300 KiB), from a writer thread.
    let mut bytes = request("POST", "/a.txt", "Content-Length: 307200\r\n");
    bytes.extend(random_bytes(307_200, 99));
    bytes.extend(request("GET", "/b.txt", "Connection: close\r\n"));
    let mut w2 = w.try_clone().unwrap();
    let writer = std::thread::spawn(move || w2.write_all(&bytes));
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 405);
    read_ok(&mut r, b"content of b, a little longer");
    writer.join().unwrap().expect("send the large body");
    assert_closed(&mut r, "after the request following a large body");
}

#[test]
fn many_pipelined_requests_beyond_the_head_buffer() {
    // 300 requests (about 45 KiB of heads, well over the 16 KiB head limit)
    // in one burst: each head is within the limit, so all must be answered.
    let root = ab_root("conn-pipeline-many");
    let server = Server::start(root.path(), &[]);
    let n = 300;
    let mut bytes = Vec::new();
    for i in 0..n {
        let extra = format!(
            "X-Seq: {i:04}{}\r\n",
            if i == n - 1 {
                "\r\nConnection: close"
            } else {
                ""
            }
        );
        bytes.extend(request(
            "GET",
            if i % 2 == 0 { "/a.txt" } else { "/b.txt" },
            &extra,
        ));
    }
    let (w, mut r) = connect(&server);
    let mut w2 = w.try_clone().unwrap();
    let writer = std::thread::spawn(move || w2.write_all(&bytes));
    for i in 0..n {
        let want: &[u8] = if i % 2 == 0 {
            b"content of a"
        } else {
            b"content of b, a little longer"
        };
        let resp = read_response(&mut r, false).unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(resp.status, 200, "response {i}: {resp:?}");
        assert_eq!(resp.body, want, "response {i}");
    }
    writer.join().unwrap().expect("send the burst");
    assert_closed(&mut r, "after 300 pipelined requests");
}

#[test]
fn client_half_close_still_gets_its_responses() {
    let root = ab_root("conn-half-close");
    let server = Server::start(root.path(), &[]);
    let (mut w, mut r) = connect(&server);
    let mut bytes = request("GET", "/a.txt", "");
    bytes.extend(request("GET", "/b.txt", ""));
    w.write_all(&bytes).unwrap();
    w.shutdown(std::net::Shutdown::Write).unwrap();
    read_ok(&mut r, b"content of a");
    read_ok(&mut r, b"content of b, a little longer");
    assert_closed(&mut r, "after the client's half-close");
}

#[test]
fn aborted_download_does_not_disturb_the_server() {
    let root = TempDir::new("conn-abort");
    let data = random_bytes(8 << 20, 5);
    root.write("big.bin", &data);
    root.write("a.txt", "a");
    let mut server = Server::start(root.path(), &[]);
    for _ in 0..3 {
        let (mut w, mut r) = connect(&server);
        w.write_all(&request("GET", "/big.bin", "")).unwrap();
        let head = read_response(&mut r, true).expect("download head");
        assert_eq!(head.status, 200);
        let mut some = vec![0u8; 4096];
        r.read_exact(&mut some).unwrap();
        assert_eq!(some, data[..4096]);
        // Abort with unread data: the server sees a reset or EPIPE.
        drop((w, r));
    }
    let (mut w, mut r) = connect(&server);
    w.write_all(&request("GET", "/big.bin", "")).unwrap();
    let resp = read_response(&mut r, false).unwrap();
    assert!(resp.body == data, "download after aborted ones");
    w.write_all(&request("GET", "/a.txt", "")).unwrap();
    read_ok(&mut r, b"a");
    assert!(server.is_running());
}

#[test]
fn many_concurrent_connections_are_all_served() {
    let root = ab_root("conn-many");
    let server = Server::start(root.path(), &[]);
    // Open 100 connections first, then send on all, then read all.
    let mut conns: Vec<_> = (0..100).map(|_| connect(&server)).collect();
    for (i, (w, _)) in conns.iter_mut().enumerate() {
        let path = if i % 2 == 0 { "/a.txt" } else { "/b.txt" };
        w.write_all(&request("GET", path, "")).unwrap();
    }
    for (i, (_, r)) in conns.iter_mut().enumerate() {
        let want: &[u8] = if i % 2 == 0 {
            b"content of a"
        } else {
            b"content of b, a little longer"
        };
        read_ok(r, want);
    }
}

// ---- timeouts --------------------------------------------------------------

/// Waits for the server to give up on an unfinished head sent at `start`
/// under `--header-timeout 1s`: a 408 marked `Connection: close` and then EOF,
/// or a bare close; not before about a second. Returns how long that took.
fn expect_408_or_close(r: &mut BufReader<TcpStream>, start: Instant) -> Duration {
    // Blocks until the server acts (bounded by IO_TIMEOUT).
    let resp = match read_response(r, false) {
        Ok(resp) => Some(resp),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
        Err(e) => panic!("expected a 408 or a close, got {e}"),
    };
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "timed out early, after {waited:?}"
    );
    if let Some(resp) = resp {
        assert_eq!(resp.status, 408, "{resp:?}");
        assert_closed(r, "after the 408");
        assert_eq!(
            resp.header("connection"),
            Some("close"),
            "the 408 is followed by a close, but its head says otherwise"
        );
    }
    waited
}

#[test]
fn stalled_half_head_gets_408_and_is_closed() {
    let root = ab_root("conn-408");
    let server = Server::start(root.path(), &["--header-timeout", "1s"]);
    let (mut w, mut r) = connect(&server);
    let start = Instant::now();
    w.write_all(b"GET /a.txt HTTP/1.1\r\nHo").unwrap();
    expect_408_or_close(&mut r, start);
}

#[test]
fn drip_fed_head_does_not_extend_the_header_timeout() {
    let root = ab_root("conn-drip");
    let server = Server::start(root.path(), &["--header-timeout", "1s"]);
    let (w, mut r) = connect(&server);
    let start = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let done = std::sync::Arc::clone(&done);
        let mut w = w.try_clone().unwrap();
        w.set_nodelay(true).unwrap();
        std::thread::spawn(move || {
            let _ = w.write_all(b"GET /a.txt HTTP/1.1\r\nX-Slow: ");
            // A slow client: one byte every 100 ms, for up to 10 s (pacing, not synchronisation).
            for _ in 0..100 {
                if done.load(std::sync::atomic::Ordering::Relaxed) || w.write_all(b"z").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut all = Vec::new();
    let outcome = r.read_to_end(&mut all);
    let waited = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        outcome.is_ok() || all.starts_with(b"HTTP/1.1 408"),
        "expected a 408 and/or a close, got {outcome:?} after {:?}",
        text(&all)
    );
    assert!(
        all.is_empty() || all.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        text(&all)
    );
    assert!(
        waited < Duration::from_secs(6),
        "the header timeout (1s) must not be extended by a trickle of bytes; closed after {waited:?}"
    );
    drop(w);
}

#[test]
fn silent_connection_is_closed_after_the_header_timeout() {
    let root = ab_root("conn-silent");
    let server = Server::start(root.path(), &["--header-timeout", "1s"]);
    let mut stream = server.connect();
    let start = Instant::now();
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .expect("EOF, not a read timeout");
    assert!(buf.is_empty(), "no request, no response: {:?}", text(&buf));
    assert!(start.elapsed() >= Duration::from_millis(900));
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let root = ab_root("conn-idle");
    let server = Server::start(root.path(), &["--idle-timeout", "1s"]);
    let (mut w, mut r) = connect(&server);
    w.write_all(&request("GET", "/a.txt", "")).unwrap();
    let resp = read_ok(&mut r, b"content of a");
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    let start = Instant::now();
    assert_closed(&mut r, "idle keep-alive connection");
    assert!(
        start.elapsed() >= Duration::from_millis(700),
        "closed after only {:?}",
        start.elapsed()
    );
}

#[test]
fn header_timeout_applies_to_the_next_request_on_a_keep_alive_connection() {
    let root = ab_root("conn-408-second");
    let server = Server::start(
        root.path(),
        &["--header-timeout", "1s", "--idle-timeout", "30s"],
    );
    let (mut w, mut r) = connect(&server);
    w.write_all(&request("GET", "/a.txt", "")).unwrap();
    read_ok(&mut r, b"content of a");
    let start = Instant::now();
    w.write_all(b"GET /b.txt HTTP/1.1\r\nHost: t\r\n").unwrap();
    let waited = expect_408_or_close(&mut r, start);
    assert!(
        waited < Duration::from_secs(10),
        "the 30s idle timeout was applied to a begun request"
    );
}

#[test]
fn send_timeout_closes_a_stalled_reader() {
    const BIG: usize = 8 << 20;
    let root = TempDir::new("conn-send-timeout");
    root.write("big.bin", random_bytes(BIG, 11));
    root.write("a.txt", "a");
    let server = Server::start(root.path(), &["--send-timeout", "1s"]);
    let (mut w, mut r) = connect(&server);
    set_rcvbuf(&w, 64 * 1024);
    w.write_all(&request("GET", "/big.bin", "")).unwrap();
    // The stalled client under test: it reads nothing for a while.
    std::thread::sleep(Duration::from_millis(2500));
    let head = read_response(&mut r, true).expect("head");
    assert_eq!(head.status, 200);
    let mut rest = Vec::new();
    let outcome = r.read_to_end(&mut rest);
    let got = rest.len() + r.buffer().len();
    assert!(
        match &outcome {
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        },
        "the server should close a stalled reader's connection: {outcome:?} after {got} bytes"
    );
    assert!(
        got < BIG,
        "the server should have given up on a reader stalled past the send timeout ({outcome:?}, {got} bytes)"
    );
    // Others are still served.
    assert_eq!(
        integration_tests::harness::get(&server, "/a.txt").body,
        b"a"
    );
}

// ---- connection limit --------------------------------------------------------

#[test]
fn at_the_connection_limit_an_idle_keep_alive_connection_makes_room() {
    let root = ab_root("conn-limit");
    let server = Server::start(root.path(), &["--max-connections", "2"]);
    let (mut w1, mut r1) = connect(&server);
    let (mut w2, mut r2) = connect(&server);
    // Both accepted: each got an answer, then idles on keep-alive.
    w1.write_all(&request("GET", "/a.txt", "")).unwrap();
    read_ok(&mut r1, b"content of a");
    w2.write_all(&request("GET", "/a.txt", "")).unwrap();
    read_ok(&mut r2, b"content of a");

    // A third client is served: the idle connection idle longest is closed.
    let (mut w3, mut r3) = connect(&server);
    w3.write_all(&request("GET", "/b.txt", "")).unwrap();
    read_ok(&mut r3, b"content of b, a little longer");
    assert!(
        reads_eof(r1.get_mut()),
        "the oldest idle connection made room"
    );
    w2.write_all(&request("GET", "/b.txt", "")).unwrap();
    read_ok(&mut r2, b"content of b, a little longer");
}

#[test]
fn at_the_connection_limit_responses_in_progress_are_never_closed_for_room() {
    let root = ab_root("conn-limit-busy");
    let big = seeded_bytes(8 << 20, 5);
    root.write("big.bin", &big);
    let server = Server::start(root.path(), &["--max-connections", "2"]);
    // Two downloads that stall: the clients do not read.
    let (mut w1, r1) = connect(&server);
    let (mut w2, mut r2) = connect(&server);
    w1.write_all(&request("GET", "/big.bin", "")).unwrap();
    w2.write_all(&request("GET", "/big.bin", "")).unwrap();
    // Both started: a first byte of each response arrived.
    for r in [&r1, &r2] {
        let mut byte = [0u8; 1];
        let mut stream = r.get_ref();
        stream.read_exact(&mut byte).expect("the download started");
    }

    let (mut w3, mut r3) = connect(&server);
    w3.write_all(&request("GET", "/b.txt", "")).unwrap();
    assert_silent(
        &mut r3,
        Duration::from_millis(500),
        "a third connection must wait while both slots send responses",
    );

    // A download finishing (its client gone) lets the third in.
    drop(w1);
    drop(r1);
    r3.get_ref().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    read_ok(&mut r3, b"content of b, a little longer");
    // The other download was never cut: it completes.
    let body = read_response_rest(&mut r2);
    assert!(body == big, "the download completes with the file's bytes");
}

/// The body of a response whose first byte (of the head) was already read.
fn read_response_rest(r: &mut BufReader<TcpStream>) -> Vec<u8> {
    r.get_ref().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte).expect("head");
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = text
        .split("content-length:")
        .nth(1)
        .and_then(|v| v.split("\r\n").next())
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).expect("body");
    body
}

// ---- graceful shutdown ------------------------------------------------------------

fn set_rcvbuf(stream: &TcpStream, bytes: libc::c_int) {
    // SAFETY: a valid socket and a pointer to a c_int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", io::Error::last_os_error());
}

fn check_graceful_shutdown(args: &[&str]) {
    const BIG: usize = 16 << 20;
    let root = TempDir::new("conn-shutdown");
    let data = random_bytes(BIG, 0xfeed);
    root.write("big.bin", &data);
    root.write("a.txt", "a");
    let mut all_args = vec!["--shutdown-timeout", "15s"];
    all_args.extend_from_slice(args);
    let mut server = Server::start(root.path(), &all_args);
    let addr = server.addr;

    // An idle keep-alive connection, closed by the server at shutdown.
    let (mut iw, mut ir) = connect(&server);
    iw.write_all(&request("GET", "/a.txt", "")).unwrap();
    read_ok(&mut ir, b"a");

    // A slow download: a small receive window, so most of it is still on
    // the server side when SIGTERM arrives. Keep-alive, so the close at the
    // end proves the server knew it was shutting down.
    let (mut w, mut r) = connect(&server);
    set_rcvbuf(&w, 64 * 1024);
    w.write_all(&request("GET", "/big.bin", "")).unwrap();
    let mut head_reader = BufReader::with_capacity(64 * 1024, w.try_clone().unwrap());
    let head = read_response(&mut head_reader, true).expect("download head");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("connection"), Some("keep-alive"));
    let mut got = head_reader.buffer().to_vec();
    drop(head_reader);

    signal(server.pid(), libc::SIGTERM);

    // New connections are refused once shutdown has begun; the download is
    // not finished then (we have not read it). Polled: no event announces it.
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
            Err(e) => panic!("connect during shutdown: {e}"),
            Ok(probe) => drop(probe),
        }
        assert!(
            Instant::now() < deadline,
            "the listener stayed open after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        got.len() < BIG / 2,
        "the download should still be in flight"
    );
    assert!(
        reads_eof(ir.get_mut()),
        "idle connection closed at shutdown"
    );

    // Read the rest slowly (pacing: a short pause per 256 KiB).
    let mut chunk = vec![0u8; 64 * 1024];
    while got.len() < BIG {
        let n = r
            .get_mut()
            .read(&mut chunk)
            .expect("download continues during shutdown");
        assert!(n > 0, "download cut short at {} of {BIG} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
        if got.len() % (256 * 1024) < n {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(got.len(), BIG, "no bytes beyond the body");
    assert!(got == data, "download corrupted during shutdown");
    let mut byte = [0u8; 1];
    let after = r.get_mut().read(&mut byte);
    assert!(
        matches!(after, Ok(0)),
        "after the last response of a shutdown, the server closes: {after:?}"
    );
    drop((w, r));

    // Shutting down already: it exits by itself (a second SIGTERM would
    // make it exit at once, with 128 + 15).
    let (status, stderr) = server
        .wait_exit(IO_TIMEOUT)
        .expect("the server exits once its last response is done");
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn graceful_shutdown_finishes_downloads() {
    check_graceful_shutdown(AMPED);
}

#[test]
fn graceful_shutdown_finishes_downloads_sped() {
    check_graceful_shutdown(SPED);
}

#[test]
fn shutdown_with_only_idle_connections_is_prompt() {
    let root = ab_root("conn-shutdown-idle");
    let server = Server::start(root.path(), &["--shutdown-timeout", "30s"]);
    let (mut w, mut r) = connect(&server);
    w.write_all(&request("GET", "/a.txt", "")).unwrap();
    read_ok(&mut r, b"content of a");
    let start = Instant::now();
    let (status, stderr) = server.stop();
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(reads_eof(r.get_mut()));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "idle connections must not hold shutdown for the shutdown timeout ({:?})",
        start.elapsed()
    );
}

/// Timeouts far beyond any use (here 10^19 s) are capped, not added to the
/// clock as they are: `Instant + Duration` would overflow and panic at the
/// first request.
#[test]
fn absurdly_long_timeouts_are_capped_instead_of_overflowing_the_clock() {
    let root = TempDir::new("huge-timeouts");
    root.write("a.txt", "aaa");
    let huge = "10000000000000000000";
    let mut args = Vec::new();
    for flag in [
        "--header-timeout",
        "--body-timeout",
        "--idle-timeout",
        "--send-timeout",
        "--helper-timeout",
        "--send-rate-window",
        "--path-cache-ttl",
    ] {
        args.extend([flag, huge]);
    }
    let mut server = Server::start(root.path(), &args);
    assert_eq!(get(&server, "/a.txt").body, b"aaa");
    assert!(server.is_running(), "the server died after a request");
}
