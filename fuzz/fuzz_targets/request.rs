//! `parse_request` on arbitrary bytes with the default limits.
//!
//! Invariants (mirroring flash-http/tests/props.rs):
//! - fed incrementally (a prefix, then the whole buffer), the parser answers
//!   `Partial` or exactly the whole-buffer verdict for the prefix, never a
//!   different one; checked at every split for short inputs and at a split
//!   derived from the input (plus the head's end) for longer ones;
//! - a complete head: `head_len <= input.len()` and `<= max_head_bytes`, the
//!   head is exactly `head_len` bytes (parsing `input[..head_len]` gives the
//!   same request, `input[..head_len - 1]` is `Partial`), the path is
//!   normalised (no leading '/', no "", "." or ".." segments, no NUL) and a
//!   fixed point of `normalize_path`, the raw query has no byte that could
//!   break a header line.
#![no_main]

use flash_http::{normalize_path, parse_request, Limits, Parse, Request};
use libfuzzer_sys::fuzz_target;

/// Inputs up to this length are checked at every split point.
const ALL_SPLITS_UP_TO: usize = 128;

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn check_request(req: &Request<'_>, input: &[u8], limits: &Limits) {
    assert!(
        req.head_len <= input.len(),
        "head_len {} > {}",
        req.head_len,
        input.len()
    );
    assert!(req.head_len <= limits.max_head_bytes);
    assert!(
        input[..req.head_len].ends_with(b"\n"),
        "head does not end in a line break"
    );

    let path = &*req.path;
    assert!(!path.starts_with('/'), "leading '/' in {path:?}");
    assert!(!path.contains('\0'), "NUL in {path:?}");
    if !path.is_empty() {
        for seg in path.split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "segment {seg:?} in {path:?}"
            );
        }
    }
    if !path.contains('%') {
        let again = normalize_path(&format!("/{path}")).map(|(p, _)| p.into_owned());
        assert_eq!(again.as_deref(), Ok(path), "path is not a fixed point");
    }
    if let Some(q) = req.query {
        assert!(
            q.bytes().all(|b| b > b' ' && b != 0x7f && b != b'#'),
            "query {q:?}"
        );
    }
    if req.asterisk {
        assert!(path.is_empty());
    }
}

fuzz_target!(|input: &[u8]| {
    let limits = Limits::default();
    let whole = parse_request(input, &limits);

    let check_prefix = |n: usize| {
        let part = parse_request(&input[..n], &limits);
        assert!(
            part == Ok(Parse::Partial) || part == whole,
            "prefix {n}: {part:?}, whole: {whole:?}"
        );
    };
    if input.len() <= ALL_SPLITS_UP_TO {
        // Feeding byte by byte: Partial until the verdict, then only it.
        let mut decided = false;
        for n in 0..=input.len() {
            let part = parse_request(&input[..n], &limits);
            if part == Ok(Parse::Partial) {
                assert!(!decided, "Partial after a verdict at prefix {n}");
            } else {
                assert_eq!(part, whole, "prefix {n}");
                decided = true;
            }
        }
    } else {
        check_prefix((fnv1a(input) % (input.len() as u64 + 1)) as usize);
    }

    if let Ok(Parse::Complete(req)) = &whole {
        check_request(req, input, &limits);
        // Bytes after the head (body, pipelined requests) are not looked at.
        assert_eq!(parse_request(&input[..req.head_len], &limits), whole);
        assert_eq!(
            parse_request(&input[..req.head_len - 1], &limits),
            Ok(Parse::Partial)
        );
    }
});
