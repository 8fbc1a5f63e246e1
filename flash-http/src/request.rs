//! Request-head parsing on top of `httparse`, plus the HTTP/1.1 rules that
//! `httparse` leaves to its caller (limits, persistence, Host, targets,
//! framing headers, methods, conditional headers).
//!
//! The parser is a pure function of the bytes seen so far, and every check is
//! arranged so that feeding a longer prefix never changes a verdict already
//! given: a caller may call it after every read.

use std::borrow::Cow;
use std::fmt;
use std::mem::MaybeUninit;
use std::time::UNIX_EPOCH;

use crate::path::{is_unreserved_or_sub_delim, normalize_path};
use crate::response::Status;

/// Size of the stack array of `httparse` header slots. `Limits::max_headers`
/// above this is capped to it: the array lives on the stack so that parsing
/// never allocates, and 128 fields is far beyond what browsers send.
pub const MAX_HEADERS: usize = 128;

/// Limits applied while parsing a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, including the final CRLF CRLF (default 16 KiB) -> 431.
    pub max_head_bytes: usize,
    /// Number of header fields (default 64) -> 431. Capped at [`MAX_HEADERS`].
    pub max_headers: usize,
    /// Length of the request target (default 8 KiB) -> 414.
    pub max_target_bytes: usize,
    /// Largest Content-Length body the server reads and discards (default 1 MiB) -> 413.
    pub max_discard_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_target_bytes: 8 * 1024,
            max_discard_body: 1 << 20,
        }
    }
}

/// The request method, reduced to what a static file server distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`: like GET without a body; never gets a partial response.
    Head,
    /// `OPTIONS`: answered with the allowed methods.
    Options,
    /// POST, PUT, DELETE, PATCH, CONNECT, TRACE: known but not allowed on files (405).
    NotAllowed,
}

/// The protocol version of the request (only these two are accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: connections close unless the client asks for keep-alive.
    Http10,
    /// HTTP/1.1: connections persist unless either side says `close`.
    Http11,
}

/// A parsed request head. Borrows the caller's buffer; allocates only when the
/// path needed decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'buf> {
    /// The method (unknown tokens are rejected with 501 before this exists).
    pub method: Method,
    /// The protocol version of the request line.
    pub version: Version,
    /// Normalised, relative, percent-decoded path: no leading '/', no "", "." or
    /// ".." segments. "" is the root. The query string is not part of it (see
    /// [`Request::query`]).
    pub path: Cow<'buf, str>,
    /// The raw query of an origin-form or absolute-form target: the bytes
    /// after the first '?', without the '?', exactly as received (not
    /// decoded). `None` when the target has no '?' (and for `*`), `Some("")`
    /// for a bare '?'.
    ///
    /// It can be echoed into a `Location` header as received (e.g. the
    /// trailing-slash redirect `/dir?x=1` -> `/dir/?x=1`, after
    /// [`percent_encode_path`](crate::percent_encode_path) on the path):
    /// httparse only accepts target bytes 0x21..=0x7E and UTF-8 sequences
    /// of bytes >= 0x80, so it never contains CR, LF, NUL, SP, HTAB, DEL or
    /// any other control character, and it never contains '#' (a fragment
    /// is a 400). It may contain non-ASCII UTF-8 and characters such as '"'
    /// or '<' that RFC 3986 would escape, so it must be HTML-escaped before
    /// going into markup.
    ///
    /// ```
    /// use flash_http::{parse_request, percent_encode_path, Limits, Parse};
    ///
    /// let buf = b"GET /my%20dir?x=1 HTTP/1.1\r\nHost: h\r\n\r\n";
    /// let Ok(Parse::Complete(req)) = parse_request(buf, &Limits::default()) else {
    ///     panic!("complete request expected")
    /// };
    /// assert_eq!((&*req.path, req.query), ("my dir", Some("x=1")));
    /// let mut location = format!("/{}/", percent_encode_path(&req.path));
    /// if let Some(query) = req.query {
    ///     location.push('?');
    ///     location.push_str(query);
    /// }
    /// assert_eq!(location, "/my%20dir/?x=1");
    /// ```
    pub query: Option<&'buf str>,
    /// The target's path ended in '/' (true for the root).
    pub ends_with_slash: bool,
    /// The target was `*` (only valid with OPTIONS).
    pub asterisk: bool,
    /// Whether the connection persists after this response (1.0/1.1 rules, Connection header).
    pub keep_alive: bool,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
    /// Content-Length of a body that follows the head and must be discarded.
    pub body_len: u64,
    /// Raw, trimmed `If-Match` value.
    pub if_match: Option<&'buf str>,
    /// Raw, trimmed `If-None-Match` value.
    pub if_none_match: Option<&'buf str>,
    /// Unix seconds; absent when the header is missing or not a valid HTTP date.
    pub if_modified_since: Option<u64>,
    /// Unix seconds; absent when the header is missing or not a valid HTTP date.
    pub if_unmodified_since: Option<u64>,
    /// Raw, trimmed `If-Range` value (an entity-tag or a date).
    pub if_range: Option<&'buf str>,
    /// Raw, trimmed `Range` value, e.g. `bytes=0-99`.
    pub range: Option<&'buf str>,
}

impl Default for Request<'_> {
    /// `GET / HTTP/1.1`, keep-alive, no body, no conditionals, no range: a
    /// base for requests built field by field (`..Request::default()`).
    fn default() -> Self {
        Request {
            method: Method::Get,
            version: Version::Http11,
            path: Cow::Borrowed(""),
            query: None,
            ends_with_slash: true,
            asterisk: false,
            keep_alive: true,
            head_len: 0,
            body_len: 0,
            if_match: None,
            if_none_match: None,
            if_modified_since: None,
            if_unmodified_since: None,
            if_range: None,
            range: None,
        }
    }
}

/// Why a request head was rejected. The connection is closed after the error response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// 400 with a short reason for logs.
    BadRequest(&'static str),
    /// 414
    UriTooLong,
    /// 431 (head too large or too many headers)
    HeaderFieldsTooLarge,
    /// 413 (body to discard is over the limit)
    PayloadTooLarge,
    /// 501 (unknown method token, a chunked request body)
    NotImplemented,
    /// 505
    VersionNotSupported,
}

impl RequestError {
    /// The status code of the error response to send.
    pub fn status(self) -> Status {
        match self {
            RequestError::BadRequest(_) => Status::BAD_REQUEST,
            RequestError::UriTooLong => Status::URI_TOO_LONG,
            RequestError::HeaderFieldsTooLarge => Status::HEADER_FIELDS_TOO_LARGE,
            RequestError::PayloadTooLarge => Status::PAYLOAD_TOO_LARGE,
            RequestError::NotImplemented => Status::NOT_IMPLEMENTED,
            RequestError::VersionNotSupported => Status::VERSION_NOT_SUPPORTED,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status();
        match self {
            RequestError::BadRequest(why) => write!(f, "{} {}: {why}", status.0, status.reason()),
            _ => write!(f, "{} {}", status.0, status.reason()),
        }
    }
}

impl std::error::Error for RequestError {}

/// Outcome of feeding bytes to the parser.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse<'buf> {
    /// The head is not complete yet (and is still within the limits).
    Partial,
    /// A complete, valid head; `head_len` bytes of the buffer were consumed.
    Complete(Request<'buf>),
}

/// Parse a request head from the start of `buf`. Call again with more bytes
/// after `Parse::Partial`. Never panics on any input.
///
/// The verdict depends only on the bytes given, and a longer buffer never
/// contradicts an earlier non-`Partial` verdict: bytes beyond the head (a
/// body, pipelined requests) are not looked at.
pub fn parse_request<'buf>(buf: &'buf [u8], limits: &Limits) -> Result<Parse<'buf>, RequestError> {
    // Only the first `max_head_bytes` are ever parsed, so a head that does not
    // end within them is 431 whatever follows (and errors found later in an
    // over-long head cannot contradict the 431 given to a shorter prefix).
    let over = buf.len() > limits.max_head_bytes;
    let view = buf.get(..limits.max_head_bytes).unwrap_or(buf);

    // 414 must be reported while the request line is still incomplete, which
    // httparse cannot do; this scan mirrors its tokenisation of the line.
    let line = scan_request_line(view);
    if line.target_len > limits.max_target_bytes {
        return Err(RequestError::UriTooLong);
    }

    let mut slots = [MaybeUninit::<httparse::Header<'buf>>::uninit(); MAX_HEADERS];
    let n_slots = limits.max_headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut []);
    let status = match slots.get_mut(..n_slots) {
        Some(slots) => req.parse_with_uninit_headers(view, slots),
        None => return Err(RequestError::HeaderFieldsTooLarge),
    };
    match status {
        Ok(httparse::Status::Partial) if over => Err(RequestError::HeaderFieldsTooLarge),
        Ok(httparse::Status::Partial) => Ok(Parse::Partial),
        Ok(httparse::Status::Complete(head_len)) => {
            let method = req.method.ok_or(RequestError::BadRequest("no method"))?;
            let target = req.path.ok_or(RequestError::BadRequest("no target"))?;
            let minor = req.version.ok_or(RequestError::BadRequest("no version"))?;
            build(method, target, minor, req.headers, head_len, limits).map(Parse::Complete)
        }
        Err(httparse::Error::TooManyHeaders) => Err(RequestError::HeaderFieldsTooLarge),
        Err(httparse::Error::Version) => Err(classify_version(view, &line)),
        Err(httparse::Error::HeaderName) => Err(RequestError::BadRequest("invalid header name")),
        Err(httparse::Error::HeaderValue) => Err(RequestError::BadRequest("invalid header value")),
        Err(httparse::Error::NewLine) => Err(RequestError::BadRequest("invalid line ending")),
        Err(httparse::Error::Token) => Err(RequestError::BadRequest("invalid request line")),
        Err(_) => Err(RequestError::BadRequest("malformed request head")),
    }
}

/// What [`scan_request_line`] learned about the request line so far.
#[derive(Default)]
struct LineScan {
    /// Length of the (possibly still incomplete) request target.
    target_len: usize,
    /// Offset of the version field, once the target's closing space was seen.
    version_at: Option<usize>,
}

/// Walks the request line exactly as httparse does (leading empty lines, a
/// token, one SP, URI bytes) but reports the target length even when the line
/// is incomplete. On anything httparse would reject it stops early, so it
/// never reports 414 for a line httparse rejects at an earlier byte.
fn scan_request_line(buf: &[u8]) -> LineScan {
    let mut i = 0;
    loop {
        match buf.get(i) {
            Some(b'\r') if buf.get(i + 1) == Some(&b'\n') => i += 2,
            Some(b'\n') => i += 1,
            Some(b'\r') | None => return LineScan::default(),
            Some(_) => break,
        }
    }
    let method_start = i;
    while buf.get(i).is_some_and(|&b| is_tchar(b)) {
        i += 1;
    }
    if i == method_start || buf.get(i) != Some(&b' ') {
        return LineScan::default();
    }
    i += 1;
    let target_start = i;
    while buf.get(i).is_some_and(|&b| is_uri_byte(b)) {
        i += 1;
    }
    LineScan {
        target_len: i - target_start,
        version_at: (buf.get(i) == Some(&b' ')).then_some(i + 1),
    }
}

/// RFC 9110 tchar (httparse's method token set).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// httparse's URI byte set.
fn is_uri_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// httparse reports any bad version as `Error::Version` at the first byte
/// that differs from "HTTP/1.0" / "HTTP/1.1". A well-formed `HTTP/d.d` that
/// is not 1.0/1.1 deserves 505; the decision uses only the bytes up to the one
/// httparse stopped at, so shorter prefixes agree with longer ones.
fn classify_version(view: &[u8], line: &LineScan) -> RequestError {
    let bad = RequestError::BadRequest("invalid HTTP version");
    let Some(v) = line.version_at.and_then(|at| view.get(at..)) else {
        return bad;
    };
    if !v.starts_with(b"HTTP/") {
        return bad;
    }
    match (v.get(5), v.get(6), v.get(7)) {
        (Some(b'1'), Some(b'.'), Some(d)) if d.is_ascii_digit() => {
            RequestError::VersionNotSupported
        }
        (Some(b'1'), _, _) => bad,
        (Some(d), _, _) if d.is_ascii_digit() => RequestError::VersionNotSupported,
        _ => bad,
    }
}

fn bad(why: &'static str) -> RequestError {
    RequestError::BadRequest(why)
}

/// Header values we interpret must be text; trims optional whitespace.
fn value_str(v: &[u8]) -> Result<&str, RequestError> {
    std::str::from_utf8(v)
        .map(|s| s.trim_matches([' ', '\t']))
        .map_err(|_| bad("header value is not UTF-8"))
}

/// Stores a header that may appear only once. Repeated list headers could be
/// merged, but only by allocating; clients do not split them in practice, so
/// a repeat is rejected rather than silently half-honoured.
fn set_once<'buf>(
    slot: &mut Option<&'buf str>,
    value: &'buf [u8],
    why: &'static str,
) -> Result<(), RequestError> {
    if slot.is_some() {
        return Err(bad(why));
    }
    *slot = Some(value_str(value)?);
    Ok(())
}

/// An HTTP date as unix seconds; invalid dates are ignored (RFC 9110 13.1.3).
fn http_date(v: &str) -> Option<u64> {
    httpdate::parse_http_date(v)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Digits only; values too large for u64 saturate (they are over any limit).
fn parse_content_length(v: &str) -> Result<u64, RequestError> {
    let mut value: Option<u64> = None;
    for item in v.split(',') {
        let item = item.trim_matches([' ', '\t']);
        if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("invalid Content-Length"));
        }
        let n = item.bytes().fold(0u64, |acc, b| {
            acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
        });
        if value.is_some_and(|prev| prev != n) {
            return Err(bad("conflicting Content-Length values"));
        }
        value = Some(n);
    }
    value.ok_or(bad("invalid Content-Length"))
}

fn parse_method(m: &str) -> Result<Method, RequestError> {
    match m {
        "GET" => Ok(Method::Get),
        "HEAD" => Ok(Method::Head),
        "OPTIONS" => Ok(Method::Options),
        "POST" | "PUT" | "DELETE" | "PATCH" | "CONNECT" | "TRACE" => Ok(Method::NotAllowed),
        _ => Err(RequestError::NotImplemented),
    }
}

/// What [`parse_target`] extracts from a request target.
struct Target<'buf> {
    path: Cow<'buf, str>,
    query: Option<&'buf str>,
    ends_with_slash: bool,
    asterisk: bool,
}

/// Splits the request target into its normalised path and raw query:
/// origin-form, absolute-form (http/https) or `*` (OPTIONS only).
fn parse_target(target: &str, method: Method) -> Result<Target<'_>, RequestError> {
    if target.contains('#') {
        return Err(bad("fragment in request target"));
    }
    if target == "*" {
        return if method == Method::Options {
            Ok(Target {
                path: Cow::Borrowed(""),
                query: None,
                ends_with_slash: false,
                asterisk: true,
            })
        } else {
            Err(bad("'*' target is only valid with OPTIONS"))
        };
    }
    let path_and_query = if target.starts_with('/') {
        target
    } else {
        let rest = strip_prefix_ignore_case(target, "http://")
            .or_else(|| strip_prefix_ignore_case(target, "https://"))
            .ok_or(bad("unsupported request target form"))?;
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        // Also rejects an empty host and userinfo ('@'), which RFC 9110
        // 4.2.1 and 4.2.4 forbid in http(s) URIs.
        if !valid_authority(authority.as_bytes()) {
            return Err(bad("invalid authority in absolute-form target"));
        }
        // "", "/...", or "?..."
        tail
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    // "http://host" and "http://host?q" have an empty path: the root.
    let path = if path.is_empty() { "/" } else { path };
    let (path, ends_with_slash) = normalize_path(path)?;
    Ok(Target {
        path,
        query,
        ends_with_slash,
        asterisk: false,
    })
}

/// RFC 3986 3.2.2 `host [ ":" port ]`, as a Host field value or the
/// authority of an absolute-form target must be (RFC 9112 3.2): a reg-name
/// (unreserved, pct-encoded and sub-delims characters; IPv4 addresses are a
/// special case of it), or an IP-literal in brackets holding an IPv6 address
/// or an IPvFuture, then an optional port of digits (which may be empty).
/// The host itself must not be empty: an empty Host field is allowed by the
/// caller as a whole, but ":80" names no host at all (RFC 9110 4.2.1).
///
/// Everything else (whitespace, '/', '?', '#', '@', '\\', controls,
/// non-ASCII, unbalanced brackets, a zone ID) is invalid. Never allocates.
fn valid_authority(a: &[u8]) -> bool {
    let (host_ok, rest) = if let Some(inner) = a.strip_prefix(b"[") {
        let Some(close) = inner.iter().position(|&b| b == b']') else {
            return false;
        };
        let (literal, rest) = inner.split_at(close);
        (valid_ip_literal(literal), rest.get(1..).unwrap_or_default())
    } else {
        let end = a.iter().position(|&b| b == b':').unwrap_or(a.len());
        let (host, rest) = a.split_at(end);
        (!host.is_empty() && valid_reg_name(host), rest)
    };
    let port_ok = match rest.split_first() {
        None => true,
        Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host_ok && port_ok
}

/// RFC 3986 reg-name: `*( unreserved / pct-encoded / sub-delims )`.
fn valid_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = host.get(i) {
        if b == b'%' {
            let hex = |j: usize| host.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else if is_unreserved_or_sub_delim(b) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// The inside of an RFC 3986 IP-literal: an IPv6 address (checked by the
/// standard library's parser, which does not allocate; zone IDs are not
/// accepted, as in RFC 3986) or `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved
/// / sub-delims / ":" )`.
fn valid_ip_literal(literal: &[u8]) -> bool {
    if let Some(future) = literal
        .strip_prefix(b"v")
        .or_else(|| literal.strip_prefix(b"V"))
    {
        let dot = future.iter().position(|&b| b == b'.').unwrap_or(0);
        let (version, tail) = future.split_at(dot);
        let tail = tail.get(1..).unwrap_or_default();
        return dot > 0
            && version.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail
                .iter()
                .all(|&b| b == b':' || is_unreserved_or_sub_delim(b));
    }
    std::str::from_utf8(literal).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// The transfer codings of a request's `Transfer-Encoding` field lines, as
/// one list (RFC 9110 5.3), reduced to what framing needs.
#[derive(Default)]
struct TransferCodings {
    /// Some `Transfer-Encoding` line was present (even an empty one).
    present: bool,
    /// The last coding is `chunked` and no coding, `chunked` included,
    /// came after an earlier `chunked` (RFC 9112 7.1: chunked once, last).
    chunked_last: bool,
    /// A coding followed `chunked`: the framing is invalid whatever comes next.
    broken: bool,
}

impl TransferCodings {
    fn add(&mut self, value: &str) {
        self.present = true;
        for coding in value.split(',').map(|c| c.trim_matches([' ', '\t'])) {
            if coding.is_empty() {
                continue;
            }
            if self.chunked_last {
                self.broken = true;
            }
            self.chunked_last = !self.broken && coding.eq_ignore_ascii_case("chunked");
        }
    }
}

/// Applies the HTTP/1.1 rules to a head httparse found complete.
fn build<'buf>(
    method: &'buf str,
    target: &'buf str,
    minor: u8,
    headers: &[httparse::Header<'buf>],
    head_len: usize,
    limits: &Limits,
) -> Result<Request<'buf>, RequestError> {
    if target.len() > limits.max_target_bytes {
        return Err(RequestError::UriTooLong);
    }
    let method = parse_method(method)?;
    let version = match minor {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(RequestError::VersionNotSupported),
    };
    let Target {
        path,
        query,
        ends_with_slash,
        asterisk,
    } = parse_target(target, method)?;

    let mut hosts = 0usize;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = TransferCodings::default();
    let mut if_match = None;
    let mut if_none_match = None;
    let mut if_modified_since = None;
    let mut if_unmodified_since = None;
    let mut if_range = None;
    let mut range = None;

    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            // RFC 9112 3.2: an invalid Host value is a 400. An empty one is
            // allowed (the target may have no authority, as with `*`).
            let host = value_str(h.value)?;
            if !host.is_empty() && !valid_authority(host.as_bytes()) {
                return Err(bad("invalid Host header"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value_str(h.value)?.split(',') {
                let token = token.trim_matches([' ', '\t']);
                if token.eq_ignore_ascii_case("close") {
                    conn_close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(value_str(h.value)?)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(bad("conflicting Content-Length fields"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding.add(value_str(h.value)?);
        } else if name.eq_ignore_ascii_case("if-match") {
            set_once(&mut if_match, h.value, "repeated If-Match")?;
        } else if name.eq_ignore_ascii_case("if-none-match") {
            set_once(&mut if_none_match, h.value, "repeated If-None-Match")?;
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            set_once(
                &mut if_modified_since,
                h.value,
                "repeated If-Modified-Since",
            )?;
        } else if name.eq_ignore_ascii_case("if-unmodified-since") {
            set_once(
                &mut if_unmodified_since,
                h.value,
                "repeated If-Unmodified-Since",
            )?;
        } else if name.eq_ignore_ascii_case("if-range") {
            set_once(&mut if_range, h.value, "repeated If-Range")?;
        } else if name.eq_ignore_ascii_case("range") {
            set_once(&mut range, h.value, "repeated Range")?;
        }
    }

    if version == Version::Http11 && hosts == 0 {
        return Err(bad("missing Host header"));
    }
    if hosts > 1 {
        return Err(bad("more than one Host header"));
    }
    if transfer_encoding.present {
        // Request smuggling defence (RFC 9112 6.1): both framings at once is an error.
        if content_length.is_some() {
            return Err(bad("both Transfer-Encoding and Content-Length"));
        }
        // RFC 9112 6.1: in HTTP/1.0 the framing is faulty.
        if version == Version::Http10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        // RFC 9112 6.3: unless chunked is the final coding (and applied
        // once, 7.1) the body's length cannot be known: 400, not 501.
        if !transfer_encoding.chunked_last {
            return Err(bad("Transfer-Encoding does not end in chunked"));
        }
        // A chunked body: readable framing, but not implemented here.
        return Err(RequestError::NotImplemented);
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_discard_body {
        return Err(RequestError::PayloadTooLarge);
    }
    let keep_alive = match version {
        Version::Http11 => !conn_close,
        Version::Http10 => conn_keep_alive && !conn_close,
    };

    Ok(Request {
        method,
        version,
        path,
        query,
        ends_with_slash,
        asterisk,
        keep_alive,
        head_len,
        body_len,
        if_match,
        if_none_match,
        if_modified_since: if_modified_since.and_then(http_date),
        if_unmodified_since: if_unmodified_since.and_then(http_date),
        if_range,
        range,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits::default()
    }

    fn parse(buf: &[u8]) -> Result<Parse<'_>, RequestError> {
        parse_request(buf, &lim())
    }

    fn complete(buf: &[u8]) -> Request<'_> {
        match parse(buf) {
            Ok(Parse::Complete(r)) => r,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn err(buf: &[u8]) -> RequestError {
        match parse(buf) {
            Err(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn is_400(e: RequestError) -> bool {
        matches!(e, RequestError::BadRequest(_))
    }

    #[test]
    fn simple_get() {
        let buf = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n";
        let r = complete(buf);
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.version, Version::Http11);
        assert_eq!(r.path, "index.html");
        assert!(matches!(r.path, Cow::Borrowed(_)));
        assert!(!r.ends_with_slash);
        assert!(!r.asterisk);
        assert!(r.keep_alive);
        assert_eq!(r.head_len, buf.len());
        assert_eq!(r.body_len, 0);
        assert_eq!(r.if_match, None);
        assert_eq!(r.range, None);
    }

    #[test]
    fn partial_heads() {
        let full = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n]), Ok(Parse::Partial), "prefix {n}");
        }
        assert!(matches!(parse(full), Ok(Parse::Complete(_))));
    }

    #[test]
    fn pipelined_requests() {
        let buf = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c";
        let a = complete(buf);
        assert_eq!(a.path, "a");
        let rest = &buf[a.head_len..];
        let b = complete(rest);
        assert_eq!(b.path, "b");
        assert_eq!(parse(&rest[b.head_len..]), Ok(Parse::Partial));
    }

    #[test]
    fn head_len_includes_body_offset() {
        let buf = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET";
        let r = complete(buf);
        assert_eq!(r.method, Method::NotAllowed);
        assert_eq!(r.body_len, 3);
        assert_eq!(&buf[r.head_len..], b"abcGET");
    }

    #[test]
    fn head_too_large() {
        let limits = Limits {
            max_head_bytes: 40,
            ..lim()
        };
        let mut buf = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        assert_eq!(parse_request(&buf, &limits), Ok(Parse::Partial));
        buf.extend_from_slice(&[b'a'; 20]);
        assert_eq!(
            parse_request(&buf, &limits),
            Err(RequestError::HeaderFieldsTooLarge)
        );
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_request(&buf, &limits),
            Err(RequestError::HeaderFieldsTooLarge)
        );
        // Exactly at the limit is fine.
        let exact = b"GET / HTTP/1.1\r\nHost: xxxxxxxxxxxxxx\r\n\r\n";
        let limits = Limits {
            max_head_bytes: exact.len(),
            ..lim()
        };
        assert!(matches!(
            parse_request(exact, &limits),
            Ok(Parse::Complete(_))
        ));
        let limits = Limits {
            max_head_bytes: exact.len() - 1,
            ..lim()
        };
        assert_eq!(
            parse_request(exact, &limits),
            Err(RequestError::HeaderFieldsTooLarge)
        );
    }

    #[test]
    fn too_many_headers() {
        let limits = Limits {
            max_headers: 2,
            ..lim()
        };
        let ok = b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\n\r\n";
        assert!(matches!(parse_request(ok, &limits), Ok(Parse::Complete(_))));
        let bad = b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(
            parse_request(bad, &limits),
            Err(RequestError::HeaderFieldsTooLarge)
        );
    }

    #[test]
    fn max_headers_is_capped_not_trusted() {
        let limits = Limits {
            max_headers: usize::MAX,
            ..lim()
        };
        let mut buf = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request(&buf, &limits),
            Err(RequestError::HeaderFieldsTooLarge)
        );
    }

    #[test]
    fn uri_too_long() {
        let limits = Limits {
            max_target_bytes: 10,
            ..lim()
        };
        let ok = b"GET /123456789 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(parse_request(ok, &limits), Ok(Parse::Complete(_))));
        let long = b"GET /1234567890 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_request(long, &limits), Err(RequestError::UriTooLong));
        // Detected before the request line is complete.
        assert_eq!(
            parse_request(b"GET /1234567890", &limits),
            Err(RequestError::UriTooLong)
        );
        assert_eq!(
            parse_request(b"GET /123456789", &limits),
            Ok(Parse::Partial)
        );
        assert_eq!(RequestError::UriTooLong.status(), Status::URI_TOO_LONG);
    }

    #[test]
    fn long_partial_target_with_default_limits() {
        let mut buf = b"GET /".to_vec();
        buf.extend_from_slice(&[b'a'; 9000]);
        assert_eq!(parse(&buf), Err(RequestError::UriTooLong));
    }

    #[test]
    fn invalid_syntax_is_400() {
        for buf in [
            &b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
            b"GET / HTTP/1.1\rHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\x01y\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
            b" GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTX/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1x1\r\nHost: x\r\n\r\n",
            b"GET / http/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/10.0\r\nHost: x\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(is_400(err(buf)), "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn unsupported_versions_are_505() {
        for buf in [
            &b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
            b"GET / HTTP/3\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/2",
        ] {
            assert_eq!(
                err(buf),
                RequestError::VersionNotSupported,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        assert_eq!(
            RequestError::VersionNotSupported.status(),
            Status::VERSION_NOT_SUPPORTED
        );
    }

    #[test]
    fn http10_without_host() {
        let r = complete(b"GET /x HTTP/1.0\r\n\r\n");
        assert_eq!(r.version, Version::Http10);
        assert!(!r.keep_alive);
    }

    #[test]
    fn persistence_rules() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: CLOSE\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, Close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: closed\r\n\r\n",
                true,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nConnection: foo ,keep-alive\r\n\r\n",
                true,
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                false,
            ),
        ];
        for (buf, ka) in cases {
            assert_eq!(
                complete(buf).keep_alive,
                *ka,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn host_rules() {
        assert!(is_400(err(b"GET / HTTP/1.1\r\n\r\n")));
        assert!(is_400(err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")));
        assert!(is_400(err(b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n")));
        complete(b"GET / HTTP/1.1\r\nhOsT: a\r\n\r\n");
        complete(b"GET / HTTP/1.1\r\nHost:\r\n\r\n");
        complete(b"GET / HTTP/1.1\r\nHost:   \r\n\r\n");
        complete(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n");
        assert!(is_400(err(b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n")));
    }

    #[test]
    fn valid_host_values() {
        for host in [
            "example.com",
            "example.com:8080",
            "example.com:",
            "EXAMPLE.com.",
            "ex%41mple.com",
            // Syntax only: what a pct-encoded octet decodes to is not checked.
            "a%20b",
            "1.2.3.4",
            "1.2.3.4:80",
            "a_b-c.~d",
            "sub!$&'()*+,;=delims",
            "localhost",
            "xn--bcher-kva.example",
            "[::1]",
            "[::1]:8080",
            "[::1]:",
            "[2001:db8::7]",
            "[2001:DB8:0:0:8:800:200C:417A]:443",
            "[::ffff:192.0.2.1]",
            "[v1.fe80::a+en1]",
            "[VF.x]:1",
            " example.com ",
            "\texample.com",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            complete(buf.as_bytes());
        }
    }

    #[test]
    fn invalid_host_values_are_400() {
        for host in [
            "a b/../",
            "a b",
            "a/b",
            "a?b",
            "a#b",
            "u@h",
            "a\\b",
            "h\x7f",
            "caf\u{e9}.example",
            "host:port",
            "host:12a",
            "host:-1",
            "host:1:2",
            ":80",
            ":",
            "ex%4mple.com",
            "ex%zzmple.com",
            "ex%",
            "::1",
            "[::1",
            "::1]",
            "[::1]x",
            "[::1]:8x",
            "[]",
            "[:::]",
            "[1.2.3.4]",
            "[fe80::1%25eth0]",
            "[::1]]",
            "[[::1]]",
            "[v.x]",
            "[v1.]",
            "[v1x]",
            "[vg.x]",
            "[v1.a/b]",
            "a[b]",
            "example.com]",
            "\"example.com\"",
            "<x>",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let e = err(buf.as_bytes());
            assert!(is_400(e), "{host:?}: {e:?}");
        }
        // Non-UTF-8 (obs-text) in Host.
        assert!(is_400(err(b"GET / HTTP/1.1\r\nHost: caf\xe9\r\n\r\n")));
        // A bad Host is a 400 even when a valid one precedes it (and the
        // duplicate rule would also apply).
        assert!(is_400(err(
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a b\r\n\r\n"
        )));
    }

    #[test]
    fn origin_form_and_query() {
        let r = complete(b"GET /a/b?x=1&y=/../.. HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.path, "a/b");
        let r = complete(b"GET /dir/?q HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.path, "dir");
        assert!(r.ends_with_slash);
        let r = complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.path, "");
        assert!(r.ends_with_slash);
        let r = complete(b"GET /a%20b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.path, "a b");
        assert!(matches!(r.path, Cow::Owned(_)));
    }

    #[test]
    fn query_is_exposed_raw() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/", "", None),
            ("/a/b", "a/b", None),
            ("/a/b?", "a/b", Some("")),
            ("/dir?x=1", "dir", Some("x=1")),
            ("/dir/?x=1&y=%2F", "dir", Some("x=1&y=%2F")),
            ("/a?b?c", "a", Some("b?c")),
            ("/a%3Fb?c", "a?b", Some("c")),
            ("/a?x=/../..", "a", Some("x=/../..")),
            ("/?%zz", "", Some("%zz")),
            ("/?caf\u{e9}", "", Some("caf\u{e9}")),
            ("http://h", "", None),
            ("http://h?", "", Some("")),
            ("http://h?q=1", "", Some("q=1")),
            ("http://h/?q=1", "", Some("q=1")),
            ("https://h:1/a/b?q", "a/b", Some("q")),
        ];
        for &(target, path, query) in cases {
            let buf = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
            let r = complete(buf.as_bytes());
            assert_eq!((&*r.path, r.query), (path, query), "{target}");
        }
        let r = complete(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.query, None);
    }

    #[test]
    fn query_never_carries_controls() {
        // The query is echoed into Location headers: every byte that could
        // break a header (or that is not a URI byte) makes the target invalid.
        for b in (0u8..0x21).chain([0x7f]) {
            let mut buf = b"GET /d?a".to_vec();
            buf.push(b);
            buf.extend_from_slice(b"b HTTP/1.1\r\nHost: x\r\n\r\n");
            match parse(&buf) {
                Err(e) => assert!(is_400(e), "{b:#x}: {e:?}"),
                // SP ends the target early; what is left is not a version.
                Ok(other) => panic!("{b:#x}: {other:?}"),
            }
        }
        assert!(is_400(err(b"GET /d?a#b HTTP/1.1\r\nHost: x\r\n\r\n")));
        assert!(is_400(err(b"GET /d?\xff HTTP/1.1\r\nHost: x\r\n\r\n")));
    }

    #[test]
    fn absolute_form() {
        let r = complete(b"GET http://example.com/a/b?q HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.path, "a/b");
        let r = complete(b"GET HTTPS://example.com:8443/a/ HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.path, "a");
        assert!(r.ends_with_slash);
        let r = complete(b"GET http://example.com HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.path, "");
        assert!(r.ends_with_slash);
        let r = complete(b"GET http://example.com?x=/a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.path, "");
        assert!(is_400(err(b"GET http:///a HTTP/1.1\r\nHost: x\r\n\r\n")));
        assert!(is_400(err(b"GET http://u@h/a HTTP/1.1\r\nHost: x\r\n\r\n")));
        assert!(is_400(err(b"GET ftp://h/a HTTP/1.1\r\nHost: x\r\n\r\n")));
        assert!(is_400(err(b"GET http:/a HTTP/1.1\r\nHost: x\r\n\r\n")));
        assert!(is_400(err(
            b"GET http://h/../a HTTP/1.1\r\nHost: x\r\n\r\n"
        )));
    }

    #[test]
    fn absolute_form_authority_is_validated() {
        for auth in [
            "example.com",
            "example.com:",
            "example.com:8080",
            "ex%41mple.com",
            "1.2.3.4",
            "a_b-c.~d",
            "[::1]:8080",
            "[v7.x:y]",
        ] {
            let buf = format!("GET http://{auth}/a HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(complete(buf.as_bytes()).path, "a", "{auth}");
        }
        for auth in [
            "host:port",
            "host:12a",
            ":80",
            "[::1",
            "::1",
            "a\\b",
            "u@h",
            "a%2",
            "caf\u{e9}",
            "[::1]x",
            "a<b>",
        ] {
            let buf = format!("GET http://{auth}/a HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(is_400(err(buf.as_bytes())), "{auth}");
        }
    }

    #[test]
    fn asterisk_form() {
        let r = complete(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.method, Method::Options);
        assert!(r.asterisk);
        assert_eq!(r.path, "");
        assert!(!r.ends_with_slash);
        assert!(is_400(err(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")));
        assert!(is_400(err(b"POST * HTTP/1.1\r\nHost: x\r\n\r\n")));
        let r = complete(b"OPTIONS /a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(!r.asterisk);
    }

    #[test]
    fn other_targets_rejected() {
        for t in ["a/b", "example.com:80", "*x", "?q", "%2fa"] {
            let buf = format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(is_400(err(buf.as_bytes())), "{t}");
        }
    }

    #[test]
    fn fragment_rejected() {
        assert!(is_400(err(b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n")));
        assert!(is_400(err(b"GET /a?x#b HTTP/1.1\r\nHost: x\r\n\r\n")));
    }

    #[test]
    fn path_errors_are_400() {
        for t in ["/..", "/a/../../b", "/%2e%2e/x", "/%00", "/%zz", "/%ff"] {
            let buf = format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(is_400(err(buf.as_bytes())), "{t}");
        }
    }

    #[test]
    fn content_length_rules() {
        let r = complete(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(r.body_len, 12);
        let r = complete(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(r.body_len, 5);
        let r = complete(
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
        );
        assert_eq!(r.body_len, 5);
        for v in ["", "-1", "+1", "0x10", "1 2", "1.0", "5, 6", "5,", ",5"] {
            let buf = format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n");
            assert!(is_400(err(buf.as_bytes())), "{v:?}");
        }
        assert!(is_400(err(
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        )));
    }

    #[test]
    fn body_over_limit_is_413() {
        let limits = Limits {
            max_discard_body: 10,
            ..lim()
        };
        let ok = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n";
        assert!(matches!(parse_request(ok, &limits), Ok(Parse::Complete(_))));
        let big = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(
            parse_request(big, &limits),
            Err(RequestError::PayloadTooLarge)
        );
        let huge = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(parse(huge), Err(RequestError::PayloadTooLarge));
        assert_eq!(
            RequestError::PayloadTooLarge.status(),
            Status::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn transfer_encoding() {
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            RequestError::NotImplemented
        );
        assert!(is_400(err(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        )));
        assert!(is_400(err(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\ntransfer-encoding: gzip\r\n\r\n"
        )));
    }

    #[test]
    fn transfer_encoding_without_final_chunked_is_400() {
        // RFC 9112 6.3: a request whose Transfer-Encoding does not end in
        // chunked has no reliable length: 400 (then close), not 501.
        for te in [
            "gzip",
            "identity",
            "xchunked",
            "chunked, gzip",
            "chunked, identity",
            "chunked;x=1",
            "chunked, chunked",
            "",
            " , ",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n");
            let e = err(buf.as_bytes());
            assert!(is_400(e), "{te:?}: {e:?}");
        }
        // Across field lines the codings are one list (RFC 9110 5.3).
        for lines in [
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: x\r\n{lines}\r\n");
            let e = err(buf.as_bytes());
            assert!(is_400(e), "{lines:?}: {e:?}");
        }
        // Chunked last: a framing we could read but do not implement.
        for lines in [
            "Transfer-Encoding: chunked\r\n",
            "Transfer-Encoding: CHUNKED\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: gzip,,chunked \r\n",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            // Empty list elements (an empty line too) are no codings.
            "Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n",
        ] {
            let buf = format!("POST / HTTP/1.1\r\nHost: x\r\n{lines}\r\n");
            assert_eq!(
                err(buf.as_bytes()),
                RequestError::NotImplemented,
                "{lines:?}"
            );
        }
    }

    #[test]
    fn transfer_encoding_on_http10_is_400() {
        // RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means the
        // framing is faulty.
        for te in ["chunked", "gzip, chunked"] {
            let buf = format!("POST / HTTP/1.0\r\nTransfer-Encoding: {te}\r\n\r\n");
            let e = err(buf.as_bytes());
            assert!(is_400(e), "{te:?}: {e:?}");
        }
    }

    #[test]
    fn obs_fold_rejected() {
        assert!(is_400(err(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"
        )));
        assert!(is_400(err(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n"
        )));
        assert!(is_400(err(b"GET / HTTP/1.1\r\n Host: x\r\n\r\n")));
    }

    #[test]
    fn methods() {
        let cases = [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("OPTIONS", Method::Options),
            ("POST", Method::NotAllowed),
            ("PUT", Method::NotAllowed),
            ("DELETE", Method::NotAllowed),
            ("PATCH", Method::NotAllowed),
            ("CONNECT", Method::NotAllowed),
            ("TRACE", Method::NotAllowed),
        ];
        for (m, want) in cases {
            let buf = format!("{m} / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(complete(buf.as_bytes()).method, want, "{m}");
        }
        for m in ["get", "Get", "FOO", "PROPFIND", "BREW"] {
            let buf = format!("{m} / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(err(buf.as_bytes()), RequestError::NotImplemented, "{m}");
        }
        assert_eq!(
            RequestError::NotImplemented.status(),
            Status::NOT_IMPLEMENTED
        );
    }

    #[test]
    fn conditional_headers() {
        let buf = b"GET / HTTP/1.1\r\nHost: x\r\n\
            if-match:  \"a\", \"b\"  \r\n\
            IF-NONE-MATCH: W/\"c\"\r\n\
            If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
            If-Unmodified-Since: Sunday, 06-Nov-94 08:49:37 GMT\r\n\
            If-Range: \"d\"\r\n\
            Range: bytes=0-1\r\n\r\n";
        let r = complete(buf);
        assert_eq!(r.if_match, Some("\"a\", \"b\""));
        assert_eq!(r.if_none_match, Some("W/\"c\""));
        assert_eq!(r.if_modified_since, Some(784111777));
        assert_eq!(r.if_unmodified_since, Some(784111777));
        assert_eq!(r.if_range, Some("\"d\""));
        assert_eq!(r.range, Some("bytes=0-1"));
    }

    #[test]
    fn invalid_dates_are_ignored() {
        let r = complete(
            b"GET / HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: yesterday\r\nIf-Unmodified-Since: \r\n\r\n",
        );
        assert_eq!(r.if_modified_since, None);
        assert_eq!(r.if_unmodified_since, None);
    }

    #[test]
    fn repeated_conditional_headers_rejected() {
        assert!(is_400(err(
            b"GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n"
        )));
        assert!(is_400(err(
            b"GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\r\n"
        )));
    }

    #[test]
    fn non_utf8_interpreted_value_rejected() {
        assert!(is_400(err(
            b"GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"\xff\"\r\n\r\n"
        )));
        // Values we do not interpret may carry obs-text.
        complete(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: \xff\r\n\r\n");
    }

    #[test]
    fn leading_empty_lines_count_in_head_len() {
        let buf = b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(complete(buf).head_len, buf.len());
    }

    #[test]
    fn bare_lf_line_endings() {
        let buf = b"GET /a HTTP/1.1\nHost: x\n\n";
        assert_eq!(complete(buf).head_len, buf.len());
    }

    #[test]
    fn error_statuses() {
        assert_eq!(RequestError::BadRequest("x").status(), Status::BAD_REQUEST);
        assert_eq!(
            RequestError::HeaderFieldsTooLarge.status(),
            Status::HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(
            RequestError::BadRequest("why").to_string(),
            "400 Bad Request: why"
        );
    }
}
