//! The cached path allocates nothing per request: the server runs in this
//! process on its own thread, under a global allocator that counts the
//! allocations made by that thread only, while a client thread sends
//! keep-alive requests for a cached file.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use flash_core::{AccessLog, Arch, Config, LogFormat, LogTarget, Server};
use integration_tests::harness::{binary, read_response, TempDir};

struct CountingAllocator;

thread_local! {
    /// The counter of the server running on this thread, if any (tests run
    /// in parallel, each with its own server and counter).
    static COUNTER: Cell<Option<&'static AtomicU64>> = const { Cell::new(None) };
}

fn count_one() {
    if let Some(counter) = COUNTER.with(Cell::get) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is a thread-local flag plus an atomic, neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations_while_serving(arch: Arch, path: &str, requests: usize) -> u64 {
    allocations_while_serving_logged(arch, path, requests, None)
}

/// As `allocations_while_serving`, with an access log in `format` (written
/// to a file in the test's directory).
fn allocations_while_serving_logged(
    arch: Arch,
    path: &str,
    requests: usize,
    log: Option<LogFormat>,
) -> u64 {
    let root = TempDir::new("noalloc");
    root.write("small.html", vec![b'x'; 1024]);
    root.write("large.bin", vec![b'y'; 300 * 1024]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_reader, mut stop_writer) = UnixStream::pair().unwrap();
    let mut config = Config::new(root.path().to_path_buf(), binary("flash-helper"));
    config.arch = arch;
    config.helpers = 2;
    // Revalidation of the path cache (a helper job every half TTL) is not
    // per-request work: keep it out of the measured window.
    config.path_freshness = std::time::Duration::from_secs(3600);
    let allocations: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let log = log.map(|format| {
        AccessLog::open(LogTarget::File(root.path().join("access.log")), format).unwrap()
    });
    let server = std::thread::spawn(move || {
        let mut server =
            Server::new(config, vec![listener], Some(OwnedFd::from(stop_reader))).unwrap();
        if let Some(log) = log {
            server.set_access_log(log);
        }
        COUNTER.with(|c| c.set(Some(allocations)));
        server.run().unwrap();
        COUNTER.with(|c| c.set(None));
    });

    let client = std::net::TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(integration_tests::harness::IO_TIMEOUT))
        .unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut writer = client;
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut exchange = || {
        writer.write_all(request.as_bytes()).unwrap();
        let response = read_response(&mut reader, false).unwrap();
        assert_eq!(response.status, 200);
    };
    // Warm up: resolve, cache the path, map, build the cached head, grow buffers.
    for _ in 0..20 {
        exchange();
    }
    let (tx, rx) = mpsc::channel();
    let before = allocations.load(Ordering::Relaxed);
    for _ in 0..requests {
        exchange();
    }
    tx.send(allocations.load(Ordering::Relaxed) - before)
        .unwrap();
    stop_writer.write_all(b"x").unwrap();
    drop(writer);
    drop(reader);
    server.join().unwrap();
    rx.recv().unwrap()
}

#[test]
fn cached_small_file_requests_allocate_nothing_amped() {
    let n = allocations_while_serving(Arch::Amped, "/small.html", 300);
    assert_eq!(
        n, 0,
        "allocations for 300 cached requests (AMPED, writev path)"
    );
}

#[test]
fn cached_large_file_requests_allocate_nothing_amped() {
    let n = allocations_while_serving(Arch::Amped, "/large.bin", 100);
    assert_eq!(
        n, 0,
        "allocations for 100 cached requests (AMPED, sendfile path)"
    );
}

#[test]
fn cached_requests_allocate_nothing_sped() {
    let n = allocations_while_serving(Arch::Sped, "/small.html", 300);
    assert_eq!(n, 0, "allocations for 300 cached requests (SPED)");
}

#[test]
fn cached_requests_allocate_nothing_with_access_log() {
    for format in [LogFormat::Combined, LogFormat::Json] {
        let n = allocations_while_serving_logged(Arch::Amped, "/small.html", 300, Some(format));
        assert_eq!(
            n, 0,
            "allocations for 300 cached requests with a {format:?} access log"
        );
    }
}
