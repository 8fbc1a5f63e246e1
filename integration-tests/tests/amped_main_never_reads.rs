//! The hard rule of AMPED, checked head-on: the main process never reads a
//! file from the disk. The document root is a FUSE filesystem that logs the
//! pid behind every read that reaches it; after cold requests — a whole
//! large file, and multiple ranges in an order that jumps backwards — every
//! logged read must come from a helper, none from the main process.

use std::io::Write;
use std::time::Duration;

use integration_tests::harness::{exchange, require_root, Server, TempDir};
use integration_tests::slowfs::SlowFs;

const MIB: usize = 1024 * 1024;

fn content(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
        .collect()
}

fn assert_only_helpers_read(fs: &SlowFs, server: &Server, file: &str) {
    let readers = fs.reader_pids_of(file);
    assert!(
        !readers.is_empty(),
        "{file} was cold, so something must have read it"
    );
    let main = server.engine_pid();
    assert!(
        !readers.contains(&main),
        "the main process (pid {main}) read {file} from the disk: readers {readers:?}"
    );
    let helpers = server.helper_pids();
    assert!(
        readers.iter().all(|pid| helpers.contains(pid)),
        "reads of {file} by {readers:?}, helpers are {helpers:?}"
    );
}

#[test]
fn whole_cold_file_is_read_by_helpers_only() {
    if !require_root("mounts FUSE") {
        return;
    }
    let source = TempDir::new("mainreads-src");
    let data = content(3 * MIB + 123);
    source.write("big.bin", &data);
    let fs = SlowFs::mount(source.path(), Duration::from_millis(20)).expect("mount flash-slowfs");
    let server = Server::start(fs.mountpoint(), &["--helpers", "2"]);
    let response = exchange(
        &server,
        b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert!(response.body == data, "body differs");
    assert_only_helpers_read(&fs, &server, "big.bin");
}

#[test]
fn ranges_that_jump_backwards_are_read_by_helpers_only() {
    if !require_root("mounts FUSE") {
        return;
    }
    let source = TempDir::new("mainreads-ranges-src");
    let data = content(64 * MIB);
    source.write("ranges.bin", &data);
    let fs = SlowFs::mount(source.path(), Duration::from_millis(20)).expect("mount flash-slowfs");
    let server = Server::start(fs.mountpoint(), &["--helpers", "2"]);
    // The first range is far into the file, the second at its start: what
    // was checked for the first says nothing about the second.
    let far = 47 * MIB;
    let mut request = Vec::new();
    write!(request, "GET /ranges.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\nRange: bytes={far}-{},0-99\r\n\r\n", far + 99).unwrap();
    let response = exchange(&server, &request);
    assert_eq!(response.status, 206);
    let body = &response.body;
    let find = |needle: &[u8]| body.windows(needle.len()).position(|w| w == needle);
    assert!(
        find(&data[far..far + 100]).is_some(),
        "the far range is in the body"
    );
    assert!(
        find(&data[..100]).is_some(),
        "the first 100 bytes are in the body"
    );
    assert_only_helpers_read(&fs, &server, "ranges.bin");
}
