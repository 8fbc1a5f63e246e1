//! End-to-end request parsing and path safety against the real
//! `flash-server`: size limits (431, 414, configurable), Host, garbage,
//! versions, obs-fold, framing conflicts (smuggling defences), the rule that
//! every parse error closes the connection, and traversal attempts sent on
//! raw sockets (curl would normalise them) with a sentinel file outside the
//! root that must never be served.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;

use integration_tests::harness::{
    assert_closed, curl, get, read_response, reads_eof, Response, Server, TempDir,
};

const SPED: &[&str] = &["--arch", "sped"];
const AMPED: &[&str] = &[];

// ---- helpers ----------------------------------------------------------

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A root with `a.txt` ("aaa").
fn simple_root(tag: &str) -> TempDir {
    let root = TempDir::new(tag);
    root.write("a.txt", "aaa");
    root
}

/// A GET for /a.txt whose head is exactly `len` bytes long (padding in X-Pad).
fn head_of_len(len: usize) -> Vec<u8> {
    let start = "GET /a.txt HTTP/1.1\r\nHost: t\r\nX-Pad: ";
    let end = "\r\n\r\n";
    let pad = len - start.len() - end.len();
    format!("{start}{}{end}", "p".repeat(pad)).into_bytes()
}

/// A GET for /a.txt with exactly `n` header fields (Host and `n - 1` others).
fn head_with_fields(n: usize) -> Vec<u8> {
    let mut s = String::from("GET /a.txt HTTP/1.1\r\nHost: t\r\n");
    for i in 1..n {
        s.push_str(&format!("X-H{i}: v\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// A GET whose target (`/ttt...`, no such file) is exactly `len` bytes long.
fn get_target_of_len(len: usize) -> Vec<u8> {
    format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "t".repeat(len - 1)).into_bytes()
}

/// Sends `bytes` followed by a valid pipelined GET on a fresh connection;
/// expects exactly one response with a status in `statuses`, marked
/// `Connection: close`, and then EOF (the pipelined GET is never answered).
fn expect_error_and_close(server: &Server, bytes: &[u8], statuses: &[u16]) -> Response {
    let mut stream = server.connect();
    let mut all = bytes.to_vec();
    all.extend_from_slice(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    // The server may stop reading at the error; a failed write is then fine.
    let _ = stream.write_all(&all);
    let mut reader = BufReader::new(stream);
    let shown = shown(bytes);
    let resp =
        read_response(&mut reader, false).unwrap_or_else(|e| panic!("no response to {shown}: {e}"));
    assert!(
        statuses.contains(&resp.status),
        "request {shown}: expected one of {statuses:?}, got {} ({resp:?})",
        resp.status
    );
    assert!(
        reader.buffer().is_empty(),
        "request {shown}: bytes after the error response: {:?}",
        text(reader.buffer())
    );
    assert!(
        reads_eof(reader.get_mut()),
        "request {shown}: the connection should be closed after a {}",
        resp.status
    );
    // RFC 9112 9.6: a server that closes after this response says so.
    assert_eq!(
        resp.header("connection"),
        Some("close"),
        "request {shown}: the {} response is followed by a close, but its head says otherwise",
        resp.status
    );
    resp
}

/// Sends the unfinished start of a request on a fresh connection; expects
/// the error `status` before the request ends (`expect` if none comes),
/// marked `Connection: close`, and then EOF.
fn expect_early_error(server: &Server, partial: &[u8], status: u16, expect: &str) {
    let mut stream = server.connect();
    stream.write_all(partial).unwrap();
    let mut reader = BufReader::new(stream);
    let resp = read_response(&mut reader, false).expect(expect);
    assert_eq!(resp.status, status);
    assert!(reads_eof(reader.get_mut()));
    assert_eq!(
        resp.header("connection"),
        Some("close"),
        "the {} is followed by a close, but its head says otherwise",
        resp.status
    );
}

/// A request for messages: long ones are abbreviated.
fn shown(bytes: &[u8]) -> String {
    if bytes.len() <= 160 {
        format!("{:?}", text(bytes))
    } else {
        format!("{:?}...({} bytes)", text(&bytes[..120]), bytes.len())
    }
}

/// Sends a complete request on a fresh connection and expects one response.
fn expect_ok(server: &Server, bytes: &[u8], status: u16) -> Response {
    let mut stream = server.connect();
    stream.write_all(bytes).unwrap();
    let resp = read_response(&mut BufReader::new(stream), false)
        .unwrap_or_else(|e| panic!("no response to {}: {e}", shown(bytes)));
    assert_eq!(resp.status, status, "request {}: {resp:?}", shown(bytes));
    resp
}

// ---- size limits ------------------------------------------------------

#[test]
fn head_larger_than_16k_is_431() {
    let root = simple_root("parse-431");
    let server = Server::start(root.path(), &[]);
    let exact = head_of_len(16 * 1024);
    assert_eq!(expect_ok(&server, &exact, 200).body, b"aaa");
    expect_error_and_close(&server, &head_of_len(16 * 1024 + 1), &[431]);
    expect_error_and_close(&server, &head_of_len(40 * 1024), &[431]);
}

#[test]
fn oversized_head_without_end_is_431_without_waiting_for_the_rest() {
    let root = simple_root("parse-431-partial");
    let server = Server::start(root.path(), &[]);
    // 20 KiB of one header value and no line end: the limit is already passed.
    let mut bytes = b"GET /a.txt HTTP/1.1\r\nHost: t\r\nX-Pad: ".to_vec();
    bytes.extend(std::iter::repeat(b'p').take(20 * 1024));
    expect_early_error(&server, &bytes, 431, "431 before the head ends");
}

#[test]
fn more_than_64_headers_is_431() {
    let root = simple_root("parse-headers");
    let server = Server::start(root.path(), &[]);
    assert_eq!(expect_ok(&server, &head_with_fields(64), 200).body, b"aaa");
    expect_error_and_close(&server, &head_with_fields(65), &[431]);
    expect_error_and_close(&server, &head_with_fields(200), &[431]);
}

#[test]
fn target_longer_than_8k_is_414() {
    let root = simple_root("parse-414");
    let server = Server::start(root.path(), &[]);
    // At the limit: parsed, and simply not found.
    expect_ok(&server, &get_target_of_len(8192), 404);
    expect_error_and_close(&server, &get_target_of_len(8193), &[414]);
    // A query counts too.
    let long = format!(
        "GET /a.txt?{} HTTP/1.1\r\nHost: t\r\n\r\n",
        "q".repeat(8200)
    );
    expect_error_and_close(&server, long.as_bytes(), &[414]);
}

#[test]
fn long_target_is_414_before_the_request_line_ends() {
    let root = simple_root("parse-414-partial");
    let server = Server::start(root.path(), &[]);
    let partial = format!("GET /{}", "t".repeat(9000));
    expect_early_error(
        &server,
        partial.as_bytes(),
        414,
        "414 for an unfinished long target",
    );
}

#[test]
fn limits_are_configurable() {
    let root = simple_root("parse-config");
    let server = Server::start(
        root.path(),
        &[
            "--max-head-bytes",
            "1K",
            "--max-headers",
            "4",
            "--max-target-bytes",
            "100",
        ],
    );
    assert_eq!(expect_ok(&server, &head_of_len(1024), 200).body, b"aaa");
    expect_error_and_close(&server, &head_of_len(1025), &[431]);

    expect_ok(&server, &head_with_fields(4), 200);
    expect_error_and_close(&server, &head_with_fields(5), &[431]);

    expect_ok(&server, &get_target_of_len(100), 404);
    expect_error_and_close(&server, &get_target_of_len(101), &[414]);
}

#[test]
fn body_larger_than_1m_is_413() {
    let root = simple_root("parse-413");
    let server = Server::start(root.path(), &[]);
    let req = |len: u64| format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n");
    expect_error_and_close(&server, req((1 << 20) + 1).as_bytes(), &[413]);
    expect_error_and_close(&server, req(99_999_999_999_999_999).as_bytes(), &[413]);
    let post = "POST /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n";
    expect_error_and_close(&server, post.as_bytes(), &[413]);
    // Exactly 1 MiB is read and discarded.
    let mut stream = server.connect();
    let mut bytes = req(1 << 20).into_bytes();
    bytes.extend(std::iter::repeat(b'b').take(1 << 20));
    bytes.extend_from_slice(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || stream.write_all(&bytes))
    };
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for i in 0..2 {
        let resp = read_response(&mut reader, false).expect("response");
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, &b"aaa"[..]),
            "response {i}"
        );
    }
    writer.join().unwrap().expect("send 1 MiB body");
    assert!(reads_eof(&mut stream));
}

// ---- syntax -------------------------------------------------------------

#[test]
fn http11_without_host_is_400() {
    let root = simple_root("parse-host");
    let server = Server::start(root.path(), &[]);
    expect_error_and_close(&server, b"GET /a.txt HTTP/1.1\r\n\r\n", &[400]);
    expect_error_and_close(
        &server,
        b"GET /a.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        &[400],
    );
    // HTTP/1.0 needs no Host.
    let resp = expect_ok(&server, b"GET /a.txt HTTP/1.0\r\n\r\n", 200);
    assert_eq!(resp.body, b"aaa");
}

#[test]
fn garbage_is_400() {
    let root = simple_root("parse-garbage");
    let server = Server::start(root.path(), &[]);
    let cases: &[&[u8]] = &[
        b"HELLO\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b" GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET  /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /a.txt HTTP/1.1 extra\r\nHost: t\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nHost t\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nHo st: t\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nHost: t\x01\r\n\r\n",
        b"GET /a.txt HTTP/1.1\rHost: t\r\n\r\n",
        b"GET a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /a.txt#frag HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /%zz HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
    ];
    for case in cases {
        expect_error_and_close(&server, case, &[400]);
    }
}

#[test]
fn unsupported_version_is_505_or_400() {
    let root = simple_root("parse-version");
    let server = Server::start(root.path(), &[]);
    for case in [
        &b"GET /a.txt HTTP/2.0\r\nHost: t\r\n\r\n"[..],
        b"GET /a.txt HTTP/1.2\r\nHost: t\r\n\r\n",
        b"GET /a.txt HTTP/0.9\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        expect_error_and_close(&server, case, &[505, 400]);
    }
    for case in [
        &b"GET /a.txt HTTX/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET /a.txt http/1.1\r\nHost: t\r\n\r\n",
    ] {
        expect_error_and_close(&server, case, &[400]);
    }
}

#[test]
fn obs_fold_is_400() {
    let root = simple_root("parse-fold");
    let server = Server::start(root.path(), &[]);
    expect_error_and_close(
        &server,
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nX-A: one\r\n two\r\n\r\n",
        &[400],
    );
    expect_error_and_close(
        &server,
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nX-A: one\r\n\ttwo\r\n\r\n",
        &[400],
    );
    expect_error_and_close(&server, b"GET /a.txt HTTP/1.1\r\n Host: t\r\n\r\n", &[400]);
}

#[test]
fn transfer_encoding_with_content_length_is_400_and_closes() {
    let root = simple_root("parse-te-cl");
    let server = Server::start(root.path(), &[]);
    expect_error_and_close(
        &server,
        b"POST /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        &[400],
    );
    expect_error_and_close(
        &server,
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\ntransfer-encoding: chunked\r\n\r\nhello",
        &[400],
    );
    // Transfer-Encoding alone is not supported: an error that also closes.
    expect_error_and_close(
        &server,
        b"POST /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        &[501, 400, 411],
    );
}

#[test]
fn differing_duplicate_content_length_is_400_and_closes() {
    let root = simple_root("parse-dup-cl");
    let server = Server::start(root.path(), &[]);
    expect_error_and_close(
        &server,
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        &[400],
    );
    expect_error_and_close(
        &server,
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!",
        &[400],
    );
    // Identical duplicates are one length (RFC 9112 6.3): accepted.
    let mut stream = server.connect();
    stream
        .write_all(
            b"GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello\
              GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    for _ in 0..2 {
        let resp = read_response(&mut reader, false).unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"aaa"[..]));
    }
    assert_closed(&mut reader, "after Connection: close");
}

#[test]
fn parse_error_after_a_good_request_still_closes() {
    let root = simple_root("parse-after-good");
    let server = Server::start(root.path(), &[]);
    let mut stream = server.connect();
    stream
        .write_all(
            b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /a.txt HTTP/1.1\r\n\r\n\
              GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    let first = read_response(&mut reader, false).unwrap();
    assert_eq!((first.status, first.body.as_slice()), (200, &b"aaa"[..]));
    assert_eq!(first.header("connection"), Some("keep-alive"));
    let second = read_response(&mut reader, false).unwrap();
    assert_eq!(second.status, 400);
    assert_closed(&mut reader, "after the 400");
    assert_eq!(
        second.header("connection"),
        Some("close"),
        "the 400 is followed by a close, but its head says otherwise"
    );
}

// ---- path safety --------------------------------------------------------

/// `outer/secret.txt` (the sentinel, outside the root), the root `outer/www`
/// with `a/c.txt`, `a/b/` and symlinks that escape.
struct Jail {
    outer: TempDir,
}

const SENTINEL: &str = "SENTINEL-outside-the-root-7f3a9c";

impl Jail {
    fn new(tag: &str) -> Jail {
        let outer = TempDir::new(tag);
        outer.write("secret.txt", SENTINEL);
        outer.write("www/a/c.txt", "c inside");
        outer.write("www/a/b/keep.txt", "b inside");
        outer.write("www/index.html", "root index");
        let www = outer.path().join("www");
        std::os::unix::fs::symlink("../secret.txt", www.join("escape.txt")).unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret.txt"), www.join("abs.txt")).unwrap();
        std::os::unix::fs::symlink("/etc", www.join("etc")).unwrap();
        std::os::unix::fs::symlink("a/c.txt", www.join("inside-link.txt")).unwrap();
        Jail { outer }
    }

    fn root(&self) -> std::path::PathBuf {
        self.outer.path().join("www")
    }
}

/// Sends raw request bytes (with `Connection: close`) and returns everything
/// the server sends until it closes.
fn raw_all(server: &Server, target: &[u8]) -> Vec<u8> {
    let mut stream: TcpStream = server.connect();
    let mut bytes = b"GET ".to_vec();
    bytes.extend_from_slice(target);
    bytes.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(&bytes).unwrap();
    let mut out = Vec::new();
    stream
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("reading the answer to {:?}: {e}", text(target)));
    out
}

fn status_of(raw: &[u8]) -> u16 {
    let line = text(raw);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {line:?}"))
}

fn check_traversal(args: &[&str]) {
    let jail = Jail::new("parse-jail");
    let server = Server::start(&jail.root(), args);
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let passwd_line = passwd.lines().next().unwrap_or("root:x:0:0").to_owned();
    let attempts: &[&[u8]] = &[
        b"/../secret.txt",
        b"/../etc/passwd",
        b"/../../../../../../etc/passwd",
        b"/%2e%2e/secret.txt",
        b"/%2E%2E/etc/passwd",
        b"/%2e%2e%2fsecret.txt",
        b"/a/../../secret.txt",
        b"/a/b/../../../secret.txt",
        b"/a/%2e%2e/%2e%2e/secret.txt",
        b"/..%2fsecret.txt",
        b"/..%2f..%2fetc/passwd",
        b"/a/..%2f..%2fsecret.txt",
        b"/a%2f..%2f..%2fsecret.txt",
        b"/.%2e/secret.txt",
        b"//../secret.txt",
        b"/./../secret.txt",
        b"/..\\secret.txt",
        b"/a/c.txt%00",
        b"/a/c.txt%00.html",
        b"/%00/../secret.txt",
        b"/a/c.txt\x00",
        b"/%c0%ae%c0%ae/secret.txt",
        b"/escape.txt",
        b"/abs.txt",
        b"/etc/passwd",
        b"http://t/../secret.txt",
        b"http://t/%2e%2e/secret.txt",
    ];
    for target in attempts {
        let raw = raw_all(&server, target);
        let shown = text(target);
        let status = status_of(&raw);
        assert!(
            matches!(status, 400 | 403 | 404),
            "{shown:?}: expected 400/403/404, got {status}: {:?}",
            text(&raw)
        );
        let body = text(&raw);
        assert!(
            !body.contains(SENTINEL),
            "{shown:?} leaked the sentinel: {body:?}"
        );
        assert!(
            !body.contains(&passwd_line),
            "{shown:?} leaked /etc/passwd: {body:?}"
        );
    }
    // Dot segments inside the root are resolved, not refused.
    for target in [
        "/a/./b/../c.txt",
        "/a/b/%2e%2e/c.txt",
        "//a//c.txt",
        "/a/b/./../../a/c.txt",
    ] {
        let resp = get(&server, target);
        assert_eq!(resp.status, 200, "{target}: {resp:?}");
        assert_eq!(resp.body, b"c inside", "{target}");
    }
    // A relative symlink that stays inside the root is followed.
    assert_eq!(get(&server, "/inside-link.txt").body, b"c inside");
}

#[test]
fn traversal_never_escapes_the_root() {
    check_traversal(AMPED);
}

#[test]
fn traversal_never_escapes_the_root_sped() {
    check_traversal(SPED);
}

#[test]
fn traversal_with_curl_path_as_is() {
    let jail = Jail::new("parse-jail-curl");
    let server = Server::start(&jail.root(), &[]);
    for target in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/a/../../secret.txt",
    ] {
        let out = curl(&["--path-as-is", "-i", &server.url(target)]);
        let all = text(&out.stdout);
        assert!(
            all.starts_with("HTTP/1.1 400")
                || all.starts_with("HTTP/1.1 403")
                || all.starts_with("HTTP/1.1 404"),
            "{target}: {all:?} {}",
            text(&out.stderr)
        );
        assert!(!all.contains(SENTINEL), "{target} leaked the sentinel");
    }
}
