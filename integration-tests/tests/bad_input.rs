//! The bad-input catalogue: every malformed, ambiguous or abusive request
//! shape flash is expected to meet, in one table, each with the answer
//! flash gives — the status of every response and whether the connection
//! then closes or stays usable — sent as raw bytes on a fresh loopback
//! connection to the real `flash-server`.
//!
//! Many shapes are also tested in more depth elsewhere (`http_parsing.rs`:
//! limits, traversal under both architectures; `http_details.rs`: Host;
//! `http_ranges_conditionals.rs`: ranges); this file is the complete list
//! in one place, the source of the flash column of the table in
//! docs/SECURITY.md.
//!
//! How an entry is checked ([`check`]): the bytes are written at once, then
//! the expected responses are read in order. A response after which the
//! connection should close must say `Connection: close`, be the last thing
//! sent, and be followed by EOF. A response after which the connection
//! should stay open must not say `close`, and a probe request
//! (`GET /a.txt`) sent afterwards must get `200 aaa`: the server is still
//! in step with the byte stream (a body it should have skipped was skipped).
//! No response may contain a byte of the sentinel file outside the root,
//! and no response body may exceed twice the largest file in the tree.
//!
//! The comparison with nginx: `compare_with_nginx` (ignored by default)
//! starts `nginx` (if installed) on a free loopback port serving the same
//! tree, sends every entry to both servers, and prints the markdown table
//! `| input | flash | nginx |`:
//!
//! ```sh
//! cargo test -p integration-tests --test bad_input -- --ignored --nocapture compare_with_nginx
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::harness::{read_response, seeded_bytes, Server, TempDir, IO_TIMEOUT};

/// The file outside the root whose bytes must never be served.
const SENTINEL: &str = "SENTINEL-outside-the-root-5b1d";
/// Size of `r.bin`, the range target and the largest file in the tree.
const RBIN: usize = 4096;
/// The request sent after an answer that should leave the connection usable.
const PROBE: &[u8] = b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

// ---- the catalogue --------------------------------------------------------

/// What the connection does after the last expected response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// `Connection: close`, nothing more, EOF.
    Close,
    /// Still usable: a probe request is answered `200 aaa`.
    Keep,
}

/// What one response's body must be.
#[derive(Clone, Copy, Debug)]
enum Body {
    /// Anything (error pages); still free of the sentinel and bounded.
    Any,
    /// Exactly these bytes.
    Is(&'static [u8]),
    /// A 206 multipart/byteranges answer no longer than this.
    AtMost(usize),
}

struct Case {
    group: &'static str,
    name: String,
    bytes: Vec<u8>,
    /// The responses, in order.
    answers: Vec<(u16, Body)>,
    /// Bytes sent only after the answers were read (a withheld body).
    later: Vec<u8>,
    then: Then,
}

fn case(
    group: &'static str,
    name: impl Into<String>,
    bytes: impl Into<Vec<u8>>,
    answers: &[(u16, Body)],
    then: Then,
) -> Case {
    Case {
        group,
        name: name.into(),
        bytes: bytes.into(),
        answers: answers.to_vec(),
        later: Vec::new(),
        then,
    }
}

/// One error response, then close.
fn fatal(
    group: &'static str,
    name: impl Into<String>,
    bytes: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    case(group, name, bytes, &[(status, Body::Any)], Then::Close)
}

/// `GET /a.txt` answered `200 aaa` (the oddity is accepted), connection kept.
fn served(group: &'static str, name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Case {
    case(group, name, bytes, &[(200, Body::Is(b"aaa"))], Then::Keep)
}

/// A `GET /a.txt` request with these extra header lines (each ending in CRLF).
fn get_a(extra: impl AsRef<[u8]>) -> Vec<u8> {
    let mut v = b"GET /a.txt HTTP/1.1\r\nHost: t\r\n".to_vec();
    v.extend_from_slice(extra.as_ref());
    v.extend_from_slice(b"\r\n");
    v
}

/// A request for `target` (raw bytes) with `Host: t`.
fn get_raw(target: &[u8]) -> Vec<u8> {
    let mut v = b"GET ".to_vec();
    v.extend_from_slice(target);
    v.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\n\r\n");
    v
}

/// A valid request followed by `garbage`: 200 for the first, then `status` and close.
fn after_valid(name: &str, garbage: &[u8], status: u16) -> Case {
    let mut bytes = get_a("");
    bytes.extend_from_slice(garbage);
    case(
        "pipelining",
        format!("valid GET, then {name}"),
        bytes,
        &[(200, Body::Is(b"aaa")), (status, Body::Any)],
        Then::Close,
    )
}

/// `bytes=` followed by `n` range-specs made by `spec(i)`, comma-separated.
fn many_ranges(n: usize, spec: impl Fn(usize) -> String) -> String {
    let specs: Vec<String> = (0..n).map(spec).collect();
    format!("Range: bytes={}\r\n", specs.join(","))
}

fn get_r(extra: &str) -> Vec<u8> {
    format!("GET /r.bin HTTP/1.1\r\nHost: t\r\n{extra}\r\n").into_bytes()
}

/// Every entry, with flash's expected answer.
fn catalogue() -> Vec<Case> {
    use Body::*;
    use Then::*;
    let mut c = Vec::new();
    let aaa = Is(b"aaa");
    let full = Is(Box::leak(seeded_bytes(RBIN, 7).into_boxed_slice()));

    // -- request smuggling shapes (RFC 9112 6.1, 6.3) --
    let g = "smuggling";
    c.push(fatal(g, "CL + TE: chunked (POST)", "POST /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400));
    c.push(fatal(g, "TE: chunked + CL (GET)", "GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400));
    c.push(served(
        g,
        "duplicate identical CL lines, body sent",
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ));
    c.push(served(
        g,
        "CL list of identical values `5, 5`",
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello",
    ));
    c.push(fatal(
        g,
        "duplicate differing CL lines",
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ));
    c.push(fatal(
        g,
        "CL list of differing values `5, 6`",
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
    ));
    for (v, ok) in [
        ("+5", false),
        ("-5", false),
        ("5 5", false),
        ("0x5", false),
        ("5.0", false),
        ("5,", false),
        (",5", false),
        ("5,,5", false),
        ("", false),
        ("1e1", false),
        ("005", true),
        ("  5", true),
        ("5  ", true),
    ] {
        let name = format!("CL `{v}`");
        let bytes = format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: {v}\r\n\r\nhello");
        c.push(if ok {
            served(g, name, bytes)
        } else {
            fatal(g, name, bytes, 400)
        });
    }
    c.push(served(g, "CL: 0 on GET", get_a("Content-Length: 0\r\n")));
    c.push(fatal(
        g,
        "TE: chunked alone (GET, chunked body)",
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501,
    ));
    c.push(fatal(g, "TE: chunked alone (POST)", "POST /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501));
    c.push(fatal(
        g,
        "TE: `gzip, chunked`",
        get_a("Transfer-Encoding: gzip, chunked\r\n"),
        501,
    ));
    c.push(fatal(
        g,
        "TE: `CHUNKED` (case)",
        get_a("Transfer-Encoding: CHUNKED\r\n"),
        501,
    ));
    c.push(fatal(
        g,
        "TE: ` chunked` (leading OWS)",
        get_a("Transfer-Encoding:   chunked\r\n"),
        501,
    ));
    // RFC 9112 6.3: chunked not the final coding: 400 and close (MUST).
    c.push(fatal(
        g,
        "TE: `chunked, gzip` (chunked not last)",
        get_a("Transfer-Encoding: chunked, gzip\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "TE: `chunked, identity`",
        get_a("Transfer-Encoding: chunked, identity\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "TE: `identity`",
        get_a("Transfer-Encoding: identity\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "TE: `gzip`",
        get_a("Transfer-Encoding: gzip\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "TE: `xchunked`",
        get_a("Transfer-Encoding: xchunked\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "TE: `chunked;x=1` (parameter)",
        get_a("Transfer-Encoding: chunked;x=1\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "TE: `chunked, chunked`",
        get_a("Transfer-Encoding: chunked, chunked\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "TE: empty value",
        get_a("Transfer-Encoding:\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "TE on two lines: `gzip` then `chunked`",
        get_a("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
        501,
    ));
    c.push(fatal(
        g,
        "TE on two lines: `chunked` then `gzip`",
        get_a("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "TE on two lines: `chunked` twice",
        get_a("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
        400,
    ));
    // RFC 9112 6.1: TE in HTTP/1.0 means faulty framing.
    c.push(fatal(
        g,
        "TE: chunked on HTTP/1.0",
        "GET /a.txt HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ));
    c.push(fatal(
        g,
        "space before colon `Host : t`",
        "GET /a.txt HTTP/1.1\r\nHost : t\r\n\r\n",
        400,
    ));
    c.push(fatal(
        g,
        "space before colon `Content-Length : 5`",
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello",
        400,
    ));
    c.push(fatal(
        g,
        "tab before colon `Host\\t: t`",
        "GET /a.txt HTTP/1.1\r\nHost\t: t\r\n\r\n",
        400,
    ));
    c.push(fatal(
        g,
        "obs-fold (SP) continuation line",
        get_a("X-A: one\r\n two\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "obs-fold (HTAB) continuation line",
        get_a("X-A: one\r\n\ttwo\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "first header line folded (` Host: t`)",
        "GET /a.txt HTTP/1.1\r\n Host: t\r\n\r\n",
        400,
    ));
    c.push(served(
        g,
        "bare LF line endings",
        "GET /a.txt HTTP/1.1\nHost: t\n\n",
    ));
    c.push(served(
        g,
        "mixed CRLF and bare LF",
        "GET /a.txt HTTP/1.1\r\nHost: t\n\r\n",
    ));
    c.push(fatal(
        g,
        "bare CR ending the request line",
        "GET /a.txt HTTP/1.1\rHost: t\r\n\r\n",
        400,
    ));
    c.push(fatal(
        g,
        "bare CR inside a header value",
        get_a("X-A: a\rb\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "bare CR ending a header line",
        "GET /a.txt HTTP/1.1\r\nHost: t\rX-A: b\r\n\r\n",
        400,
    ));
    c.push(fatal(g, "NUL in a header name", get_a("X\0A: b\r\n"), 400));
    c.push(fatal(
        g,
        "NUL in a header value",
        get_a("X-A: a\0b\r\n"),
        400,
    ));
    c.push(fatal(g, "NUL in the target", get_raw(b"/a.txt\0"), 400));
    c.push(fatal(
        g,
        "HTAB inside a header name",
        get_a("X\tA: b\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "control char 0x01 in a header name",
        get_a("X\x01A: b\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "control char 0x01 in a header value",
        get_a("X-A: a\x01b\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "DEL in a header value",
        get_a("X-A: a\x7fb\r\n"),
        400,
    ));
    c.push(fatal(
        g,
        "non-ASCII byte in a header name",
        get_a(b"X\xc3\xa9: b\r\n"),
        400,
    ));
    c.push(served(
        g,
        "obs-text (0xFF) in an uninterpreted value",
        get_a(b"User-Agent: \xff\r\n"),
    ));
    c.push(fatal(g, "empty header name `: v`", get_a(": v\r\n"), 400));
    c.push(fatal(
        g,
        "header line without colon",
        get_a("X-A b\r\n"),
        400,
    ));

    // -- sizes (defaults: target 8 KiB -> 414, head 16 KiB and 64 fields -> 431) --
    let g = "sizes";
    c.push(fatal(
        g,
        "request line with a 9000-byte target",
        get_raw(format!("/{}", "t".repeat(8999)).as_bytes()),
        414,
    ));
    c.push(fatal(
        g,
        "20 KiB target, request line unfinished",
        format!("GET /{}", "t".repeat(20_000)),
        414,
    ));
    c.push(fatal(
        g,
        "20 KiB method token",
        format!("{} /a.txt HTTP/1.1\r\nHost: t\r\n\r\n", "G".repeat(20_000)),
        431,
    ));
    c.push(fatal(
        g,
        "one 17 KiB header line",
        get_a(format!("X-Pad: {}\r\n", "p".repeat(17 * 1024))),
        431,
    ));
    c.push(fatal(
        g,
        "17 KiB header line, unfinished",
        format!(
            "GET /a.txt HTTP/1.1\r\nHost: t\r\nX-Pad: {}",
            "p".repeat(17 * 1024)
        ),
        431,
    ));
    c.push(fatal(
        g,
        "20 header lines of 1000 bytes (20 KiB head)",
        get_a(
            (0..20)
                .map(|i| format!("X-{i}: {}\r\n", "v".repeat(1000)))
                .collect::<String>(),
        ),
        431,
    ));
    c.push(fatal(
        g,
        "65 header fields",
        get_a((1..65).map(|i| format!("X-{i}: v\r\n")).collect::<String>()),
        431,
    ));
    c.push(fatal(
        g,
        "3000 header fields",
        get_a(
            (0..3000)
                .map(|i| format!("X-{i}: v\r\n"))
                .collect::<String>(),
        ),
        431,
    ));
    c.push(served(
        g,
        "64 header fields (the limit)",
        get_a((1..64).map(|i| format!("X-{i}: v\r\n")).collect::<String>()),
    ));

    // -- paths: encodings, traversal (a 4xx, never a byte from outside the root) --
    let g = "paths";
    for (target, status) in [
        (&b"/%C0%AE%C0%AE/secret.txt"[..], 400),
        (b"/%c0%ae%c0%ae/%c0%ae%c0%ae/secret.txt", 400),
        (b"/\xc0\xae\xc0\xae/secret.txt", 400),
        (b"/\xff.txt", 400),
        (b"/%ff.txt", 400),
        (b"/%2e%2e/secret.txt", 400),
        (b"/%2E%2e/secret.txt", 400),
        (b"/%2e%2e%2fsecret.txt", 400),
        (b"/..%2fsecret.txt", 400),
        (b"/d/..%2f..%2fsecret.txt", 400),
        (b"/../secret.txt", 400),
        (b"/d/../../secret.txt", 400),
        (b"/..%5csecret.txt", 404),
        (b"/d%5cc.txt", 404),
        (b"/a.txt%00", 400),
        (b"/a.txt%00.html", 400),
        (b"/%252e%252e/secret.txt", 404),
        (b"/%25", 404),
        (b"/%", 400),
        (b"/%zz", 400),
        (b"/%2", 400),
    ] {
        let name = format!("target `{}`", target.escape_ascii());
        c.push(fatal_or_kept(g, name, get_raw(target), status));
    }
    c.push(case(
        g,
        "target `/d%2fc.txt` (%2F is a separator)",
        get_raw(b"/d%2fc.txt"),
        &[(200, Is(b"c inside"))],
        Keep,
    ));
    c.push(case(
        g,
        "target `/d/./x/../c.txt`",
        get_raw(b"/d/./x/../c.txt"),
        &[(200, Is(b"c inside"))],
        Keep,
    ));
    c.push(case(
        g,
        "target `/d/%2e%2e/a.txt`",
        get_raw(b"/d/%2e%2e/a.txt"),
        &[(200, aaa)],
        Keep,
    ));
    c.push(case(
        g,
        "target `//d//c.txt`",
        get_raw(b"//d//c.txt"),
        &[(200, Is(b"c inside"))],
        Keep,
    ));
    c.push(case(
        g,
        "target `/caf%C3%A9` (valid UTF-8, absent)",
        get_raw(b"/caf%C3%A9"),
        &[(404, Any)],
        Keep,
    ));
    c.push(fatal(g, "relative target `a.txt`", get_raw(b"a.txt"), 400));
    c.push(fatal(g, "fragment `/a.txt#x`", get_raw(b"/a.txt#x"), 400));

    // -- absolute-form targets: the authority is not a site (single-site server) --
    let g = "absolute-form";
    c.push(served(
        g,
        "`http://evil.example/a.txt` (other host)",
        get_raw(b"http://evil.example/a.txt"),
    ));
    c.push(case(
        g,
        "`http://evil.example/secret.txt` (not in root)",
        get_raw(b"http://evil.example/secret.txt"),
        &[(404, Any)],
        Keep,
    ));
    c.push(fatal(
        g,
        "`http://evil.example/../secret.txt`",
        get_raw(b"http://evil.example/../secret.txt"),
        400,
    ));
    c.push(fatal(
        g,
        "`http://evil.example/%2e%2e/secret.txt`",
        get_raw(b"http://evil.example/%2e%2e/secret.txt"),
        400,
    ));
    c.push(fatal(
        g,
        "`http://user@evil.example/a.txt` (userinfo)",
        get_raw(b"http://user@evil.example/a.txt"),
        400,
    ));
    c.push(fatal(
        g,
        "`http:///a.txt` (empty host)",
        get_raw(b"http:///a.txt"),
        400,
    ));
    c.push(fatal(
        g,
        "`ftp://evil.example/a.txt`",
        get_raw(b"ftp://evil.example/a.txt"),
        400,
    ));
    c.push(served(
        g,
        "`HTTPS://EVIL.EXAMPLE:443/a.txt`",
        get_raw(b"HTTPS://EVIL.EXAMPLE:443/a.txt"),
    ));
    c.push(served(
        g,
        "absolute-form target with `Host: other.example`",
        "GET http://evil.example/a.txt HTTP/1.1\r\nHost: other.example\r\n\r\n",
    ));
    c.push(case(
        g,
        "`//evil.example/a.txt` (origin-form, not authority)",
        get_raw(b"//evil.example/a.txt"),
        &[(404, Any)],
        Keep,
    ));

    // -- Host (RFC 9112 3.2) --
    let g = "host";
    c.push(fatal(
        g,
        "no Host on HTTP/1.1",
        "GET /a.txt HTTP/1.1\r\n\r\n",
        400,
    ));
    c.push(case(
        g,
        "no Host on HTTP/1.0",
        "GET /a.txt HTTP/1.0\r\n\r\n",
        &[(200, aaa)],
        Close,
    ));
    c.push(fatal(
        g,
        "two identical Host lines",
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nHost: t\r\n\r\n",
        400,
    ));
    c.push(fatal(
        g,
        "two different Host lines",
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nHost: evil\r\n\r\n",
        400,
    ));
    c.push(fatal(
        g,
        "Host list `t, evil`",
        "GET /a.txt HTTP/1.1\r\nHost: t, evil\r\n\r\n",
        400,
    ));
    c.push(served(
        g,
        "empty Host",
        "GET /a.txt HTTP/1.1\r\nHost:\r\n\r\n",
    ));
    for host in [
        "t/path",
        "t/../x",
        "u@t",
        "a b",
        "t\x01",
        "t\x7f",
        "t\\x",
        "t?q",
        "t#f",
        "t:port",
        ":80",
        "::1",
        "[::1",
        "[fe80::1%25eth0]",
        "[1.2.3.4]",
        "caf\u{e9}.example",
    ] {
        let name = format!("Host `{}`", host.escape_debug());
        c.push(fatal(
            g,
            name,
            format!("GET /a.txt HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            400,
        ));
    }
    for host in [
        "[::1]",
        "[::1]:8080",
        "[2001:db8::7]",
        "[::ffff:127.0.0.1]:80",
        "127.0.0.1:99999",
        "t:",
    ] {
        c.push(served(
            g,
            format!("Host `{host}`"),
            format!("GET /a.txt HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        ));
    }
    c.push(served(
        g,
        "Host of 8000 characters",
        format!("GET /a.txt HTTP/1.1\r\nHost: {}\r\n\r\n", "h".repeat(8000)),
    ));

    // -- ranges: never more than the file (r.bin, 4096 bytes) plus part headers --
    let g = "ranges";
    let bound = AtMost(2 * RBIN);
    c.push(case(
        g,
        "1000 adjacent 1-byte ranges `0-0,1-1,...`",
        get_r(&many_ranges(1000, |i| format!("{i}-{i}"))),
        &[(200, full)],
        Keep,
    ));
    c.push(case(
        g,
        "1000 disjoint 1-byte ranges `0-0,2-2,...`",
        get_r(&many_ranges(1000, |i| format!("{0}-{0}", 2 * i))),
        &[(200, full)],
        Keep,
    ));
    c.push(case(
        g,
        "2000 x `0-`",
        get_r(&many_ranges(2000, |_| "0-".into())),
        &[(200, full)],
        Keep,
    ));
    c.push(case(
        g,
        "2000 x `-1`",
        get_r(&many_ranges(2000, |_| "-1".into())),
        &[(200, full)],
        Keep,
    ));
    c.push(case(
        g,
        "2 overlapping `0-99,50-149`",
        get_r("Range: bytes=0-99,50-149\r\n"),
        &[(200, full)],
        Keep,
    ));
    c.push(case(
        g,
        "16 disjoint ranges (the cap)",
        get_r(&many_ranges(16, |i| {
            format!("{0}-{1}", 200 * i, 200 * i + 9)
        })),
        &[(206, bound)],
        Keep,
    ));
    c.push(case(
        g,
        "17 disjoint ranges (over the cap)",
        get_r(&many_ranges(17, |i| {
            format!("{0}-{1}", 200 * i, 200 * i + 9)
        })),
        &[(200, full)],
        Keep,
    ));
    c.push(case(
        g,
        "range beyond the end `5000-`",
        get_r("Range: bytes=5000-\r\n"),
        &[(416, Any)],
        Keep,
    ));
    c.push(case(
        g,
        "u64 overflow `0-99999999999999999999999`",
        get_r("Range: bytes=0-99999999999999999999999\r\n"),
        &[(206, full)],
        Keep,
    ));
    c.push(case(
        g,
        "syntax error `bytes=5-1` (ignored)",
        get_r("Range: bytes=5-1\r\n"),
        &[(200, full)],
        Keep,
    ));

    // -- Content-Length values --
    let g = "content-length";
    for v in [
        "18446744073709551615",
        "18446744073709551616",
        "1000000000000000000000000000000",
        "1048577",
    ] {
        c.push(fatal(
            g,
            format!("CL {v}"),
            get_a(format!("Content-Length: {v}\r\n")),
            413,
        ));
    }
    c.push(fatal(g, "CL -1", get_a("Content-Length: -1\r\n"), 400));
    c.push(fatal(
        g,
        "CL -18446744073709551616",
        get_a("Content-Length: -18446744073709551616\r\n"),
        400,
    ));

    // -- versions and methods --
    let g = "versions-methods";
    c.push(fatal(g, "HTTP/0.9 `GET /`", "GET /\r\n", 400));
    c.push(fatal(
        g,
        "HTTP/0.9 `GET /a.txt` + blank line",
        "GET /a.txt\r\n\r\n",
        400,
    ));
    c.push(fatal(
        g,
        "HTTP/2 prior-knowledge preface",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        505,
    ));
    for v in ["HTTP/1.2", "HTTP/2.0", "HTTP/3.0", "HTTP/9.9"] {
        c.push(fatal(
            g,
            format!("version `{v}`"),
            format!("GET /a.txt {v}\r\nHost: t\r\n\r\n"),
            505,
        ));
    }
    for v in [
        "HTTP/1.10",
        "HTTP/1",
        "HTTP/11",
        "http/1.1",
        "HTTPS/1.1",
        "HTTP/1.1 x",
    ] {
        c.push(fatal(
            g,
            format!("version `{v}`"),
            format!("GET /a.txt {v}\r\nHost: t\r\n\r\n"),
            400,
        ));
    }
    for m in ["get", "Get", "FOO", "PROPFIND", "BREW"] {
        c.push(fatal(
            g,
            format!("method `{m}`"),
            format!("{m} /a.txt HTTP/1.1\r\nHost: t\r\n\r\n"),
            501,
        ));
    }
    c.push(fatal(
        g,
        "`CONNECT evil.example:443` (authority-form)",
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        400,
    ));
    c.push(case(
        g,
        "`CONNECT /a.txt`",
        "CONNECT /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        &[(405, Any)],
        Keep,
    ));
    c.push(case(
        g,
        "`TRACE /a.txt`",
        "TRACE /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        &[(405, Any)],
        Keep,
    ));
    c.push(case(
        g,
        "`POST /a.txt` with a body",
        "POST /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        &[(405, Any)],
        Keep,
    ));
    c.push(case(
        g,
        "`OPTIONS *`",
        "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
        &[(204, Any)],
        Keep,
    ));
    c.push(fatal(
        g,
        "`GET *`",
        "GET * HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
    ));
    c.push(served(
        g,
        "leading empty lines before the request",
        "\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    ));
    c.push(fatal(
        g,
        "two spaces after the method",
        "GET  /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
    ));
    c.push(fatal(
        g,
        "leading space before the method",
        " GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
    ));
    c.push(fatal(
        g,
        "TLS ClientHello on the plain port",
        &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n"[..],
        400,
    ));

    // -- pipelining: the valid request is answered, then the garbage gets 400 and close --
    c.push(after_valid("`HELLO`", b"HELLO\r\n\r\n", 400));
    c.push(after_valid(
        "binary bytes",
        b"\x00\x01\x02\x03\xff\r\n\r\n",
        400,
    ));
    c.push(after_valid(
        "a request without Host",
        b"GET /a.txt HTTP/1.1\r\n\r\n",
        400,
    ));
    c.push(after_valid("CL + TE", b"POST /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400));
    c.push(after_valid(
        "`..` traversal",
        b"GET /../secret.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
    ));
    c.push(after_valid(
        "a 20 KiB header line",
        format!(
            "GET /a.txt HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
            "x".repeat(20_000)
        )
        .as_bytes(),
        431,
    ));
    c.push(after_valid(
        "HTTP/2 preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        505,
    ));

    // -- Expect (RFC 9110 10.1.1) --
    let g = "expect";
    c.push(served(
        g,
        "`Expect: 100-continue`, no body",
        get_a("Expect: 100-continue\r\n"),
    ));
    c.push(served(
        g,
        "`Expect: 100-continue`, CL 5, body sent at once",
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    ));
    c.push(served(
        g,
        "`Expect: 100-continue` on HTTP/1.0 (ignored)",
        "GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n\r\n",
    ));
    c.push(served(
        g,
        "`Expect: something-else`",
        get_a("Expect: something-else\r\n"),
    ));
    // The final status goes out at once, without a 100 (RFC 9110 10.1.1
    // allows either), and the announced body is still read and skipped
    // when it comes: the connection stays in step.
    let mut withheld = served(
        g,
        "`Expect: 100-continue`, CL 5, body sent after the answer",
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    withheld.later = b"hello".to_vec();
    c.push(withheld);
    c
}

/// An error `status`: 400 closes, any other 4xx here (404) keeps the connection.
fn fatal_or_kept(group: &'static str, name: String, bytes: Vec<u8>, status: u16) -> Case {
    if status == 404 {
        case(group, name, bytes, &[(404, Body::Any)], Then::Keep)
    } else {
        fatal(group, name, bytes, status)
    }
}

// ---- the tree ------------------------------------------------------------

/// `outer/secret.txt` (the sentinel) and the root `outer/www` with `a.txt`
/// ("aaa"), `index.html`, `d/c.txt` and `r.bin` (4096 bytes).
struct Tree {
    outer: TempDir,
}

impl Tree {
    fn new(tag: &str) -> Tree {
        let outer = TempDir::new(tag);
        outer.write("secret.txt", SENTINEL);
        outer.write("www/a.txt", "aaa");
        outer.write("www/index.html", "root index");
        outer.write("www/d/c.txt", "c inside");
        outer.write("www/r.bin", seeded_bytes(RBIN, 7));
        Tree { outer }
    }

    fn root(&self) -> std::path::PathBuf {
        self.outer.path().join("www")
    }
}

// ---- reading answers ---------------------------------------------------------

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---- checking flash ------------------------------------------------------

/// Sends one entry to `addr` and checks the answers; `Err` says what differed.
fn check(addr: SocketAddr, case: &Case) -> Result<(), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    // The server may stop reading at an error; a failed write is then fine.
    let _ = (&stream).write_all(&case.bytes);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let n = case.answers.len();
    for (i, &(status, body)) in case.answers.iter().enumerate() {
        let a =
            read_response(&mut reader, false).map_err(|e| format!("response {}: {e}", i + 1))?;
        if a.status != status {
            return Err(format!(
                "response {}: status {} (expected {status})",
                i + 1,
                a.status
            ));
        }
        if contains(&a.body, SENTINEL.as_bytes()) {
            return Err("the sentinel from outside the root was served".into());
        }
        if a.body.len() > 2 * RBIN {
            return Err(format!(
                "a body of {} bytes (more than twice the largest file)",
                a.body.len()
            ));
        }
        match body {
            Body::Any => {}
            Body::Is(want) if a.body == want => {}
            Body::Is(want) => {
                return Err(format!(
                    "response {}: body of {} bytes, expected {}",
                    i + 1,
                    a.body.len(),
                    want.len()
                ))
            }
            Body::AtMost(max) if a.body.len() <= max => {}
            Body::AtMost(max) => return Err(format!("body of {} bytes, over {max}", a.body.len())),
        }
        let closes = a
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let last = i + 1 == n;
        match (last, case.then, closes) {
            (true, Then::Close, false) => {
                return Err(format!(
                    "the {} before the close does not say `Connection: close`",
                    a.status
                ))
            }
            (false, _, true) | (true, Then::Keep, true) => {
                return Err(format!(
                    "response {} ({}) says `Connection: close`",
                    i + 1,
                    a.status
                ))
            }
            _ => {}
        }
    }
    if !case.later.is_empty() {
        (&stream)
            .write_all(&case.later)
            .map_err(|e| format!("sending the withheld bytes: {e}"))?;
    }
    if case.then == Then::Keep {
        (&stream)
            .write_all(PROBE)
            .map_err(|e| format!("sending the probe: {e}"))?;
        let a = read_response(&mut reader, false)
            .map_err(|e| format!("the probe after the answer: {e}"))?;
        if (a.status, a.body.as_slice()) != (200, b"aaa") {
            return Err(format!(
                "the probe after the answer got {} (out of step?)",
                a.status
            ));
        }
    }
    if !reader.buffer().is_empty() {
        return Err(format!(
            "{} unexpected bytes after the last response",
            reader.buffer().len()
        ));
    }
    let mut byte = [0u8; 1];
    match reader.get_mut().read(&mut byte) {
        Ok(0) => Ok(()),
        Ok(_) => Err("more bytes after the last response".into()),
        // A reset after the close (unread request bytes) is a close too.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!("no EOF after the last response: {e}")),
    }
}

fn check_group(group: &str) {
    let tree = Tree::new(&format!("bad-{group}"));
    let server = Server::start(&tree.root(), &[]);
    let cases: Vec<Case> = catalogue()
        .into_iter()
        .filter(|c| c.group == group)
        .collect();
    assert!(!cases.is_empty(), "no entries in group {group}");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            check(server.addr, c)
                .err()
                .map(|e| format!("{}: {e}", c.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{group}: {} of {} entries differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn smuggling_shapes() {
    check_group("smuggling");
}

#[test]
fn sizes() {
    check_group("sizes");
}

#[test]
fn paths() {
    check_group("paths");
}

#[test]
fn absolute_form() {
    check_group("absolute-form");
}

#[test]
fn host() {
    check_group("host");
}

#[test]
fn ranges() {
    check_group("ranges");
}

#[test]
fn content_length() {
    check_group("content-length");
}

#[test]
fn versions_and_methods() {
    check_group("versions-methods");
}

#[test]
fn pipelining() {
    check_group("pipelining");
}

#[test]
fn expect() {
    check_group("expect");
}

#[test]
fn every_entry_belongs_to_a_checked_group() {
    let groups = [
        "smuggling",
        "sizes",
        "paths",
        "absolute-form",
        "host",
        "ranges",
        "content-length",
        "versions-methods",
        "pipelining",
        "expect",
    ];
    for c in catalogue() {
        assert!(
            groups.contains(&c.group),
            "{}: group {} is not checked",
            c.name,
            c.group
        );
    }
}

// ---- comparing with nginx ---------------------------------------------------

/// What a server did with an entry, for the table: the statuses in order,
/// then `close` or `keep` (a probe request was answered) or `open` (the
/// connection stayed open but the probe was not answered: the server is
/// waiting for more of the bad request, e.g. a body).
fn observe(addr: SocketAddr, bytes: &[u8], later: &[u8]) -> String {
    let quiet = Duration::from_millis(700);
    let Ok(stream) = TcpStream::connect(addr) else {
        return "connect failed".into();
    };
    stream.set_read_timeout(Some(quiet)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = (&stream).write_all(bytes);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut seen: Vec<String> = Vec::new();
    let mut later = Some(later).filter(|l| !l.is_empty());
    let end = loop {
        match reader.fill_buf() {
            Ok([]) => break "close",
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                match later.take() {
                    Some(bytes) => {
                        let _ = (&stream).write_all(bytes);
                        continue;
                    }
                    None => break "open",
                }
            }
            Err(_) => break "close (reset)",
        }
        match read_response(&mut reader, false) {
            Ok(a) if a.status == 206 => seen.push(format!("206 ({} B)", a.body.len())),
            Ok(a) => seen.push(a.status.to_string()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
                seen.push("no status line (HTTP/0.9 reply?)".into());
                break "close";
            }
            Err(_) => break "close (mid-response)",
        }
    };
    let end = if end == "open" {
        let _ = (&stream).write_all(PROBE);
        match read_response(&mut reader, false) {
            Ok(a) if a.status == 200 => "keep",
            Ok(_) => "keep (probe not 200)",
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                "open (probe unanswered: waits for more)"
            }
            Err(_) => "close",
        }
    } else {
        end
    };
    if seen.is_empty() {
        format!("no response, {end}")
    } else {
        format!("{} {end}", seen.join(", "))
    }
}

/// A running nginx serving `root` on a free loopback port.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(root: &Path, scratch: &Path) -> Option<Nginx> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let conf = scratch.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {s}/nginx.pid;\n\
                 error_log {s}/error.log info;\nevents {{}}\nhttp {{\n access_log off;\n\
                 client_body_temp_path {s}/body;\n server {{\n  listen 127.0.0.1:{port};\n\
                 root {r};\n }}\n}}\n",
                s = scratch.display(),
                r = root.display()
            ),
        )
        .ok()?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(scratch)
            .arg("-e")
            .arg(scratch.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Nginx { child, addr })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "manual: needs nginx; prints the flash/nginx table"]
fn compare_with_nginx() {
    let tree = Tree::new("bad-compare");
    let scratch = TempDir::new("bad-compare-nginx");
    let server = Server::start(&tree.root(), &[]);
    let nginx =
        Nginx::start(&tree.root(), scratch.path()).expect("nginx must be installed and start");
    let version = Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string());
    println!("flash vs {}\n", version.unwrap_or_default());
    println!("| group | input | flash | nginx |\n|---|---|---|---|");
    for c in catalogue() {
        let flash = observe(server.addr, &c.bytes, &c.later);
        let theirs = observe(nginx.addr, &c.bytes, &c.later);
        let mark = if flash == theirs { "" } else { " ≠" };
        println!(
            "| {} | {} | {flash} | {theirs}{mark} |",
            c.group,
            c.name.replace('|', "\\|")
        );
    }
}
