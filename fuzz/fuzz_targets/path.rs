//! `normalize_path` on arbitrary strings.
//!
//! Invariants on `Ok((path, ends_with_slash))`: no leading or trailing '/',
//! no empty, "." or ".." segment, no NUL; the root "" ends with a slash; a
//! borrowed result only when the input had no escape; and normalising
//! "/" + path again gives the same path (when no '%' remains to decode).
//! Inputs not starting with '/' or containing NUL are always errors.
#![no_main]

use std::borrow::Cow;

use flash_http::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let result = normalize_path(raw);
    if !raw.starts_with('/') || raw.contains('\0') {
        assert!(result.is_err(), "{raw:?} accepted");
    }
    let Ok((path, ends_with_slash)) = result else {
        return;
    };
    assert!(!path.starts_with('/'), "{path:?}");
    assert!(!path.ends_with('/'), "{path:?}");
    assert!(!path.contains('\0'), "{path:?}");
    if path.is_empty() {
        assert!(ends_with_slash, "root without slash from {raw:?}");
    } else {
        for seg in path.split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "segment {seg:?} in {path:?}"
            );
        }
    }
    if matches!(path, Cow::Borrowed(_)) {
        assert!(!raw.contains('%'), "borrowed result from escaped {raw:?}");
    }
    if !path.contains('%') {
        let rooted = format!("/{path}");
        let again = normalize_path(&rooted).map(|(p, _)| p.into_owned());
        assert_eq!(again.as_deref(), Ok(&*path), "not idempotent");
        let slashed = format!("/{path}/");
        let again = normalize_path(&slashed).map(|(p, s)| (p.into_owned(), s));
        assert_eq!(
            again,
            Ok((path.clone().into_owned(), true)),
            "trailing slash"
        );
    }
});
