//! Starts the real `flash-server` binary on a free loopback port and offers
//! small, honest clients: raw sockets with a minimal response reader, curl,
//! and Python's http.client; plus the test data the tests share (generated
//! file contents, file times, and an independent HTTP date formatter).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

/// Bound on any single wait in the tests: a hang fails instead of blocking CI.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of a binary built by this workspace (`flash-server`, `flash-helper`,
/// `flash-slowfs`), never a stale one: `$FLASH_BIN_DIR/NAME` if that is set
/// (the caller vouches for those binaries), else the profile directory of
/// the running test executable (`target/<profile>/deps/..`) after one
/// `cargo build` of the binaries per test process ([`fresh_bin_dir`]).
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("FLASH_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let path = fresh_bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is not built (cargo build -p flash-server -p flash-helper -p integration-tests --bins)",
        path.display()
    );
    path
}

/// The profile directory holding the test executable, with the workspace's
/// binaries brought up to date by `cargo build` (same profile, target
/// directory and target triple as this test executable; `--locked`, quiet),
/// run once per test process. `cargo test -p integration-tests` alone does
/// not rebuild `flash-server` and `flash-helper` after an edit of
/// flash-core, so without this the tests would run old binaries.
///
/// Calling cargo from a test does not deadlock: `cargo test` releases the
/// build-directory lock before it runs the test executables. When nothing
/// changed the build is a no-op of well under a second. It tries
/// `--offline` first and goes online only if a crate is missing locally.
pub fn fresh_bin_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(build_binaries) {
        Ok(dir) => dir,
        Err(message) => panic!("{message}"),
    }
}

fn build_binaries() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("test executable path: {e}"))?;
    let mut profile_dir = exe
        .parent()
        .ok_or("test executable has no directory")?
        .to_path_buf();
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
    let profile_name = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("odd profile directory {}", profile_dir.display()))?
        .to_string();
    // target/<profile> or, with --target, target/<triple>/<profile>; cargo
    // marks the target directory's root with CACHEDIR.TAG.
    let parent = profile_dir.parent().ok_or("profile dir has no parent")?;
    let (target_dir, triple) = if parent.join("CACHEDIR.TAG").is_file() {
        (parent.to_path_buf(), None)
    } else {
        match parent.parent() {
            Some(top) if top.join("CACHEDIR.TAG").is_file() => (
                top.to_path_buf(),
                parent.file_name().map(|t| t.to_os_string()),
            ),
            _ => {
                return Err(format!(
                    "{} is not in a cargo target directory: set FLASH_BIN_DIR to the directory \
                     holding flash-server and flash-helper",
                    exe.display()
                ))
            }
        }
    };
    let profile = match profile_name.as_str() {
        "debug" => "dev".to_string(),
        other => other.to_string(),
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    // The cargo running these tests, else the one that built them, else PATH's.
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let run = |offline: bool| {
        let mut command = Command::new(&cargo);
        command
            .args(["build", "--quiet", "--locked"])
            .args(["-p", "flash-server", "-p", "flash-helper"])
            .args(["-p", "integration-tests", "--bins"])
            .arg("--profile")
            .arg(&profile)
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir);
        if let Some(triple) = &triple {
            command.arg("--target").arg(triple);
        }
        if offline {
            command.arg("--offline");
        }
        command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {cargo:?} to build the binaries under test: {e}"))
    };
    let mut output = run(true)?;
    if !output.status.success() && String::from_utf8_lossy(&output.stderr).contains("offline") {
        output = run(false)?;
    }
    if !output.status.success() {
        return Err(format!(
            "building the binaries under test failed ({}); set FLASH_BIN_DIR to use prebuilt \
             ones:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(profile_dir)
}

/// A temporary directory removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("flash-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        // Readable by an unprivileged server user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `rel` (creating parent directories).
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent dirs");
        }
        std::fs::write(&path, contents).expect("write test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running `flash-server`.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    /// Starts `flash-server ROOT --listen 127.0.0.1:0 ARGS...` and waits for
    /// its `listening on` line.
    pub fn start(root: &Path, args: &[&str]) -> Server {
        Server::start_with(Some(root), args).expect("flash-server should start")
    }

    /// As `start`, but returns the failure (exit status and stderr) instead of panicking.
    pub fn start_with(root: Option<&Path>, args: &[&str]) -> Result<Server, String> {
        let mut command = Command::new(binary("flash-server"));
        if let Some(root) = root {
            command.arg(root);
        }
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn flash-server: {e}"))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        // The server prints the line before serving, or exits with an error.
        let _ = stdout.read_line(&mut line);
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let status = child.wait().map_err(|e| e.to_string())?;
            let err = stderr.join().unwrap_or_default();
            return Err(format!(
                "flash-server exited ({status}) without listening: {line}{err}"
            ));
        };
        let addr = addr
            .parse()
            .map_err(|e| format!("bad address {addr}: {e}"))?;
        // Drain stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || io::copy(&mut stdout, &mut io::sink()));
        Ok(Server {
            child: Some(child),
            addr,
            stderr: Some(stderr),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A connected client socket with read/write timeouts.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect to flash-server");
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        stream
    }

    /// Child processes of the server (its helpers), from /proc.
    pub fn helper_pids(&self) -> Vec<u32> {
        let pid = self.pid();
        let path = format!("/proc/{pid}/task/{pid}/children");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends SIGTERM and waits for the exit; returns status and stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running server");
        signal(child.id(), libc::SIGTERM);
        let status = child.wait().expect("wait for flash-server");
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Server {
    /// SIGTERM first, so the server reaps its helpers (a SIGKILLed server
    /// leaves them to init, which in a container may never reap them);
    /// SIGKILL if it is still running after a bounded grace period.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), libc::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

// ---- privileges, processes and limits ----------------------------------

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Gate for the tests that need root: mounting FUSE (`/dev/fuse` is
/// root's, and without root fuser would need the setuid `fusermount3`),
/// `--user nobody`, or chown. As root, returns true. Otherwise writes
/// `skipped <test>: needs root (<why>)` straight to stderr (past the test
/// harness's output capture, so it shows in a normal `cargo test` run) and
/// returns false; the test then returns:
///
/// ```no_run
/// # use integration_tests::harness::require_root;
/// if !require_root("mounts FUSE") {
///     return;
/// }
/// ```
///
/// CI runs as root, so there nothing is skipped and a missing `/dev/fuse`
/// or user `nobody` fails the tests that need them.
pub fn require_root(why: &str) -> bool {
    if is_root() {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    let _ = writeln!(io::stderr(), "skipped {test}: needs root ({why})");
    false
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response from `reader`. `head_only` for responses to HEAD (and
/// 304/204, which never have a body).
pub fn read_response(reader: &mut impl BufRead, head_only: bool) -> io::Result<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line: {line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad header: {trimmed:?}"),
            )
        })?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if !head_only && status != 304 && status != 204 {
        let len: usize = response
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response without Content-Length",
                )
            })?;
        response.body.resize(len, 0);
        reader.read_exact(&mut response.body)?;
    }
    Ok(response)
}

/// Sends `request` bytes on a new connection and reads one response.
pub fn exchange(server: &Server, request: &[u8]) -> Response {
    let mut stream = server.connect();
    stream.write_all(request).expect("send request");
    let head_only = request.starts_with(b"HEAD ");
    read_response(&mut BufReader::new(stream), head_only).expect("read response")
}

/// `GET path` over a fresh HTTP/1.1 connection.
pub fn get(server: &Server, path: &str) -> Response {
    exchange(
        server,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// A keep-alive HTTP/1.1 request (`Host: t`) with optional extra header
/// lines, each ending in CRLF.
pub fn request(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").into_bytes()
}

/// A connection for several exchanges, split into a writer and a buffered
/// reader of the same socket (with the timeouts of [`Server::connect`]).
pub fn connect(server: &Server) -> (TcpStream, BufReader<TcpStream>) {
    let stream = server.connect();
    let reader = BufReader::new(stream.try_clone().expect("clone socket"));
    (stream, reader)
}

/// True when the peer closed the connection (EOF) without sending more.
pub fn reads_eof(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0))
}

/// Asserts that nothing follows the last response read from `reader` (its
/// buffer is empty) and that the peer then closes; `what` names the case.
pub fn assert_closed(reader: &mut BufReader<TcpStream>, what: &str) {
    assert!(
        reader.buffer().is_empty(),
        "{what}: unexpected bytes after the response: {:?}",
        String::from_utf8_lossy(reader.buffer())
    );
    assert!(
        reads_eof(reader.get_mut()),
        "{what}: the server should have closed the connection"
    );
}

/// Runs curl with `args` (plus `-sS` and a time bound); returns its output.
pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl must be installed (see .ci/run)")
}

/// Runs a Python 3 snippet; returns its output.
pub fn python(script: &str) -> Output {
    Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 must be installed")
}

// ---- test data --------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64*). Only the seed's upper 63
/// bits count (`seed` and `seed | 1` give the same bytes).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Position-dependent bytes that differ for every `seed` (a multiplicative
/// hash of position and seed), so swapped or shifted bodies show.
pub fn seeded_bytes(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| {
            (i.wrapping_add(seed.wrapping_mul(7919))
                .wrapping_mul(2_654_435_761)
                >> 24) as u8
        })
        .collect()
}

/// Sets the modification time of the file at `path` to `secs` after the Unix epoch.
pub fn set_mtime(path: &Path, secs: u64) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open for set_modified");
    file.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .expect("set mtime");
}

/// IMF-fixdate (RFC 9110 5.6.7) of a Unix time, by the `httpdate` crate: an
/// implementation independent of flash-http's own formatter.
pub fn imf_fixdate(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}
