//! Starts the real `flash-server` binary on a free loopback port and offers
//! small, honest clients: raw sockets with a minimal response reader, curl,
//! and Python's http.client; plus the test data the tests share (generated
//! file contents, file times, and an independent HTTP date formatter).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

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
    /// A new directory under the system temp dir (`$TMPDIR` or `/tmp`).
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// A new directory in memory (`/dev/shm`) if a tmpfs there has
    /// `bytes` to spare (and the machine twice that in available memory),
    /// else as [`TempDir::new`]. For trees of very many files: creating
    /// 200,000 small files takes about a second on tmpfs but can take a
    /// minute on a disk-backed file system.
    pub fn new_in_memory(tag: &str, bytes: u64) -> TempDir {
        let shm = Path::new("/dev/shm");
        if tmpfs_with_room(shm, bytes) && mem_available() >= 2 * bytes {
            TempDir::new_in(shm, tag)
        } else {
            TempDir::new(tag)
        }
    }

    fn new_in(base: &Path, tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("flash-test-{tag}-{}-{n}", std::process::id()));
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

/// Whether `dir` is a writable tmpfs with at least `bytes` free.
fn tmpfs_with_room(dir: &Path, bytes: u64) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stats = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: c_path is NUL-terminated; `stats` is a writable statfs buffer.
    if unsafe { libc::statfs(c_path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs returned 0, so it filled in the struct.
    let stats = unsafe { stats.assume_init() };
    // SAFETY: access only reads the path.
    let writable = unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } == 0;
    // The field types differ between targets.
    #[allow(clippy::unnecessary_cast)]
    let free = (stats.f_bavail as u64).saturating_mul(stats.f_bsize as u64);
    stats.f_type == libc::TMPFS_MAGIC && writable && free >= bytes
}

/// `MemAvailable` of /proc/meminfo in bytes (0 if unknown).
fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running `flash-server`.
pub struct Server {
    child: Option<Child>,
    /// The first listener the server printed (the `--listen` one).
    pub addr: SocketAddr,
    /// The `--proxy-protocol` listeners, in order (their lines follow the
    /// plain ones and end in ` (PROXY protocol)`).
    pub proxy_addrs: Vec<SocketAddr>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// What the server wrote to stderr so far.
    stderr_so_far: Arc<Mutex<String>>,
    /// What the server printed after its `listening on` line (up to
    /// `STDOUT_KEPT` bytes; more is drained and discarded).
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

/// Bytes of a server's standard output kept for [`Server::stdout_so_far`].
const STDOUT_KEPT: usize = 16 << 20;

impl Server {
    /// Starts `flash-server ROOT --listen 127.0.0.1:0 ARGS...` and waits for
    /// its `listening on` line.
    pub fn start(root: &Path, args: &[&str]) -> Server {
        Server::start_with(Some(root), args).expect("flash-server should start")
    }

    /// As `start`, but returns the failure (exit status and stderr) instead of panicking.
    pub fn start_with(root: Option<&Path>, args: &[&str]) -> Result<Server, String> {
        Server::launch(&Launch {
            root,
            args,
            ..Launch::default()
        })
    }

    /// Starts `[PREFIX...] flash-server ROOT --listen 127.0.0.1:0 ARGS...` as
    /// `launch` says (e.g. under `prlimit`, which execs the server so the
    /// pid is the server's, or in a process group of its own).
    pub fn launch(launch: &Launch) -> Result<Server, String> {
        let server = binary("flash-server");
        let mut command = match launch.prefix.split_first() {
            Some((program, prefix_args)) => {
                let mut command = Command::new(program);
                command.args(prefix_args).arg(&server);
                command
            }
            None => Command::new(&server),
        };
        if launch.own_process_group {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        if let Some(root) = launch.root {
            command.arg(root);
        }
        let args = launch.args;
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        // One worker unless the test asks (or its configuration file
        // does): most tests look at the engine process (its descriptors,
        // helpers, system calls).
        if !args.contains(&"--workers") && !args.contains(&"--config") {
            command.args(["--workers", "1"]);
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", command.get_program()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_so_far = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr_so_far);
        let stderr = std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
            sink.lock().unwrap().clone()
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        // The server prints the line before serving, or exits with an error.
        let _ = stdout.read_line(&mut line);
        let Some(addr) = listening_on(&line) else {
            let status = child.wait().map_err(|e| e.to_string())?;
            let err = stderr.join().unwrap_or_default();
            return Err(format!(
                "flash-server exited ({status}) without listening: {line}{err}"
            ));
        };
        let addr = addr
            .parse()
            .map_err(|e| format!("bad address {addr}: {e}"))?;
        // The PROXY listeners' lines follow at once, one per flag (the first
        // line is one of them when there is no plain listener).
        let proxies = args.iter().filter(|a| **a == "--proxy-protocol").count();
        let mut proxy_addrs = Vec::new();
        if line.trim_end().ends_with(PROXY_SUFFIX) {
            proxy_addrs.push(addr);
        }
        while proxy_addrs.len() < proxies {
            line.clear();
            let _ = stdout.read_line(&mut line);
            let found = listening_on(&line).filter(|_| line.trim_end().ends_with(PROXY_SUFFIX));
            let Some(proxy) = found.and_then(|a| a.parse().ok()) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("expected a PROXY listener line, got {line:?}"));
            };
            proxy_addrs.push(proxy);
        }
        // Drain stdout so the server never blocks on a full pipe, keeping
        // the start of it for tests that read it (`--access-log -`).
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        std::thread::spawn({
            let kept = std::sync::Arc::clone(&kept);
            move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = stdout.read(&mut chunk) {
                    let mut kept = kept.lock().unwrap();
                    let room = STDOUT_KEPT.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        });
        Ok(Server {
            child: Some(child),
            addr,
            proxy_addrs,
            stderr: Some(stderr),
            stderr_so_far,
            stdout: kept,
        })
    }

    /// What the server (supervisor and workers) wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr_so_far.lock().unwrap().clone()
    }

    /// Waits up to `limit` until stderr holds `count` lines containing
    /// `needle`; returns whether it did.
    pub fn await_stderr(&self, needle: &str, count: usize, limit: Duration) -> bool {
        wait_until(limit, || {
            self.stderr_so_far()
                .lines()
                .filter(|l| l.contains(needle))
                .count()
                >= count
        })
    }

    /// What the server has printed on stdout since its `listening on` line.
    pub fn stdout_so_far(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    /// The first stdout line (after the `listening on` one) starting with
    /// `prefix`, waiting for it up to `timeout` (`None` if it was not
    /// printed by then).
    pub fn stdout_line(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = String::from_utf8_lossy(&self.stdout_so_far())
                .lines()
                .find(|l| l.starts_with(prefix))
                .map(str::to_owned);
            found.is_some()
        });
        found
    }

    /// The process the test started: the supervisor (signals go here).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The worker processes (each one engine with its helpers), from /proc.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.pid())
    }

    /// The engine process of a single-worker server (the default here):
    /// the one whose descriptors, memory and system calls tests inspect.
    /// Panics unless exactly one worker runs.
    pub fn engine_pid(&self) -> u32 {
        match self.worker_pids()[..] {
            [pid] => pid,
            ref pids => panic!("expected one worker process, found {pids:?}"),
        }
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

    /// The helper processes of every worker, from /proc.
    pub fn helper_pids(&self) -> Vec<u32> {
        self.worker_pids()
            .into_iter()
            .flat_map(children_of)
            .collect()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits up to `timeout` for the server to exit by itself (after a
    /// signal the test sent); returns its status and stderr, or `None` if
    /// it is still running (dropping the `Server` then stops it).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, String)> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                _ => return None,
            }
        };
        self.child = None;
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Some((status, stderr))
    }

    /// Sends SIGTERM and waits for the exit; returns status and stderr. A
    /// server still running `IO_TIMEOUT` after SIGTERM is killed (SIGKILL),
    /// which the status then shows, and the stderr says.
    pub fn stop(mut self) -> (ExitStatus, String) {
        signal(
            self.child.as_ref().expect("running server").id(),
            libc::SIGTERM,
        );
        if let Some(exit) = self.wait_exit(IO_TIMEOUT) {
            return exit;
        }
        let mut child = self.child.take().expect("running server");
        let _ = child.kill();
        let status = child.wait().expect("wait for flash-server");
        let mut stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        stderr.push_str("(harness: still running IO_TIMEOUT after SIGTERM; killed)\n");
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
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Ends a `listening on` line of a `--proxy-protocol` listener.
const PROXY_SUFFIX: &str = " (PROXY protocol)";

/// `ADDR` of a `listening on http://ADDR[ (PROXY protocol)]` line.
fn listening_on(line: &str) -> Option<&str> {
    let addr = line.trim().strip_prefix("listening on http://")?;
    Some(addr.strip_suffix(PROXY_SUFFIX).unwrap_or(addr))
}

/// How [`Server::launch`] starts the server.
#[derive(Default)]
pub struct Launch<'a> {
    /// Document root (none: the embedded demo site).
    pub root: Option<&'a Path>,
    /// Server arguments; `--listen 127.0.0.1:0` is added unless there is a `--listen`.
    pub args: &'a [&'a str],
    /// A command that runs the server, e.g. `["prlimit", "--nofile=256:256"]`.
    pub prefix: &'a [&'a str],
    /// Start it in a new process group (its pid is the group id), like a
    /// shell job, so a terminal's Ctrl-C can be imitated with `kill(-pid, SIGINT)`.
    pub own_process_group: bool,
}

/// Sends `sig` to process `pid` (never to a group: pid 0 is refused).
pub fn signal(pid: u32, sig: libc::c_int) {
    assert!(
        pid != 0,
        "signal: no process (pid 0 would be our own group)"
    );
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

/// What `/proc` says about a running process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// Lines of `/proc/PID/maps`: memory mappings.
    pub mappings: usize,
    /// Entries of `/proc/PID/fd`: open descriptors.
    pub descriptors: usize,
    /// `VmRSS` in KiB: resident memory now.
    pub rss_kib: u64,
    /// `VmHWM` in KiB: peak resident memory.
    pub hwm_kib: u64,
}

impl ProcStats {
    /// The larger of each field.
    pub fn max(self, other: ProcStats) -> ProcStats {
        ProcStats {
            mappings: self.mappings.max(other.mappings),
            descriptors: self.descriptors.max(other.descriptors),
            rss_kib: self.rss_kib.max(other.rss_kib),
            hwm_kib: self.hwm_kib.max(other.hwm_kib),
        }
    }
}

/// Mappings, descriptors and resident memory of process `pid`; `None` once
/// it is gone.
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let maps = std::fs::read(format!("/proc/{pid}/maps")).ok()?;
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Some(ProcStats {
        mappings: maps.iter().filter(|&&b| b == b'\n').count(),
        descriptors,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// Child processes of `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `Z`...), `None` if no such process.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The arguments of process `pid` (`/proc/PID/cmdline`); empty once it is gone.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Whether `pid` is still a running process (a zombie has exited: it only
/// waits for its parent to collect the status).
/// Starts `GET path` (`Connection: close`) on a connection with a 4 KiB
/// receive buffer, so the server is left holding most of a large response,
/// and reads the head: returns the reader, at the first body byte, and the
/// `Content-Length`. Panics unless the status is 200.
pub fn start_slow_download(server: &Server, path: &str) -> (BufReader<TcpStream>, usize) {
    let stream = connect_small_rcvbuf(server.addr, 4096);
    (&stream)
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send request");
    let mut reader = BufReader::with_capacity(4096, stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 200"), "GET {path}: {line:?}");
    let mut content_length = None;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        assert!(!line.is_empty(), "the connection closed in the head");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().ok();
            }
        }
    }
    (reader, content_length.expect("Content-Length"))
}

/// The C form of an IPv4 socket address, for raw `connect` calls.
pub fn sockaddr_in(v4: &std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The pids of `pids` whose processes still run.
pub fn still_running(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|&pid| process_alive(pid))
        .collect()
}

pub fn process_alive(pid: u32) -> bool {
    matches!(proc_state(pid), Some(state) if state != 'Z' && state != 'X')
}

/// Polls `cond` every few milliseconds until it holds or `limit` has
/// passed; returns whether it held. For conditions with no event to await
/// (another process's state in /proc).
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Raises this process's soft descriptor limit to at least `want` (up to
/// the hard limit); servers started afterwards inherit it. Returns the new
/// soft limit.
pub fn raise_nofile_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

/// A TCP connection to `addr` whose receive buffer is set to `rcvbuf`
/// bytes before connecting, so the server cannot push much of a large body
/// ahead of a reader that stops reading. Read and write timeouts are
/// `IO_TIMEOUT`.
pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("the harness listens on IPv4 loopback")
    };
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr lives across connect.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let size = rcvbuf as libc::c_int;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
        let sin = sockaddr_in(&v4);
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect: {}", io::Error::last_os_error());
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream
    }
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

/// Reads one response from `reader`. `head_only` for responses to HEAD
/// (1xx, 204 and 304 never have a body). A head cut short by EOF is an error.
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
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in a response head",
            ));
        }
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
    if !head_only && !(100..200).contains(&status) && status != 304 && status != 204 {
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

/// The first offset at which `body` holds a byte that no version of the
/// file ever held at that offset (e.g. NUL padding past a shrunken end),
/// `None` if every byte comes from some version.
pub fn foreign_byte(body: &[u8], versions: &[&[u8]]) -> Option<usize> {
    body.iter()
        .enumerate()
        .position(|(i, b)| !versions.iter().any(|v| v.get(i) == Some(b)))
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
