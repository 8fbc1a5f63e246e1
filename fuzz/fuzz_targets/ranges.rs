//! `select` (preconditions and Range) and `plan_multipart`.
//!
//! Input: text fields separated by '\n' (a missing line is an absent
//! header, so seeds stay readable):
//!   file length, mtime, method (G/H/O/other), Range, If-Range, If-Match,
//!   If-None-Match, If-Modified-Since, If-Unmodified-Since, part type
//! Numbers are decimal (anything else is 0); the header lines go into the
//! `Request` as they are (`select` sees what the parser would pass it, and
//! more).
//!
//! Invariants: a range answer (206/416) only for GET with a Range header;
//! every range non-empty and inside the file; 2..=MAX_RANGES ranges for
//! multipart, in no overlapping or adjacent pair; the multipart plan's
//! `content_length` is the sum of its segments, its file segments are the
//! ranges in order and its total stays within the file's length plus a
//! fixed per-part overhead; the same request also parsed from text (when
//! the values fit in a header) gives the same selection.
#![no_main]

use flash_http::{
    parse_request, plan_multipart, select, ByteRange, ETag, Limits, Method, Parse, Request,
    Segment, Selection, Validators, MAX_RANGES,
};
use libfuzzer_sys::fuzz_target;

fn number(s: Option<&str>) -> u64 {
    s.and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn field(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn check(sel: &Selection, req: &Request<'_>, len: u64, part_type: &str, mtime: u64) {
    let in_file = |r: &ByteRange| r.start < r.end && r.end <= len && !r.is_empty();
    match sel {
        Selection::Single(r) => {
            assert_eq!(req.method, Method::Get);
            assert!(req.range.is_some());
            assert!(in_file(r), "{r:?} outside a file of {len}");
        }
        Selection::Multi(rs) => {
            assert_eq!(req.method, Method::Get);
            assert!(req.range.is_some());
            assert!((2..=MAX_RANGES).contains(&rs.len()), "{} ranges", rs.len());
            for (i, a) in rs.iter().enumerate() {
                assert!(in_file(a), "{a:?} outside a file of {len}");
                for b in &rs[i + 1..] {
                    assert!(a.end < b.start || b.end < a.start, "{a:?} and {b:?} touch");
                }
            }
            let boundary = flash_http::boundary_from(mtime);
            let plan = plan_multipart(rs, len, part_type, &boundary);
            assert_eq!(
                plan.content_type,
                format!("multipart/byteranges; boundary={boundary}")
            );
            let mut sum = 0u64;
            let mut files = Vec::new();
            for seg in &plan.segments {
                match seg {
                    Segment::Literal(bytes) => sum += bytes.len() as u64,
                    Segment::File(r) => {
                        sum += r.len();
                        files.push(*r);
                    }
                }
            }
            assert_eq!(
                plan.content_length, sum,
                "Content-Length is not the body's length"
            );
            assert_eq!(&files, rs, "file segments are not the ranges in order");
            assert_eq!(plan.segments.len(), 2 * rs.len() + 1);
            let file_bytes: u64 = rs.iter().map(ByteRange::len).sum();
            assert!(file_bytes <= len, "{file_bytes} bytes of a {len}-byte file");
            // Per part: CRLF, "--", boundary, "\r\nContent-Type: ", type,
            // "\r\nContent-Range: bytes ", three u64s with '-' and '/',
            // blank line; then the closing delimiter.
            let per_part = 2 + 2 + boundary.len() + 16 + part_type.len() + 23 + 62 + 4;
            let bound = len + (rs.len() * per_part + boundary.len() + 8) as u64;
            assert!(
                plan.content_length <= bound,
                "{} > {bound}",
                plan.content_length
            );
        }
        Selection::Unsatisfiable => {
            assert_eq!(req.method, Method::Get);
            assert!(req.range.is_some());
        }
        Selection::Full | Selection::NotModified | Selection::PreconditionFailed => {}
    }
    if matches!(sel, Selection::NotModified) {
        assert!(matches!(req.method, Method::Get | Method::Head));
    }
}

fn header_safe(s: &str) -> bool {
    // What survives a round trip through a header line unchanged: visible
    // ASCII and inner spaces (the parser trims the ends).
    s.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' ')
        && !s.starts_with(' ')
        && !s.ends_with(' ')
}

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let mut lines = text.split('\n');
    // A file's length is an `off_t`: never above i64::MAX (the harness's
    // own sums would overflow on lengths no file can have).
    let len = number(lines.next()).min(i64::MAX as u64);
    let mtime = number(lines.next());
    let method = match lines.next().and_then(|m| m.bytes().next()) {
        Some(b'H') => Method::Head,
        Some(b'O') => Method::Options,
        Some(b'G') | None => Method::Get,
        Some(_) => Method::NotAllowed,
    };
    let range = field(lines.next());
    let if_range = field(lines.next());
    let if_match = field(lines.next());
    let if_none_match = field(lines.next());
    let ims = field(lines.next()).map(|s| number(Some(s)));
    let ius = field(lines.next()).map(|s| number(Some(s)));
    let part_type = lines.next().unwrap_or("text/plain");

    let etag = ETag::new(mtime, len);
    let v = Validators {
        len,
        mtime_secs: mtime,
        etag: etag.as_str(),
    };
    let req = Request {
        method,
        if_match,
        if_none_match,
        if_modified_since: ims,
        if_unmodified_since: ius,
        if_range,
        range,
        ..Request::default()
    };
    let sel = select(&req, &v);
    check(&sel, &req, len, part_type, mtime);

    // The same Range / If-Range through the request parser (GET, no other
    // conditionals): the parsed request must carry the values unchanged and
    // select the same way.
    if method == Method::Get && range.is_some_and(header_safe) && if_range.is_none_or(header_safe) {
        let mut head = format!(
            "GET /f HTTP/1.1\r\nHost: x\r\nRange: {}\r\n",
            range.unwrap_or("")
        );
        if let Some(ir) = if_range {
            head.push_str(&format!("If-Range: {ir}\r\n"));
        }
        head.push_str("\r\n");
        let parsed = parse_request(head.as_bytes(), &Limits::default());
        if let Ok(Parse::Complete(p)) = parsed {
            assert_eq!(p.range, range);
            assert_eq!(p.if_range, if_range);
            let direct = Request {
                if_match: None,
                if_none_match: None,
                if_modified_since: None,
                if_unmodified_since: None,
                ..req.clone()
            };
            let via_parser = select(&p, &v);
            check(&via_parser, &p, len, part_type, mtime);
            assert_eq!(via_parser, select(&direct, &v));
        }
    }
});
