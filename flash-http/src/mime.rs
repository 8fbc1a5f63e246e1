//! Content-Type by file extension, from a maintained table: a static server
//! must not guess from content and must not depend on the host's mime files.
//!
//! Two layers, both `&'static str` and allocation-free per call:
//!
//! 1. `overrides`: a small `match` on the lower-cased extension for the
//!    types a web site serves most and for the ones where this server's
//!    policy differs from the crate's table (`.mjs` is JavaScript, `.map` is
//!    JSON, `.woff`/`.otf` use the registered `font/*` types, `.yaml` is
//!    `application/yaml` per RFC 9512, ...). Text types here are written
//!    out with their charset.
//! 2. Otherwise the [`mime_guess`] crate's table (about 1400 extensions,
//!    sourced from jshttp/mime-db; case-insensitive binary search over a
//!    static array). It returns bare types; a `text/*` type gets
//!    `"; charset=utf-8"` from a table built **once per process**, on the
//!    first lookup that needs it, holding every `text/*` type the crate can
//!    return (about 70, each a small leaked `String`, so the memory is
//!    bounded by the crate's table, not by the requests). After that the
//!    lookup is a lock-free `OnceLock` read and a binary search.
//!
//! Building that second table ahead of time would mean copying the crate's
//! list of text types by hand and keeping it in sync; building it from the
//! crate at run time cannot go stale. The common text types never touch it.
//!
//! Only `text/*` types carry a charset: for them the default (US-ASCII, or a
//! browser's guess) would be wrong for UTF-8 files. `application/json`
//! (RFC 8259), XML-based types such as `image/svg+xml` and
//! `application/xhtml+xml` (self-describing), and `application/yaml`
//! (RFC 9512) define no charset parameter and are sent bare.

use std::sync::OnceLock;

const UNKNOWN: &str = "application/octet-stream";
const CHARSET: &str = "; charset=utf-8";

/// Content-Type for a path by its extension (case-insensitive); `text/*`
/// types carry "; charset=utf-8"; unknown -> "application/octet-stream".
///
/// Only the last path segment is looked at, so a dot in a directory name
/// does not count; a leading dot alone (".profile") is not an extension.
/// Never allocates, except once per process to build the charset table
/// for the rarer `text/*` types (see the module documentation).
///
/// ```
/// use flash_http::content_type;
/// assert_eq!(content_type("a/Index.HTML"), "text/html; charset=utf-8");
/// assert_eq!(content_type("app.mjs"), "text/javascript; charset=utf-8");
/// assert_eq!(content_type("app.wasm"), "application/wasm");
/// assert_eq!(content_type("talk.vtt"), "text/vtt; charset=utf-8");
/// assert_eq!(content_type("book.epub"), "application/epub+zip");
/// assert_eq!(content_type("v1.d/README"), "application/octet-stream");
/// ```
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = match name.rfind('.') {
        Some(dot) if dot > 0 => name.get(dot + 1..).unwrap_or(""),
        _ => return UNKNOWN,
    };
    if ext.is_empty() {
        return UNKNOWN;
    }
    if let Some(ct) = overrides(ext) {
        return ct;
    }
    match mime_guess::from_ext(ext).first_raw() {
        Some(ct) if ct.starts_with("text/") => with_charset(ct),
        Some(ct) => ct,
        None => UNKNOWN,
    }
}

/// The first layer: common and policy-driven types, matched on the
/// lower-cased extension (every extension here is at most 16 bytes; a longer
/// one goes to the crate's table, which is case-insensitive itself).
fn overrides(ext: &str) -> Option<&'static str> {
    let mut lower = [0u8; 16];
    let slot = lower.get_mut(..ext.len())?;
    slot.copy_from_slice(ext.as_bytes());
    slot.make_ascii_lowercase();
    Some(match &*slot {
        // Text (with charset).
        b"html" | b"htm" => "text/html; charset=utf-8",
        b"css" => "text/css; charset=utf-8",
        b"js" | b"mjs" | b"cjs" => "text/javascript; charset=utf-8",
        b"txt" | b"text" | b"log" => "text/plain; charset=utf-8",
        b"xml" => "text/xml; charset=utf-8",
        b"csv" => "text/csv; charset=utf-8",
        b"md" | b"markdown" => "text/markdown; charset=utf-8",
        b"vtt" => "text/vtt; charset=utf-8",
        // Structured text without a charset parameter.
        b"json" | b"map" => "application/json",
        b"webmanifest" => "application/manifest+json",
        b"xhtml" | b"xht" => "application/xhtml+xml",
        b"yaml" | b"yml" => "application/yaml",
        b"svg" => "image/svg+xml",
        // Images.
        b"png" => "image/png",
        b"jpg" | b"jpeg" => "image/jpeg",
        b"gif" => "image/gif",
        b"webp" => "image/webp",
        b"avif" => "image/avif",
        b"ico" => "image/x-icon",
        b"bmp" => "image/bmp",
        // Applications and archives.
        b"wasm" => "application/wasm",
        b"pdf" => "application/pdf",
        b"zip" => "application/zip",
        b"gz" => "application/gzip",
        b"tar" => "application/x-tar",
        b"xz" => "application/x-xz",
        b"bz2" => "application/x-bzip2",
        b"zst" => "application/zstd",
        // Audio and video.
        b"mp4" => "video/mp4",
        b"webm" => "video/webm",
        b"ts" => "video/mp2t",
        b"m3u8" => "application/vnd.apple.mpegurl",
        b"mp3" => "audio/mpeg",
        b"m4a" => "audio/mp4",
        b"ogg" => "audio/ogg",
        b"wav" => "audio/wav",
        // Fonts (RFC 8081).
        b"woff" => "font/woff",
        b"woff2" => "font/woff2",
        b"ttf" => "font/ttf",
        b"otf" => "font/otf",
        _ => return None,
    })
}

/// `ty` (a `text/*` type from the crate's table) with "; charset=utf-8".
fn with_charset(ty: &'static str) -> &'static str {
    static TABLE: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();
    let table = TABLE.get_or_init(text_types_with_charset);
    match table.binary_search_by_key(&ty, |&(bare, _)| bare) {
        Ok(i) => table.get(i).map_or(ty, |&(_, full)| full),
        // Not reachable with the crate's table (every text type it returns
        // is in it); the bare type is still the right type.
        Err(_) => ty,
    }
}

/// Every `text/*` type the crate returns first for some extension, sorted,
/// each paired with a leaked copy carrying the charset (done once).
fn text_types_with_charset() -> Vec<(&'static str, &'static str)> {
    let exts = mime_guess::get_extensions("*", "*").unwrap_or_default();
    let mut types: Vec<&'static str> = exts
        .iter()
        .filter_map(|ext| mime_guess::from_ext(ext).first_raw())
        .filter(|ty| ty.starts_with("text/"))
        .collect();
    types.sort_unstable();
    types.dedup();
    types
        .into_iter()
        .map(|ty| {
            let full: &'static str = String::leak(format!("{ty}{CHARSET}"));
            (ty, full)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_table() {
        let cases = [
            ("html", "text/html; charset=utf-8"),
            ("htm", "text/html; charset=utf-8"),
            ("css", "text/css; charset=utf-8"),
            ("js", "text/javascript; charset=utf-8"),
            ("mjs", "text/javascript; charset=utf-8"),
            ("json", "application/json"),
            ("txt", "text/plain; charset=utf-8"),
            ("xml", "text/xml; charset=utf-8"),
            ("svg", "image/svg+xml"),
            ("png", "image/png"),
            ("jpg", "image/jpeg"),
            ("jpeg", "image/jpeg"),
            ("gif", "image/gif"),
            ("webp", "image/webp"),
            ("avif", "image/avif"),
            ("ico", "image/x-icon"),
            ("bmp", "image/bmp"),
            ("wasm", "application/wasm"),
            ("pdf", "application/pdf"),
            ("zip", "application/zip"),
            ("gz", "application/gzip"),
            ("tar", "application/x-tar"),
            ("xz", "application/x-xz"),
            ("bz2", "application/x-bzip2"),
            ("mp4", "video/mp4"),
            ("webm", "video/webm"),
            ("mp3", "audio/mpeg"),
            ("ogg", "audio/ogg"),
            ("wav", "audio/wav"),
            ("woff", "font/woff"),
            ("woff2", "font/woff2"),
            ("ttf", "font/ttf"),
            ("otf", "font/otf"),
            ("csv", "text/csv; charset=utf-8"),
            ("md", "text/markdown; charset=utf-8"),
            ("map", "application/json"),
            // New with the maintained table.
            ("cjs", "text/javascript; charset=utf-8"),
            ("xhtml", "application/xhtml+xml"),
            ("yaml", "application/yaml"),
            ("yml", "application/yaml"),
            ("webmanifest", "application/manifest+json"),
            ("vtt", "text/vtt; charset=utf-8"),
            ("ics", "text/calendar; charset=utf-8"),
            ("rs", "text/x-rust; charset=utf-8"),
            ("jsonld", "application/ld+json"),
            ("geojson", "application/geo+json"),
            ("rss", "application/rss+xml"),
            ("atom", "application/atom+xml"),
            ("epub", "application/epub+zip"),
            ("7z", "application/x-7z-compressed"),
            ("zst", "application/zstd"),
            ("flac", "audio/flac"),
            ("m4a", "audio/mp4"),
            ("opus", "audio/ogg"),
            ("mov", "video/quicktime"),
            ("ts", "video/mp2t"),
            ("m3u8", "application/vnd.apple.mpegurl"),
            ("apng", "image/apng"),
            ("jxl", "image/jxl"),
            ("tif", "image/tiff"),
            ("eot", "application/vnd.ms-fontobject"),
            (
                "docx",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
        ];
        for (ext, want) in cases {
            assert_eq!(content_type(&format!("dir/file.{ext}")), want, "{ext}");
            let upper = ext.to_ascii_uppercase();
            assert_eq!(content_type(&format!("file.{upper}")), want, "{upper}");
        }
    }

    #[test]
    fn text_types_carry_charset() {
        for ext in [
            "html", "css", "js", "txt", "xml", "csv", "md", "vtt", "ics", "rs", "toml", "c",
        ] {
            let ct = content_type(&format!("f.{ext}"));
            assert!(ct.starts_with("text/"), "{ext}: {ct}");
            assert!(ct.ends_with("; charset=utf-8"), "{ext}: {ct}");
        }
    }

    #[test]
    fn every_text_type_of_the_crate_gets_one_charset() {
        let exts = mime_guess::get_extensions("*", "*").unwrap_or_default();
        assert!(
            exts.len() > 1000,
            "the crate's table shrank: {}",
            exts.len()
        );
        let mut texts = 0;
        for ext in exts {
            let ct = content_type(&format!("f.{ext}"));
            if ct.starts_with("text/") {
                texts += 1;
                assert!(ct.ends_with(CHARSET), "{ext}: {ct}");
                assert_eq!(ct.matches("charset").count(), 1, "{ext}: {ct}");
            } else {
                assert!(!ct.contains("charset"), "{ext}: {ct}");
            }
            // Every value is a header-safe token/token[; param].
            assert!(
                ct.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
                "{ext}: {ct:?}"
            );
        }
        assert!(texts > 50, "{texts}");
    }

    #[test]
    fn same_static_str_every_time() {
        let a = content_type("a.ics");
        let b = content_type("b.ICS");
        assert_eq!(a.as_ptr(), b.as_ptr());
        let a = content_type("a.rs");
        let b = content_type("b.rs");
        assert_eq!(a.as_ptr(), b.as_ptr());
    }

    #[test]
    fn unknown_and_odd_names() {
        for p in [
            "",
            "README",
            "file.unknown",
            "file.",
            ".html",
            "dir.html/file",
            "a/b.d/",
            "x.verylongextension",
            "x.averyveryverylongextensionthatnotablehas",
            "f.é",
            "f.htmlé",
            "f.ht ml",
        ] {
            assert_eq!(content_type(p), "application/octet-stream", "{p:?}");
        }
        assert_eq!(content_type("archive.tar.gz"), "application/gzip");
        assert_eq!(
            content_type(".config/app.js"),
            "text/javascript; charset=utf-8"
        );
    }
}
