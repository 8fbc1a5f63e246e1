//! Flash's caches seen from outside: a file replaced, changed or deleted on
//! disk is noticed within the path cache's freshness interval (the rule is
//! about time, so these tests let that time pass), the cache really is in
//! use within it, and each cache can be switched off without changing what
//! is served.

use std::time::{Duration, Instant};

use integration_tests::harness::{get, Server, TempDir};

const TTL: Duration = Duration::from_millis(400);

/// Waits until `TTL` has passed since `since`: the time the rule grants.
fn let_ttl_pass(since: Instant) {
    let elapsed = since.elapsed();
    if elapsed < TTL {
        std::thread::sleep(TTL - elapsed);
    }
}

fn start(root: &TempDir, arch: &str) -> Server {
    Server::start(root.path(), &["--arch", arch, "--path-cache-ttl", "400ms"])
}

fn replaced_file_is_noticed(arch: &str) {
    let root = TempDir::new("cache-replace");
    root.write("page.html", "old page");
    let server = start(&root, arch);
    assert_eq!(get(&server, "/page.html").body, b"old page");
    // Replace by rename, as deploy tools do: a new inode under the old name.
    root.write("page.html.tmp", "the new page");
    std::fs::rename(
        root.path().join("page.html.tmp"),
        root.path().join("page.html"),
    )
    .unwrap();
    let changed_at = Instant::now();
    let_ttl_pass(changed_at);
    let response = get(&server, "/page.html");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"the new page");
}

#[test]
fn replaced_file_is_noticed_within_the_ttl_amped() {
    replaced_file_is_noticed("amped");
}

#[test]
fn replaced_file_is_noticed_within_the_ttl_sped() {
    replaced_file_is_noticed("sped");
}

#[test]
fn changed_and_deleted_files_are_noticed_within_the_ttl() {
    let root = TempDir::new("cache-change");
    let path = root.write("data.txt", "12345");
    let server = start(&root, "amped");
    let first = get(&server, "/data.txt");
    assert_eq!(first.body, b"12345");

    std::fs::write(&path, "changed in place, longer").unwrap();
    let changed_at = Instant::now();
    let_ttl_pass(changed_at);
    let second = get(&server, "/data.txt");
    assert_eq!(second.body, b"changed in place, longer");
    assert_ne!(first.header("etag"), second.header("etag"));

    std::fs::remove_file(&path).unwrap();
    let deleted_at = Instant::now();
    let_ttl_pass(deleted_at);
    assert_eq!(get(&server, "/data.txt").status, 404);

    // And a file that appears is found (no negative caching beyond the TTL).
    root.write("data.txt", "back");
    let_ttl_pass(Instant::now());
    assert_eq!(get(&server, "/data.txt").body, b"back");
}

#[test]
fn within_the_ttl_the_path_cache_answers() {
    // Proof that the cache is in use: with a long TTL, a change the kernel
    // does not report for the cached file itself (its directory renamed
    // away and a new one put in its place) is not seen.
    let root = TempDir::new("cache-used");
    root.write("d/a.txt", "cached");
    let server = Server::start(root.path(), &["--path-cache-ttl", "1h"]);
    assert_eq!(get(&server, "/d/a.txt").body, b"cached");
    std::fs::rename(root.path().join("d"), root.path().join("old")).unwrap();
    root.write("d/a.txt", "new");
    assert_eq!(get(&server, "/d/a.txt").body, b"cached");
}

#[test]
fn with_the_path_cache_off_changes_show_at_once() {
    let root = TempDir::new("cache-off");
    root.write("a.txt", "one");
    let server = Server::start(root.path(), &["--path-cache-entries", "0"]);
    assert_eq!(get(&server, "/a.txt").body, b"one");
    root.write("a.txt", "two!");
    assert_eq!(get(&server, "/a.txt").body, b"two!");
    std::fs::remove_file(root.path().join("a.txt")).unwrap();
    assert_eq!(get(&server, "/a.txt").status, 404);
}

#[test]
fn every_cache_combination_serves_the_same_bytes() {
    let root = TempDir::new("cache-combos");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    root.write("big.bin", &big);
    root.write("small.css", "body { color: red }");
    for path_cache in ["6000", "0"] {
        for header_cache in [true, false] {
            for cache_memory in ["128M", "0"] {
                let mut args = vec![
                    "--path-cache-entries",
                    path_cache,
                    "--cache-memory",
                    cache_memory,
                ];
                if !header_cache {
                    args.push("--no-header-cache");
                }
                let server = Server::start(root.path(), &args);
                for _ in 0..2 {
                    let small = get(&server, "/small.css");
                    assert_eq!(small.body, b"body { color: red }", "{args:?}");
                    assert_eq!(
                        small.header("content-type"),
                        Some("text/css; charset=utf-8"),
                        "{args:?}"
                    );
                    assert!(
                        small.header("date").is_some_and(|d| d.ends_with(" GMT")),
                        "{args:?}"
                    );
                    assert!(
                        get(&server, "/big.bin").body == big,
                        "{args:?}: big file differs"
                    );
                }
            }
        }
    }
}

#[test]
fn cached_head_follows_the_request_not_the_first_one() {
    // The cached head is for 200 keep-alive; other variants are built anew.
    let root = TempDir::new("cache-variants");
    root.write("a.txt", "0123456789");
    let server = Server::start(root.path(), &[]);
    assert_eq!(get(&server, "/a.txt").status, 200); // Connection: close variant
    let keep =
        integration_tests::harness::exchange(&server, b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(keep.header("connection"), Some("keep-alive"));
    let again =
        integration_tests::harness::exchange(&server, b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(again.header("connection"), Some("keep-alive"));
    assert_eq!(again.body, b"0123456789");
    let close = get(&server, "/a.txt");
    assert_eq!(close.header("connection"), Some("close"));
    let range = integration_tests::harness::exchange(
        &server,
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=2-4\r\n\r\n",
    );
    assert_eq!((range.status, range.body.as_slice()), (206, &b"234"[..]));
    let head =
        integration_tests::harness::exchange(&server, b"HEAD /a.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(head.header("content-length"), Some("10"));
}
