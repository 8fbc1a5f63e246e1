//! Property tests: the parser never panics and is consistent under
//! incremental feeding; normalised paths keep their invariants; `select`
//! never panics and only produces ranges inside the file.

use std::borrow::Cow;

use flash_http::{
    normalize_path, parse_request, select, ByteRange, ETag, Limits, Method, Parse, Request,
    Selection, Validators,
};
use proptest::prelude::*;

/// Plausible request heads (method, target, version, headers, blank line,
/// trailing bytes) with an optional one-byte mutation, so that generated
/// inputs reach every stage of the parser and not just its first byte.
fn structured_request() -> impl Strategy<Value = Vec<u8>> {
    use proptest::sample::{select, Index};
    let method = prop_oneof![
        8 => select(vec!["GET ", "GET ", "HEAD ", "OPTIONS ", "POST "]),
        1 => select(vec!["BREW ", "get ", "", "G T "]),
    ];
    let target = prop_oneof![
        3 => select(vec![
            "/", "/a/b", "/dir/", "/%2e%2e/", "/a/../b", "/x?q=1", "/x#f", "http://h/p",
            "https://h", "*", "a", "/%zz", "/%c3%a9",
        ]).prop_map(str::to_owned),
        1 => "/[/a-z%.?*:]{0,20}",
    ];
    let version = prop_oneof![
        8 => select(vec![" HTTP/1.1\r\n", " HTTP/1.1\r\n", " HTTP/1.0\r\n", " HTTP/1.1\n"]),
        1 => select(vec![" HTTP/2.0\r\n", " HTTP/1.2\r\n", " HTTX/1.1\r\n", "  HTTP/1.1\r\n"]),
    ];
    let host = prop_oneof![4 => Just("Host: h\r\n"), 1 => Just("")];
    let header = prop_oneof![
        6 => select(vec![
            "host: h\r\n",
            "Connection: close\r\n", "Connection: keep-alive, x\r\n",
            "Content-Length: 5\r\n", "Content-Length: 5, 6\r\n", "Content-Length: 99999999\r\n",
            "Transfer-Encoding: chunked\r\n", "Range: bytes=0-1\r\n", "If-Range: \"x\"\r\n",
            "If-None-Match: \"x\", W/\"y\"\r\n", "If-Match: *\r\n",
            "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
            "If-Unmodified-Since: never\r\n", " folded\r\n", "X-Empty:\r\n",
        ]).prop_map(str::to_owned),
        4 => "[A-Za-z-]{1,8}: [ -~]{0,10}\r\n",
        1 => "[ -~\r\n\t]{0,8}",
    ];
    let end = prop_oneof![6 => Just("\r\n"), 1 => select(vec!["\n", "", "\r"])];
    let tail = proptest::collection::vec(any::<u8>(), 0..10);
    let mutation = proptest::option::weighted(0.1, (any::<Index>(), any::<u8>()));
    (
        method,
        target,
        (version, host),
        proptest::collection::vec(header, 0..5),
        end,
        tail,
        mutation,
    )
        .prop_map(|(m, t, (v, host), hs, e, tail, mutation)| {
            let mut buf = format!("{m}{t}{v}{host}{}{e}", hs.concat()).into_bytes();
            buf.extend_from_slice(&tail);
            if let Some((at, byte)) = mutation {
                let at = at.index(buf.len() + 1);
                buf.insert(at, byte);
            }
            buf
        })
}

fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => structured_request(),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        3 => Just(Limits::default()),
        1 => (0usize..300, 0usize..8, 0usize..40, 0u64..10).prop_map(|(h, n, t, b)| Limits {
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
                // The raw query is safe to echo into a header.
                if let Some(q) = req.query {
                    prop_assert!(
                        q.bytes().all(|b| b > b' ' && b != 0x7f && b != b'#'),
                        "query {:?}", q
                    );
                }
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
                let rooted = format!("/{path}");
                let again = normalize_path(&rooted);
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
            if_match: if_match.as_deref(),
            if_none_match: if_none_match.as_deref(),
            if_modified_since: ims,
            if_unmodified_since: ius,
            if_range: if_range.as_deref(),
            range: range.as_deref(),
            ..Request::default()
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
