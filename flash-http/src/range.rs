//! Byte ranges: parsing the `Range` header against a file length, and
//! planning multipart/byteranges bodies as literal pieces plus file slices
//! (so the caller can send the file parts zero-copy).

use crate::conditional::Selection;
use crate::response::push_content_range_value;

/// An inclusive-exclusive byte range `start..end` within the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// More ranges than this in one request is treated as abuse and answered
/// with the whole file (RFC 9110 14.2 allows ignoring such a Range).
pub const MAX_RANGES: usize = 16;

/// One `range-spec` of a `Range: bytes=` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spec {
    /// `a-b` or `a-` (None).
    FromTo(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// Digits only; huge values saturate, which keeps their meaning (beyond any
/// file) without an error path.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

fn parse_spec(s: &str) -> Option<Spec> {
    let (first, last) = s.split_once('-')?;
    if first.is_empty() {
        return digits(last).map(Spec::Suffix);
    }
    let first = digits(first)?;
    if last.is_empty() {
        return Some(Spec::FromTo(first, None));
    }
    let last = digits(last)?;
    // RFC 9110 14.1.1: last-pos < first-pos makes the whole header invalid.
    (last >= first).then_some(Spec::FromTo(first, Some(last)))
}

fn satisfy(spec: Spec, len: u64) -> Option<ByteRange> {
    match spec {
        Spec::FromTo(first, last) if first < len => {
            let end = match last {
                Some(last) => last.min(len - 1).saturating_add(1),
                None => len,
            };
            Some(ByteRange { start: first, end })
        }
        Spec::FromTo(..) => None,
        Spec::Suffix(n) if n > 0 && len > 0 => Some(ByteRange {
            start: len - n.min(len),
            end: len,
        }),
        Spec::Suffix(_) => None,
    }
}

/// The range-specs of a `bytes=` range-set, skipping empty list elements.
fn specs(set: &str) -> impl Iterator<Item = Option<Spec>> + '_ {
    set.split(',')
        .map(|s| s.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty())
        .map(parse_spec)
}

/// Evaluates a `Range` value against a representation of `len` bytes.
/// Syntax errors and other units give `Full` (the header is ignored).
/// Allocates only for a multi-range answer.
pub(crate) fn select_ranges(header: &str, len: u64) -> Selection {
    let Some((unit, set)) = header.split_once('=') else {
        return Selection::Full;
    };
    if !unit.eq_ignore_ascii_case("bytes") {
        return Selection::Full;
    }
    // First pass: validate everything and count, so the common single-range
    // request needs no allocation.
    let mut seen = 0usize;
    let mut satisfiable = 0usize;
    let mut first = None;
    for spec in specs(set) {
        let Some(spec) = spec else {
            return Selection::Full;
        };
        seen += 1;
        if let Some(r) = satisfy(spec, len) {
            satisfiable += 1;
            first.get_or_insert(r);
        }
    }
    if seen == 0 {
        return Selection::Full;
    }
    match (satisfiable, first) {
        (0, _) | (_, None) => Selection::Unsatisfiable,
        (1, Some(r)) => Selection::Single(r),
        (n, _) if n > MAX_RANGES => Selection::Full,
        (n, _) => {
            let mut ranges = Vec::with_capacity(n);
            ranges.extend(specs(set).flatten().filter_map(|s| satisfy(s, len)));
            // Overlapping or adjacent ranges would make us send bytes twice
            // or split what is one range; RFC 9110 14.2 lets us ignore them.
            for (i, a) in ranges.iter().enumerate() {
                for b in ranges.iter().skip(i + 1) {
                    if a.start <= b.end && b.start <= a.end {
                        return Selection::Full;
                    }
                }
            }
            Selection::Multi(ranges)
        }
    }
}

/// One piece of a multipart/byteranges body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Bytes to send as they are (part boundaries and headers).
    Literal(Vec<u8>),
    /// A slice of the file.
    File(ByteRange),
}

/// A planned multipart/byteranges body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Multipart {
    /// The full Content-Type value: "multipart/byteranges; boundary=...".
    pub content_type: String,
    /// The body, in order.
    pub segments: Vec<Segment>,
    /// Exact total length of all segments (the response's Content-Length).
    pub content_length: u64,
}

/// Plan the body for `ranges` of a file of `total` bytes whose type is `part_type`.
///
/// Each part is `--BOUNDARY`, its Content-Type and Content-Range, a blank
/// line and the file bytes; parts are separated by CRLF and the body ends with
/// `\r\n--BOUNDARY--\r\n`. The first delimiter has no leading CRLF.
///
/// ```
/// use flash_http::{plan_multipart, ByteRange, Segment};
/// let r = [ByteRange { start: 0, end: 2 }, ByteRange { start: 5, end: 6 }];
/// let m = plan_multipart(&r, 10, "text/plain", "XYZ");
/// assert_eq!(m.content_type, "multipart/byteranges; boundary=XYZ");
/// assert_eq!(m.segments[0], Segment::Literal(
///     b"--XYZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n".to_vec()));
/// assert_eq!(m.segments[1], Segment::File(r[0]));
/// ```
pub fn plan_multipart(
    ranges: &[ByteRange],
    total: u64,
    part_type: &str,
    boundary: &str,
) -> Multipart {
    let mut segments = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut content_length = 0u64;
    for (i, &range) in ranges.iter().enumerate() {
        let mut lit = Vec::with_capacity(boundary.len() + part_type.len() + 80);
        if i > 0 {
            lit.extend_from_slice(b"\r\n");
        }
        lit.extend_from_slice(b"--");
        lit.extend_from_slice(boundary.as_bytes());
        lit.extend_from_slice(b"\r\nContent-Type: ");
        lit.extend_from_slice(part_type.as_bytes());
        lit.extend_from_slice(b"\r\nContent-Range: ");
        push_content_range_value(&mut lit, range, total);
        lit.extend_from_slice(b"\r\n\r\n");
        content_length = content_length
            .saturating_add(lit.len() as u64)
            .saturating_add(range.len());
        segments.push(Segment::Literal(lit));
        segments.push(Segment::File(range));
    }
    let mut end = Vec::with_capacity(boundary.len() + 8);
    end.extend_from_slice(b"\r\n--");
    end.extend_from_slice(boundary.as_bytes());
    end.extend_from_slice(b"--\r\n");
    content_length = content_length.saturating_add(end.len() as u64);
    segments.push(Segment::Literal(end));

    let mut content_type = String::with_capacity(31 + boundary.len());
    content_type.push_str("multipart/byteranges; boundary=");
    content_type.push_str(boundary);
    Multipart {
        content_type,
        segments,
        content_length,
    }
}

/// A boundary string derived from `seed` (e.g. the file's mtime mixed with a
/// counter): "flash" and 16 hex digits, which cannot occur in the part
/// headers. Callers may use any boundary; this is a convenience.
pub fn boundary_from(seed: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(21);
    s.push_str("flash");
    for shift in (0..16).rev() {
        s.push(char::from(HEX[((seed >> (shift * 4)) & 15) as usize]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    fn sel(h: &str, len: u64) -> Selection {
        select_ranges(h, len)
    }

    #[test]
    fn single_forms() {
        assert_eq!(sel("bytes=0-99", 1000), Selection::Single(r(0, 100)));
        assert_eq!(sel("bytes=100-", 1000), Selection::Single(r(100, 1000)));
        assert_eq!(sel("bytes=-100", 1000), Selection::Single(r(900, 1000)));
        assert_eq!(sel("bytes=0-0", 1), Selection::Single(r(0, 1)));
    }

    #[test]
    fn clamping() {
        assert_eq!(sel("bytes=500-5000", 1000), Selection::Single(r(500, 1000)));
        assert_eq!(sel("bytes=-5000", 1000), Selection::Single(r(0, 1000)));
        assert_eq!(
            sel("bytes=0-99999999999999999999999", 10),
            Selection::Single(r(0, 10))
        );
        assert_eq!(
            sel("bytes=-99999999999999999999999", 10),
            Selection::Single(r(0, 10))
        );
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(sel("bytes=1000-", 1000), Selection::Unsatisfiable);
        assert_eq!(sel("bytes=1000-2000", 1000), Selection::Unsatisfiable);
        assert_eq!(sel("bytes=-0", 1000), Selection::Unsatisfiable);
        assert_eq!(sel("bytes=0-", 0), Selection::Unsatisfiable);
        assert_eq!(sel("bytes=-5", 0), Selection::Unsatisfiable);
        assert_eq!(
            sel("bytes=99999999999999999999999-", 10),
            Selection::Unsatisfiable
        );
        assert_eq!(sel("bytes=2000-3000, -0", 1000), Selection::Unsatisfiable);
    }

    #[test]
    fn unsatisfiable_parts_are_dropped() {
        assert_eq!(sel("bytes=5000-, 0-1", 1000), Selection::Single(r(0, 2)));
    }

    #[test]
    fn syntax_errors_are_ignored() {
        for h in [
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=1-2-3",
            "bytes=0-1,x",
            "bytes=+1-2",
            "bytes= 0 - 1",
            "bytes 0-1",
            "0-1",
            "",
        ] {
            assert_eq!(sel(h, 1000), Selection::Full, "{h:?}");
        }
    }

    #[test]
    fn other_units_are_ignored() {
        assert_eq!(sel("items=0-1", 1000), Selection::Full);
        assert_eq!(sel("BYTES=0-1", 1000), Selection::Single(r(0, 2)));
    }

    #[test]
    fn whitespace_and_empty_elements() {
        assert_eq!(
            sel("bytes=0-1 , ,\t5-6,", 1000),
            Selection::Multi(vec![r(0, 2), r(5, 7)])
        );
    }

    #[test]
    fn multi_in_request_order() {
        assert_eq!(
            sel("bytes=500-599,0-99,-10", 1000),
            Selection::Multi(vec![r(500, 600), r(0, 100), r(990, 1000)])
        );
    }

    #[test]
    fn overlapping_or_touching_gives_full() {
        assert_eq!(sel("bytes=0-10,5-20", 1000), Selection::Full);
        assert_eq!(sel("bytes=0-9,10-20", 1000), Selection::Full);
        assert_eq!(sel("bytes=10-20,0-9", 1000), Selection::Full);
        assert_eq!(sel("bytes=0-,-10", 1000), Selection::Full);
        assert_eq!(
            sel("bytes=0-8,10-20", 1000),
            Selection::Multi(vec![r(0, 9), r(10, 21)])
        );
    }

    #[test]
    fn too_many_ranges_gives_full() {
        let specs = |n: u64| {
            let list: Vec<String> = (0..n)
                .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
                .collect();
            format!("bytes={}", list.join(","))
        };
        assert!(matches!(sel(&specs(16), 1000), Selection::Multi(v) if v.len() == 16));
        assert_eq!(sel(&specs(17), 1000), Selection::Full);
    }

    #[test]
    fn multipart_plan() {
        let ranges = [r(0, 2), r(5, 10)];
        let m = plan_multipart(&ranges, 10, "text/plain; charset=utf-8", "B");
        assert_eq!(m.content_type, "multipart/byteranges; boundary=B");
        let want_lits: [&[u8]; 3] = [
            b"--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 0-1/10\r\n\r\n",
            b"\r\n--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 5-9/10\r\n\r\n",
            b"\r\n--B--\r\n",
        ];
        assert_eq!(
            m.segments,
            vec![
                Segment::Literal(want_lits[0].to_vec()),
                Segment::File(ranges[0]),
                Segment::Literal(want_lits[1].to_vec()),
                Segment::File(ranges[1]),
                Segment::Literal(want_lits[2].to_vec()),
            ]
        );
        let total: usize = want_lits.iter().map(|l| l.len()).sum::<usize>() + 2 + 5;
        assert_eq!(m.content_length, total as u64);
    }

    #[test]
    fn multipart_length_is_exact() {
        let ranges = [r(0, 100), r(200, 300), r(999, 1000)];
        let m = plan_multipart(&ranges, 1000, "image/png", "0123456789abcdef");
        let sum: u64 = m
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.len() as u64,
                Segment::File(r) => r.len(),
            })
            .sum();
        assert_eq!(m.content_length, sum);
    }

    #[test]
    fn boundaries() {
        let b = boundary_from(0x1234);
        assert_eq!(b, "flash0000000000001234");
        assert!(b.starts_with("flash"));
        assert_ne!(boundary_from(1), boundary_from(2));
    }
}
