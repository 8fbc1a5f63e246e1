//! API CONTRACT STUB — to be replaced by the real implementation.
//! Every public item below must keep its path (re-exported at the crate root),
//! name and signature; the implementation may split them into modules.

use std::borrow::Cow;

/// Limits applied while parsing a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, including the final CRLF CRLF (default 16 KiB) -> 431.
    pub max_head_bytes: usize,
    /// Number of header fields (default 64) -> 431.
    pub max_headers: usize,
    /// Length of the request target (default 8 KiB) -> 414.
    pub max_target_bytes: usize,
    /// Largest Content-Length body the server reads and discards (default 1 MiB) -> 413.
    pub max_discard_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head_bytes: 16 * 1024, max_headers: 64, max_target_bytes: 8 * 1024, max_discard_body: 1 << 20 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Options,
    /// POST, PUT, DELETE, PATCH, CONNECT, TRACE: known but not allowed on files (405).
    NotAllowed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// A parsed request head. Borrows the caller's buffer; allocates only when the
/// path needed decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'buf> {
    pub method: Method,
    pub version: Version,
    /// Normalised, relative, percent-decoded path: no leading '/', no "", "." or
    /// ".." segments. "" is the root. The query string is dropped.
    pub path: Cow<'buf, str>,
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
    pub if_match: Option<&'buf str>,
    pub if_none_match: Option<&'buf str>,
    /// Unix seconds; absent when the header is missing or not a valid HTTP date.
    pub if_modified_since: Option<u64>,
    pub if_unmodified_since: Option<u64>,
    pub if_range: Option<&'buf str>,
    pub range: Option<&'buf str>,
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
    /// 501 (unknown method token, unsupported transfer coding)
    NotImplemented,
    /// 505
    VersionNotSupported,
}

impl RequestError {
    pub fn status(self) -> Status {
        todo!()
    }
}

/// Outcome of feeding bytes to the parser.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse<'buf> {
    /// The head is not complete yet (and is still within the limits).
    Partial,
    Complete(Request<'buf>),
}

/// Parse a request head from the start of `buf`. Call again with more bytes
/// after `Parse::Partial`. Never panics on any input.
pub fn parse_request<'buf>(buf: &'buf [u8], limits: &Limits) -> Result<Parse<'buf>, RequestError> {
    let _ = (buf, limits);
    todo!()
}

/// An HTTP status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Status(pub u16);

impl Status {
    pub const OK: Status = Status(200);
    pub const NO_CONTENT: Status = Status(204);
    pub const PARTIAL_CONTENT: Status = Status(206);
    pub const MOVED_PERMANENTLY: Status = Status(301);
    pub const NOT_MODIFIED: Status = Status(304);
    pub const BAD_REQUEST: Status = Status(400);
    pub const FORBIDDEN: Status = Status(403);
    pub const NOT_FOUND: Status = Status(404);
    pub const METHOD_NOT_ALLOWED: Status = Status(405);
    pub const REQUEST_TIMEOUT: Status = Status(408);
    pub const PRECONDITION_FAILED: Status = Status(412);
    pub const PAYLOAD_TOO_LARGE: Status = Status(413);
    pub const URI_TOO_LONG: Status = Status(414);
    pub const RANGE_NOT_SATISFIABLE: Status = Status(416);
    pub const HEADER_FIELDS_TOO_LARGE: Status = Status(431);
    pub const INTERNAL_SERVER_ERROR: Status = Status(500);
    pub const NOT_IMPLEMENTED: Status = Status(501);
    pub const SERVICE_UNAVAILABLE: Status = Status(503);
    pub const VERSION_NOT_SUPPORTED: Status = Status(505);

    pub fn reason(self) -> &'static str {
        todo!()
    }
}

/// The value of the `Date` header, formatted at most once per second.
pub struct DateCache {/* private */}

impl DateCache {
    pub fn new() -> Self {
        todo!()
    }
    /// IMF-fixdate for `now`, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
    pub fn get(&mut self, now: std::time::SystemTime) -> &str {
        let _ = now;
        todo!()
    }
}

impl Default for DateCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Format unix seconds as an IMF-fixdate into `out` (29 bytes).
pub fn format_http_date(unix_secs: u64, out: &mut Vec<u8>) {
    let _ = (unix_secs, out);
    todo!()
}

/// Content-Type for a path by its extension (case-insensitive); text types carry
/// "; charset=utf-8"; unknown -> "application/octet-stream".
pub fn content_type(path: &str) -> &'static str {
    let _ = path;
    todo!()
}

/// A strong entity tag derived from modification time and length, nginx style:
/// `"<mtime hex>-<len hex>"` (quotes included). Fixed capacity, no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ETag {/* private */}

impl ETag {
    pub fn new(mtime_secs: u64, len: u64) -> Self {
        let _ = (mtime_secs, len);
        todo!()
    }
    pub fn as_str(&self) -> &str {
        todo!()
    }
}

/// What the server knows of the representation it is about to send.
#[derive(Clone, Copy, Debug)]
pub struct Validators<'a> {
    pub len: u64,
    pub mtime_secs: u64,
    pub etag: &'a str,
}

/// An inclusive-exclusive byte range `start..end` within the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// What to send, after evaluating preconditions (RFC 9110 section 13.2.2 order)
/// and the Range header (GET only; If-Range honoured).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// 200 with the whole file.
    Full,
    /// 304
    NotModified,
    /// 412
    PreconditionFailed,
    /// 206 with one range.
    Single(ByteRange),
    /// 206 multipart/byteranges, ranges in request order, never overlapping.
    Multi(Vec<ByteRange>),
    /// 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// Evaluate conditionals and ranges of `req` against `v`.
pub fn select(req: &Request<'_>, v: &Validators<'_>) -> Selection {
    let _ = (req, v);
    todo!()
}

/// Builds a response head into a caller-owned buffer (appends; never clears).
pub struct ResponseHead<'b> {
    buf: &'b mut Vec<u8>,
}

impl<'b> ResponseHead<'b> {
    /// Writes "HTTP/1.1 <code> <reason>\r\n", then `Server: flash` and `Date: <date>`.
    pub fn new(buf: &'b mut Vec<u8>, status: Status, date: &str) -> Self {
        let _ = (status, date);
        ResponseHead { buf }
    }
    pub fn header(&mut self, name: &str, value: &str) -> &mut Self {
        let _ = (name, value, &self.buf);
        todo!()
    }
    pub fn content_length(&mut self, len: u64) -> &mut Self {
        let _ = len;
        todo!()
    }
    /// `Last-Modified: <IMF-fixdate>`
    pub fn last_modified(&mut self, unix_secs: u64) -> &mut Self {
        let _ = unix_secs;
        todo!()
    }
    /// `Content-Range: bytes START-END/LEN` (END inclusive).
    pub fn content_range(&mut self, range: ByteRange, total: u64) -> &mut Self {
        let _ = (range, total);
        todo!()
    }
    /// `Connection: keep-alive` or `Connection: close`.
    pub fn connection(&mut self, keep_alive: bool) -> &mut Self {
        let _ = keep_alive;
        todo!()
    }
    /// Writes the final CRLF.
    pub fn finish(self) {
        todo!()
    }
}

/// Extra header for an error response.
#[derive(Clone, Copy, Debug)]
pub enum ErrorExtra<'a> {
    None,
    /// `Allow: GET, HEAD, OPTIONS` (405)
    Allow,
    /// `Location: <value>` (301)
    Location(&'a str),
    /// `Content-Range: bytes */LEN` (416)
    UnsatisfiedRange(u64),
}

/// Appends a complete error (or redirect) response: head plus a small HTML
/// body (head only when `head_only`, but Content-Length still of the body).
pub fn write_error_response(
    buf: &mut Vec<u8>,
    status: Status,
    date: &str,
    keep_alive: bool,
    extra: ErrorExtra<'_>,
    head_only: bool,
) {
    let _ = (buf, status, date, keep_alive, extra, head_only);
    todo!()
}

/// One piece of a multipart/byteranges body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(Vec<u8>),
    File(ByteRange),
}

/// A planned multipart/byteranges body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Multipart {
    /// The full Content-Type value: "multipart/byteranges; boundary=...".
    pub content_type: String,
    pub segments: Vec<Segment>,
    pub content_length: u64,
}

/// Plan the body for `ranges` of a file of `total` bytes whose type is `part_type`.
pub fn plan_multipart(ranges: &[ByteRange], total: u64, part_type: &str, boundary: &str) -> Multipart {
    let _ = (ranges, total, part_type, boundary);
    todo!()
}

/// Normalise a request path (the part of the target before any '?'):
/// percent-decode, remove dot segments, collapse empty segments. Returns the
/// relative path ("" for the root) and whether it ended in '/'.
/// Errors (400): bad escape, NUL (raw or encoded), invalid UTF-8 after
/// decoding, a ".." that would climb above the root, not starting with '/'.
pub fn normalize_path(raw: &str) -> Result<(Cow<'_, str>, bool), RequestError> {
    let _ = raw;
    todo!()
}
