//! The hot path of a typical request must not touch the heap: parsing,
//! selection of a single range, the Date cache and building a head into a
//! buffer that already has capacity.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, UNIX_EPOCH};

use flash_http::{
    content_type, parse_request, select, DateCache, ETag, Limits, Parse, ResponseHead, Selection,
    Status, Validators,
};

/// Counts allocations made by the current thread only, so the test
/// harness's other threads cannot disturb the count.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a const-initialised thread-local Cell, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarding the caller's valid layout to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn typical_request_does_not_allocate() {
    let buf: &[u8] = b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: example.com\r\n\
        User-Agent: test\r\nAccept: */*\r\nConnection: keep-alive\r\n\
        If-None-Match: \"other\"\r\nRange: bytes=100-199\r\n\r\n";
    let limits = Limits::default();
    let mut out = Vec::with_capacity(1024);
    let mut dates = DateCache::new();
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);

    // The counter itself works.
    let probe = allocations();
    drop(std::hint::black_box(Box::new(1u8)));
    assert!(allocations() > probe);

    let before = allocations();
    let Ok(Parse::Complete(req)) = parse_request(buf, &limits) else {
        panic!("request did not parse");
    };
    let etag = ETag::new(1_600_000_000, 5000);
    let v = Validators {
        len: 5000,
        mtime_secs: 1_600_000_000,
        etag: etag.as_str(),
    };
    let Selection::Single(range) = select(&req, &v) else {
        panic!("expected a single range");
    };
    let mut head = ResponseHead::new(&mut out, Status::PARTIAL_CONTENT, dates.get(now));
    head.header("Content-Type", content_type(&req.path))
        .header("ETag", etag.as_str())
        .last_modified(v.mtime_secs)
        .content_range(range, v.len)
        .content_length(range.len())
        .connection(req.keep_alive);
    head.finish();
    let after = allocations();

    assert_eq!(after - before, 0, "hot path allocated");
    assert_eq!(req.path, "static/app.js");
    assert!(out.starts_with(b"HTTP/1.1 206 Partial Content\r\n"));
}

/// Content-Type lookups: the common types and the crate's non-text types
/// never allocate; the rarer text types allocate only to build the charset
/// table once per process, and never after that.
#[test]
fn content_type_does_not_allocate_after_warm_up() {
    let common = [
        "a/index.html",
        "app.JS",
        "x.mjs",
        "logo.svg",
        "f.woff2",
        "README",
    ];
    let crate_non_text = ["book.epub", "a.docx", "song.flac", "x.7z", "f.unknownext"];
    let crate_text = ["cal.ics", "main.rs", "Cargo.toml", "a.c", "style.scss"];

    let before = allocations();
    for p in common.iter().chain(&crate_non_text) {
        std::hint::black_box(content_type(std::hint::black_box(p)));
    }
    assert_eq!(allocations() - before, 0, "cold lookups allocated");

    // Warm-up: may build the charset table (other tests may have done it).
    for p in crate_text {
        assert!(content_type(p).ends_with("; charset=utf-8"), "{p}");
    }
    let before = allocations();
    for _ in 0..3 {
        for p in common.iter().chain(&crate_non_text).chain(&crate_text) {
            std::hint::black_box(content_type(std::hint::black_box(p)));
        }
    }
    assert_eq!(allocations() - before, 0, "warm lookups allocated");
}
