//! What is served is what the file holds when the request comes, even when
//! the file changed a moment earlier, and a change during a response never
//! shows as bytes the file did not hold.
//!
//! Between requests: the server runs with the default path-cache TTL (1 s)
//! and every check happens within that second after the file was cached,
//! so only noticing the change at once (inotify) can pass; each test
//! asserts it really was within the second. The server runs as `nobody`
//! when the tests run as root, so that `chmod 000` denies it (as another
//! user it runs as that user, the owner, whom mode 000 denies as well).
//!
//! During a response: a large file is being sent to a client that reads
//! slowly (a small receive buffer, reading paused) when it is truncated,
//! replaced by rename, deleted or made unreadable.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::harness::{
    foreign_byte, is_root, seeded_bytes, start_slow_download, Server, TempDir, IO_TIMEOUT,
};

/// The server's default path-cache TTL: checks must finish within it.
const TTL: Duration = Duration::from_secs(1);

fn start(root: &TempDir, arch: &str) -> Server {
    let mut args = vec!["--arch", arch];
    if is_root() {
        args.extend(["--user", "nobody"]);
    }
    Server::start(root.path(), &args)
}

/// A response read to the end of the connection (`Connection: close`), so
/// a body longer or shorter than its Content-Length shows.
#[derive(Debug)]
struct Fetched {
    status: u16,
    content_length: Option<usize>,
    body: Vec<u8>,
}

fn fetch(server: &Server, path: &str) -> Fetched {
    let mut stream = server.connect();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send request");
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A reset after the response still leaves the response in `raw`.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("GET {path}: {e} after {} bytes", raw.len()),
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no response head in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line in {head:?}"));
    let content_length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    });
    Fetched {
        status,
        content_length,
        body: raw[end + 4..].to_vec(),
    }
}

/// Asserts a complete 200 whose body is exactly `want`, and that it came
/// within the TTL after `cached_at` (else the check proves nothing).
fn assert_serves(
    server: &Server,
    path: &str,
    want: &[u8],
    versions: &[&[u8]],
    cached_at: Instant,
    what: &str,
) {
    let got = fetch(server, path);
    let elapsed = cached_at.elapsed();
    if let Some(at) = foreign_byte(&got.body, versions) {
        panic!(
            "{what}: GET {path} returned byte {:#04x} at offset {at}, which the file never \
             held there (status {}, Content-Length {:?}, body {:?})",
            got.body[at],
            got.status,
            got.content_length,
            String::from_utf8_lossy(&got.body)
        );
    }
    assert!(
        got.status == 200 && got.content_length == Some(want.len()) && got.body == want,
        "{what}: GET {path} must be 200 with Content-Length {} and body {:?}; got status {}, \
         Content-Length {:?}, body {:?}",
        want.len(),
        String::from_utf8_lossy(want),
        got.status,
        got.content_length,
        String::from_utf8_lossy(&got.body)
    );
    assert_within_ttl(elapsed, what);
}

fn assert_status(server: &Server, path: &str, want: u16, cached_at: Instant, what: &str) {
    let got = fetch(server, path);
    let elapsed = cached_at.elapsed();
    assert_eq!(
        got.status,
        want,
        "{what}: GET {path}: {:?}",
        String::from_utf8_lossy(&got.body)
    );
    assert_within_ttl(elapsed, what);
}

fn assert_within_ttl(elapsed: Duration, what: &str) {
    assert!(
        elapsed < TTL,
        "{what}: the check took {elapsed:?} after the file was cached, longer than the \
         path-cache TTL ({TTL:?}): it cannot tell noticing at once from expiry (machine too \
         loaded?)"
    );
}

/// Rewrites the file at `path` in place (same inode): open with
/// `O_WRONLY|O_TRUNC`, write, close.
fn rewrite_in_place(path: &Path, content: &[u8]) {
    let inode = std::fs::metadata(path).unwrap().ino();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    file.write_all(content).unwrap();
    drop(file);
    assert_eq!(
        std::fs::metadata(path).unwrap().ino(),
        inode,
        "rewritten in place"
    );
}

// ---- between requests -------------------------------------------------

fn shorter_rewrite_is_served_at_once(arch: &str) {
    let root = TempDir::new(&format!("integrity-shorter-{arch}"));
    let old = b"AAAAAAAAAAAAAAAAAAAA\n";
    let new = b"BB\n";
    let path = root.write("f.txt", old);
    let server = start(&root, arch);
    let what = format!("--arch {arch}, rewritten shorter in place");
    let cached_at = Instant::now();
    assert_serves(&server, "/f.txt", old, &[old], cached_at, &what);
    rewrite_in_place(&path, new);
    assert_serves(&server, "/f.txt", new, &[old, new], cached_at, &what);
}

#[test]
fn amped_serves_a_shorter_in_place_rewrite_at_once() {
    shorter_rewrite_is_served_at_once("amped");
}

#[test]
fn sped_serves_a_shorter_in_place_rewrite_at_once() {
    shorter_rewrite_is_served_at_once("sped");
}

fn longer_rewrite_is_served_at_once(arch: &str) {
    let root = TempDir::new(&format!("integrity-longer-{arch}"));
    let old = b"BB\n";
    let new = b"CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC\n";
    let path = root.write("f.txt", old);
    let server = start(&root, arch);
    let what = format!("--arch {arch}, rewritten longer in place");
    let cached_at = Instant::now();
    assert_serves(&server, "/f.txt", old, &[old], cached_at, &what);
    rewrite_in_place(&path, new);
    assert_serves(&server, "/f.txt", new, &[old, new], cached_at, &what);
}

#[test]
fn amped_serves_a_longer_in_place_rewrite_at_once() {
    longer_rewrite_is_served_at_once("amped");
}

#[test]
fn sped_serves_a_longer_in_place_rewrite_at_once() {
    longer_rewrite_is_served_at_once("sped");
}

fn chmod_is_noticed_at_once(arch: &str) {
    let root = TempDir::new(&format!("integrity-chmod-{arch}"));
    let content = b"readable for now\n";
    let path = root.write("f.txt", content);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = start(&root, arch);
    let what = format!("--arch {arch}, chmod 000 then 644");
    let cached_at = Instant::now();
    assert_serves(&server, "/f.txt", content, &[content], cached_at, &what);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    assert_status(&server, "/f.txt", 403, cached_at, &what);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_serves(&server, "/f.txt", content, &[content], cached_at, &what);
}

#[test]
fn amped_notices_chmod_at_once() {
    chmod_is_noticed_at_once("amped");
}

#[test]
fn sped_notices_chmod_at_once() {
    chmod_is_noticed_at_once("sped");
}

fn delete_and_recreate_are_noticed_at_once(arch: &str) {
    let root = TempDir::new(&format!("integrity-delete-{arch}"));
    let old = b"the first file\n";
    let new = b"its successor, with more to say\n";
    let path = root.write("f.txt", old);
    let server = start(&root, arch);
    let what = format!("--arch {arch}, deleted then re-created");
    let cached_at = Instant::now();
    assert_serves(&server, "/f.txt", old, &[old], cached_at, &what);
    std::fs::remove_file(&path).unwrap();
    assert_status(&server, "/f.txt", 404, cached_at, &what);
    root.write("f.txt", new);
    assert_serves(&server, "/f.txt", new, &[old, new], cached_at, &what);
}

#[test]
fn amped_notices_delete_and_recreate_at_once() {
    delete_and_recreate_are_noticed_at_once("amped");
}

#[test]
fn sped_notices_delete_and_recreate_at_once() {
    delete_and_recreate_are_noticed_at_once("sped");
}

fn rename_over_is_noticed_at_once(arch: &str) {
    let root = TempDir::new(&format!("integrity-rename-{arch}"));
    let old = b"version one\n";
    let new = b"version two, deployed by rename\n";
    let path = root.write("f.txt", old);
    let server = start(&root, arch);
    let what = format!("--arch {arch}, replaced by rename");
    let cached_at = Instant::now();
    assert_serves(&server, "/f.txt", old, &[old], cached_at, &what);
    let beside = root.write("f.txt.new", new);
    std::fs::rename(&beside, &path).unwrap();
    assert_serves(&server, "/f.txt", new, &[old, new], cached_at, &what);
}

#[test]
fn amped_notices_rename_over_at_once() {
    rename_over_is_noticed_at_once("amped");
}

#[test]
fn sped_notices_rename_over_at_once() {
    rename_over_is_noticed_at_once("sped");
}

// ---- during a response --------------------------------------------------

const BIG: usize = 16 * 1024 * 1024;
/// Read before the file is changed; the server then still has most of the
/// file to send (at most a socket buffer of a few MiB is queued).
const PREFIX: usize = 256 * 1024;

/// A download of `/big.bin` paused after `PREFIX` bytes.
struct Download {
    reader: BufReader<std::net::TcpStream>,
    content_length: usize,
    received: Vec<u8>,
}

fn start_download(server: &Server) -> Download {
    let (mut reader, content_length) = start_slow_download(server, "/big.bin");
    let mut received = vec![0u8; PREFIX];
    reader
        .read_exact(&mut received)
        .expect("first part of the body");
    Download {
        reader,
        content_length,
        received,
    }
}

impl Download {
    /// Reads on until the server closes (or resets) the connection; fails
    /// if it goes quiet for `IO_TIMEOUT`. Returns how it ended.
    fn finish(&mut self) -> String {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return "EOF".to_string(),
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!(
                        "the download stalled for {IO_TIMEOUT:?} after {} of {} bytes",
                        self.received.len(),
                        self.content_length
                    )
                }
                Err(e) => return format!("error: {e}"),
            }
        }
    }
}

/// Runs a download of a 16 MiB file during which `change` is applied to
/// it; returns the download (finished), the original bytes and the
/// server's stderr (after stopping it).
fn download_during(tag: &str, change: impl FnOnce(&Path)) -> (Download, String, Vec<u8>) {
    let root = TempDir::new(&format!("integrity-during-{tag}"));
    let big = seeded_bytes(BIG, 7);
    let path = root.write("big.bin", &big);
    let server = start(&root, "amped");
    let mut download = start_download(&server);
    assert_eq!(download.content_length, BIG, "Content-Length of big.bin");
    assert!(
        download.received == big[..PREFIX],
        "the first {PREFIX} bytes differ from the file"
    );
    change(&path);
    let ended = download.finish();
    let mut server = server;
    assert!(server.is_running(), "{tag}: the server died");
    let (_, stderr) = server.stop();
    eprintln!(
        "{tag}: download ended ({ended}) after {} of {BIG} bytes",
        download.received.len()
    );
    (download, stderr, big)
}

fn assert_prefix_of(received: &[u8], original: &[u8], what: &str) {
    if let Some(at) = foreign_byte(received, &[original]) {
        panic!(
            "{what}: byte {at} of the body is {:#04x}, the file held {:#04x} there (of {} \
             bytes received)",
            received[at],
            original.get(at).copied().unwrap_or(0),
            received.len()
        );
    }
}

#[test]
fn truncation_during_a_response_ends_it_short_with_only_the_files_bytes() {
    // About half, and not on a page boundary: a mapped page past the new
    // end would read as zeros.
    let new_len = (BIG / 2 + 1000) as u64;
    let (download, stderr, big) = download_during("truncate", |path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(new_len)
            .expect("truncate big.bin");
    });
    assert!(
        download.received.len() < BIG,
        "the response must end short of its Content-Length ({BIG}) after the file shrank to \
         {new_len}, but all of it came"
    );
    assert_prefix_of(&download.received, &big, "truncated during the response");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("file shrank while being sent"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "the server must log the shrinking exactly once (\"file shrank while being sent\")\n\
         stderr:\n{stderr}"
    );
}

/// The file is replaced, deleted or made unreadable during the response:
/// the response is of the file that was opened, whole.
fn completes_with_the_old_content(tag: &str, change: impl FnOnce(&Path)) {
    let (download, stderr, big) = download_during(tag, change);
    assert_prefix_of(&download.received, &big, tag);
    assert!(
        download.received.len() == BIG,
        "{tag}: the download must complete with the whole old file; got {} of {BIG} bytes\n\
         stderr:\n{stderr}",
        download.received.len()
    );
}

#[test]
fn rename_over_during_a_response_completes_with_the_old_content() {
    completes_with_the_old_content("rename-over", |path| {
        let beside = path.with_extension("new");
        std::fs::write(&beside, seeded_bytes(BIG, 8)).unwrap();
        std::fs::rename(&beside, path).unwrap();
    });
}

#[test]
fn delete_during_a_response_completes_with_the_old_content() {
    completes_with_the_old_content("delete", |path| {
        std::fs::remove_file(path).unwrap();
    });
}

#[test]
fn chmod_000_during_a_response_completes_with_the_old_content() {
    completes_with_the_old_content("chmod-000", |path| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o000)).unwrap();
    });
}
