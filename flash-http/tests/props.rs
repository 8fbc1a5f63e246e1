//! Property tests: the parser never panics and is consistent under
//! incremental feeding; normalised paths keep their invariants; `select`
//! never panics and only produces ranges inside the file.

use std::borrow::Cow;

use flash_http::{
    normalize_path, parse_request, select, ByteRange, ETag, Limits, Method, Parse, Request,
    Selection, Validators, Version,
};
use proptest::prelude::*;

/// Pieces that make up plausible (and implausible) request heads, so that
/// generated inputs reach every stage of the parser, not just the first byte.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<&'static [u8]> = vec![
        b"GET ",
        b"HEAD ",
        b"OPTIONS ",
        b"POST ",
        b"BREW ",
        b"/",
        b"/a/b",
        b"/%2e%2e/",
        b"/x?q=1",
        b"http://h/p",
        b"*",
        b" HTTP/1.1\r\n",
        b" HTTP/1.0\r\n",
        b" HTTP/2.0\r\n",
        b"Host: h\r\n",
        b"Connection: close\r\n",
        b"Connection: keep-alive\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: 99999999\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Range: bytes=0-1\r\n",
        b"If-None-Match: \"x\"\r\n",
        b"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        b" folded\r\n",
        b"\r\n",
        b"\n",
        b"\r\n\r\n",
    ];
    prop_oneof![
        4 => proptest::sample::select(fixed).prop_map(|p| p.to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
        1 => "[a-zA-Z0-9 :/%.-]{0,12}".prop_map(String::into_bytes),
    ]
}

fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(piece(), 0..12).prop_map(|v| v.concat()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (0usize..120, 0usize..6, 0usize..24, 0u64..10).prop_map(|(h, n, t, b)| Limits {
            max_head_bytes: h,
            max_headers: n,
            max_target_bytes: t,
            max_discard_body: b,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// (a) Feeding growing prefixes gives Partial until the verdict on the
    /// whole buffer, and never a different verdict.
    #[test]
    fn incremental_parsing_is_consistent(buf in request_bytes(), limits in limits()) {
        let whole = parse_request(&buf, &limits);
        let mut decided = false;
        for n in 0..=buf.len() {
            let part = parse_request(&buf[..n], &limits);
            if part == Ok(Parse::Partial) {
                prop_assert!(!decided, "Partial after a verdict at prefix {}", n);
            } else {
                prop_assert_eq!(&part, &whole, "prefix {}", n);
                decided = true;
            }
            if let Ok(Parse::Complete(req)) = &part {
                prop_assert!(req.head_len <= n);
                prop_assert!(req.head_len <= limits.max_head_bytes);
            }
        }
    }

    /// Same with uniformly random bytes after a valid request line, so that
    /// the header parser sees garbage too.
    #[test]
    fn garbage_headers_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..128)) {
        let mut buf = b"GET /x HTTP/1.1\r\n".to_vec();
        buf.extend_from_slice(&tail);
        let whole = parse_request(&buf, &Limits::default());
        for n in 0..=buf.len() {
            let part = parse_request(&buf[..n], &Limits::default());
            prop_assert!(part == Ok(Parse::Partial) || part == whole);
        }
    }

    /// (b) normalize_path's output invariants on arbitrary input.
    #[test]
    fn normalized_paths_are_clean(raw in prop_oneof![
        "(/|\\.|\\.\\.|%2[eEfF]|%00|%|%[0-9a-fA-F]{2}|[a-z]|\\\\|\u{0}|é){0,16}",
        "/(/|\\.|\\.\\.|%2[eEfF]|[a-z]){0,16}",
        any::<String>(),
    ]) {
        if let Ok((path, ends_with_slash)) = normalize_path(&raw) {
            prop_assert!(!path.starts_with('/'));
            prop_assert!(!path.ends_with('/'));
            prop_assert!(!path.contains('\0'));
            prop_assert!(!path.contains("//"));
            for seg in path.split('/') {
                prop_assert!(path.is_empty() || !seg.is_empty());
                prop_assert!(seg != "." && seg != "..", "segment {:?} in {:?}", seg, path);
            }
            if path.is_empty() {
                prop_assert!(ends_with_slash);
            }
            if matches!(path, Cow::Borrowed(_)) {
                prop_assert!(!raw.contains('%'));
            }
            // Normalising again changes nothing (when no escapes remain).
            if !path.contains('%') {
                let again = normalize_path(&format!("/{path}"));
                prop_assert_eq!(again.map(|(p, _)| p.into_owned()), Ok(path.clone().into_owned()));
            }
        }
    }

    /// (c) select never panics, and partial answers stay inside the file.
    #[test]
    fn select_ranges_are_within_the_file(
        len in prop_oneof![Just(0u64), 1u64..50, 0u64..5000],
        mtime in 0u64..2_000_000_000,
        method in proptest::sample::select(vec![Method::Get, Method::Head, Method::Options, Method::NotAllowed]),
        range in proptest::option::of(prop_oneof![
            "bytes=([0-9]{0,4}-[0-9]{0,4}, ?){0,20}[0-9]{0,4}-[0-9]{0,4}",
            "[a-zA-Z]{0,6}=[-0-9, ]{0,30}",
            any::<String>(),
        ]),
        if_range in proptest::option::of(prop_oneof![
            "W?/?\"[a-f0-9-]{0,12}\"",
            Just("Sun, 06 Nov 1994 08:49:37 GMT".to_owned()),
            any::<String>(),
        ]),
        if_match in proptest::option::of("(\\*|W/|\"[a-f0-9,-]{0,6}\"|, ?| ){0,6}"),
        if_none_match in proptest::option::of("(\\*|W/|\"[a-f0-9,-]{0,6}\"|, ?| ){0,6}"),
        ims in proptest::option::of(0u64..2_000_000_000),
        ius in proptest::option::of(0u64..2_000_000_000),
    ) {
        let etag = ETag::new(mtime, len);
        let v = Validators { len, mtime_secs: mtime, etag: etag.as_str() };
        let req = Request {
            method,
            version: Version::Http11,
            path: Cow::Borrowed("f"),
            ends_with_slash: false,
            asterisk: false,
            keep_alive: true,
            head_len: 0,
            body_len: 0,
            if_match: if_match.as_deref(),
            if_none_match: if_none_match.as_deref(),
            if_modified_since: ims,
            if_unmodified_since: ius,
            if_range: if_range.as_deref(),
            range: range.as_deref(),
        };
        let in_file = |r: &ByteRange| r.start < r.end && r.end <= len;
        match select(&req, &v) {
            Selection::Single(r) => {
                prop_assert!(in_file(&r), "{:?} len {}", r, len);
                prop_assert_eq!(method, Method::Get);
            }
            Selection::Multi(rs) => {
                prop_assert_eq!(method, Method::Get);
                prop_assert!(rs.len() >= 2 && rs.len() <= 16);
                for (i, a) in rs.iter().enumerate() {
                    prop_assert!(in_file(a), "{:?} len {}", a, len);
                    for b in &rs[i + 1..] {
                        prop_assert!(a.end < b.start || b.end < a.start, "{:?} {:?}", a, b);
                    }
                }
            }
            Selection::Unsatisfiable => prop_assert_eq!(method, Method::Get),
            Selection::Full | Selection::NotModified | Selection::PreconditionFailed => {}
        }
    }
}
