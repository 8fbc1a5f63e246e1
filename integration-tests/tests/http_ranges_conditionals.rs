//! End-to-end byte ranges and conditional requests against the real
//! `flash-server`: single, suffix, open and multiple ranges (the multipart
//! body is parsed and each part checked), 416, If-Range, HEAD with Range;
//! If-None-Match, If-Modified-Since, If-Match, If-Unmodified-Since and their
//! precedence. Both curl and raw sockets are used.

use std::io::{BufReader, Write};
use std::net::TcpStream;

use integration_tests::harness::{
    assert_closed, curl, exchange, read_response, set_mtime, Response, Server, TempDir,
};

/// Sun, 06 Nov 1994 08:49:37 GMT
const MTIME: u64 = 784_111_777;
const MTIME_TEXT: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
const ONE_SECOND_EARLIER: &str = "Sun, 06 Nov 1994 08:49:36 GMT";
const ONE_SECOND_LATER: &str = "Sun, 06 Nov 1994 08:49:38 GMT";
const LEN: usize = 100;

const SPED: &[&str] = &["--arch", "sped"];
const AMPED: &[&str] = &[];

// ---- helpers ----------------------------------------------------------

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// 100 bytes, every 10-byte window distinct.
fn content() -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..LEN)
        .map(|i| ALPHABET[(i * 7 + i / 62) % ALPHABET.len()])
        .collect()
}

/// A root with `r.txt` (100 bytes, mtime MTIME) and `other.txt`.
fn root(tag: &str) -> TempDir {
    let root = TempDir::new(tag);
    let path = root.write("r.txt", content());
    set_mtime(&path, MTIME);
    root.write("other.txt", "other");
    root
}

/// GET /r.txt with extra header lines, on a fresh connection.
fn get_with(server: &Server, method: &str, extra: &str) -> Response {
    exchange(
        server,
        format!("{method} /r.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n")
            .as_bytes(),
    )
}

fn etag(server: &Server) -> String {
    get_with(server, "GET", "")
        .header("etag")
        .expect("ETag")
        .to_owned()
}

/// Runs `curl -i ARGS` and parses the single response it prints.
fn curl_response(args: &[&str]) -> Response {
    let mut all = vec!["-i"];
    all.extend_from_slice(args);
    let out = curl(&all);
    assert!(out.status.success(), "curl {args:?}: {}", text(&out.stderr));
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("curl -i output has a head")
        + 4;
    let mut reader = BufReader::new(&raw[..split]);
    let mut resp = read_response(&mut reader, true).expect("parse curl head");
    resp.body = raw[split..].to_vec();
    resp
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Parses a multipart/byteranges body strictly: every part's length comes
/// from its Content-Range, and must be followed by the next delimiter.
/// Returns (Content-Range, Content-Type, bytes) per part.
fn parse_multipart(resp: &Response) -> Vec<(String, String, Vec<u8>)> {
    let ctype = resp.header("content-type").expect("Content-Type");
    assert!(ctype.starts_with("multipart/byteranges"), "{ctype}");
    let boundary = ctype
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .expect("boundary parameter")
        .trim_matches('"');
    assert!(!boundary.is_empty());
    let delim = format!("--{boundary}").into_bytes();
    let body = &resp.body;
    let mut pos = find(body, &delim, 0).expect("first delimiter");
    assert!(
        body[..pos].iter().all(|b| matches!(b, b'\r' | b'\n')),
        "preamble before the first delimiter: {:?}",
        text(&body[..pos])
    );
    let mut parts = Vec::new();
    loop {
        pos += delim.len();
        if body[pos..].starts_with(b"--") {
            let epilogue = &body[pos + 2..];
            assert!(
                epilogue.iter().all(|b| matches!(b, b'\r' | b'\n')),
                "epilogue: {:?}",
                text(epilogue)
            );
            break;
        }
        assert!(
            body[pos..].starts_with(b"\r\n"),
            "delimiter not followed by CRLF"
        );
        pos += 2;
        let head_end = find(body, b"\r\n\r\n", pos).expect("part head end");
        let head = text(&body[pos..head_end]);
        let mut range = None;
        let mut ptype = None;
        for line in head.split("\r\n") {
            let (name, value) = line.split_once(':').expect("part header");
            if name.eq_ignore_ascii_case("content-range") {
                range = Some(value.trim().to_owned());
            } else if name.eq_ignore_ascii_case("content-type") {
                ptype = Some(value.trim().to_owned());
            }
        }
        let range = range.expect("part Content-Range");
        let (first, last) = range
            .strip_prefix("bytes ")
            .and_then(|r| r.split_once('/'))
            .and_then(|(r, _)| r.split_once('-'))
            .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
            .expect("Content-Range syntax");
        let start = head_end + 4;
        let end = start + (last - first + 1);
        let data = body
            .get(start..end)
            .expect("part data within the body")
            .to_vec();
        parts.push((range, ptype.unwrap_or_default(), data));
        pos = find(body, &delim, end).expect("next delimiter");
        assert_eq!(
            &body[end..pos],
            b"\r\n",
            "between part data and the next delimiter"
        );
    }
    parts
}

// ---- ranges with curl -------------------------------------------------------

fn check_single_ranges(args: &[&str]) {
    let root = root("ranges-single");
    let server = Server::start(root.path(), args);
    let data = content();
    let url = server.url("/r.txt");
    let cases = [
        ("0-9", 0, 10),
        ("-5", 95, 100),
        ("10-", 10, 100),
        ("42-42", 42, 43),
        ("95-200", 95, 100),
        ("-500", 0, 100),
    ];
    for (spec, start, end) in cases {
        let resp = curl_response(&["-r", spec, &url]);
        assert_eq!(resp.status, 206, "-r {spec}: {resp:?}");
        assert_eq!(
            resp.header("content-range").map(str::to_owned),
            Some(format!("bytes {start}-{}/{LEN}", end - 1)),
            "-r {spec}"
        );
        assert_eq!(
            resp.header("content-length").map(str::to_owned),
            Some((end - start).to_string())
        );
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(resp.header("etag").is_some() && resp.header("last-modified").is_some());
        assert_eq!(resp.body, &data[start..end], "-r {spec}");
    }
}

#[test]
fn single_ranges_with_curl() {
    check_single_ranges(AMPED);
}

#[test]
fn single_ranges_with_curl_sped() {
    check_single_ranges(SPED);
}

fn check_multi_range(args: &[&str]) {
    let root = root("ranges-multi");
    let server = Server::start(root.path(), args);
    let data = content();
    let resp = curl_response(&["-r", "0-4,10-14,90-", &server.url("/r.txt")]);
    assert_eq!(resp.status, 206, "{resp:?}");
    assert!(
        resp.header("content-range").is_none(),
        "no top-level Content-Range in multipart"
    );
    assert_eq!(
        resp.header("content-length").map(str::to_owned),
        Some(resp.body.len().to_string())
    );
    let parts = parse_multipart(&resp);
    let want = [(0, 5), (10, 15), (90, 100)];
    assert_eq!(parts.len(), want.len(), "{parts:?}");
    for ((range, ptype, bytes), (start, end)) in parts.iter().zip(want) {
        assert_eq!(range, &format!("bytes {start}-{}/{LEN}", end - 1));
        assert_eq!(ptype, "text/plain; charset=utf-8");
        assert_eq!(bytes, &data[start..end], "{range}");
    }

    // Raw, with a suffix range among them; and the connection stays usable.
    let mut stream = server.connect();
    stream
        .write_all(
            b"GET /r.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=-3, 20-29\r\n\r\n\
              GET /other.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    let resp = read_response(&mut reader, false).unwrap();
    assert_eq!(resp.status, 206);
    let parts = parse_multipart(&resp);
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].0, "bytes 97-99/100");
    assert_eq!(parts[0].2, &data[97..]);
    assert_eq!(parts[1].0, "bytes 20-29/100");
    assert_eq!(parts[1].2, &data[20..30]);
    let next = read_response(&mut reader, false).unwrap();
    assert_eq!((next.status, next.body.as_slice()), (200, &b"other"[..]));
}

#[test]
fn multiple_ranges_are_multipart() {
    check_multi_range(AMPED);
}

#[test]
fn multiple_ranges_are_multipart_sped() {
    check_multi_range(SPED);
}

#[test]
fn multipart_of_a_large_file_is_intact() {
    // Parts larger than a socket buffer, so they leave in several writes.
    let root = TempDir::new("ranges-multi-big");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    root.write("big.bin", &data);
    let server = Server::start(root.path(), &[]);
    let resp = exchange(
        &server,
        b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\nRange: bytes=0-999999,1500000-2499999,-10\r\n\r\n",
    );
    assert_eq!(resp.status, 206);
    let parts = parse_multipart(&resp);
    assert_eq!(parts.len(), 3);
    assert!(parts[0].2 == data[..1_000_000]);
    assert!(parts[1].2 == data[1_500_000..2_500_000]);
    assert!(parts[2].2 == data[2_999_990..]);
    assert_eq!(parts[0].1, "application/octet-stream");

    // Single ranges deep in the file.
    for (spec, start, end) in [
        ("2999000-", 2_999_000, 3_000_000),
        ("1234567-2345678", 1_234_567, 2_345_679),
    ] {
        let resp = exchange(
            &server,
            format!("GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\nRange: bytes={spec}\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.status, 206);
        assert_eq!(
            resp.header("content-range").map(str::to_owned),
            Some(format!("bytes {start}-{}/3000000", end - 1))
        );
        assert!(resp.body == data[start..end], "{spec}");
    }
}

#[test]
fn unsatisfiable_range_is_416() {
    let root = root("ranges-416");
    let server = Server::start(root.path(), &[]);
    for spec in ["bytes=100-", "bytes=500-600", "bytes=100-100,200-"] {
        let resp = get_with(&server, "GET", &format!("Range: {spec}\r\n"));
        assert_eq!(resp.status, 416, "{spec}: {resp:?}");
        assert_eq!(resp.header("content-range"), Some("bytes */100"), "{spec}");
    }
    let resp = curl_response(&["-r", "100-", &server.url("/r.txt")]);
    assert_eq!(resp.status, 416);
    assert_eq!(resp.header("content-range"), Some("bytes */100"));
    // One satisfiable range among unsatisfiable ones is served.
    let resp = get_with(&server, "GET", "Range: bytes=200-300, 5-6\r\n");
    assert_eq!(resp.status, 206);
    assert_eq!(resp.header("content-range"), Some("bytes 5-6/100"));
    assert_eq!(resp.body, &content()[5..7]);
}

#[test]
fn invalid_range_header_is_ignored() {
    let root = root("ranges-invalid");
    let server = Server::start(root.path(), &[]);
    for spec in ["bytes=9-0", "items=0-9", "bytes=a-b", "bytes 0-9", "bytes="] {
        let resp = get_with(&server, "GET", &format!("Range: {spec}\r\n"));
        assert_eq!(resp.status, 200, "{spec}: {resp:?}");
        assert_eq!(resp.body, content(), "{spec}");
        assert!(resp.header("content-range").is_none(), "{spec}");
    }
}

#[test]
fn if_range_with_current_etag_is_206_and_old_etag_is_200() {
    let root = root("ranges-if-range");
    // The file changes between requests: no trust in cached paths.
    let server = Server::start(root.path(), &["--path-cache-ttl", "0s"]);
    let tag = etag(&server);
    let data = content();

    let resp = get_with(
        &server,
        "GET",
        &format!("Range: bytes=0-9\r\nIf-Range: {tag}\r\n"),
    );
    assert_eq!(resp.status, 206, "{resp:?}");
    assert_eq!(resp.body, &data[..10]);

    for old in ["\"0-0\"", "\"stale-etag\"", &format!("W/{tag}")] {
        let resp = get_with(
            &server,
            "GET",
            &format!("Range: bytes=0-9\r\nIf-Range: {old}\r\n"),
        );
        assert_eq!(resp.status, 200, "If-Range {old}: {resp:?}");
        assert_eq!(resp.body, data, "If-Range {old}");
        assert!(resp.header("content-range").is_none());
    }
    // A date other than Last-Modified also means "send everything".
    let resp = get_with(
        &server,
        "GET",
        &format!("Range: bytes=0-9\r\nIf-Range: {ONE_SECOND_EARLIER}\r\n"),
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, data);

    // With curl: an ETag obtained from one response, then the file changes.
    let curl_if_range = || {
        curl_response(&[
            "-r",
            "0-9",
            "-H",
            &format!("If-Range: {tag}"),
            &server.url("/r.txt"),
        ])
    };
    assert_eq!(curl_if_range().status, 206);
    let mut changed = data.clone();
    changed.extend_from_slice(b"appended");
    let path = root.write("r.txt", &changed);
    set_mtime(&path, MTIME + 3600);
    let resp = curl_if_range();
    assert_eq!(resp.status, 200, "If-Range with the ETag of the old file");
    assert_eq!(resp.body, changed);
}

#[test]
fn head_with_range_has_no_body() {
    let root = root("ranges-head");
    let server = Server::start(root.path(), &[]);
    let mut stream = server.connect();
    stream
        .write_all(
            b"HEAD /r.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n\
              HEAD /r.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=0-4,10-14\r\n\r\n\
              GET /other.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    for _ in 0..2 {
        let head = read_response(&mut reader, true).unwrap();
        // RFC 9110 14.2: range handling is defined for GET only.
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.header("content-length"), Some("100"));
    }
    let next = read_response(&mut reader, false).expect("GET after HEAD with Range");
    assert_eq!((next.status, next.body.as_slice()), (200, &b"other"[..]));
    assert_closed(&mut reader, "after Connection: close");
}

// ---- conditionals ------------------------------------------------------------

/// Sends a conditional GET, then a plain GET on the same connection, so a
/// body wrongly attached to a 304 would break the second response.
fn conditional_then_get(server: &Server, method: &str, extra: &str) -> Response {
    let mut stream: TcpStream = server.connect();
    let bytes = format!(
        "{method} /r.txt HTTP/1.1\r\nHost: t\r\n{extra}\r\n\
         GET /other.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(bytes.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let resp = read_response(&mut reader, method == "HEAD").unwrap();
    let next = read_response(&mut reader, false).unwrap_or_else(|e| {
        panic!(
            "response after {method} with {extra:?} ({}): {e}",
            resp.status
        )
    });
    assert_eq!(
        (next.status, next.body.as_slice()),
        (200, &b"other"[..]),
        "after {extra:?}"
    );
    assert!(reader.buffer().is_empty());
    resp
}

fn assert_not_modified(resp: &Response, etag: &str, what: &str) {
    assert_eq!(resp.status, 304, "{what}: {resp:?}");
    assert!(resp.body.is_empty());
    assert_eq!(
        resp.header("etag"),
        Some(etag),
        "{what}: 304 must carry the ETag"
    );
    assert!(
        resp.header("content-length")
            .map_or(true, |v| v == "100" || v == "0"),
        "{what}"
    );
}

#[test]
fn if_none_match() {
    let root = root("cond-inm");
    let server = Server::start(root.path(), &[]);
    let tag = etag(&server);
    for value in [
        tag.clone(),
        "*".to_owned(),
        format!("\"x\", {tag}"),
        format!("W/{tag}"),
    ] {
        let resp = conditional_then_get(&server, "GET", &format!("If-None-Match: {value}\r\n"));
        assert_not_modified(&resp, &tag, &format!("If-None-Match: {value}"));
    }
    let resp = conditional_then_get(&server, "HEAD", &format!("If-None-Match: {tag}\r\n"));
    assert_not_modified(&resp, &tag, "HEAD If-None-Match");
    // A 304 wins over a Range.
    let resp = conditional_then_get(
        &server,
        "GET",
        &format!("If-None-Match: {tag}\r\nRange: bytes=0-9\r\n"),
    );
    assert_not_modified(&resp, &tag, "If-None-Match with Range");

    let resp = conditional_then_get(&server, "GET", "If-None-Match: \"something-else\"\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, content());

    // curl with a stored ETag.
    let resp = curl_response(&[
        "-H",
        &format!("If-None-Match: {tag}"),
        &server.url("/r.txt"),
    ]);
    assert_eq!(resp.status, 304);
    assert!(resp.body.is_empty());
}

#[test]
fn if_modified_since() {
    let root = root("cond-ims");
    let server = Server::start(root.path(), &[]);
    let tag = etag(&server);
    let resp = conditional_then_get(
        &server,
        "GET",
        &format!("If-Modified-Since: {MTIME_TEXT}\r\n"),
    );
    assert_not_modified(&resp, &tag, "IMS equal");
    let resp = conditional_then_get(
        &server,
        "GET",
        &format!("If-Modified-Since: {ONE_SECOND_LATER}\r\n"),
    );
    assert_not_modified(&resp, &tag, "IMS later");
    // Obsolete date formats are accepted (RFC 9110 5.6.7).
    let resp = conditional_then_get(
        &server,
        "GET",
        "If-Modified-Since: Sunday, 06-Nov-94 08:49:37 GMT\r\n",
    );
    assert_not_modified(&resp, &tag, "IMS rfc850");
    let resp = conditional_then_get(
        &server,
        "GET",
        "If-Modified-Since: Sun Nov  6 08:49:37 1994\r\n",
    );
    assert_not_modified(&resp, &tag, "IMS asctime");

    for older in [
        ONE_SECOND_EARLIER,
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "not a date",
    ] {
        let resp = conditional_then_get(&server, "GET", &format!("If-Modified-Since: {older}\r\n"));
        assert_eq!(resp.status, 200, "IMS {older}");
        assert_eq!(resp.body, content());
    }
    let resp = curl_response(&["-z", MTIME_TEXT, &server.url("/r.txt")]);
    assert_eq!(resp.status, 304, "curl -z");
}

#[test]
fn if_match_mismatch_is_412() {
    let root = root("cond-im");
    let server = Server::start(root.path(), &[]);
    let tag = etag(&server);
    for value in [
        "\"nope\"".to_owned(),
        format!("W/{tag}"),
        "\"a\", \"b\"".to_owned(),
    ] {
        let resp = get_with(&server, "GET", &format!("If-Match: {value}\r\n"));
        assert_eq!(resp.status, 412, "If-Match: {value}: {resp:?}");
        assert!(
            !resp.body.windows(10).any(|w| w == &content()[..10]),
            "412 must not carry the file"
        );
    }
    for value in [tag.clone(), "*".to_owned(), format!("\"a\", {tag}")] {
        let resp = get_with(&server, "GET", &format!("If-Match: {value}\r\n"));
        assert_eq!(resp.status, 200, "If-Match: {value}");
        assert_eq!(resp.body, content());
    }
    // If-Match wins over If-Unmodified-Since.
    let resp = get_with(
        &server,
        "GET",
        &format!("If-Match: {tag}\r\nIf-Unmodified-Since: {ONE_SECOND_EARLIER}\r\n"),
    );
    assert_eq!(resp.status, 200);
    // 412 on a keep-alive connection leaves it usable.
    let resp = conditional_then_get(&server, "GET", "If-Match: \"nope\"\r\n");
    assert_eq!(resp.status, 412);
}

#[test]
fn if_unmodified_since_in_the_past_is_412() {
    let root = root("cond-ius");
    let server = Server::start(root.path(), &[]);
    for past in [ONE_SECOND_EARLIER, "Thu, 01 Jan 1970 00:00:00 GMT"] {
        let resp = get_with(&server, "GET", &format!("If-Unmodified-Since: {past}\r\n"));
        assert_eq!(resp.status, 412, "IUS {past}: {resp:?}");
    }
    for ok in [MTIME_TEXT, ONE_SECOND_LATER] {
        let resp = get_with(&server, "GET", &format!("If-Unmodified-Since: {ok}\r\n"));
        assert_eq!(resp.status, 200, "IUS {ok}");
        assert_eq!(resp.body, content());
    }
}

#[test]
fn if_none_match_takes_precedence_over_if_modified_since() {
    let root = root("cond-precedence");
    let server = Server::start(root.path(), &[]);
    let tag = etag(&server);
    // INM does not match, IMS would say "not modified": INM decides -> 200.
    let resp = conditional_then_get(
        &server,
        "GET",
        &format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {MTIME_TEXT}\r\n"),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, content());
    // INM matches, IMS says "modified": INM decides -> 304.
    let resp = conditional_then_get(
        &server,
        "GET",
        &format!("If-None-Match: {tag}\r\nIf-Modified-Since: {ONE_SECOND_EARLIER}\r\n"),
    );
    assert_not_modified(&resp, &tag, "INM match + IMS older");
}

#[test]
fn conditionals_follow_file_changes() {
    let root = root("cond-change");
    // The file changes between requests: no trust in cached paths.
    let server = Server::start(root.path(), &["--path-cache-ttl", "0s"]);
    let old = etag(&server);
    let path = root.write("r.txt", "new content");
    set_mtime(&path, MTIME + 86_400);
    let resp = get_with(&server, "GET", &format!("If-None-Match: {old}\r\n"));
    assert_eq!(resp.status, 200, "old ETag must not match the new file");
    assert_eq!(resp.body, b"new content");
    let resp = get_with(
        &server,
        "GET",
        &format!("If-Modified-Since: {MTIME_TEXT}\r\n"),
    );
    assert_eq!(resp.status, 200);
    let resp = get_with(&server, "GET", &format!("If-Match: {old}\r\n"));
    assert_eq!(resp.status, 412);
}
