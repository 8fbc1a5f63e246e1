//! Response heads and canned error responses, appended to a caller-owned
//! buffer so the caller decides when and how the bytes reach the socket.

use crate::date::imf_fixdate;
use crate::range::ByteRange;

/// An HTTP status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Status(pub u16);

impl Status {
    /// 200
    pub const OK: Status = Status(200);
    /// 204 (OPTIONS)
    pub const NO_CONTENT: Status = Status(204);
    /// 206
    pub const PARTIAL_CONTENT: Status = Status(206);
    /// 301 (directory named without its trailing slash)
    pub const MOVED_PERMANENTLY: Status = Status(301);
    /// 304
    pub const NOT_MODIFIED: Status = Status(304);
    /// 400
    pub const BAD_REQUEST: Status = Status(400);
    /// 403
    pub const FORBIDDEN: Status = Status(403);
    /// 404
    pub const NOT_FOUND: Status = Status(404);
    /// 405
    pub const METHOD_NOT_ALLOWED: Status = Status(405);
    /// 408
    pub const REQUEST_TIMEOUT: Status = Status(408);
    /// 412
    pub const PRECONDITION_FAILED: Status = Status(412);
    /// 413
    pub const PAYLOAD_TOO_LARGE: Status = Status(413);
    /// 414
    pub const URI_TOO_LONG: Status = Status(414);
    /// 416
    pub const RANGE_NOT_SATISFIABLE: Status = Status(416);
    /// 431
    pub const HEADER_FIELDS_TOO_LARGE: Status = Status(431);
    /// 500
    pub const INTERNAL_SERVER_ERROR: Status = Status(500);
    /// 501
    pub const NOT_IMPLEMENTED: Status = Status(501);
    /// 503
    pub const SERVICE_UNAVAILABLE: Status = Status(503);
    /// 505
    pub const VERSION_NOT_SUPPORTED: Status = Status(505);

    /// The reason phrase; codes without a registered phrase get their
    /// class's name (or "Unknown"), so a status line is always well-formed.
    pub fn reason(self) -> &'static str {
        self.registered_reason().unwrap_or(match self.0 {
            100..=199 => "Informational",
            200..=299 => "Success",
            300..=399 => "Redirection",
            400..=499 => "Client Error",
            500..=599 => "Server Error",
            _ => "Unknown",
        })
    }

    fn registered_reason(self) -> Option<&'static str> {
        Some(match self.0 {
            100 => "Continue",
            101 => "Switching Protocols",
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            203 => "Non-Authoritative Information",
            204 => "No Content",
            205 => "Reset Content",
            206 => "Partial Content",
            300 => "Multiple Choices",
            301 => "Moved Permanently",
            302 => "Found",
            303 => "See Other",
            304 => "Not Modified",
            307 => "Temporary Redirect",
            308 => "Permanent Redirect",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            406 => "Not Acceptable",
            408 => "Request Timeout",
            409 => "Conflict",
            410 => "Gone",
            411 => "Length Required",
            412 => "Precondition Failed",
            413 => "Payload Too Large",
            414 => "URI Too Long",
            415 => "Unsupported Media Type",
            416 => "Range Not Satisfiable",
            417 => "Expectation Failed",
            426 => "Upgrade Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            505 => "HTTP Version Not Supported",
            _ => return None,
        })
    }

    /// Whether a response with this status never carries a body
    /// (RFC 9110 6.4.1: 1xx, 204, 304).
    pub fn is_bodiless(self) -> bool {
        matches!(self.0, 100..=199 | 204 | 304)
    }
}

/// Appends the decimal digits of `n` without going through `fmt`/`String`.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            // n % 10 < 10, so the cast cannot truncate.
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

/// Number of decimal digits of `n`.
fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// Appends `s`, dropping CR, LF and NUL: a header value can then never end
/// the line early, even if a caller echoes request data into it.
fn push_header_text(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        out.extend(s.bytes().filter(|b| !matches!(b, b'\r' | b'\n' | 0)));
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Builds a response head into a caller-owned buffer (appends; never clears).
///
/// ```
/// use flash_http::{ResponseHead, Status};
/// let mut buf = Vec::new();
/// let mut head = ResponseHead::new(&mut buf, Status::OK, "Sun, 06 Nov 1994 08:49:37 GMT");
/// head.content_length(5).connection(true);
/// head.finish();
/// assert_eq!(
///     buf,
///     b"HTTP/1.1 200 OK\r\nServer: flash\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
///       Content-Length: 5\r\nConnection: keep-alive\r\n\r\n"
/// );
/// ```
pub struct ResponseHead<'b> {
    buf: &'b mut Vec<u8>,
}

impl<'b> ResponseHead<'b> {
    /// Writes `HTTP/1.1 <code> <reason>\r\n`, then `Server: flash` and `Date: <date>`.
    pub fn new(buf: &'b mut Vec<u8>, status: Status, date: &str) -> Self {
        buf.extend_from_slice(b"HTTP/1.1 ");
        push_u64(buf, u64::from(status.0));
        buf.push(b' ');
        buf.extend_from_slice(status.reason().as_bytes());
        buf.extend_from_slice(b"\r\nServer: flash\r\nDate: ");
        push_header_text(buf, date);
        buf.extend_from_slice(b"\r\n");
        ResponseHead { buf }
    }

    /// `name: value`. CR, LF and NUL are dropped from both (no response splitting).
    pub fn header(&mut self, name: &str, value: &str) -> &mut Self {
        push_header_text(self.buf, name);
        self.buf.extend_from_slice(b": ");
        push_header_text(self.buf, value);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// `Content-Length: LEN`
    pub fn content_length(&mut self, len: u64) -> &mut Self {
        self.buf.extend_from_slice(b"Content-Length: ");
        push_u64(self.buf, len);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// `Last-Modified: <IMF-fixdate>`
    pub fn last_modified(&mut self, unix_secs: u64) -> &mut Self {
        self.buf.extend_from_slice(b"Last-Modified: ");
        self.buf.extend_from_slice(&imf_fixdate(unix_secs));
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// `Content-Range: bytes START-END/LEN` (END inclusive).
    pub fn content_range(&mut self, range: ByteRange, total: u64) -> &mut Self {
        self.buf.extend_from_slice(b"Content-Range: ");
        push_content_range_value(self.buf, range, total);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// `Connection: keep-alive` or `Connection: close`.
    pub fn connection(&mut self, keep_alive: bool) -> &mut Self {
        self.buf.extend_from_slice(if keep_alive {
            b"Connection: keep-alive\r\n"
        } else {
            b"Connection: close\r\n"
        });
        self
    }

    /// Writes the final CRLF.
    pub fn finish(self) {
        self.buf.extend_from_slice(b"\r\n");
    }
}

/// `bytes START-END/TOTAL` with END inclusive (shared with multipart parts).
pub(crate) fn push_content_range_value(out: &mut Vec<u8>, range: ByteRange, total: u64) {
    out.extend_from_slice(b"bytes ");
    push_u64(out, range.start);
    out.push(b'-');
    push_u64(out, range.end.saturating_sub(1));
    out.push(b'/');
    push_u64(out, total);
}

/// Extra header for an error response.
#[derive(Clone, Copy, Debug)]
pub enum ErrorExtra<'a> {
    /// Nothing extra.
    None,
    /// `Allow: GET, HEAD, OPTIONS` (405, and 204 for OPTIONS)
    Allow,
    /// `Location: <value>` (301). The value should be percent-encoded
    /// (see [`percent_encode_path`](crate::percent_encode_path)).
    Location(&'a str),
    /// `Content-Range: bytes */LEN` (416)
    UnsatisfiedRange(u64),
}

const BODY_START: &[u8] = b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>";
const BODY_MIDDLE: &[u8] = b"</title></head>\n<body><h1>";
const BODY_END: &[u8] = b"</h1></body></html>\n";

/// Appends a complete error (or redirect) response: head plus a small HTML
/// body (head only when `head_only`, but Content-Length still of the body).
///
/// 204 and 304 (and 1xx) get neither body nor Content-Type/Content-Length,
/// as those statuses never carry content.
///
/// ```
/// use flash_http::{write_error_response, ErrorExtra, Status};
/// let mut buf = Vec::new();
/// write_error_response(&mut buf, Status::NOT_FOUND, "Sun, 06 Nov 1994 08:49:37 GMT",
///                      true, ErrorExtra::None, false);
/// let text = String::from_utf8(buf).unwrap();
/// assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
/// assert!(text.ends_with("<h1>404 Not Found</h1></body></html>\n"));
/// ```
pub fn write_error_response(
    buf: &mut Vec<u8>,
    status: Status,
    date: &str,
    keep_alive: bool,
    extra: ErrorExtra<'_>,
    head_only: bool,
) {
    let bodiless = status.is_bodiless();
    let reason = status.reason();
    // The title is "<code> <reason>"; its length is computed rather than
    // formatted so that no temporary String is needed.
    let title_len = decimal_len(u64::from(status.0)) + 1 + reason.len();
    let body_len = BODY_START.len() + title_len + BODY_MIDDLE.len() + title_len + BODY_END.len();

    let mut head = ResponseHead::new(buf, status, date);
    match extra {
        ErrorExtra::None => {}
        ErrorExtra::Allow => {
            head.header("Allow", "GET, HEAD, OPTIONS");
        }
        ErrorExtra::Location(loc) => {
            head.header("Location", loc);
        }
        ErrorExtra::UnsatisfiedRange(len) => {
            head.buf.extend_from_slice(b"Content-Range: bytes */");
            push_u64(head.buf, len);
            head.buf.extend_from_slice(b"\r\n");
        }
    }
    if !bodiless {
        head.header("Content-Type", "text/html; charset=utf-8")
            .content_length(body_len as u64);
    }
    head.connection(keep_alive);
    head.finish();

    if !bodiless && !head_only {
        let push_title = |buf: &mut Vec<u8>| {
            push_u64(buf, u64::from(status.0));
            buf.push(b' ');
            buf.extend_from_slice(reason.as_bytes());
        };
        buf.extend_from_slice(BODY_START);
        push_title(buf);
        buf.extend_from_slice(BODY_MIDDLE);
        push_title(buf);
        buf.extend_from_slice(BODY_END);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn text(buf: &[u8]) -> &str {
        std::str::from_utf8(buf).unwrap()
    }

    /// Splits a response into (head, body) at the blank line.
    fn split(buf: &[u8]) -> (&str, &str) {
        let s = text(buf);
        let at = s.find("\r\n\r\n").unwrap() + 4;
        s.split_at(at)
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.split("\r\n")
            .filter_map(|l| l.split_once(": "))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    #[test]
    fn reasons() {
        let all = [
            (Status::OK, "OK"),
            (Status::NO_CONTENT, "No Content"),
            (Status::PARTIAL_CONTENT, "Partial Content"),
            (Status::MOVED_PERMANENTLY, "Moved Permanently"),
            (Status::NOT_MODIFIED, "Not Modified"),
            (Status::BAD_REQUEST, "Bad Request"),
            (Status::FORBIDDEN, "Forbidden"),
            (Status::NOT_FOUND, "Not Found"),
            (Status::METHOD_NOT_ALLOWED, "Method Not Allowed"),
            (Status::REQUEST_TIMEOUT, "Request Timeout"),
            (Status::PRECONDITION_FAILED, "Precondition Failed"),
            (Status::PAYLOAD_TOO_LARGE, "Payload Too Large"),
            (Status::URI_TOO_LONG, "URI Too Long"),
            (Status::RANGE_NOT_SATISFIABLE, "Range Not Satisfiable"),
            (
                Status::HEADER_FIELDS_TOO_LARGE,
                "Request Header Fields Too Large",
            ),
            (Status::INTERNAL_SERVER_ERROR, "Internal Server Error"),
            (Status::NOT_IMPLEMENTED, "Not Implemented"),
            (Status::SERVICE_UNAVAILABLE, "Service Unavailable"),
            (Status::VERSION_NOT_SUPPORTED, "HTTP Version Not Supported"),
        ];
        for (s, r) in all {
            assert_eq!(s.reason(), r, "{}", s.0);
        }
        assert_eq!(Status(299).reason(), "Success");
        assert_eq!(Status(499).reason(), "Client Error");
        assert_eq!(Status(599).reason(), "Server Error");
        assert_eq!(Status(42).reason(), "Unknown");
        assert_eq!(Status(1000).reason(), "Unknown");
    }

    #[test]
    fn integers() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut v = Vec::new();
            push_u64(&mut v, n);
            assert_eq!(text(&v), n.to_string());
            assert_eq!(decimal_len(n), n.to_string().len());
        }
    }

    #[test]
    fn head_lines() {
        let mut buf = b"previous".to_vec();
        let mut h = ResponseHead::new(&mut buf, Status::PARTIAL_CONTENT, DATE);
        h.header("Content-Type", "text/plain")
            .content_length(100)
            .last_modified(784111777)
            .content_range(ByteRange { start: 0, end: 100 }, 1000)
            .connection(false);
        h.finish();
        assert_eq!(
            text(&buf),
            "previousHTTP/1.1 206 Partial Content\r\n\
             Server: flash\r\n\
             Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: 100\r\n\
             Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Range: bytes 0-99/1000\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn header_injection_is_neutralised() {
        let mut buf = Vec::new();
        let mut h = ResponseHead::new(&mut buf, Status::OK, DATE);
        h.header("X-A", "a\r\nSet-Cookie: x\0");
        h.finish();
        let (head, _) = split(&buf);
        assert!(head.contains("X-A: aSet-Cookie: x\r\n"));
        assert_eq!(header(head, "Set-Cookie"), None);
    }

    #[test]
    fn error_response_with_body() {
        let mut buf = Vec::new();
        write_error_response(
            &mut buf,
            Status::NOT_FOUND,
            DATE,
            true,
            ErrorExtra::None,
            false,
        );
        let (head, body) = split(&buf);
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\nServer: flash\r\nDate: "));
        assert_eq!(
            header(head, "Content-Type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            header(head, "Content-Length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(header(head, "Connection"), Some("keep-alive"));
        assert!(body.starts_with("<!DOCTYPE html>"));
        assert!(body.contains("<title>404 Not Found</title>"));
        assert!(body.contains("<h1>404 Not Found</h1>"));
    }

    #[test]
    fn error_content_length_matches_for_all_statuses() {
        for code in [
            400u16, 403, 404, 405, 408, 412, 413, 414, 416, 431, 500, 501, 503, 505, 999,
        ] {
            let mut buf = Vec::new();
            write_error_response(&mut buf, Status(code), DATE, false, ErrorExtra::None, false);
            let (head, body) = split(&buf);
            assert_eq!(
                header(head, "Content-Length"),
                Some(body.len().to_string().as_str()),
                "{code}"
            );
            assert_eq!(header(head, "Connection"), Some("close"));
        }
    }

    #[test]
    fn head_only_keeps_length_but_drops_body() {
        let mut full = Vec::new();
        write_error_response(
            &mut full,
            Status::NOT_FOUND,
            DATE,
            true,
            ErrorExtra::None,
            false,
        );
        let mut head_only = Vec::new();
        write_error_response(
            &mut head_only,
            Status::NOT_FOUND,
            DATE,
            true,
            ErrorExtra::None,
            true,
        );
        let (head, body) = split(&full);
        assert_eq!(text(&head_only), head);
        assert!(!body.is_empty());
    }

    #[test]
    fn extras() {
        let mut buf = Vec::new();
        write_error_response(
            &mut buf,
            Status::METHOD_NOT_ALLOWED,
            DATE,
            true,
            ErrorExtra::Allow,
            false,
        );
        assert_eq!(header(split(&buf).0, "Allow"), Some("GET, HEAD, OPTIONS"));

        let mut buf = Vec::new();
        write_error_response(
            &mut buf,
            Status::MOVED_PERMANENTLY,
            DATE,
            true,
            ErrorExtra::Location("/dir/"),
            false,
        );
        let (head, _) = split(&buf);
        assert!(head.starts_with("HTTP/1.1 301 Moved Permanently\r\n"));
        assert_eq!(header(head, "Location"), Some("/dir/"));

        let mut buf = Vec::new();
        write_error_response(
            &mut buf,
            Status::RANGE_NOT_SATISFIABLE,
            DATE,
            true,
            ErrorExtra::UnsatisfiedRange(1234),
            false,
        );
        assert_eq!(header(split(&buf).0, "Content-Range"), Some("bytes */1234"));
    }

    #[test]
    fn no_content_and_not_modified_have_no_body() {
        for status in [Status::NO_CONTENT, Status::NOT_MODIFIED] {
            let mut buf = Vec::new();
            write_error_response(&mut buf, status, DATE, true, ErrorExtra::Allow, false);
            let (head, body) = split(&buf);
            assert_eq!(body, "");
            assert_eq!(header(head, "Content-Length"), None);
            assert_eq!(header(head, "Content-Type"), None);
            assert_eq!(header(head, "Connection"), Some("keep-alive"));
        }
        let mut buf = Vec::new();
        write_error_response(
            &mut buf,
            Status::NO_CONTENT,
            DATE,
            true,
            ErrorExtra::Allow,
            false,
        );
        assert_eq!(header(split(&buf).0, "Allow"), Some("GET, HEAD, OPTIONS"));
    }

    #[test]
    fn appends_without_clearing() {
        let mut buf = b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec();
        let before = buf.clone();
        write_error_response(
            &mut buf,
            Status::BAD_REQUEST,
            DATE,
            false,
            ErrorExtra::None,
            false,
        );
        assert!(buf.starts_with(&before));
        assert!(buf[before.len()..].starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    }
}
