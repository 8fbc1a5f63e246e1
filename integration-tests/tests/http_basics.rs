//! End-to-end basics against the real `flash-server` binary over loopback:
//! serving files (body, framing and metadata headers, Content-Type by
//! extension), HEAD, errors (404, 403, FIFO), directories and redirects,
//! query strings, percent-encoded names, methods, the demo site, large files
//! (curl, Python http.client, concurrent), and a Python keep-alive session.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use integration_tests::harness::{
    assert_closed, connect, curl, get, imf_fixdate, python, random_bytes, read_response, request,
    set_mtime, Response, Server, TempDir,
};

/// Sun, 06 Nov 1994 08:49:37 GMT: the mtime given to files whose
/// Last-Modified is asserted exactly.
const MTIME: u64 = 784_111_777;
const MTIME_TEXT: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

const SPED: &[&str] = &["--arch", "sped"];
const AMPED: &[&str] = &[];

// ---- helpers ----------------------------------------------------------

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a Python 3 script and asserts that it succeeded and printed `OK`.
fn assert_python_ok(script: &str) {
    let out = python(script);
    assert!(
        out.status.success() && text(&out.stdout).trim() == "OK",
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn assert_html_error(resp: &Response, status: u16) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{resp:?}"
    );
    let body = text(&resp.body);
    assert!(
        body.contains("<html") && body.contains(&status.to_string()),
        "error body for {status} should be an HTML page naming the status: {body:?}"
    );
}

// ---- GET of a file ----------------------------------------------------

#[test]
fn date_formatter_self_check() {
    assert_eq!(imf_fixdate(MTIME), MTIME_TEXT);
    assert_eq!(imf_fixdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(imf_fixdate(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
}

fn check_get_file(args: &[&str]) {
    let root = TempDir::new("basics-get");
    let body = b"hello, flash\nsecond line\n";
    let path = root.write("a.txt", body);
    set_mtime(&path, MTIME);
    let server = Server::start(root.path(), args);

    let before = now_secs();
    let resp = get(&server, "/a.txt");
    let after = now_secs();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, body);
    assert_eq!(
        resp.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(resp.header("last-modified"), Some(MTIME_TEXT));
    assert_eq!(resp.header("accept-ranges"), Some("bytes"));
    let etag = resp.header("etag").expect("ETag header");
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "ETag must be a strong quoted entity-tag: {etag}"
    );
    let server_name = resp.header("server").expect("Server header");
    assert!(!server_name.is_empty());
    let date = resp.header("date").expect("Date header");
    assert!(
        (before..=after).any(|t| imf_fixdate(t) == date),
        "Date {date:?} should be the current time ({} .. {})",
        imf_fixdate(before),
        imf_fixdate(after)
    );

    // The validators are stable for an unchanged file.
    let again = get(&server, "/a.txt");
    assert_eq!(again.header("etag"), Some(etag));
    assert_eq!(again.body, body);
}

#[test]
fn get_file_exact_body_and_headers() {
    check_get_file(AMPED);
}

#[test]
fn get_file_exact_body_and_headers_sped() {
    check_get_file(SPED);
}

#[test]
fn etag_changes_when_the_file_changes() {
    let root = TempDir::new("basics-etag");
    let path = root.write("e.txt", "version one");
    set_mtime(&path, MTIME);
    // No trust in cached paths: the change must show on the next request.
    let server = Server::start(root.path(), &["--path-cache-ttl", "0s"]);
    let first = get(&server, "/e.txt");
    root.write("e.txt", "version two, longer");
    set_mtime(&path, MTIME + 60);
    let second = get(&server, "/e.txt");
    assert_eq!(second.body, b"version two, longer");
    assert_ne!(first.header("etag"), second.header("etag"));
    assert_eq!(
        second.header("last-modified").map(str::to_owned),
        Some(imf_fixdate(MTIME + 60))
    );
}

#[test]
fn content_type_by_extension() {
    let root = TempDir::new("basics-ctype");
    let cases = [
        ("page.html", "text/html; charset=utf-8"),
        ("PAGE.HTM", "text/html; charset=utf-8"),
        ("mod.mjs", "text/javascript; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("prog.wasm", "application/wasm"),
        ("data.json", "application/json"),
        ("pic.png", "image/png"),
        ("blob.unknownext", "application/octet-stream"),
        ("noextension", "application/octet-stream"),
        (".hidden", "application/octet-stream"),
        ("dir.html/inner", "application/octet-stream"),
    ];
    for (name, _) in cases {
        root.write(name, name);
    }
    // Hidden files are refused by default; allowed here to check their type.
    let server = Server::start(root.path(), &["--hidden", "allow"]);
    for (name, want) in cases {
        let resp = get(&server, &format!("/{name}"));
        assert_eq!(resp.status, 200, "{name}: {resp:?}");
        assert_eq!(resp.body, name.as_bytes(), "{name}");
        assert_eq!(resp.header("content-type"), Some(want), "{name}");
    }
}

// ---- HEAD -------------------------------------------------------------

#[test]
fn head_has_the_get_head_and_no_body() {
    let root = TempDir::new("basics-head");
    root.write("a.txt", "the body of a, which HEAD must not send");
    root.write("b.txt", "bbb");
    let server = Server::start(root.path(), &[]);
    let (mut w, mut r) = connect(&server);

    w.write_all(&request("GET", "/a.txt", "")).unwrap();
    let full = read_response(&mut r, false).expect("GET response");

    // Sequential: HEAD, then GET on the same connection. A leaked body would
    // be read as the status line of the next response.
    w.write_all(&request("HEAD", "/a.txt", "")).unwrap();
    let head = read_response(&mut r, true).expect("HEAD response");
    assert_eq!(head.status, 200);
    for name in [
        "content-length",
        "content-type",
        "etag",
        "last-modified",
        "accept-ranges",
        "server",
    ] {
        assert_eq!(head.header(name), full.header(name), "{name}");
    }
    assert!(head.header("date").is_some());
    assert!(
        r.buffer().is_empty(),
        "bytes after the HEAD response: {:?}",
        text(r.buffer())
    );
    w.write_all(&request("GET", "/b.txt", "")).unwrap();
    let b = read_response(&mut r, false).expect("GET after HEAD");
    assert_eq!((b.status, b.body.as_slice()), (200, &b"bbb"[..]));

    // Pipelined: HEAD then GET in one write.
    let mut both = request("HEAD", "/a.txt", "");
    both.extend(request("GET", "/b.txt", "Connection: close\r\n"));
    w.write_all(&both).unwrap();
    let head = read_response(&mut r, true).expect("pipelined HEAD");
    assert_eq!(head.status, 200);
    let b = read_response(&mut r, false).expect("pipelined GET after HEAD");
    assert_eq!((b.status, b.body.as_slice()), (200, &b"bbb"[..]));
    assert_closed(&mut r, "after Connection: close");
}

#[test]
fn head_of_missing_file_has_no_body() {
    let root = TempDir::new("basics-head404");
    root.write("b.txt", "bbb");
    let server = Server::start(root.path(), &[]);
    let (mut w, mut r) = connect(&server);
    let mut both = request("HEAD", "/missing", "");
    both.extend(request("GET", "/b.txt", "Connection: close\r\n"));
    w.write_all(&both).unwrap();
    let head = read_response(&mut r, true).unwrap();
    assert_eq!(head.status, 404);
    let b = read_response(&mut r, false).expect("GET after HEAD 404");
    assert_eq!((b.status, b.body.as_slice()), (200, &b"bbb"[..]));
}

// ---- errors, directories ------------------------------------------------

#[test]
fn missing_file_is_404_with_html_body() {
    let root = TempDir::new("basics-404");
    let server = Server::start(root.path(), &[]);
    assert_html_error(&get(&server, "/nope.txt"), 404);
    assert_html_error(&get(&server, "/no/such/dir/file"), 404);
}

#[test]
fn regular_file_with_trailing_slash_is_404() {
    let root = TempDir::new("basics-fileslash");
    root.write("a.txt", "a");
    let server = Server::start(root.path(), &[]);
    assert_eq!(get(&server, "/a.txt/").status, 404);
}

fn check_directories(args: &[&str]) {
    let root = TempDir::new("basics-dirs");
    root.write("index.html", "<p>root index</p>");
    root.write("dir/index.html", "<p>dir index</p>");
    root.write("dir/sub/index.html", "<p>sub index</p>");
    root.write("bare/file.txt", "no index here");
    root.write("my dir/index.html", "spaced");
    let server = Server::start(root.path(), args);

    let resp = get(&server, "/");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"<p>root index</p>");
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );

    let resp = get(&server, "/dir/");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"<p>dir index</p>");
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(resp.header("etag").is_some() && resp.header("last-modified").is_some());

    let resp = get(&server, "/dir/sub/");
    assert_eq!(resp.body, b"<p>sub index</p>");

    let resp = get(&server, "/dir");
    assert_eq!(resp.status, 301, "{resp:?}");
    assert_eq!(resp.header("location"), Some("/dir/"));
    let resp = get(&server, "/dir/sub");
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("/dir/sub/"));
    let resp = get(&server, "/my%20dir");
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("/my%20dir/"));

    assert_html_error(&get(&server, "/bare/"), 403);
    // Without the slash it is still a directory: redirected first.
    let resp = get(&server, "/bare");
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("/bare/"));
}

#[test]
fn directories_index_redirect_and_forbidden() {
    check_directories(AMPED);
}

#[test]
fn directories_index_redirect_and_forbidden_sped() {
    check_directories(SPED);
}

#[test]
fn redirect_followed_by_curl_lands_on_index() {
    let root = TempDir::new("basics-curl-redirect");
    root.write("docs/index.html", "docs home");
    let server = Server::start(root.path(), &[]);
    let out = curl(&[
        "-L",
        "-w",
        "\n%{http_code} %{num_redirects}",
        &server.url("/docs"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "docs home\n200 1");
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

fn check_fifo(args: &[&str]) {
    let root = TempDir::new("basics-fifo");
    root.write("a.txt", "still serving");
    mkfifo(&root.path().join("pipe"));
    std::fs::create_dir(root.path().join("fifodir")).unwrap();
    mkfifo(&root.path().join("fifodir/index.html"));
    let server = Server::start(root.path(), args);

    let (mut w, mut r) = connect(&server);
    w.write_all(&request("GET", "/pipe", "")).unwrap();
    let resp =
        read_response(&mut r, false).expect("response for a FIFO (the server must not hang)");
    assert_html_error(&resp, 403);
    // The same connection and a fresh one are both still served.
    w.write_all(&request("GET", "/a.txt", "")).unwrap();
    let resp = read_response(&mut r, false).expect("response after the FIFO");
    assert_eq!(resp.body, b"still serving");
    let resp = get(&server, "/fifodir/");
    assert_eq!(resp.status, 403, "a FIFO named index.html: {resp:?}");
    assert_eq!(get(&server, "/a.txt").body, b"still serving");
}

#[test]
fn fifo_is_403_and_does_not_hang() {
    check_fifo(AMPED);
}

#[test]
fn fifo_is_403_and_does_not_hang_sped() {
    check_fifo(SPED);
}

// ---- targets ------------------------------------------------------------

#[test]
fn query_string_is_ignored() {
    let root = TempDir::new("basics-query");
    root.write("a.txt", "plain a");
    root.write("d/index.html", "d index");
    let server = Server::start(root.path(), &[]);
    for target in ["/a.txt?x=1", "/a.txt?", "/a.txt?x=/../../etc/passwd&y=%00"] {
        let resp = get(&server, target);
        assert_eq!(resp.status, 200, "{target}: {resp:?}");
        assert_eq!(resp.body, b"plain a", "{target}");
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    assert_eq!(get(&server, "/d/?page=2").body, b"d index");
}

#[test]
fn percent_encoded_names_are_served() {
    let root = TempDir::new("basics-pct");
    root.write("sp ace.txt", "space");
    root.write("café.txt", "accent");
    root.write("100%.txt", "percent");
    root.write("a+b.txt", "plus");
    let server = Server::start(root.path(), &[]);
    let cases: [(&str, &[u8]); 5] = [
        ("/sp%20ace.txt", b"space"),
        ("/caf%C3%A9.txt", b"accent"),
        ("/caf%c3%a9.txt", b"accent"),
        ("/100%25.txt", b"percent"),
        ("/a+b.txt", b"plus"),
    ];
    for (target, body) in cases {
        let resp = get(&server, target);
        assert_eq!(resp.status, 200, "{target}: {resp:?}");
        assert_eq!(resp.body, body, "{target}");
    }
    // Encoding an ordinary character changes nothing.
    assert_eq!(get(&server, "/%61+b.txt").body, b"plus");
}

#[test]
fn empty_file_is_served() {
    let root = TempDir::new("basics-empty");
    root.write("empty.txt", "");
    let server = Server::start(root.path(), &[]);
    let (mut w, mut r) = connect(&server);
    w.write_all(&request("GET", "/empty.txt", "")).unwrap();
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("0"));
    assert!(resp.body.is_empty());
    // Nothing stray follows: the next response parses.
    w.write_all(&request("GET", "/empty.txt", "Range: bytes=0-\r\n"))
        .unwrap();
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 416, "no byte of an empty file can be selected");
    assert_eq!(resp.header("content-range"), Some("bytes */0"));
}

#[test]
fn absolute_form_target_is_served() {
    let root = TempDir::new("basics-absolute");
    root.write("a.txt", "abs");
    root.write("d/index.html", "d");
    let server = Server::start(root.path(), &[]);
    for target in [
        "http://example.com/a.txt",
        "HTTP://example.com:80/a.txt?q=1",
    ] {
        let resp = get(&server, target);
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, &b"abs"[..]),
            "{target}"
        );
    }
    let resp = get(&server, "http://example.com/d");
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("/d/"));
}

#[test]
fn redirect_location_is_percent_encoded_and_head_has_no_body() {
    let root = TempDir::new("basics-redirect-enc");
    root.write("q?dir/index.html", "q");
    root.write("b.txt", "bbb");
    let server = Server::start(root.path(), &[]);
    let resp = get(&server, "/q%3Fdir");
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("/q%3Fdir/"));
    assert_eq!(get(&server, "/q%3Fdir/").body, b"q");

    let (mut w, mut r) = connect(&server);
    let mut both = request("HEAD", "/q%3Fdir", "");
    both.extend(request("GET", "/b.txt", ""));
    w.write_all(&both).unwrap();
    let head = read_response(&mut r, true).unwrap();
    assert_eq!(head.status, 301);
    assert_eq!(head.header("location"), Some("/q%3Fdir/"));
    let b = read_response(&mut r, false).expect("GET after HEAD 301");
    assert_eq!(b.body, b"bbb");
}

#[test]
fn symlinks_never_refuses_links_inside_the_root() {
    let root = TempDir::new("basics-symlinks-never");
    root.write("real.txt", "real");
    std::os::unix::fs::symlink("real.txt", root.path().join("link.txt")).unwrap();
    let server = Server::start(root.path(), &["--symlinks", "never"]);
    assert_eq!(get(&server, "/real.txt").body, b"real");
    let resp = get(&server, "/link.txt");
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(!text(&resp.body).contains("real"));
}

// ---- methods --------------------------------------------------------------

#[test]
fn options_is_204_with_allow() {
    let root = TempDir::new("basics-options");
    root.write("a.txt", "a");
    let server = Server::start(root.path(), &[]);
    let (mut w, mut r) = connect(&server);
    for target in ["/a.txt", "*", "/missing"] {
        w.write_all(&request("OPTIONS", target, "")).unwrap();
        let resp = read_response(&mut r, true).expect("OPTIONS response");
        assert_eq!(resp.status, 204, "OPTIONS {target}: {resp:?}");
        assert_eq!(resp.header("allow"), Some("GET, HEAD, OPTIONS"));
        assert!(
            resp.header("content-length").map_or(true, |v| v == "0"),
            "204 carries no content: {resp:?}"
        );
    }
    // No body followed the 204s: the next response parses cleanly.
    w.write_all(&request("GET", "/a.txt", "Connection: close\r\n"))
        .unwrap();
    let resp = read_response(&mut r, false).expect("GET after OPTIONS");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"a"[..]));
    assert_closed(&mut r, "after Connection: close");
}

#[test]
fn post_put_delete_are_405_with_allow() {
    let root = TempDir::new("basics-405");
    root.write("a.txt", "a");
    let server = Server::start(root.path(), &[]);
    let (mut w, mut r) = connect(&server);
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        w.write_all(&request(method, "/a.txt", "Content-Length: 3\r\n"))
            .unwrap();
        w.write_all(b"xyz").unwrap();
        let resp = read_response(&mut r, false).expect("405 response");
        assert_html_error(&resp, 405);
        assert_eq!(resp.header("allow"), Some("GET, HEAD, OPTIONS"), "{method}");
    }
    // The file is untouched and the connection still usable.
    w.write_all(&request("GET", "/a.txt", "")).unwrap();
    assert_eq!(read_response(&mut r, false).unwrap().body, b"a");
    assert_eq!(std::fs::read(root.path().join("a.txt")).unwrap(), b"a");
}

#[test]
fn unknown_method_is_501() {
    let root = TempDir::new("basics-501");
    root.write("a.txt", "a");
    let server = Server::start(root.path(), &[]);
    for method in ["BREW", "PROPFIND", "get"] {
        let (mut w, mut r) = connect(&server);
        w.write_all(&request(method, "/a.txt", "")).unwrap();
        let resp = read_response(&mut r, false).expect("501 response");
        assert_eq!(resp.status, 501, "{method}: {resp:?}");
        assert_closed(&mut r, method);
        assert_eq!(
            resp.header("connection"),
            Some("close"),
            "{method}: the 501 is followed by a close, but its head says otherwise"
        );
    }
}

// ---- demo site ------------------------------------------------------------

fn demo_dirs(pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("flash-demo-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .expect("list temp dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

#[test]
fn demo_site_is_served_and_removed_on_stop() {
    let server = Server::start_with(None, &[]).expect("demo server starts");
    let pid = server.pid();
    let resp = get(&server, "/");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let body = text(&resp.body).to_lowercase();
    assert!(body.contains("<html") && body.contains("flash"), "{body}");

    let dirs = demo_dirs(pid);
    assert_eq!(dirs.len(), 1, "one demo dir for pid {pid}: {dirs:?}");
    assert!(dirs[0].join("index.html").is_file());

    let (status, stderr) = server.stop();
    assert!(status.success(), "exit {status}: {stderr}");
    let left = demo_dirs(pid);
    assert!(left.is_empty(), "demo dir left behind after stop: {left:?}");
}

// ---- Python http.client ---------------------------------------------------

#[test]
fn python_keep_alive_session() {
    let root = TempDir::new("basics-python");
    root.write("a.txt", "alpha");
    root.write("b.html", "<b>beta</b>");
    let server = Server::start(root.path(), &[]);
    let script = format!(
        r#"
import http.client
c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=20)
ports = []
def ask(method, path):
    c.request(method, path)
    r = c.getresponse()
    body = r.read()
    ports.append(c.sock.getsockname()[1] if c.sock else None)
    return r, body
r, body = ask("GET", "/a.txt")
assert (r.status, body) == (200, b"alpha"), (r.status, body)
assert r.getheader("Content-Type") == "text/plain; charset=utf-8", r.getheaders()
r, body = ask("HEAD", "/b.html")
assert (r.status, body) == (200, b""), (r.status, body)
assert r.getheader("Content-Length") == "11", r.getheaders()
r, body = ask("GET", "/missing")
assert r.status == 404 and b"404" in body, (r.status, body)
r, body = ask("GET", "/b.html")
assert (r.status, body) == (200, b"<b>beta</b>"), (r.status, body)
assert None not in ports and len(set(ports)) == 1, ports
print("OK")
"#,
        port = server.addr.port()
    );
    assert_python_ok(&script);
}

// ---- large files ------------------------------------------------------------

const BIG: usize = 8 << 20;

fn big_root(tag: &str) -> (TempDir, Vec<u8>) {
    let root = TempDir::new(tag);
    let data = random_bytes(BIG, 0x5eed_f1a5);
    root.write("big.bin", &data);
    (root, data)
}

fn check_large_file_curl(args: &[&str]) {
    let (root, data) = big_root("basics-big-curl");
    let server = Server::start(root.path(), args);
    let out_dir = TempDir::new("basics-big-curl-out");
    let dest = out_dir.path().join("download.bin");
    let out = curl(&[
        "-o",
        dest.to_str().unwrap(),
        "-w",
        "%{http_code} %{size_download}",
        &server.url("/big.bin"),
    ]);
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("200 {BIG}"));
    let got = std::fs::read(&dest).unwrap();
    assert!(got == data, "downloaded bytes differ (len {})", got.len());
}

#[test]
fn large_file_intact_with_curl() {
    check_large_file_curl(AMPED);
}

#[test]
fn large_file_intact_with_curl_sped() {
    check_large_file_curl(SPED);
}

#[test]
fn large_file_intact_with_python() {
    let (root, _) = big_root("basics-big-python");
    let server = Server::start(root.path(), &[]);
    let script = format!(
        r#"
import http.client
c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=20)
want = open({path:?}, "rb").read()
for _ in range(2):
    c.request("GET", "/big.bin")
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, r.status
    assert int(r.getheader("Content-Length")) == len(want)
    assert body == want, (len(body), len(want))
print("OK")
"#,
        port = server.addr.port(),
        path = root.path().join("big.bin").to_str().unwrap()
    );
    assert_python_ok(&script);
}

#[test]
fn concurrent_large_downloads_intact() {
    let (root, data) = big_root("basics-big-concurrent");
    let data = std::sync::Arc::new(data);
    let server = std::sync::Arc::new(Server::start(root.path(), &[]));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let server = std::sync::Arc::clone(&server);
            let data = std::sync::Arc::clone(&data);
            std::thread::spawn(move || {
                // Two downloads per connection, so keep-alive after a big body is covered.
                let (mut w, mut r) = connect(&server);
                for _ in 0..2 {
                    w.write_all(&request("GET", "/big.bin", "")).unwrap();
                    let resp = read_response(&mut r, false).expect("big response");
                    assert_eq!(resp.status, 200);
                    assert!(resp.body == *data, "concurrent download differs");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("download thread");
    }
}
