//! `--proxy-protocol` listeners against the real binary: PROXY headers v1
//! and v2 (TCP4, TCP6, LOCAL, UNKNOWN) followed by requests, in one write
//! or in pieces, are answered; the header's source becomes the client
//! (seen in the debug log); a malformed header, a plain request, an
//! untrusted peer and a header that does not arrive within
//! `--header-timeout` are closed without a byte of HTTP; a PROXY header on
//! a plain listener is a bad request (400); curl's `--haproxy-protocol`
//! works.

use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use integration_tests::harness::{
    curl, read_response, request, Response, Server, TempDir, IO_TIMEOUT,
};

const BODY: &str = "behind a proxy\n";
/// A PROXY v2 header's fixed signature.
const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn root() -> TempDir {
    let root = TempDir::new("proxy-protocol");
    root.write("index.html", BODY);
    root
}

/// A server with one plain and one PROXY listener, logging at debug level
/// (where the client a PROXY header names is reported).
fn start(root: &TempDir, extra: &[&str]) -> Server {
    let mut args = vec!["--proxy-protocol", "127.0.0.1:0", "--log-level", "debug"];
    args.extend(extra);
    let server = Server::start(root.path(), &args);
    assert_eq!(server.proxy_addrs.len(), 1, "one PROXY listener printed");
    assert_ne!(server.proxy_addrs[0], server.addr);
    server
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn v1(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    let family = if src.contains(':') { "TCP6" } else { "TCP4" };
    format!("PROXY {family} {src} {dst} {sport} {dport}\r\n").into_bytes()
}

fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = SIG.to_vec();
    out.extend([0x20 | command, family]);
    out.extend(u16::try_from(block.len()).unwrap().to_be_bytes());
    out.extend(block);
    out
}

fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut block = src.to_vec();
    block.extend([127, 0, 0, 1]);
    block.extend(sport.to_be_bytes());
    block.extend(80u16.to_be_bytes());
    // A TLV (PP2_TYPE_AUTHORITY), which must be skipped.
    block.extend([0x02, 0, 4]);
    block.extend(b"host");
    v2(1, 0x11, &block)
}

fn v2_tcp6(src: Ipv6Addr, sport: u16) -> Vec<u8> {
    let mut block = src.octets().to_vec();
    block.extend(Ipv6Addr::LOCALHOST.octets());
    block.extend(sport.to_be_bytes());
    block.extend(80u16.to_be_bytes());
    v2(1, 0x21, &block)
}

fn get_index() -> Vec<u8> {
    request("GET", "/index.html", "")
}

/// Sends `pieces` as separate writes, then reads one response.
fn send_pieces(addr: SocketAddr, pieces: &[&[u8]]) -> (TcpStream, io::Result<Response>) {
    let mut stream = connect(addr);
    for piece in pieces {
        stream.write_all(piece).expect("write");
    }
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let response = read_response(&mut reader, false);
    (stream, response)
}

fn assert_ok(response: io::Result<Response>, what: &str) {
    let r = response.unwrap_or_else(|e| panic!("{what}: no response: {e}"));
    assert_eq!(r.status, 200, "{what}");
    assert_eq!(r.body, BODY.as_bytes(), "{what}");
}

/// Reads until the server closes; fails if any byte comes (no HTTP answer
/// is owed to a proxy that got it wrong) or if it does not close in time.
/// A reset counts as a close: the server may close with our bytes unread.
fn assert_closed_silently(stream: &mut TcpStream, what: &str) {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("{what}: not closed ({e}); received {got:?}"),
        }
    }
    assert!(
        got.is_empty(),
        "{what}: expected a close without an answer, got {:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn headers_v1_and_v2_then_requests_in_one_write_or_in_pieces() {
    let root = root();
    let server = start(&root, &[]);
    let proxy = server.proxy_addrs[0];
    let headers: Vec<(&str, Vec<u8>)> = vec![
        ("v1 TCP4", v1("192.0.2.1", "127.0.0.1", 56324, 80)),
        ("v1 TCP6", v1("2001:db8::7", "::1", 40000, 80)),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec()),
        ("v2 TCP4 with a TLV", v2_tcp4([198, 51, 100, 9], 1234)),
        ("v2 TCP6", v2_tcp6("2001:db8::9".parse().unwrap(), 4321)),
        ("v2 LOCAL", v2(0, 0x00, &[])),
        ("v2 LOCAL with addresses", v2(0, 0x11, &[9; 12])),
    ];
    let req = get_index();
    for (what, header) in &headers {
        let mut together = header.clone();
        together.extend(&req);
        let (_, r) = send_pieces(proxy, &[&together]);
        assert_ok(r, &format!("{what}, header and request in one write"));

        let (_, r) = send_pieces(proxy, &[header, &req]);
        assert_ok(r, &format!("{what}, then the request"));

        // The header itself split (into its first 5 bytes, the rest with
        // half of the request, and the rest of the request).
        let (a, b) = header.split_at(5);
        let (c, d) = req.split_at(req.len() / 2);
        let mut bc = b.to_vec();
        bc.extend(c);
        let (_, r) = send_pieces(proxy, &[a, &bc, d]);
        assert_ok(r, &format!("{what}, header split across writes"));
    }
    // Byte by byte, header and request.
    let mut all = v1("192.0.2.1", "127.0.0.1", 1, 80);
    all.extend(&req);
    let pieces: Vec<&[u8]> = all.chunks(1).collect();
    let (_, r) = send_pieces(proxy, &pieces);
    assert_ok(r, "header and request one byte per write");
}

#[test]
fn the_header_is_read_once_and_keep_alive_follows() {
    let root = root();
    let server = start(&root, &[]);
    let mut bytes = v2_tcp4([203, 0, 113, 5], 999);
    bytes.extend(get_index());
    bytes.extend(get_index());
    let mut stream = connect(server.proxy_addrs[0]);
    stream.write_all(&bytes).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert_ok(read_response(&mut reader, false), "first pipelined request");
    assert_ok(
        read_response(&mut reader, false),
        "second pipelined request",
    );
    // A third request on the same connection, with no second header.
    stream.write_all(&get_index()).unwrap();
    assert_ok(
        read_response(&mut reader, false),
        "later keep-alive request",
    );
}

#[test]
fn the_proxied_source_becomes_the_client() {
    let root = root();
    let server = start(&root, &["--access-log", "-"]);
    let proxy = server.proxy_addrs[0];
    let mut v1_bytes = v1("192.0.2.77", "127.0.0.1", 56324, 80);
    v1_bytes.extend(get_index());
    assert_ok(send_pieces(proxy, &[&v1_bytes]).1, "v1");
    let mut v2_bytes = v2_tcp6("2001:db8::42".parse().unwrap(), 4242);
    v2_bytes.extend(get_index());
    assert_ok(send_pieces(proxy, &[&v2_bytes]).1, "v2");
    let mut local = v2(0, 0x11, &[10, 9, 9, 9, 127, 0, 0, 1, 0, 1, 0, 80]);
    local.extend(get_index());
    let (stream, r) = send_pieces(proxy, &[&local]);
    assert_ok(r, "v2 LOCAL");
    let local_peer = stream.local_addr().unwrap();
    // The access log names each request's client: the proxied one.
    let log_client = |prefix: &str| {
        server
            .stdout_line(prefix, IO_TIMEOUT)
            .unwrap_or_else(|| panic!("no access log line for {prefix}"))
    };
    let line = log_client("192.0.2.77 - - [");
    assert!(line.contains(" 200 "), "{line}");
    let line = log_client("2001:db8::42 - - [");
    assert!(line.contains(" 200 "), "{line}");
    assert!(log_client(&format!("{} - - [", local_peer.ip())).contains(" 200 "));
    let log = String::from_utf8_lossy(&server.stdout_so_far()).into_owned();
    assert!(
        !log.contains("10.9.9.9"),
        "LOCAL addresses must be ignored: {log}"
    );
    let (_, stderr) = server.stop();
    // And the debug log says which header gave it.
    assert!(
        stderr.contains("client 192.0.2.77:56324"),
        "v1 source not taken: {stderr}"
    );
    assert!(
        stderr.contains("client [2001:db8::42]:4242"),
        "v2 source not taken: {stderr}"
    );
    assert!(
        stderr.contains(&format!("client {local_peer} (LOCAL or UNKNOWN")),
        "v2 LOCAL must keep the real peer {local_peer}: {stderr}"
    );
    assert!(
        !stderr.contains("10.9.9.9"),
        "LOCAL addresses must be ignored"
    );
}

#[test]
fn without_a_valid_header_the_connection_closes_without_an_answer() {
    let root = root();
    let server = start(&root, &[]);
    let proxy = server.proxy_addrs[0];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a plain request", get_index()),
        (
            "v1 with a leading zero",
            b"PROXY TCP4 192.0.2.01 127.0.0.1 1 80\r\n".to_vec(),
        ),
        (
            "v1 with a bare LF",
            b"PROXY TCP4 192.0.2.1 127.0.0.1 1 80\n".to_vec(),
        ),
        (
            "v1 family mismatch",
            b"PROXY TCP6 192.0.2.1 127.0.0.1 1 80\r\n".to_vec(),
        ),
        ("v1 without CRLF in 107 bytes", {
            let mut long = b"PROXY UNKNOWN ".to_vec();
            long.resize(200, b'x');
            long
        }),
        ("v2 version 3", {
            let mut h = v2_tcp4([192, 0, 2, 1], 1);
            h[12] = 0x31;
            h
        }),
        ("v2 address block too short", v2(1, 0x21, &[0; 12])),
        (
            "v2 TLV overrunning the header",
            v2(1, 0x11, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9]),
        ),
    ];
    for (what, bytes) in cases {
        let mut stream = connect(proxy);
        stream.write_all(&bytes).unwrap();
        let _ = stream.write_all(&get_index());
        assert_closed_silently(&mut stream, what);
    }
    // The server is fine, and says what it refused (throttled).
    let (_, r) = send_pieces(server.addr, &[&get_index()]);
    assert_ok(r, "plain listener afterwards");
    let (_, stderr) = server.stop();
    assert!(
        stderr.contains("without a valid PROXY header"),
        "refusals not logged: {stderr}"
    );
}

#[test]
fn a_header_on_a_plain_listener_is_a_bad_request() {
    let root = root();
    let server = start(&root, &[]);
    for header in [
        v1("192.0.2.1", "127.0.0.1", 1, 80),
        v2_tcp4([192, 0, 2, 1], 1),
    ] {
        let mut bytes = header;
        bytes.extend(get_index());
        let (_, r) = send_pieces(server.addr, &[&bytes]);
        assert_eq!(r.expect("an answer").status, 400);
    }
}

#[test]
fn untrusted_peers_are_refused_at_once() {
    let root = root();
    // 127.0.0.1 is outside the only trusted network.
    let server = start(&root, &["--proxy-trusted", "10.0.0.0/8"]);
    let proxy = server.proxy_addrs[0];
    for _ in 0..3 {
        let mut stream = connect(proxy);
        let mut bytes = v1("192.0.2.1", "127.0.0.1", 1, 80);
        bytes.extend(get_index());
        // The server may already have closed: a failed write is fine.
        let _ = stream.write_all(&bytes);
        assert_closed_silently(&mut stream, "untrusted peer");
    }
    let (_, stderr) = server.stop();
    assert!(
        stderr.contains("from untrusted peers"),
        "refusal not logged: {stderr}"
    );
    assert_eq!(
        stderr.matches("warn: refused").count(),
        1,
        "logged at most once per 10 s: {stderr}"
    );
}

#[test]
fn a_trickled_header_is_cut_off_at_the_header_timeout() {
    let root = root();
    let server = start(&root, &["--header-timeout", "1s"]);
    let mut stream = connect(server.proxy_addrs[0]);
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Valid so far, never complete (a v1 line may be 107 bytes long).
    let trickle = b"PROXY TCP6 2001:db8:0:0:0:0:0:1 2001:db8:0:0:0:0:0:2 6553";
    let start = Instant::now();
    let mut sent = 0;
    let mut got = Vec::new();
    let closed = loop {
        if start.elapsed() > Duration::from_secs(8) {
            break false;
        }
        if sent < trickle.len() && stream.write_all(&trickle[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        let mut buf = [0u8; 256];
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break true,
            Err(_) => {} // still open: the next byte
        }
    };
    let took = start.elapsed();
    assert!(closed, "still open after {took:?}, {sent} bytes sent");
    assert!(
        got.is_empty(),
        "no 408 for a proxy: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        took < Duration::from_millis(2500),
        "the timeout runs from the accept, not from each byte: closed after {took:?}"
    );
    assert!(sent < trickle.len(), "closed only after the whole trickle");
}

#[test]
fn curl_haproxy_protocol_works() {
    let root = root();
    let server = start(&root, &[]);
    let url = format!("http://{}/index.html", server.proxy_addrs[0]);
    let out = curl(&["--haproxy-protocol", &url]);
    assert!(out.status.success(), "curl --haproxy-protocol: {out:?}");
    assert_eq!(out.stdout, BODY.as_bytes());
    // Without the header curl gets nothing back.
    let out = curl(&[&url]);
    assert!(
        !out.status.success(),
        "a plain request was answered: {out:?}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn several_proxy_listeners_each_serve() {
    let root = root();
    let args = [
        "--proxy-protocol",
        "127.0.0.1:0",
        "--proxy-protocol",
        "127.0.0.1:0",
    ];
    let server = Server::start(root.path(), &args);
    assert_eq!(server.proxy_addrs.len(), 2);
    let mut bytes = b"PROXY UNKNOWN\r\n".to_vec();
    bytes.extend(get_index());
    for addr in &server.proxy_addrs {
        assert_ok(send_pieces(*addr, &[&bytes]).1, &format!("{addr}"));
    }
    // The plain listener is still plain.
    assert_ok(
        send_pieces(server.addr, &[&get_index()]).1,
        "plain listener",
    );
}

/// A balancer sends the PROXY header when it connects, before its client
/// sends anything: at a graceful stop such a connection is idle like any
/// other and must not hold the stop for a whole header timeout.
#[test]
fn a_header_arriving_during_a_stop_does_not_hold_it() {
    let root = root();
    let mut server = start(
        &root,
        &["--header-timeout", "60s", "--shutdown-timeout", "60s"],
    );
    let proxy = server.proxy_addrs[0];
    let mut stream = connect(proxy);
    // Accepted (the engine holds it) before the stop.
    let mut probe = connect(proxy);
    probe
        .write_all(&v1("192.0.2.1", "127.0.0.1", 1, 80))
        .unwrap();
    probe.write_all(&get_index()).unwrap();
    assert_ok(
        read_response(&mut BufReader::new(probe.try_clone().unwrap()), false),
        "before the stop",
    );
    integration_tests::harness::signal(server.pid(), libc::SIGTERM);
    assert!(server.await_stderr("shutting down", 1, Duration::from_secs(10)));
    stream
        .write_all(&v1("192.0.2.2", "127.0.0.1", 2, 80))
        .unwrap();
    let stopped = Instant::now();
    let (status, stderr) = server
        .wait_exit(Duration::from_secs(20))
        .expect("the server stops");
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "the stop took {:?}, as if the header timeout ran",
        stopped.elapsed()
    );
    assert!(
        !stderr.contains("no complete PROXY header"),
        "an idle connection at a stop is not a bad header: {stderr}"
    );
}
