//! `parse_proxy_header` on arbitrary bytes.
//!
//! Invariants:
//! - a verdict depends on the header's bytes only: a `Header` parses the
//!   same from `input[..consumed]` (and `consumed <= input.len()`), and is
//!   `Incomplete` one byte shorter;
//! - fed incrementally (every prefix), the parser answers `Incomplete` or
//!   exactly the whole input's verdict (for a `Header`, up to its end), so a
//!   caller may call it after every read;
//! - `Incomplete` only for inputs shorter than `PROXY_MAX_LEN`, so a buffer
//!   of that size always reaches a verdict;
//! - a source is given only with a destination of the same family, and a
//!   v1 header takes at most 107 bytes, a v2 one at most `V2_MAX_LEN`.
#![no_main]

use flash_http::{parse_proxy_header, ProxyParse, PROXY_MAX_LEN, V1_MAX_LEN, V2_MAX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let verdict = parse_proxy_header(input);
    if verdict == Ok(ProxyParse::Incomplete) {
        assert!(input.len() < PROXY_MAX_LEN, "Incomplete at {} bytes", input.len());
    }
    // Where the verdict must already be known.
    let decided_at = match verdict {
        Ok(ProxyParse::Header(h)) => {
            assert!(h.consumed <= input.len());
            match h.version {
                1 => assert!(h.consumed <= V1_MAX_LEN),
                2 => assert!(h.consumed <= V2_MAX_LEN),
                v => panic!("version {v}"),
            }
            match (h.source, h.destination) {
                (Some(s), Some(d)) => assert_eq!(s.is_ipv4(), d.is_ipv4()),
                (None, None) => {}
                other => panic!("source and destination disagree: {other:?}"),
            }
            assert_eq!(parse_proxy_header(&input[..h.consumed]), verdict);
            assert_eq!(
                parse_proxy_header(&input[..h.consumed - 1]),
                Ok(ProxyParse::Incomplete)
            );
            h.consumed
        }
        _ => input.len(),
    };
    for n in 0..decided_at.min(input.len()) {
        let early = parse_proxy_header(&input[..n]);
        assert!(
            early == Ok(ProxyParse::Incomplete) || early == verdict,
            "prefix {n}: {early:?} then {verdict:?}"
        );
    }
});
