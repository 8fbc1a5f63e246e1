//! Request-path normalisation: the one place that decides which file a
//! request may name, so it is strict (every doubt is a 400) and exhaustively
//! tested.

use std::borrow::Cow;

use crate::request::RequestError;

/// Normalise a request path (the part of the target before any '?'):
/// percent-decode, remove dot segments, collapse empty segments. Returns the
/// relative path ("" for the root) and whether it ended in '/'.
///
/// Errors (400): bad escape, NUL (raw or encoded), invalid UTF-8 after
/// decoding, a ".." that would climb above the root, not starting with '/'.
///
/// Dot segments are removed *after* decoding, so `%2e%2e` and `..%2f` cannot
/// smuggle a parent reference past the check; `%2f` therefore acts as a
/// separator. A backslash is an ordinary character (the server runs on Unix).
///
/// The result is `Cow::Borrowed` (a slice of `raw`) unless decoding or
/// normalisation changed something, so typical paths cost no allocation.
///
/// ```
/// use flash_http::normalize_path;
/// assert_eq!(normalize_path("/a/b/").unwrap(), ("a/b".into(), true));
/// assert_eq!(normalize_path("/a/./c%20d/../e").unwrap(), ("a/e".into(), false));
/// assert!(normalize_path("/a/%2e%2e/..").is_err());
/// ```
pub fn normalize_path(raw: &str) -> Result<(Cow<'_, str>, bool), RequestError> {
    if !raw.starts_with('/') {
        return Err(RequestError::BadRequest("path does not start with '/'"));
    }
    if raw.contains('\0') {
        return Err(RequestError::BadRequest("NUL in path"));
    }
    if let Some(done) = borrowed_fast_path(raw) {
        return Ok(done);
    }
    let decoded = percent_decode(raw)?;
    let (out, ends_with_slash) = remove_dot_segments(&decoded)?;
    Ok((Cow::Owned(out), ends_with_slash))
}

/// The common case: no escapes and no "", "." or ".." segment except the empty
/// one after a trailing slash. Then the answer is a slice of the input.
fn borrowed_fast_path(raw: &str) -> Option<(Cow<'_, str>, bool)> {
    if raw.contains('%') {
        return None;
    }
    let rest = raw.strip_prefix('/')?;
    let (body, ends_with_slash) = match rest.strip_suffix('/') {
        Some(body) => (body, true),
        None => (rest, rest.is_empty()),
    };
    if body.is_empty() {
        return Some((Cow::Borrowed(body), true));
    }
    let clean = body
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    clean.then_some((Cow::Borrowed(body), ends_with_slash))
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode %XX escapes; the result must be NUL-free UTF-8.
fn percent_decode(raw: &str) -> Result<Cow<'_, str>, RequestError> {
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            match (hi, lo) {
                (Some(hi), Some(lo)) => {
                    let v = hi * 16 + lo;
                    if v == 0 {
                        return Err(RequestError::BadRequest("encoded NUL in path"));
                    }
                    out.push(v);
                    i += 3;
                }
                _ => return Err(RequestError::BadRequest("bad percent escape in path")),
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| RequestError::BadRequest("path is not UTF-8 after decoding"))
}

/// RFC 3986 section 5.2.4 on a decoded absolute path, plus collapsing of empty
/// segments; climbing above the root is an error rather than being clamped,
/// because a client that does it is probing.
fn remove_dot_segments(decoded: &str) -> Result<(String, bool), RequestError> {
    let rest = decoded
        .strip_prefix('/')
        .ok_or(RequestError::BadRequest("path does not start with '/'"))?;
    let mut out = String::with_capacity(rest.len());
    let mut last = "";
    for seg in rest.split('/') {
        last = seg;
        match seg {
            "" | "." => {}
            ".." => {
                if out.is_empty() {
                    return Err(RequestError::BadRequest("path climbs above the root"));
                }
                let cut = out.rfind('/').unwrap_or(0);
                out.truncate(cut);
            }
            _ => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(seg);
            }
        }
    }
    let ends_with_slash = last.is_empty() || last == "." || last == ".." || out.is_empty();
    Ok((out, ends_with_slash))
}

/// Whether a normalised relative path (as in [`Request::path`]: no leading
/// '/', no empty, "." or ".." segments) names or passes through a hidden
/// entry: some segment starts with '.' (".git/config", "a/.env").
///
/// The exception is a first segment exactly `.well-known` (RFC 8615), so
/// ACME challenges and other well-known URIs stay reachable; a hidden segment
/// below it (".well-known/.secret") is still hidden, and the match is
/// case-sensitive (".Well-Known" is hidden). Never allocates.
///
/// [`Request::path`]: crate::Request::path
///
/// ```
/// use flash_http::is_hidden;
/// assert!(is_hidden(".git/config"));
/// assert!(is_hidden("a/.env"));
/// assert!(!is_hidden(".well-known/acme-challenge/x"));
/// assert!(is_hidden(".well-known/.x"));
/// assert!(!is_hidden("docs/index.html"));
/// ```
pub fn is_hidden(path: &str) -> bool {
    let mut segments = path.split('/');
    let first_is_well_known = segments.next() == Some(".well-known");
    let rest_hidden = segments.any(|seg| seg.starts_with('.'));
    rest_hidden || (!first_is_well_known && path.starts_with('.'))
}

/// Percent-encode a relative path for use in a `Location` header (or HTML):
/// every byte outside RFC 3986 `pchar` and '/' is escaped, so a decoded path
/// containing CR, LF, spaces or quotes cannot break the response.
/// Borrowed when nothing needed escaping.
///
/// ```
/// assert_eq!(flash_http::percent_encode_path("a b/c\r\n"), "a%20b/c%0D%0A");
/// assert_eq!(flash_http::percent_encode_path("plain/path.txt"), "plain/path.txt");
/// ```
pub fn percent_encode_path(path: &str) -> Cow<'_, str> {
    fn keep(b: u8) -> bool {
        is_unreserved_or_sub_delim(b) || matches!(b, b':' | b'@' | b'/')
    }
    if path.bytes().all(keep) {
        return Cow::Borrowed(path);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(path.len() + 16);
    for b in path.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    Cow::Owned(out)
}

/// RFC 3986 `unreserved` or `sub-delims`: the bytes a path segment or a
/// host name may carry unencoded.
pub(crate) fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, bool) {
        let (p, s) = normalize_path(raw).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
        (p.into_owned(), s)
    }

    fn is_borrowed(raw: &str) -> bool {
        matches!(normalize_path(raw), Ok((Cow::Borrowed(_), _)))
    }

    #[test]
    fn root_and_simple() {
        assert_eq!(ok("/"), ("".into(), true));
        assert_eq!(ok("/index.html"), ("index.html".into(), false));
        assert_eq!(ok("/a/b/c.txt"), ("a/b/c.txt".into(), false));
        assert_eq!(ok("/dir/"), ("dir".into(), true));
        assert_eq!(ok("/a/b/"), ("a/b".into(), true));
    }

    #[test]
    fn borrowed_when_unchanged() {
        assert!(is_borrowed("/"));
        assert!(is_borrowed("/a/b.txt"));
        assert!(is_borrowed("/a/b/"));
        assert!(is_borrowed("/...hidden/.x"));
        assert!(!is_borrowed("/a%20b"));
        assert!(!is_borrowed("/a//b"));
        assert!(!is_borrowed("/a/./b"));
        assert!(!is_borrowed("/a/../b"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(ok("/a%20b"), ("a b".into(), false));
        assert_eq!(ok("/%41%4a%4A"), ("AJJ".into(), false));
        assert_eq!(ok("/caf%C3%A9"), ("café".into(), false));
        assert_eq!(ok("/a%2fb"), ("a/b".into(), false));
        assert_eq!(ok("/%25"), ("%".into(), false));
    }

    #[test]
    fn bad_escapes() {
        for raw in ["/%", "/%4", "/%zz", "/%g0", "/a%2", "/%%41"] {
            assert!(normalize_path(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn nul_rejected() {
        assert!(normalize_path("/a%00b").is_err());
        assert!(normalize_path("/a\0b").is_err());
    }

    #[test]
    fn invalid_utf8_rejected() {
        assert!(normalize_path("/%ff").is_err());
        assert!(normalize_path("/%C3").is_err());
        assert!(normalize_path("/%C3%28").is_err());
    }

    #[test]
    fn must_start_with_slash() {
        assert!(normalize_path("").is_err());
        assert!(normalize_path("a/b").is_err());
        assert!(normalize_path("%2fa").is_err());
    }

    #[test]
    fn dot_segments() {
        assert_eq!(ok("/a/./b"), ("a/b".into(), false));
        assert_eq!(ok("/a/b/../c"), ("a/c".into(), false));
        assert_eq!(ok("/a/b/.."), ("a".into(), true));
        assert_eq!(ok("/a/b/."), ("a/b".into(), true));
        assert_eq!(ok("/a/.."), ("".into(), true));
        assert_eq!(ok("/."), ("".into(), true));
        assert_eq!(ok("/a/b/../../c/"), ("c".into(), true));
        assert_eq!(ok("/.../a"), (".../a".into(), false));
        assert_eq!(ok("/a..b/.c"), ("a..b/.c".into(), false));
    }

    #[test]
    fn encoded_dot_segments_are_caught() {
        assert_eq!(ok("/a/%2e%2e/b"), ("b".into(), false));
        assert_eq!(ok("/a/%2E/b"), ("a/b".into(), false));
        assert!(normalize_path("/%2e%2e").is_err());
        assert!(normalize_path("/%2e%2e/etc/passwd").is_err());
        assert!(normalize_path("/..%2fetc").is_err());
        assert!(normalize_path("/a/..%2f..%2fetc").is_err());
        assert!(normalize_path("/a%2f..%2f..").is_err());
    }

    #[test]
    fn climbing_above_root_rejected() {
        for raw in [
            "/..",
            "/../a",
            "/a/../..",
            "/a/b/../../../c",
            "//..",
            "/./..",
        ] {
            assert!(normalize_path(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn empty_segments_collapse() {
        assert_eq!(ok("//"), ("".into(), true));
        assert_eq!(ok("//a///b//"), ("a/b".into(), true));
        assert_eq!(ok("/a%2f%2fb"), ("a/b".into(), false));
    }

    #[test]
    fn backslash_is_ordinary() {
        assert_eq!(ok("/a\\..\\b"), ("a\\..\\b".into(), false));
        assert_eq!(ok("/..\\x"), ("..\\x".into(), false));
        assert_eq!(ok("/%5c"), ("\\".into(), false));
    }

    #[test]
    fn hidden_segments() {
        for p in [
            ".git",
            ".git/config",
            "a/.env",
            "a/b/.htpasswd",
            ".well-known/.secret",
            ".well-known/a/.b/c",
            ".well-known./x",
            ".well-knownx",
            ".Well-Known/x",
            "a/.well-known/x",
            "...",
            "a/..b",
            ".",
        ] {
            assert!(is_hidden(p), "{p:?}");
        }
        for p in [
            "",
            "index.html",
            "a/b/c.txt",
            "a.b/c.d",
            "a./b",
            "a/b.",
            ".well-known",
            ".well-known/acme-challenge/tok.en",
            ".well-known/security.txt",
            "x/well-known",
            "a\\.b",
        ] {
            assert!(!is_hidden(p), "{p:?}");
        }
    }

    #[test]
    fn hidden_after_normalisation() {
        // Encoded dots are decoded before the check sees the path.
        for raw in ["/%2egit/config", "/a/%2Eenv", "/x/../.env", "//.ssh/"] {
            assert!(is_hidden(&ok(raw).0), "{raw}");
        }
        assert!(!is_hidden(&ok("/.well-known/./acme-challenge/x").0));
    }

    #[test]
    fn encode_path() {
        assert_eq!(percent_encode_path("a b"), "a%20b");
        assert_eq!(percent_encode_path("café"), "caf%C3%A9");
        assert_eq!(percent_encode_path("%"), "%25");
        assert!(matches!(percent_encode_path("a/b-c"), Cow::Borrowed(_)));
        // Round trip through the decoder.
        let s = "dir with space/ü?#\"<>";
        let enc = percent_encode_path(s);
        assert_eq!(ok(&format!("/{enc}")).0, s);
    }
}
