//! Slow-disk test fixture: mounts a directory through the `flash-slowfs` FUSE binary so that
//! every read reaching the "disk" takes a fixed delay, and counts those reads.
//!
//! ```no_run
//! # use std::{path::Path, time::Duration};
//! use integration_tests::slowfs::SlowFs;
//! let slow = SlowFs::mount(Path::new("/srv/docroot"), Duration::from_millis(200)).unwrap();
//! // ... serve files from slow.mountpoint() ...
//! assert_eq!(slow.reads_of("index.html"), 1);
//! // dropping `slow` unmounts and reaps flash-slowfs
//! ```
//!
//! A disk that hangs on one file until released ([`SlowFs::mount_with_hangs`]): reads of
//! the named files block until [`SlowFs::release_hangs`] (or the drop of the guard).
//!
//! The binary is found through `FLASH_SLOWFS_BIN` if set, else as
//! [`crate::harness::binary`] finds the server's: `$FLASH_BIN_DIR`, or next to the running
//! test executable (`target/<profile>/flash-slowfs`) after a `cargo build` that keeps it fresh.
//!
//! Mounting needs `/dev/fuse` and root, nothing else: fuser's pure-Rust mount
//! (`default-features = false`) opens `/dev/fuse` and calls `mount(2)` itself when it may,
//! and only falls back to the setuid `fusermount3` (package fuse3) when that fails with
//! EPERM, i.e. for non-root users; as root, unmounting is `umount2(2)`. So as root the
//! tests need no fuse3 package; without root they are skipped
//! ([`crate::harness::require_root`]).
//!
//! Evicting cached pages (see [`drop_page_cache`]): `posix_fadvise(POSIX_FADV_DONTNEED)` on
//! a file under the mount does evict its FUSE pages (`FOPEN_KEEP_CACHE` only stops the
//! kernel from dropping them on open), and the next read reaches flash-slowfs again; the
//! slowfs self-test checks this. Writing `1` to `/proc/sys/vm/drop_caches`
//! ([`drop_all_page_caches`]) also works but needs root and hits the whole machine.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long to wait for `ready`: mounting is fast, but a loaded CI box may be slow to exec.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for flash-slowfs to unmount and exit after SIGTERM before SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A live `flash-slowfs` mount. Dropping it unmounts and reaps the process.
pub struct SlowFs {
    child: Option<Child>,
    stderr_reader: Option<JoinHandle<String>>,
    work_dir: PathBuf,
    mountpoint: PathBuf,
    read_log: PathBuf,
    /// While this file exists, reads of the hang paths block.
    hang_gate: Option<PathBuf>,
}

impl SlowFs {
    /// Mounts `source` read-only at a fresh temporary mountpoint, adding `delay` to every
    /// read that reaches the filesystem (page-cache hits are not delayed).
    ///
    /// Fails with the reason (including flash-slowfs's stderr) if the mount cannot be made:
    /// tests using this must fail, not skip, when FUSE is unavailable.
    pub fn mount(source: &Path, delay: Duration) -> io::Result<SlowFs> {
        SlowFs::mount_with_hangs(source, delay, &[])
    }

    /// As [`SlowFs::mount`], and every read of a file in `hang_paths` (relative to
    /// `source`, e.g. `"dir/stuck.bin"`) is logged when it arrives, then held until
    /// [`SlowFs::release_hangs`] is called (or the guard drops), then delayed as usual.
    /// A process killed while its read is held stays in the kernel until the release.
    pub fn mount_with_hangs(
        source: &Path,
        delay: Duration,
        hang_paths: &[&str],
    ) -> io::Result<SlowFs> {
        let binary = locate_binary()?;
        let work_dir = create_temp_dir("flash-slowfs")?;
        let mountpoint = work_dir.join("mnt");
        let read_log = work_dir.join("reads.log");
        // From here on `slow` cleans up the work dir if anything fails.
        let mut slow = SlowFs {
            child: None,
            stderr_reader: None,
            work_dir,
            mountpoint,
            read_log,
            hang_gate: None,
        };
        fs::create_dir(&slow.mountpoint)?;
        // Created up front so reads_of() works before the first read.
        File::create(&slow.read_log)?;

        let mut command = Command::new(&binary);
        command
            .arg(source)
            .arg(&slow.mountpoint)
            .arg("--delay-ms")
            .arg(delay.as_millis().to_string())
            .arg("--read-log")
            .arg(&slow.read_log);
        if !hang_paths.is_empty() {
            let gate = slow.work_dir.join("hang.gate");
            File::create(&gate)?;
            slow.hang_gate = Some(gate.clone());
            command.arg("--hang-gate").arg(gate);
            for path in hang_paths {
                command.arg("--hang-path").arg(path);
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("cannot start {}: {err}", binary.display()),
                )
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        // Owned by `slow` first, so an error below still stops it.
        slow.child = Some(child);
        slow.stderr_reader = Some(spawn_stderr_reader(stderr)?);

        // Read the first stdout line on a thread so the wait is bounded.
        let (line_tx, line_rx) = mpsc::channel();
        thread::Builder::new()
            .name("slowfs-ready".to_string())
            .spawn(move || {
                let mut line = String::new();
                let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
                let _ = line_tx.send(result);
            })?;
        let failure = match line_rx.recv_timeout(MOUNT_TIMEOUT) {
            Ok(Ok(line)) if line.trim_end() == "ready" => return Ok(slow),
            Ok(Ok(line)) if line.is_empty() => "exited without printing ready".to_string(),
            Ok(Ok(line)) => format!("printed {line:?} instead of ready"),
            Ok(Err(err)) => format!("reading its stdout failed: {err}"),
            Err(_) => format!("did not print ready within {MOUNT_TIMEOUT:?}"),
        };
        let (status, stderr_text) = slow.stop();
        Err(io::Error::other(format!(
            "flash-slowfs could not mount {} on {}: {failure}; exit status: {}; stderr: {} \
             (FUSE needs /dev/fuse and either root or fusermount3 from the fuse3 package)",
            source.display(),
            slow.mountpoint.display(),
            status.map_or_else(|| "unknown".to_string(), |s| s.to_string()),
            stderr_text.trim_end(),
        )))
    }

    /// Lets the reads held by [`SlowFs::mount_with_hangs`] go on (after the usual delay),
    /// and later reads of those files pass as any other. Idempotent.
    pub fn release_hangs(&mut self) {
        if let Some(gate) = self.hang_gate.take() {
            if let Err(err) = fs::remove_file(&gate) {
                eprintln!("slowfs: cannot remove {}: {err}", gate.display());
            }
        }
    }

    /// Where the slow copy of `source` is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Number of read requests for `rel_path` (relative to the source root, e.g.
    /// `"dir/index.html"`) that reached the filesystem, i.e. missed the page cache.
    /// Each line is logged when the read arrives, before its delay.
    pub fn reads_of(&self, rel_path: &str) -> usize {
        self.read_log_paths()
            .iter()
            .filter(|logged| *logged == rel_path)
            .count()
    }

    /// Number of read requests for all files that reached the filesystem.
    pub fn total_reads(&self) -> usize {
        self.read_log_paths().len()
    }

    /// The processes whose reads of `rel_path` reached the filesystem.
    pub fn reader_pids_of(&self, rel_path: &str) -> Vec<u32> {
        self.read_log_entries()
            .into_iter()
            .filter(|(path, _)| path == rel_path)
            .map(|(_, pid)| pid)
            .collect()
    }

    fn read_log_paths(&self) -> Vec<String> {
        self.read_log_entries()
            .into_iter()
            .map(|(path, _)| path)
            .collect()
    }

    /// `(path, pid)` of each logged read.
    fn read_log_entries(&self) -> Vec<(String, u32)> {
        let log = fs::read_to_string(&self.read_log).unwrap_or_else(|err| {
            panic!("reading slowfs read log {}: {err}", self.read_log.display())
        });
        log.lines()
            .map(|line| {
                // `<path> <offset> <size> <pid>`; the path may itself contain spaces.
                let mut fields = line.rsplitn(4, ' ');
                let pid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                (fields.nth(2).unwrap_or_default().to_string(), pid)
            })
            .collect()
    }

    /// Stops flash-slowfs (SIGTERM, SIGKILL after a timeout), makes sure nothing is left
    /// mounted, and returns its exit status and stderr.
    fn stop(&mut self) -> (Option<ExitStatus>, String) {
        let status = self.child.take().and_then(terminate);
        if is_mounted(&self.mountpoint) {
            // flash-slowfs died without unmounting; do it for it.
            if let Err(err) = unmount(&self.mountpoint) {
                eprintln!(
                    "slowfs: cannot unmount {}: {err}",
                    self.mountpoint.display()
                );
            }
        }
        let stderr_text = self
            .stderr_reader
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
        (status, stderr_text)
    }
}

impl Drop for SlowFs {
    fn drop(&mut self) {
        // Held reads must end, or the processes waiting on them could not exit.
        self.release_hangs();
        let (status, stderr_text) = self.stop();
        if let Some(status) = status.filter(|status| !status.success()) {
            eprintln!("slowfs: flash-slowfs exited with {status}; stderr: {stderr_text}");
        }
        // Never remove recursively: if the unmount failed, the mount's contents are the
        // caller's source files. Plain removals fail harmlessly on a live mount.
        let _ = fs::remove_file(&self.read_log);
        let _ = fs::remove_dir(&self.mountpoint);
        if let Err(err) = fs::remove_dir(&self.work_dir) {
            eprintln!("slowfs: cannot remove {}: {err}", self.work_dir.display());
        }
    }
}

/// Evicts `path`'s pages from the page cache with `posix_fadvise(POSIX_FADV_DONTNEED)`, so
/// the next read of it reaches the (slow) filesystem again. Pass the path under the mount:
/// evicting the source file does not touch the FUSE mount's own cached pages. This works on
/// flash-slowfs mounts; pages still mapped by some process are not evicted.
pub fn drop_page_cache(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: the fd is valid for the lifetime of `file`; fadvise only reads its arguments.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    // posix_fadvise returns the error number instead of setting errno.
    match rc {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Last resort: drops the whole machine's clean page cache (`echo 1 >
/// /proc/sys/vm/drop_caches`). Needs root; also evicts flash-slowfs pages.
pub fn drop_all_page_caches() -> io::Result<()> {
    fs::write("/proc/sys/vm/drop_caches", "1")
}

/// Whether `path` is currently a mount point in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = escape_mount_path(path);
    // Field 5 of each line is the mount point, with whitespace and `\` octal-escaped.
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

fn escape_mount_path(path: &Path) -> String {
    let mut escaped = String::new();
    for ch in path.to_string_lossy().chars() {
        match ch {
            ' ' | '\t' | '\n' | '\\' => escaped.push_str(&format!("\\{:03o}", ch as u32)),
            _ => escaped.push(ch),
        }
    }
    escaped
}

/// `FLASH_SLOWFS_BIN`, else [`crate::harness::binary`]`("flash-slowfs")`: `$FLASH_BIN_DIR`
/// or the freshly built `target/<profile>/flash-slowfs` next to the running test executable.
fn locate_binary() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FLASH_SLOWFS_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("FLASH_SLOWFS_BIN={} is not a file", path.display()),
            ))
        };
    }
    let path = crate::harness::binary("flash-slowfs");
    if path.is_file() {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "flash-slowfs binary not found at {}; build it with \
                 `cargo build -p integration-tests --bin flash-slowfs` or set FLASH_SLOWFS_BIN",
                path.display()
            ),
        ))
    }
}

/// A new, empty, world-traversable directory under the system temp dir.
fn create_temp_dir(prefix: &str) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    // Canonical, so the path matches /proc/self/mountinfo even if TMPDIR is a symlink.
    let temp_root = std::env::temp_dir().canonicalize()?;
    loop {
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = temp_root.join(format!("{prefix}-{}-{unique}-{nanos}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {
                // An unprivileged server user must be able to reach the mountpoint inside.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
                return Ok(dir);
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Collects flash-slowfs's stderr (for error messages) and echoes it for test logs.
fn spawn_stderr_reader(stderr: ChildStderr) -> io::Result<JoinHandle<String>> {
    thread::Builder::new()
        .name("slowfs-stderr".to_string())
        .spawn(move || {
            let mut collected = String::new();
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line);
                eprint!("{text}"); // flash-slowfs prefixes its own messages
                collected.push_str(&text);
                line.clear();
            }
            collected
        })
}

/// Asks flash-slowfs to unmount and exit (SIGTERM), escalating to SIGKILL if it does not
/// exit in time. Returns its exit status if it was reaped.
fn terminate(child: Child) -> Option<ExitStatus> {
    let pid = child.id() as libc::pid_t;
    send_signal(pid, libc::SIGTERM);
    // Wait on a thread so the wait is bounded; the pid stays ours until that wait reaps it.
    let (status_tx, status_rx) = mpsc::channel();
    let mut child = child;
    let waiter = thread::Builder::new()
        .name("slowfs-reaper".to_string())
        .spawn(move || {
            let _ = status_tx.send(child.wait());
        });
    if let Err(err) = waiter {
        eprintln!("slowfs: cannot spawn reaper thread: {err}");
        return None;
    }
    if let Ok(result) = status_rx.recv_timeout(EXIT_TIMEOUT) {
        return result.ok();
    }
    eprintln!("slowfs: flash-slowfs (pid {pid}) ignored SIGTERM for {EXIT_TIMEOUT:?}; killing");
    send_signal(pid, libc::SIGKILL);
    match status_rx.recv_timeout(EXIT_TIMEOUT) {
        Ok(result) => result.ok(),
        Err(_) => {
            eprintln!("slowfs: flash-slowfs (pid {pid}) survived SIGKILL; leaving it");
            None
        }
    }
}

fn send_signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Unmounts `mountpoint`, lazily if it is busy. Uses umount2(2) as root, else fusermount3.
fn unmount(mountpoint: &Path) -> io::Result<()> {
    match umount2(mountpoint, 0) {
        Ok(()) => Ok(()),
        Err(err) if matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EPERM)) => {
            detach(mountpoint)
        }
        Err(err) => Err(err),
    }
}

/// Detaches a FUSE mount lazily (it goes once no file under it is open);
/// without root, through the setuid `fusermount3`.
pub fn detach(mountpoint: &Path) -> io::Result<()> {
    match umount2(mountpoint, libc::MNT_DETACH) {
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => {
            let status = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!("fusermount3 -u -z: {status}")))
            }
        }
        other => other,
    }
}

fn umount2(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c_path.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
