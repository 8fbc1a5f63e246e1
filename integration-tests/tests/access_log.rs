//! The access log (`--access-log`, `--log-format`), against the real
//! binary: the lines for a mix of responses (exact request lines, statuses,
//! byte counts, Referer and User-Agent, escaping), JSON parsed by Python,
//! standard output, reopening on SIGUSR1 after a rename, and a log that
//! cannot keep up (a FIFO nobody reads), which must cost lines, never
//! service.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::harness::{
    connect, python, read_response, require_root, signal, wait_until, Response, Server, TempDir,
};

/// How long a line may take to reach the file.
const LOG_DEADLINE: Duration = Duration::from_secs(10);

const PAGE: &[u8] = b"<p>hello</p>\n";
/// Quotes, backslashes, a tab and a byte outside ASCII: all legal in a
/// field value, all escaped in the log.
const HOSTILE_UA: &[u8] = b"evil \"quoted\" \\back\\ \ttab \xff";
const REFERER: &str = "http://ref.example/a?b=\"c\"";

fn site() -> TempDir {
    let root = TempDir::new("accesslog");
    root.write("index.html", PAGE);
    root
}

fn read_lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap_or_default();
    split_lines(&bytes)
}

fn split_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .map(|l| l[..l.len() - 1].to_vec())
        .collect()
}

/// Waits until the file at `path` holds at least `n` lines.
fn await_lines(path: &Path, n: usize) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let ok = wait_until(LOG_DEADLINE, || {
        lines = read_lines(path);
        lines.len() >= n
    });
    assert!(ok, "expected {n} log lines, got {}: {lines:?}", lines.len());
    lines
}

/// What the test sent and what it expects logged.
struct Expected {
    request_line: Vec<u8>,
    status: u16,
    body_bytes: usize,
    referer: Option<Vec<u8>>,
    user_agent: Option<Vec<u8>>,
}

/// Sends the mix, reading every response; returns what each log line must say.
fn send_mix(server: &Server) -> Vec<Expected> {
    let mut expected = Vec::new();
    let (mut w, mut r) = connect(server);
    // Three pipelined requests on one keep-alive connection.
    let mut ua_req = b"GET /index.html HTTP/1.1\r\nHost: t\r\nUser-Agent: ".to_vec();
    ua_req.extend_from_slice(HOSTILE_UA);
    ua_req.extend_from_slice(format!("\r\nReferer: {REFERER}\r\n\r\n").as_bytes());
    let mut batch = ua_req.clone();
    batch.extend_from_slice(b"HEAD /index.html HTTP/1.1\r\nHost: t\r\n\r\n");
    batch.extend_from_slice(b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n");
    w.write_all(&batch).unwrap();
    let ok = read_response(&mut r, false).unwrap();
    assert_eq!(ok.status, 200);
    expected.push(Expected {
        request_line: b"GET /index.html HTTP/1.1".to_vec(),
        status: 200,
        body_bytes: PAGE.len(),
        referer: Some(REFERER.as_bytes().to_vec()),
        user_agent: Some(HOSTILE_UA.to_vec()),
    });
    let head = read_response(&mut r, true).unwrap();
    assert_eq!(head.status, 200);
    expected.push(plain(b"HEAD /index.html HTTP/1.1", 200, 0));
    let missing = read_response(&mut r, false).unwrap();
    assert_eq!(missing.status, 404);
    assert!(!missing.body.is_empty());
    expected.push(plain(b"GET /missing HTTP/1.1", 404, missing.body.len()));
    // A conditional request (304) and a range (206).
    let etag = ok.header("ETag").expect("ETag").to_string();
    let exchange = |w: &mut TcpStream, r: &mut BufReader<TcpStream>, req: String| -> Response {
        w.write_all(req.as_bytes()).unwrap();
        read_response(r, false).unwrap()
    };
    let not_modified = exchange(
        &mut w,
        &mut r,
        format!("GET /index.html HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n"),
    );
    assert_eq!(not_modified.status, 304);
    expected.push(plain(b"GET /index.html HTTP/1.1", 304, 0));
    let partial = exchange(
        &mut w,
        &mut r,
        "GET /index.html?part HTTP/1.1\r\nHost: t\r\nRange: bytes=3-7\r\n\r\n".into(),
    );
    assert_eq!(partial.status, 206);
    assert_eq!(partial.body, &PAGE[3..8]);
    expected.push(plain(b"GET /index.html?part HTTP/1.1", 206, 5));
    drop((w, r));
    // A control byte in a field value: 400, logged escaped.
    let (mut w, mut r) = connect(server);
    w.write_all(b"GET /index.html HTTP/1.1\r\nHost: t\r\nUser-Agent: a\x01b\"\r\n\r\n")
        .unwrap();
    let bad = read_response(&mut r, false).unwrap();
    assert_eq!(bad.status, 400);
    expected.push(Expected {
        request_line: b"GET /index.html HTTP/1.1".to_vec(),
        status: 400,
        body_bytes: bad.body.len(),
        referer: None,
        user_agent: Some(b"a\x01b\"".to_vec()),
    });
    // A head that never ends: 408 (--header-timeout 1s).
    let (mut w, mut r) = connect(server);
    w.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n").unwrap();
    let timeout = read_response(&mut r, false).unwrap();
    assert_eq!(timeout.status, 408);
    expected.push(plain(b"GET /slow HTTP/1.1", 408, timeout.body.len()));
    expected
}

fn plain(line: &[u8], status: u16, body_bytes: usize) -> Expected {
    Expected {
        request_line: line.to_vec(),
        status,
        body_bytes,
        referer: None,
        user_agent: None,
    }
}

/// nginx's access log escaping.
fn nginx_escape(value: Option<&[u8]>) -> String {
    let Some(value) = value else {
        return "-".into();
    };
    value
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | ..=0x1f | 0x7f.. => format!("\\x{b:02X}"),
            b => char::from(b).to_string(),
        })
        .collect()
}

/// `[03/Dec/2026:17:46:35 +0000]`
fn assert_combined_time(time: &str) {
    let b = time.as_bytes();
    assert_eq!(b.len(), 28, "time {time}");
    assert!(time.starts_with('[') && time.ends_with(" +0000]"), "{time}");
    assert_eq!(
        (b[3], b[7], b[12], b[15], b[18]),
        (b'/', b'/', b':', b':', b':')
    );
    let months = "JanFebMarAprMayJunJulAugSepOctNovDec";
    assert!(months.contains(&time[4..7]), "{time}");
}

fn check_combined_line(line: &[u8], want: &Expected) {
    let line = std::str::from_utf8(line).expect("a combined line is ASCII");
    assert!(line.is_ascii(), "{line}");
    let (client, rest) = line.split_once(" - - ").expect(line);
    assert_eq!(client, "127.0.0.1");
    let (time, rest) = rest.split_at(28);
    assert_combined_time(time);
    let (rest, duration) = rest.rsplit_once(' ').expect(line);
    let (whole, millis) = duration.split_once('.').expect(duration);
    assert_eq!(millis.len(), 3, "millisecond precision: {duration}");
    assert!(whole.parse::<u64>().unwrap() < 10, "{duration}");
    let expected = format!(
        " \"{}\" {} {} \"{}\" \"{}\"",
        nginx_escape(Some(&want.request_line)),
        want.status,
        want.body_bytes,
        nginx_escape(want.referer.as_deref()),
        nginx_escape(want.user_agent.as_deref()),
    );
    assert_eq!(rest, expected, "line: {line}");
}

#[test]
fn combined_lines_for_a_mix_of_responses() {
    let root = site();
    let logs = TempDir::new("accesslog-out");
    let path = logs.path().join("access.log");
    let server = Server::start(
        root.path(),
        &[
            "--access-log",
            path.to_str().unwrap(),
            "--header-timeout",
            "1s",
        ],
    );
    let expected = send_mix(&server);
    let lines = await_lines(&path, expected.len());
    assert_eq!(lines.len(), expected.len(), "one line per response");
    for (line, want) in lines.iter().zip(&expected) {
        check_combined_line(line, want);
    }
    // The duration covers the wait: the 408's head took a second.
    let last = std::str::from_utf8(lines.last().unwrap()).unwrap();
    let secs: f64 = last.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert!(secs >= 0.9, "408 after 1s logged with duration {secs}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
}

/// JSON as Python's `json.dumps` (ASCII) writes a byte string the log got:
/// bytes that are not UTF-8 stand for themselves as U+0000..U+00FF.
fn py_json(value: Option<&[u8]>) -> String {
    let Some(value) = value else {
        return "null".into();
    };
    let mut out = String::from("\"");
    let mut rest = value;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, &[][..]),
            Err(e) => {
                let v = e.valid_up_to();
                let n = e.error_len().unwrap_or(rest.len() - v);
                (std::str::from_utf8(&rest[..v]).unwrap(), &rest[v..v + n])
            }
        };
        for c in valid.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                }
                c => out.push(c),
            }
        }
        for &b in bad {
            out.push_str(&format!("\\u{b:04x}"));
        }
        rest = &rest[valid.len() + bad.len()..];
    }
    out.push('"');
    out
}

#[test]
fn json_lines_parse_and_carry_the_same_facts() {
    let root = site();
    let logs = TempDir::new("accesslog-json");
    let path = logs.path().join("access.json");
    let server = Server::start(
        root.path(),
        &[
            "--access-log",
            path.to_str().unwrap(),
            "--log-format",
            "json",
            "--header-timeout",
            "1s",
        ],
    );
    let expected = send_mix(&server);
    await_lines(&path, expected.len());
    // Python parses each line and prints the facts in a canonical form.
    let script = format!(
        r#"
import json, re
for raw in open({path:?}, "rb").read().split(b"\n")[:-1]:
    o = json.loads(raw.decode("utf-8"))
    assert set(o) == {{"time","client","request","method","target","protocol","status","body_bytes","bytes","referer","user_agent","duration"}}, o
    assert re.fullmatch(r"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", o["time"]), o
    assert isinstance(o["duration"], float) and 0 <= o["duration"] < 10, o
    assert o["bytes"] > o["body_bytes"], o
    print(json.dumps([o["client"], o["request"], o["method"], o["target"], o["protocol"], o["status"], o["body_bytes"], o["referer"], o["user_agent"]]))
"#,
        path = path.to_str().unwrap()
    );
    let out = python(&script);
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let printed: Vec<&str> = printed.lines().collect();
    assert_eq!(printed.len(), expected.len());
    for (got, want) in printed.iter().zip(&expected) {
        let line = &want.request_line;
        let mut parts = line.splitn(2, |&b| b == b' ');
        let method = parts.next().unwrap();
        let rest = parts.next().unwrap();
        let space = rest.iter().rposition(|&b| b == b' ').unwrap();
        let want = format!(
            "[\"127.0.0.1\", {}, {}, {}, {}, {}, {}, {}, {}]",
            py_json(Some(line)),
            py_json(Some(method)),
            py_json(Some(&rest[..space])),
            py_json(Some(&rest[space + 1..])),
            want.status,
            want.body_bytes,
            py_json(want.referer.as_deref()),
            py_json(want.user_agent.as_deref()),
        );
        assert_eq!(*got, want);
    }
}

#[test]
fn dash_logs_to_standard_output() {
    let root = site();
    let server = Server::start(root.path(), &["--access-log", "-"]);
    let (mut w, mut r) = connect(&server);
    for i in 0..3 {
        w.write_all(format!("GET /index.html?n={i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    }
    let mut lines = Vec::new();
    let ok = wait_until(LOG_DEADLINE, || {
        lines = split_lines(&server.stdout_so_far());
        lines.len() >= 3
    });
    assert!(ok, "stdout lines: {lines:?}");
    for (i, line) in lines.iter().enumerate() {
        let line = std::str::from_utf8(line).unwrap();
        assert!(
            line.contains(&format!(
                "\"GET /index.html?n={i} HTTP/1.1\" 200 {} ",
                PAGE.len()
            )),
            "{line}"
        );
    }
}

/// Requests `/index.html?n=I` for each I in `range` over one connection.
fn numbered_requests(server: &Server, range: std::ops::Range<usize>) {
    let (mut w, mut r) = connect(server);
    for i in range {
        w.write_all(format!("GET /index.html?n={i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    }
}

/// The `n` of each line's request.
fn numbers(lines: &[Vec<u8>]) -> Vec<usize> {
    lines
        .iter()
        .map(|l| {
            let l = std::str::from_utf8(l).unwrap();
            let n = l.split("?n=").nth(1).expect(l);
            n.split(' ').next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn sigusr1_reopens_after_a_rename_and_loses_nothing() {
    let root = site();
    let logs = TempDir::new("accesslog-rotate");
    let path = logs.path().join("access.log");
    let rotated = logs.path().join("access.log.1");
    let server = Server::start(root.path(), &["--access-log", path.to_str().unwrap()]);
    numbered_requests(&server, 0..50);
    await_lines(&path, 50);
    std::fs::rename(&path, &rotated).unwrap();
    signal(server.pid(), libc::SIGUSR1);
    // Until the server has reopened, lines still go to the renamed file.
    let mut sent = 50;
    let reopened = wait_until(LOG_DEADLINE, || {
        numbered_requests(&server, sent..sent + 1);
        sent += 1;
        path.exists()
    });
    assert!(reopened, "no new file at the log's path after SIGUSR1");
    numbered_requests(&server, sent..sent + 50);
    sent += 50;
    let mut all = Vec::new();
    let complete = wait_until(LOG_DEADLINE, || {
        all = numbers(&read_lines(&rotated));
        all.extend(numbers(&read_lines(&path)));
        all.len() >= sent
    });
    assert!(complete, "{} of {sent} lines", all.len());
    all.sort_unstable();
    assert_eq!(all, (0..sent).collect::<Vec<_>>(), "every line once");
    assert!(
        read_lines(&path).len() >= 50,
        "new lines go to the new file"
    );
}

/// Under `--user`, the workers cannot create files in a root-owned log
/// directory: the supervisor (which keeps the privileges the server started
/// with, as nginx's master) creates the new file and gives it to the user
/// before the workers reopen, so rotation works there too.
#[test]
fn sigusr1_reopens_in_a_root_owned_directory_under_user() {
    if !require_root("workers switch to the user nobody") {
        return;
    }
    let root = site();
    let logs = TempDir::new("accesslog-rotate-user");
    // Root's, and not writable by others (TempDir is 0700 and root's).
    std::fs::set_permissions(logs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = logs.path().join("access.log");
    let rotated = logs.path().join("access.log.1");
    let server = Server::start(
        root.path(),
        &["--access-log", path.to_str().unwrap(), "--user", "nobody"],
    );
    numbered_requests(&server, 0..10);
    await_lines(&path, 10);
    std::fs::rename(&path, &rotated).unwrap();
    signal(server.pid(), libc::SIGUSR1);
    let mut sent = 10;
    let reopened = wait_until(LOG_DEADLINE, || {
        numbered_requests(&server, sent..sent + 1);
        sent += 1;
        !read_lines(&path).is_empty()
    });
    assert!(
        reopened,
        "no lines in a new file after SIGUSR1; stderr:\n{}",
        server.stderr_so_far()
    );
    let owner = std::fs::metadata(&path).unwrap().uid();
    assert_eq!(
        owner, 65534,
        "the new log file belongs to the workers' user"
    );
    let mut all = Vec::new();
    let complete = wait_until(LOG_DEADLINE, || {
        all = numbers(&read_lines(&rotated));
        all.extend(numbers(&read_lines(&path)));
        all.len() >= sent
    });
    assert!(complete, "{} of {sent} lines", all.len());
}

#[test]
fn a_log_that_cannot_keep_up_costs_lines_not_service() {
    const REQUESTS: usize = 20_000;
    const CONNECTIONS: usize = 4;
    const PIPELINE: usize = 100;
    let root = site();
    let logs = TempDir::new("accesslog-fifo");
    let fifo = logs.path().join("access.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // The reader is held open, and not read until the server has exited.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let mut server = Server::start(root.path(), &["--access-log", fifo.to_str().unwrap()]);
    let started = Instant::now();
    let per_conn = REQUESTS / CONNECTIONS;
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (mut w, mut r) = connect(&server);
            std::thread::spawn(move || {
                let mut done = 0;
                while done < per_conn {
                    let mut batch = Vec::new();
                    for i in done..done + PIPELINE {
                        batch.extend_from_slice(
                            format!("GET /index.html?c={c}&n={i} HTTP/1.1\r\nHost: t\r\n\r\n")
                                .as_bytes(),
                        );
                    }
                    w.write_all(&batch).unwrap();
                    for _ in 0..PIPELINE {
                        assert_eq!(read_response(&mut r, false).unwrap().status, 200);
                    }
                    done += PIPELINE;
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("every request answered");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(120),
        "{REQUESTS} requests took {took:?}"
    );
    let (status, stderr) = terminate(&mut server);
    assert!(status.success(), "exit {status}: {stderr}");
    let dropped: u64 = stderr
        .lines()
        .find_map(|l| {
            l.split("access log: ")
                .nth(1)?
                .strip_suffix(" line(s) dropped in all because the log could not keep up")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no final drop count in the log: {stderr}"));
    assert!(dropped > 0, "{stderr}");
    // What the pipe kept: whole lines only, each once, and with the
    // dropped ones every response is accounted for.
    let mut kept = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => kept.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read fifo: {e}"),
        }
    }
    assert!(kept.ends_with(b"\n"), "the pipe ends with a whole line");
    let lines = split_lines(&kept);
    assert!(!lines.is_empty());
    for line in &lines {
        let line = std::str::from_utf8(line).unwrap();
        assert!(
            line.starts_with("127.0.0.1 - - [")
                && line.contains("\"GET /index.html?c=")
                && line.contains(&format!(" HTTP/1.1\" 200 {} \"-\" \"-\" ", PAGE.len())),
            "not a whole line: {line:?}"
        );
    }
    assert_eq!(
        lines.len() as u64 + dropped,
        REQUESTS as u64,
        "lines kept + dropped"
    );
}

/// SIGTERM, then the exit (the access log's flush at exit is bounded).
fn terminate(server: &mut Server) -> (std::process::ExitStatus, String) {
    signal(server.pid(), libc::SIGTERM);
    server
        .wait_exit(Duration::from_secs(15))
        .expect("the server exits although its log is stuck")
}
