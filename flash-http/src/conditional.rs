//! Conditional requests (RFC 9110 section 13) and the choice between a full,
//! partial, 304, 412 or 416 answer.

use std::fmt;

use crate::range::{select_ranges, ByteRange};
use crate::request::{Method, Request};

/// Longest tag: quote, 16 hex digits, '-', 16 hex digits, quote.
const ETAG_CAP: usize = 35;

/// A strong entity tag derived from modification time and length, nginx style:
/// `"<mtime hex>-<len hex>"` (quotes included). Fixed capacity, no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ETag {
    bytes: [u8; ETAG_CAP],
    len: u8,
}

impl ETag {
    /// The tag for a file with this mtime (unix seconds) and length.
    pub fn new(mtime_secs: u64, len: u64) -> Self {
        let mut tag = ETag {
            bytes: [0; ETAG_CAP],
            len: 0,
        };
        tag.push(b'"');
        tag.push_hex(mtime_secs);
        tag.push(b'-');
        tag.push_hex(len);
        tag.push(b'"');
        tag
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.bytes.get_mut(usize::from(self.len)) {
            *slot = b;
            self.len += 1;
        }
    }

    fn push_hex(&mut self, v: u64) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            self.push(HEX[((v >> (i * 4)) & 15) as usize]);
        }
    }

    /// The tag as sent in the `ETag` header, quotes included.
    pub fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
        // Only ASCII is ever stored; the fallback avoids a panic path.
        std::str::from_utf8(bytes).unwrap_or("\"\"")
    }
}

impl fmt::Debug for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ETag({})", self.as_str())
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the server knows of the representation it is about to send.
#[derive(Clone, Copy, Debug)]
pub struct Validators<'a> {
    /// Length in bytes.
    pub len: u64,
    /// Modification time, unix seconds (as sent in Last-Modified).
    pub mtime_secs: u64,
    /// The entity tag as sent in the ETag header, quotes included.
    pub etag: &'a str,
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

/// One parsed entity-tag; `opaque` keeps its quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tag<'a> {
    weak: bool,
    opaque: &'a str,
}

impl Tag<'_> {
    fn strong_eq(&self, other: &Tag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    fn weak_eq(&self, other: &Tag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// etagc = %x21 / %x23-7E / obs-text (so commas are allowed inside quotes).
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

/// Parses one entity-tag at the start of `s`; returns it and the rest.
fn parse_tag(s: &str) -> Option<(Tag<'_>, &str)> {
    let (weak, body) = match s.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let inner = body.strip_prefix('"')?;
    let close = inner.bytes().position(|b| !is_etagc(b))?;
    if inner.as_bytes().get(close) != Some(&b'"') {
        return None;
    }
    // `close` indexes an ASCII quote, so both splits are on char boundaries.
    let opaque = body.get(..close + 2)?;
    let rest = body.get(close + 2..)?;
    Some((Tag { weak, opaque }, rest))
}

/// A field value that must be exactly one entity-tag (If-Range, our own ETag).
fn parse_single_tag(s: &str) -> Option<Tag<'_>> {
    let (tag, rest) = parse_tag(s.trim_matches([' ', '\t']))?;
    rest.is_empty().then_some(tag)
}

/// `"*" / #entity-tag`: true when `*`, or when some member satisfies `eq`.
/// Any syntax error makes the whole field match nothing.
fn list_matches(list: &str, mut eq: impl FnMut(&Tag<'_>) -> bool) -> bool {
    let list = list.trim_matches([' ', '\t']);
    if list == "*" {
        return true;
    }
    let mut rest = list;
    let mut found = false;
    loop {
        // Empty list elements (",,") are allowed by the #rule.
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return found;
        }
        let Some((tag, after)) = parse_tag(rest) else {
            return false;
        };
        found |= eq(&tag);
        rest = after.trim_start_matches([' ', '\t']);
        if !rest.is_empty() && !rest.starts_with(',') {
            return false;
        }
    }
}

/// Evaluate conditionals and ranges of `req` against `v`.
///
/// Order (RFC 9110 13.2.2): If-Match, else If-Unmodified-Since (412);
/// If-None-Match, else If-Modified-Since (304 for GET/HEAD); then Range for
/// GET only, subject to If-Range. Allocates only for a multi-range answer.
pub fn select(req: &Request<'_>, v: &Validators<'_>) -> Selection {
    let ours = parse_single_tag(v.etag);
    let get_or_head = matches!(req.method, Method::Get | Method::Head);

    if let Some(list) = req.if_match {
        let matched = list_matches(list, |t| ours.is_some_and(|o| t.strong_eq(&o)));
        if !matched {
            return Selection::PreconditionFailed;
        }
    } else if let Some(date) = req.if_unmodified_since {
        if v.mtime_secs > date {
            return Selection::PreconditionFailed;
        }
    }

    if let Some(list) = req.if_none_match {
        let matched = list_matches(list, |t| ours.is_some_and(|o| t.weak_eq(&o)));
        if matched {
            return if get_or_head {
                Selection::NotModified
            } else {
                Selection::PreconditionFailed
            };
        }
    } else if let Some(date) = req.if_modified_since {
        if get_or_head && v.mtime_secs <= date {
            return Selection::NotModified;
        }
    }

    let Some(range) = req.range else {
        return Selection::Full;
    };
    if req.method != Method::Get {
        return Selection::Full;
    }
    if let Some(if_range) = req.if_range {
        if !if_range_holds(if_range, ours, v.mtime_secs) {
            return Selection::Full;
        }
    }
    select_ranges(range, v.len)
}

/// If-Range: an entity-tag must match strongly, a date must equal the
/// modification time exactly; anything else means "send everything".
fn if_range_holds(value: &str, ours: Option<Tag<'_>>, mtime_secs: u64) -> bool {
    let value = value.trim_matches([' ', '\t']);
    if value.starts_with('"') || value.starts_with("W/") {
        return match (parse_single_tag(value), ours) {
            (Some(theirs), Some(ours)) => theirs.strong_eq(&ours),
            _ => false,
        };
    }
    httpdate::parse_http_date(value)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .is_some_and(|d| d.as_secs() == mtime_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTIME: u64 = 784_111_777;
    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const EARLIER: &str = "Sun, 06 Nov 1994 08:49:36 GMT";

    fn req() -> Request<'static> {
        Request::default()
    }

    fn with_etag<R>(f: impl FnOnce(&Validators<'_>) -> R) -> R {
        let tag = ETag::new(MTIME, 1000);
        f(&Validators {
            len: 1000,
            mtime_secs: MTIME,
            etag: tag.as_str(),
        })
    }

    fn run(r: &Request<'_>) -> Selection {
        with_etag(|v| select(r, v))
    }

    fn tag() -> String {
        ETag::new(MTIME, 1000).as_str().to_owned()
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    #[test]
    fn etag_format() {
        assert_eq!(ETag::new(0, 0).as_str(), "\"0-0\"");
        assert_eq!(ETag::new(0x5f3a_1b2c, 4096).as_str(), "\"5f3a1b2c-1000\"");
        assert_eq!(
            ETag::new(u64::MAX, u64::MAX).as_str(),
            "\"ffffffffffffffff-ffffffffffffffff\""
        );
        assert_eq!(ETag::new(1, 2), ETag::new(1, 2));
        assert_ne!(ETag::new(1, 2), ETag::new(2, 1));
        assert_eq!(format!("{:?}", ETag::new(1, 2)), "ETag(\"1-2\")");
    }

    #[test]
    fn tag_parsing() {
        assert_eq!(
            parse_tag("\"a,b\" , x"),
            Some((
                Tag {
                    weak: false,
                    opaque: "\"a,b\""
                },
                " , x"
            ))
        );
        assert_eq!(
            parse_tag("W/\"\""),
            Some((
                Tag {
                    weak: true,
                    opaque: "\"\""
                },
                ""
            ))
        );
        for bad in ["", "\"", "a", "w/\"a\"", "W/a", "\"a b\"", "\"a"] {
            assert_eq!(parse_tag(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn list_parsing() {
        let is_b = |t: &Tag<'_>| t.opaque == "\"b\"";
        assert!(list_matches("\"a\", \"b\"", is_b));
        assert!(list_matches("\"a\",\"b\"", is_b));
        assert!(list_matches(" , \"a\" ,, W/\"b\" ,", is_b));
        assert!(list_matches("*", is_b));
        assert!(!list_matches("\"a\"", is_b));
        assert!(!list_matches("", is_b));
        assert!(!list_matches("\"a,\"b\"", is_b));
        assert!(list_matches("\"a,\", \"b\"", is_b));
        // Garbage anywhere means no match.
        assert!(!list_matches("\"b\", garbage", is_b));
        assert!(!list_matches("\"b\" \"a\"", is_b));
        assert!(!list_matches("\"a\", *", is_b));
        assert!(!list_matches("b", is_b));
    }

    #[test]
    fn no_conditions_is_full() {
        assert_eq!(run(&req()), Selection::Full);
    }

    #[test]
    fn if_match() {
        let mut r = req();
        r.if_match = Some(leak(tag()));
        assert_eq!(run(&r), Selection::Full);
        r.if_match = Some("*");
        assert_eq!(run(&r), Selection::Full);
        r.if_match = Some(leak(format!("\"x\", {}", tag())));
        assert_eq!(run(&r), Selection::Full);
        r.if_match = Some("\"x\"");
        assert_eq!(run(&r), Selection::PreconditionFailed);
        // Weak tags never match strongly.
        r.if_match = Some(leak(format!("W/{}", tag())));
        assert_eq!(run(&r), Selection::PreconditionFailed);
        r.if_match = Some("garbage");
        assert_eq!(run(&r), Selection::PreconditionFailed);
    }

    #[test]
    fn if_unmodified_since() {
        let mut r = req();
        r.if_unmodified_since = Some(MTIME);
        assert_eq!(run(&r), Selection::Full);
        r.if_unmodified_since = Some(MTIME - 1);
        assert_eq!(run(&r), Selection::PreconditionFailed);
        // Ignored when If-Match is present.
        r.if_match = Some("*");
        assert_eq!(run(&r), Selection::Full);
    }

    #[test]
    fn if_none_match() {
        let mut r = req();
        r.if_none_match = Some(leak(tag()));
        assert_eq!(run(&r), Selection::NotModified);
        r.if_none_match = Some(leak(format!("W/{}", tag())));
        assert_eq!(run(&r), Selection::NotModified);
        r.if_none_match = Some("*");
        assert_eq!(run(&r), Selection::NotModified);
        r.if_none_match = Some("\"other\"");
        assert_eq!(run(&r), Selection::Full);
        r.if_none_match = Some(leak(format!("{},", tag())));
        assert_eq!(run(&r), Selection::NotModified);
        r.if_none_match = Some(leak(format!("{} junk", tag())));
        assert_eq!(run(&r), Selection::Full);
        r.method = Method::Head;
        r.if_none_match = Some(leak(tag()));
        assert_eq!(run(&r), Selection::NotModified);
        r.method = Method::NotAllowed;
        assert_eq!(run(&r), Selection::PreconditionFailed);
    }

    #[test]
    fn if_modified_since() {
        let mut r = req();
        r.if_modified_since = Some(MTIME);
        assert_eq!(run(&r), Selection::NotModified);
        r.if_modified_since = Some(MTIME + 100);
        assert_eq!(run(&r), Selection::NotModified);
        r.if_modified_since = Some(MTIME - 1);
        assert_eq!(run(&r), Selection::Full);
        // Ignored when If-None-Match is present (and does not match).
        r.if_modified_since = Some(MTIME);
        r.if_none_match = Some("\"other\"");
        assert_eq!(run(&r), Selection::Full);
    }

    #[test]
    fn precondition_order() {
        // If-Match failure wins over a matching If-None-Match.
        let mut r = req();
        r.if_match = Some("\"x\"");
        r.if_none_match = Some("*");
        assert_eq!(run(&r), Selection::PreconditionFailed);
        // If-Unmodified-Since failure wins over If-Modified-Since.
        let mut r = req();
        r.if_unmodified_since = Some(MTIME - 1);
        r.if_modified_since = Some(MTIME);
        assert_eq!(run(&r), Selection::PreconditionFailed);
        // 304 wins over Range.
        let mut r = req();
        r.if_none_match = Some("*");
        r.range = Some("bytes=0-1");
        assert_eq!(run(&r), Selection::NotModified);
    }

    #[test]
    fn range_only_for_get() {
        let mut r = req();
        r.range = Some("bytes=0-9");
        assert_eq!(run(&r), Selection::Single(ByteRange { start: 0, end: 10 }));
        r.method = Method::Head;
        assert_eq!(run(&r), Selection::Full);
        r.method = Method::Options;
        assert_eq!(run(&r), Selection::Full);
    }

    #[test]
    fn range_outcomes() {
        let mut r = req();
        r.range = Some("bytes=0-1,10-11");
        assert_eq!(
            run(&r),
            Selection::Multi(vec![
                ByteRange { start: 0, end: 2 },
                ByteRange { start: 10, end: 12 }
            ])
        );
        r.range = Some("bytes=5000-");
        assert_eq!(run(&r), Selection::Unsatisfiable);
        r.range = Some("bytes=x");
        assert_eq!(run(&r), Selection::Full);
        r.range = Some("lines=1-2");
        assert_eq!(run(&r), Selection::Full);
    }

    #[test]
    fn if_range() {
        let single = Selection::Single(ByteRange { start: 0, end: 10 });
        let mut r = req();
        r.range = Some("bytes=0-9");
        r.if_range = Some(leak(tag()));
        assert_eq!(run(&r), single);
        r.if_range = Some(leak(format!("W/{}", tag())));
        assert_eq!(run(&r), Selection::Full);
        r.if_range = Some("\"other\"");
        assert_eq!(run(&r), Selection::Full);
        r.if_range = Some(DATE);
        assert_eq!(run(&r), single);
        r.if_range = Some(EARLIER);
        assert_eq!(run(&r), Selection::Full);
        r.if_range = Some("not a date");
        assert_eq!(run(&r), Selection::Full);
        r.if_range = Some(leak(format!("{}, \"x\"", tag())));
        assert_eq!(run(&r), Selection::Full);
        // If-Range protects an unsatisfiable range too: a changed file gets 200.
        r.range = Some("bytes=5000-");
        r.if_range = Some("\"other\"");
        assert_eq!(run(&r), Selection::Full);
    }

    #[test]
    fn invalid_server_tag_matches_only_star() {
        let v = Validators {
            len: 10,
            mtime_secs: MTIME,
            etag: "garbage",
        };
        let mut r = req();
        r.if_none_match = Some("garbage");
        assert_eq!(select(&r, &v), Selection::Full);
        r.if_none_match = Some("*");
        assert_eq!(select(&r, &v), Selection::NotModified);
    }
}
