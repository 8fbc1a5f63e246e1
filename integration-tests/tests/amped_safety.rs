//! Safety of the file-serving path in both architectures (`--arch amped` and the inline
//! `--arch sped`): a file truncated while it is being sent cannot crash or wedge the
//! server; nothing outside the document root is ever served, whether reached by a symlink
//! or by `..` in any spelling; a FIFO in the tree is refused at once instead of blocking.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::harness::{get, start_slow_download, Server, TempDir, IO_TIMEOUT};

const SENTINEL: &[u8] = b"SENTINEL-outside-the-root-7f3a9c";
const BIG: usize = 64 * 1024 * 1024;
const OTHER: usize = 1024 * 1024;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    for _ in 0..len / 4 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.resize(len, seed);
    v
}

/// Sends `GET target` with `Connection: close` and reads everything until the server
/// closes. Returns the status and the raw response bytes.
fn raw_get(server: &Server, target: &str, timeout: Duration) -> (u16, Vec<u8>) {
    let mut stream = server.connect();
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream
        .write_all(
            format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send request");
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "GET {target}: no end of response within {timeout:?} (got {:?})",
                    String::from_utf8_lossy(&all)
                )
            }
            // A reset after the response was read still leaves the response in `all`.
            Err(_) => break,
        }
    }
    let status = std::str::from_utf8(&all)
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "GET {target}: no HTTP response: {:?}",
                String::from_utf8_lossy(&all)
            )
        });
    (status, all)
}

/// `GET path` on a new connection; the error instead of a panic.
fn try_get(server: &Server, path: &str) -> std::io::Result<integration_tests::harness::Response> {
    let mut stream = server.connect();
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    integration_tests::harness::read_response(&mut BufReader::new(stream), false)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---- truncation during a download ---------------------------------------------------

fn truncate_while_downloading(arch: &str) {
    let root = TempDir::new(&format!("amped-safety-trunc-{arch}"));
    let big = pattern(BIG, 1);
    let big_path = root.write("big.bin", &big);
    let other = pattern(OTHER, 2);
    root.write("other.bin", &other);
    let server = Server::start(root.path(), &["--arch", arch]);

    let (mut reader, content_length) = start_slow_download(&server, "/big.bin");
    assert_eq!(content_length, BIG, "Content-Length of big.bin");
    // Read a little, slowly enough that the server is stuck with most of the file.
    let mut prefix = vec![0u8; 256 * 1024];
    reader
        .read_exact(&mut prefix)
        .expect("first part of the body");
    assert!(
        prefix == big[..prefix.len()],
        "first part of the body differs"
    );

    // A parallel client on another file, while the truncation happens.
    let addr = server.addr;
    let expected_other = other.clone();
    let parallel = thread::spawn(move || {
        let mut results = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s.write_all(b"GET /other.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let r = integration_tests::harness::read_response(&mut BufReader::new(s), false);
            results.push(match r {
                Ok(r) if r.status == 200 && r.body == expected_other => Ok(()),
                Ok(r) => Err(format!("status {}, {} bytes", r.status, r.body.len())),
                Err(e) => Err(e.to_string()),
            });
        }
        results
    });

    std::fs::OpenOptions::new()
        .write(true)
        .open(&big_path)
        .unwrap()
        .set_len(0)
        .expect("truncate big.bin");

    // Keep reading: the connection must end (EOF, or an error) before the IO timeout,
    // with fewer bytes than announced.
    let mut received = prefix.len();
    let mut buf = vec![0u8; 64 * 1024];
    let ended = loop {
        match reader.read(&mut buf) {
            Ok(0) => break "EOF".to_string(),
            Ok(n) => received += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break format!("HANG: no progress for {IO_TIMEOUT:?}")
            }
            Err(e) => break format!("error {e}"),
        }
    };
    let parallel = parallel.join().unwrap();

    let mut server = server;
    let running = server.is_running();
    let after_other = running.then(|| get(&server, "/other.bin"));
    // A new request for the truncated file: the path cache may serve the old metadata
    // for up to its TTL (a short body, then the connection ends); after that the new size
    // must be seen. Every attempt must end; poll with a deadline.
    let mut stale = Vec::new();
    let mut after_big = None;
    if running {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match try_get(&server, "/big.bin") {
                Ok(r) if r.status == 200 && r.body.is_empty() => {
                    after_big = Some(Ok(r.status));
                    break;
                }
                Ok(r) => stale.push(format!("status {}, {} bytes", r.status, r.body.len())),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    after_big = Some(Err(format!("hang: {e}")));
                    break;
                }
                Err(e) => stale.push(format!("ended early: {e}")),
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    let (_, stderr) = server.stop();

    assert!(
        running,
        "--arch {arch}: the server died after a file was truncated under a download\nstderr:\n{stderr}"
    );
    assert!(
        !ended.starts_with("HANG"),
        "--arch {arch}: the truncated download did not end: {ended} after {received} bytes\nstderr:\n{stderr}"
    );
    assert!(
        received < BIG,
        "--arch {arch}: the truncated download delivered all {BIG} announced bytes ({ended})"
    );
    for (i, r) in parallel.iter().enumerate() {
        assert!(
            r.is_ok(),
            "--arch {arch}: parallel /other.bin #{i}: {r:?}\nstderr:\n{stderr}"
        );
    }
    let after_other = after_other.unwrap();
    assert!(
        after_other.status == 200 && after_other.body == other,
        "--arch {arch}: /other.bin after the truncation: status {}",
        after_other.status
    );
    assert_eq!(
        after_big,
        Some(Ok(200)),
        "--arch {arch}: /big.bin after truncation to 0 must become a 200 with an empty body \
         (within the path-cache TTL); earlier attempts: {stale:?}\nstderr:\n{stderr}"
    );
    eprintln!(
        "--arch {arch}: truncated download ended with {ended} after {received} bytes; \
         stale answers before the new size was seen: {stale:?}"
    );
}

#[test]
fn amped_survives_truncation_during_download() {
    truncate_while_downloading("amped");
}

#[test]
fn sped_survives_truncation_during_download() {
    truncate_while_downloading("sped");
}

// ---- confinement --------------------------------------------------------------------

/// `T/outside.txt` (the sentinel) next to the document root `T/root`, with symlinks that
/// lead out of the root and others that stay inside.
struct Tree {
    top: TempDir,
}

impl Tree {
    fn new(tag: &str) -> Tree {
        let top = TempDir::new(tag);
        let outside = top.write("outside.txt", SENTINEL);
        top.write("root/inside.txt", "inside the root\n");
        top.write("root/sub/page.txt", "a page\n");
        let root = top.path().join("root");
        symlink(&outside, root.join("abs-link")).unwrap();
        symlink("../outside.txt", root.join("rel-link")).unwrap();
        symlink("../../outside.txt", root.join("sub/up-link")).unwrap();
        symlink("..", root.join("dir-link")).unwrap();
        symlink(top.path(), root.join("abs-dir-link")).unwrap();
        symlink("inside.txt", root.join("in-link")).unwrap();
        symlink("../inside.txt", root.join("sub/in-link")).unwrap();
        Tree { top }
    }

    fn root(&self) -> std::path::PathBuf {
        self.top.path().join("root")
    }
}

fn escaping_symlinks_are_refused(arch: &str) {
    let tree = Tree::new(&format!("amped-safety-links-{arch}"));
    let server = Server::start(&tree.root(), &["--arch", arch]);
    let mut failures = Vec::new();
    for target in [
        "/abs-link",
        "/rel-link",
        "/sub/up-link",
        "/dir-link/outside.txt",
        "/abs-dir-link/outside.txt",
    ] {
        let (status, raw) = raw_get(&server, target, IO_TIMEOUT);
        if contains(&raw, SENTINEL) || !(status == 403 || status == 404) {
            failures.push(format!("{target}: {}", String::from_utf8_lossy(&raw)));
        }
    }
    // Links that stay inside the root are followed under the default policy.
    for target in ["/in-link", "/sub/in-link"] {
        let r = get(&server, target);
        if r.status != 200 || r.body != b"inside the root\n" {
            failures.push(format!(
                "{target} (inside the root, default policy): status {}",
                r.status
            ));
        }
    }
    let (_, stderr) = server.stop();
    assert!(
        failures.is_empty(),
        "--arch {arch}: symlink confinement: {failures:#?}\nstderr:\n{stderr}"
    );

    let never = Server::start(&tree.root(), &["--arch", arch, "--symlinks", "never"]);
    let mut failures = Vec::new();
    for target in ["/in-link", "/sub/in-link", "/abs-link", "/rel-link"] {
        let (status, raw) = raw_get(&never, target, IO_TIMEOUT);
        if contains(&raw, SENTINEL)
            || contains(&raw, b"inside the root")
            || !(status == 403 || status == 404)
        {
            failures.push(format!("{target}: {}", String::from_utf8_lossy(&raw)));
        }
    }
    // Plain files are still served.
    let plain = get(&never, "/inside.txt");
    if plain.status != 200 || plain.body != b"inside the root\n" {
        failures.push(format!("/inside.txt: status {}", plain.status));
    }
    let (_, stderr) = never.stop();
    assert!(
        failures.is_empty(),
        "--arch {arch} --symlinks never: every symlink must be refused: {failures:#?}\nstderr:\n{stderr}"
    );
}

#[test]
fn amped_refuses_symlinks_out_of_the_root() {
    escaping_symlinks_are_refused("amped");
}

#[test]
fn sped_refuses_symlinks_out_of_the_root() {
    escaping_symlinks_are_refused("sped");
}

fn dot_dot_never_escapes(arch: &str) {
    let tree = Tree::new(&format!("amped-safety-dots-{arch}"));
    let server = Server::start(&tree.root(), &["--arch", arch]);
    let mut failures = Vec::new();
    for target in [
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/%2E%2E/outside.txt",
        "/sub/..%2f..%2foutside.txt",
        "/sub/..%2F..%2Foutside.txt",
        "/..%2foutside.txt",
        "/%2e%2e%2foutside.txt",
        "/sub/../../outside.txt",
        "/sub/%2e%2e/%2e%2e/outside.txt",
        "/./../outside.txt",
        "//../outside.txt",
        "/sub/..%5c..%5coutside.txt",
        "/..%00/outside.txt",
        "http://t/../outside.txt",
    ] {
        let (status, raw) = raw_get(&server, target, IO_TIMEOUT);
        if contains(&raw, SENTINEL) || !(400..500).contains(&status) {
            failures.push(format!("{target}: {}", String::from_utf8_lossy(&raw)));
        }
    }
    let mut server = server;
    let running = server.is_running();
    let (_, stderr) = server.stop();
    assert!(running, "--arch {arch}: the server died\nstderr:\n{stderr}");
    assert!(
        failures.is_empty(),
        "--arch {arch}: `..` requests must get a 4xx and never the file outside the root: \
         {failures:#?}\nstderr:\n{stderr}"
    );
}

#[test]
fn amped_dot_dot_never_escapes_the_root() {
    dot_dot_never_escapes("amped");
}

#[test]
fn sped_dot_dot_never_escapes_the_root() {
    dot_dot_never_escapes("sped");
}

fn fifo_is_refused_quickly(arch: &str) {
    let root = TempDir::new(&format!("amped-safety-fifo-{arch}"));
    root.write("index.html", "home\n");
    let fifo = std::ffi::CString::new(
        root.path()
            .join("pipe")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) },
        0,
        "mkfifo: {}",
        std::io::Error::last_os_error()
    );
    let server = Server::start(root.path(), &["--arch", arch]);
    // Nobody ever writes to the FIFO: an open or read that waits for a writer would hang.
    let (status, raw) = raw_get(&server, "/pipe", Duration::from_secs(5));
    let home = get(&server, "/");
    let mut server = server;
    let running = server.is_running();
    let (_, stderr) = server.stop();
    assert_eq!(
        status,
        403,
        "--arch {arch}: GET /pipe (a FIFO): {}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&raw)
    );
    assert!(
        running && home.status == 200 && home.body == b"home\n",
        "--arch {arch}: the server must keep serving after the FIFO request\nstderr:\n{stderr}"
    );
}

#[test]
fn amped_refuses_a_fifo_quickly() {
    fifo_is_refused_quickly("amped");
}

#[test]
fn sped_refuses_a_fifo_quickly() {
    fifo_is_refused_quickly("sped");
}
