//! Content-Type by file extension: a fixed table, because a static server
//! must not guess from content and must not depend on system mime files.

/// Content-Type for a path by its extension (case-insensitive); text types carry
/// "; charset=utf-8"; unknown -> "application/octet-stream".
///
/// Only the last path segment is looked at, so a dot in a directory name
/// does not count; a leading dot alone (".profile") is not an extension.
///
/// ```
/// assert_eq!(flash_http::content_type("a/Index.HTML"), "text/html; charset=utf-8");
/// assert_eq!(flash_http::content_type("app.wasm"), "application/wasm");
/// assert_eq!(flash_http::content_type("v1.d/README"), "application/octet-stream");
/// ```
pub fn content_type(path: &str) -> &'static str {
    const UNKNOWN: &str = "application/octet-stream";
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some(dot) = name.rfind('.') else {
        return UNKNOWN;
    };
    if dot == 0 {
        return UNKNOWN;
    }
    let Some(ext) = name.get(dot + 1..) else {
        return UNKNOWN;
    };
    // Lower-case into a small stack buffer: no allocation, and anything
    // longer than every known extension is unknown anyway.
    let mut lower = [0u8; 12];
    let Some(slot) = lower.get_mut(..ext.len()) else {
        return UNKNOWN;
    };
    slot.copy_from_slice(ext.as_bytes());
    slot.make_ascii_lowercase();
    match &*slot {
        b"html" | b"htm" => "text/html; charset=utf-8",
        b"css" => "text/css; charset=utf-8",
        b"js" | b"mjs" => "text/javascript; charset=utf-8",
        b"json" | b"map" => "application/json",
        b"webmanifest" => "application/manifest+json",
        b"txt" | b"text" | b"log" => "text/plain; charset=utf-8",
        b"xml" => "text/xml; charset=utf-8",
        b"csv" => "text/csv; charset=utf-8",
        b"md" | b"markdown" => "text/markdown; charset=utf-8",
        b"svg" => "image/svg+xml",
        b"png" => "image/png",
        b"jpg" | b"jpeg" => "image/jpeg",
        b"gif" => "image/gif",
        b"webp" => "image/webp",
        b"avif" => "image/avif",
        b"ico" => "image/x-icon",
        b"bmp" => "image/bmp",
        b"wasm" => "application/wasm",
        b"pdf" => "application/pdf",
        b"zip" => "application/zip",
        b"gz" => "application/gzip",
        b"tar" => "application/x-tar",
        b"xz" => "application/x-xz",
        b"bz2" => "application/x-bzip2",
        b"mp4" => "video/mp4",
        b"webm" => "video/webm",
        b"mp3" => "audio/mpeg",
        b"ogg" => "audio/ogg",
        b"wav" => "audio/wav",
        b"woff" => "font/woff",
        b"woff2" => "font/woff2",
        b"ttf" => "font/ttf",
        b"otf" => "font/otf",
        _ => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::content_type;

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
        ];
        for (ext, want) in cases {
            assert_eq!(content_type(&format!("dir/file.{ext}")), want, "{ext}");
            let upper = ext.to_ascii_uppercase();
            assert_eq!(content_type(&format!("file.{upper}")), want, "{upper}");
        }
    }

    #[test]
    fn text_types_carry_charset() {
        for ext in ["html", "css", "js", "txt", "xml", "csv", "md"] {
            let ct = content_type(&format!("f.{ext}"));
            assert!(ct.ends_with("; charset=utf-8"), "{ext}: {ct}");
        }
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
            "f.é",
            "f.htmlé",
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
