//! `ResponseHead` and `write_error_response` with fuzzed status, date,
//! header names and values (which may hold CR, LF and NUL, as a caller
//! echoing request data would pass).
//!
//! Input: fields separated by 0x1F (unit separator), lossily decoded:
//!   status (decimal; otherwise from the field's bytes), flags
//!   ('k' keep-alive, 'h' head only, 'a' Allow, 'l' Location, 'r' 416
//!   range), date, a number (lengths, dates, ranges), then name, value, ...
//!
//! Invariants: the head starts with `HTTP/1.1 <code> <reason>\r\n` (reason
//! non-empty, visible ASCII and spaces), has `\r\n\r\n` exactly once, at its
//! end; between the line breaks no CR, LF or NUL (no header injection), so
//! the head has exactly one line per header written; every header line has
//! a ": "; an error response's Content-Length is its body's length, and
//! 1xx/204/304 carry neither body nor Content-Length.
#![no_main]

use flash_http::{write_error_response, ByteRange, ErrorExtra, ResponseHead, Status};
use libfuzzer_sys::fuzz_target;

/// Splits `out` into its head lines (status line first) and the body, and
/// checks the head's framing.
fn head_lines(out: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    assert!(
        out.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(out)
    );
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no blank line")
        + 4;
    let (head, body) = out.split_at(end);
    // Every line, the last one included, ends in CRLF; the blank line's CRLF
    // is not part of any.
    let mut lines: Vec<&[u8]> = head[..end - 2].split(|&b| b == b'\n').collect();
    assert_eq!(lines.pop(), Some(&b""[..]));
    for (i, line) in lines.iter().enumerate() {
        let line = line.strip_suffix(b"\r").expect("bare LF in the head");
        assert!(!line.contains(&b'\r'), "bare CR in line {i}: {line:?}");
        assert!(!line.contains(&0), "NUL in line {i}: {line:?}");
        assert!(!line.is_empty(), "empty line {i} inside the head");
        if i > 0 {
            assert!(
                line.windows(2).any(|w| w == b": "),
                "line {i} is not a header"
            );
        }
    }
    let lines = lines.iter().map(|l| &l[..l.len() - 1]).collect();
    (lines, body)
}

fn check_status_line(line: &[u8], status: Status) {
    let expected = format!("HTTP/1.1 {} {}", status.0, status.reason());
    assert_eq!(line, expected.as_bytes());
    let reason = status.reason();
    assert!(!reason.is_empty());
    assert!(reason.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
}

fuzz_target!(|input: &[u8]| {
    let mut fields = input.split(|&b| b == 0x1f).map(String::from_utf8_lossy);
    let status_field = fields.next().unwrap_or_default();
    let status = Status(status_field.trim().parse().unwrap_or_else(|_| {
        status_field.bytes().fold(0u16, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(u16::from(b))
        })
    }));
    let flags = fields.next().unwrap_or_default();
    let date = fields.next().unwrap_or_default();
    let n: u64 = fields
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let rest: Vec<_> = fields.collect();
    let headers: Vec<(&str, &str)> = rest
        .chunks(2)
        .map(|p| (&*p[0], p.get(1).map_or("", |v| &**v)))
        .collect();
    let keep_alive = flags.contains('k');

    // A success head with every kind of line.
    let mut out = b"prefix".to_vec();
    let mut head = ResponseHead::new(&mut out, status, &date);
    for (name, value) in &headers {
        head.header(name, value);
    }
    head.content_length(n)
        .last_modified(n)
        .content_range(
            ByteRange {
                start: n / 2,
                end: n,
            },
            n,
        )
        .connection(keep_alive);
    head.finish();
    assert!(
        out.starts_with(b"prefix"),
        "ResponseHead cleared the buffer"
    );
    let (lines, body) = head_lines(&out[6..]);
    assert!(body.is_empty(), "bytes after the head's end");
    check_status_line(lines[0], status);
    assert_eq!(
        lines.len(),
        3 + headers.len() + 4,
        "a value added or lost a line"
    );
    assert!(lines[1] == b"Server: flash");
    assert!(lines[2].starts_with(b"Date: "));

    // An error response.
    let extra = if flags.contains('a') {
        ErrorExtra::Allow
    } else if flags.contains('l') {
        ErrorExtra::Location(headers.first().map_or("", |h| h.1))
    } else if flags.contains('r') {
        ErrorExtra::UnsatisfiedRange(n)
    } else {
        ErrorExtra::None
    };
    let head_only = flags.contains('h');
    let mut out = Vec::new();
    write_error_response(&mut out, status, &date, keep_alive, extra, head_only);
    let (lines, body) = head_lines(&out);
    check_status_line(lines[0], status);
    let content_length = lines
        .iter()
        .find_map(|l| l.strip_prefix(b"Content-Length: "))
        .map(|v| std::str::from_utf8(v).unwrap().parse::<usize>().unwrap());
    if status.is_bodiless() {
        assert_eq!(content_length, None);
        assert!(body.is_empty());
    } else {
        let content_length = content_length.expect("no Content-Length");
        assert_eq!(body.len(), if head_only { 0 } else { content_length });
    }
    let connection: &[u8] = if keep_alive {
        b"Connection: keep-alive"
    } else {
        b"Connection: close"
    };
    assert_eq!(lines.last(), Some(&connection));
});
