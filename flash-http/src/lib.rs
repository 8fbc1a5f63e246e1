//! HTTP/1.1 for the flash static-file server: request-head parsing (over
//! `httparse`) and response building.
//!
//! The crate does **no I/O**. It never touches sockets, files or clocks
//! (except converting a `SystemTime` the caller passes in): the caller owns
//! the read buffer, hands its bytes to [`parse_request`] after every read,
//! decides what file to serve, and writes the bytes this crate appends to its
//! own output buffer. That keeps the crate usable on its own and testable
//! without a network.
//!
//! The hot path does not allocate: a [`Request`] borrows the caller's buffer
//! (its path is only an owned string when percent-decoding or dot-segment
//! removal changed it), [`select`] answers single ranges without a `Vec`, and
//! [`ResponseHead`] only grows the caller's buffer. Parsing never panics on
//! any input.
//!
//! The modules follow the life of a request:
//! - `request`: [`parse_request`], [`Request`], [`Limits`], [`RequestError`].
//! - `path`: [`normalize_path`], the traversal-proof path canonicaliser;
//!   [`percent_encode_path`] for `Location`; [`is_hidden`] for dot-files.
//! - `conditional`: [`select`] evaluates If-Match, If-None-Match, dates and
//!   Range in RFC 9110 order; [`ETag`], [`Validators`], [`Selection`].
//! - `range`: [`ByteRange`] and [`plan_multipart`] for multipart/byteranges.
//! - `response`: [`ResponseHead`], [`write_error_response`], [`Status`].
//! - `proxy`: [`parse_proxy_header`] for the PROXY protocol (v1 and v2) that
//!   load balancers put before a client's bytes.
//! - `date` and `mime`: [`DateCache`], [`format_http_date`], [`content_type`].
//!
//! ```
//! use flash_http::*;
//!
//! let buf = b"GET /docs/index.html HTTP/1.1\r\nHost: example.com\r\nRange: bytes=0-99\r\n\r\n";
//! let req = match parse_request(buf, &Limits::default()) {
//!     Ok(Parse::Complete(req)) => req,
//!     Ok(Parse::Partial) => panic!("read more bytes and call again"),
//!     Err(e) => panic!("answer {} and close", e.status().0),
//! };
//! assert_eq!(req.path, "docs/index.html");
//! assert_eq!(req.head_len, buf.len());
//!
//! // What the caller learned from the file system:
//! let (len, mtime) = (4096, 1_700_000_000);
//! let etag = ETag::new(mtime, len);
//! let v = Validators { len, mtime_secs: mtime, etag: etag.as_str() };
//!
//! let Selection::Single(range) = select(&req, &v) else { panic!("expected one range") };
//! assert_eq!(range, ByteRange { start: 0, end: 100 });
//!
//! let mut out = Vec::new();
//! let mut dates = DateCache::new();
//! let mut head = ResponseHead::new(&mut out, Status::PARTIAL_CONTENT, dates.get(std::time::SystemTime::now()));
//! head.header("Content-Type", content_type(&req.path))
//!     .header("ETag", etag.as_str())
//!     .last_modified(mtime)
//!     .content_range(range, len)
//!     .content_length(range.len())
//!     .connection(req.keep_alive);
//! head.finish();
//! assert!(out.starts_with(b"HTTP/1.1 206 Partial Content\r\nServer: flash\r\n"));
//! assert!(out.ends_with(b"Content-Range: bytes 0-99/4096\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"));
//! // The caller now sends `out`, then bytes 0..100 of the file.
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conditional;
mod date;
mod mime;
mod path;
mod proxy;
mod range;
mod request;
mod response;

pub use conditional::{select, ETag, Selection, Validators};
pub use date::{civil_from_days, format_http_date, DateCache};
pub use mime::content_type;
pub use path::{is_hidden, normalize_path, percent_encode_path};
pub use proxy::{
    parse_proxy_header, ProxyError, ProxyHeader, ProxyParse, PROXY_MAX_LEN, V1_MAX_LEN, V2_MAX_LEN,
    V2_SIGNATURE,
};
pub use range::{boundary_from, plan_multipart, ByteRange, Multipart, Segment, MAX_RANGES};
pub use request::{
    parse_request, Limits, Method, Parse, Request, RequestError, Version, MAX_HEADERS,
};
pub use response::{write_error_response, ErrorExtra, ResponseHead, Status};
