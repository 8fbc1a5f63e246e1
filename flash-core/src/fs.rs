//! Confined path resolution and page-cache prefetch: the operations that may
//! block on the disk.
//!
//! In AMPED mode these run in helper processes (flash-helper), so the main
//! process never waits on the disk; in the SPED baseline the main process
//! calls them directly. Either way this is the only code that turns a request
//! path into an open file.
//!
//! Confinement is enforced by the kernel, not by string checks: every open is
//! an `openat2` relative to the document root directory with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` (plus `RESOLVE_NO_SYMLINKS` under
//! [`SymlinkPolicy::Never`]), so `..`, absolute paths and symlinks that lead
//! outside the root all fail, atomically with the lookup (no check-then-use
//! race). Paths are expected to be normalised by flash-http already, but are
//! treated as hostile regardless. Opens are `O_NONBLOCK` so a FIFO planted in
//! the tree cannot hang the caller.
//!
//! [`prefetch`] reads a range through a scratch buffer with `pread` until it
//! is resident; it never touches a mapping, so a file truncated underneath
//! cannot raise `SIGBUS` here.
//!
//! Not here: HTTP semantics (status codes, headers, the redirect target),
//! caching of results, directory listings. Requires Linux >= 5.6 (`openat2`).
//! The `unsafe` is confined to thin wrappers over `openat2`, `fstat`,
//! `fcntl`, `posix_fadvise` and `pread`.
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::fs::OpenOptions;
use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// What the main process needs to know about an opened file, from `fstat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Size in bytes (`st_size`).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch (`st_mtime`).
    pub mtime_secs: i64,
    /// Nanosecond part of the modification time (`st_mtime_nsec`).
    pub mtime_nsec: u32,
    /// Inode number (`st_ino`); with `dev`, identifies the file (ETags, caches).
    pub ino: u64,
    /// Device number (`st_dev`).
    pub dev: u64,
    /// Owner (`st_uid`).
    pub uid: u32,
    /// Group (`st_gid`).
    pub gid: u32,
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
}

impl FileMeta {
    /// The modification time as a `SystemTime`.
    pub fn mtime(&self) -> SystemTime {
        let nsec = Duration::from_nanos(u64::from(self.mtime_nsec.min(999_999_999)));
        if self.mtime_secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(self.mtime_secs as u64) + nsec
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(self.mtime_secs.unsigned_abs()) + nsec
        }
    }

    /// Whether `mode` says regular file.
    pub fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    fn from_stat(st: &libc::stat) -> FileMeta {
        FileMeta {
            size: st.st_size.max(0) as u64,
            mtime_secs: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
            ino: st.st_ino,
            dev: st.st_dev,
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
        }
    }
}

/// Why a path could not be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsError {
    /// No such file (`ENOENT`, `ENOTDIR`, `ENAMETOOLONG`), or a regular file
    /// requested with a trailing slash. HTTP 404.
    NotFound,
    /// Permission denied, an escape from the root, a refused symlink, or a
    /// directory without `index.html` (`EACCES`, `EPERM`, `EXDEV`, `ELOOP`).
    /// HTTP 403.
    Forbidden,
    /// The path names something that is neither a regular file nor a
    /// directory (FIFO, device, socket; `ENXIO`, `ENODEV` from the open).
    NotAFile,
    /// Any other failure, with its `errno`. HTTP 500.
    Io {
        /// The raw OS error number.
        errno: i32,
    },
}

impl FsError {
    /// Maps an `errno` from a lookup or open to its class (see the variants).
    pub fn from_errno(errno: i32) -> FsError {
        match errno {
            libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG => FsError::NotFound,
            libc::EACCES | libc::EPERM | libc::EXDEV | libc::ELOOP => FsError::Forbidden,
            // open(2) of a Unix socket, or of a device node without a driver.
            libc::ENXIO | libc::ENODEV => FsError::NotAFile,
            errno => FsError::Io { errno },
        }
    }

    fn from_io(err: &io::Error) -> FsError {
        match err.raw_os_error() {
            Some(errno) => FsError::from_errno(errno),
            None => FsError::Io { errno: libc::EIO },
        }
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            FsError::NotFound => f.write_str("not found"),
            FsError::Forbidden => f.write_str("forbidden"),
            FsError::NotAFile => f.write_str("not a regular file"),
            FsError::Io { errno } => write!(f, "{}", io::Error::from_raw_os_error(errno)),
        }
    }
}

impl std::error::Error for FsError {}

/// Whether symlinks may be followed during resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SymlinkPolicy {
    /// Follow symlinks whose targets stay beneath the root (relative ones;
    /// an absolute or escaping symlink is refused).
    #[default]
    WithinRoot,
    /// Refuse any symlink anywhere in the path.
    Never,
}

/// A successful resolution.
#[derive(Debug)]
pub enum Resolution {
    /// An open regular file: read-only, close-on-exec, blocking mode.
    File {
        /// The open file.
        file: OwnedFd,
        /// Its `fstat`.
        meta: FileMeta,
        /// When the request named a directory: which of the index names
        /// (position in the list) this file is.
        index: Option<u8>,
    },
    /// A directory named without its trailing slash: redirect to path + "/".
    Redirect,
}

/// Resolves request paths beneath one document root.
///
/// Holds an `O_PATH` descriptor of the root, opened once: renaming or
/// replacing the root directory afterwards does not change what is served.
#[derive(Debug)]
pub struct Resolver {
    root: OwnedFd,
    policy: SymlinkPolicy,
    /// Tried in order for a directory requested with its slash.
    index_names: Vec<String>,
}

/// Flags of every open done by [`Resolver::resolve`].
const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;

/// How often an `openat2` failing with `EAGAIN` (a concurrent rename raced
/// with a `RESOLVE_BENEATH` lookup) is retried.
const EAGAIN_RETRIES: u32 = 8;

impl Resolver {
    /// Opens the document root (`O_PATH | O_DIRECTORY | O_CLOEXEC`) and checks
    /// that `openat2` is available.
    pub fn open(root: &Path, policy: SymlinkPolicy) -> std::io::Result<Resolver> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(root)?;
        let resolver = Resolver {
            root: dir.into(),
            policy,
            index_names: crate::config::DEFAULT_INDEX_NAMES
                .map(String::from)
                .to_vec(),
        };
        // Probe once so a kernel without openat2 fails at startup, not per request.
        match openat2(
            resolver.root.as_fd(),
            c".",
            libc::O_PATH | libc::O_CLOEXEC,
            resolver.resolve_flags(),
        ) {
            Ok(_) => Ok(resolver),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "openat2 is not available (Linux >= 5.6 required)",
            )),
            Err(e) => Err(e),
        }
    }

    /// Sets the names tried, in order, as a directory's index (default
    /// `index.html`, `index.htm`). A name that is empty, `.`, `..` or
    /// contains `/` is never found (it keeps its position, which replies
    /// report).
    pub fn with_index_names(mut self, names: Vec<String>) -> Resolver {
        self.index_names = names;
        self
    }

    /// The symlink policy this resolver applies.
    pub fn policy(&self) -> SymlinkPolicy {
        self.policy
    }

    /// Resolves `path` (relative, normalised; `""` is the root) and opens it.
    ///
    /// - regular file: `File { index: None }`, or `NotFound` when
    ///   `ends_with_slash`;
    /// - directory: `Redirect` when `!ends_with_slash`, else the first of its
    ///   index names that exists (`File { index: Some(i) }`), or `Forbidden`
    ///   when it has none (or it is not a regular file);
    /// - anything else: `NotAFile`.
    ///
    /// An index is looked up as `path/NAME` from the root, under the same
    /// confinement.
    pub fn resolve(&self, path: &str, ends_with_slash: bool) -> Result<Resolution, FsError> {
        let file = self.open_beneath(if path.is_empty() { "." } else { path })?;
        let st = fstat(file.as_fd()).map_err(|e| FsError::from_io(&e))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG if ends_with_slash => Err(FsError::NotFound),
            libc::S_IFREG => finish_file(file, &st, None),
            libc::S_IFDIR if !ends_with_slash => Ok(Resolution::Redirect),
            libc::S_IFDIR => {
                drop(file);
                let dir = path.trim_end_matches('/');
                for (i, name) in self.index_names.iter().enumerate().take(256) {
                    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                        continue;
                    }
                    let index = if dir.is_empty() {
                        name.clone()
                    } else {
                        format!("{dir}/{name}")
                    };
                    let file = match self.open_beneath(&index) {
                        Ok(f) => f,
                        Err(FsError::NotFound) => continue,
                        Err(e) => return Err(e),
                    };
                    let st = fstat(file.as_fd()).map_err(|e| FsError::from_io(&e))?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                        return Err(FsError::Forbidden);
                    }
                    return finish_file(file, &st, Some(i as u8));
                }
                // No index: directory listing is not supported.
                Err(FsError::Forbidden)
            }
            _ => Err(FsError::NotAFile),
        }
    }

    fn resolve_flags(&self) -> u64 {
        let mut resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        if self.policy == SymlinkPolicy::Never {
            resolve |= libc::RESOLVE_NO_SYMLINKS;
        }
        resolve
    }

    fn open_beneath(&self, path: &str) -> Result<OwnedFd, FsError> {
        // A NUL cannot be part of a name: only a hostile caller sends one.
        let c_path = CString::new(path).map_err(|_| FsError::Forbidden)?;
        openat2(self.root.as_fd(), &c_path, OPEN_FLAGS, self.resolve_flags())
            .map_err(|e| FsError::from_io(&e))
    }
}

/// Switches a just-opened regular file back to blocking mode (`O_NONBLOCK`
/// was only there to keep a FIFO from blocking the open), turns off its
/// readahead, and packages it.
fn finish_file(file: OwnedFd, st: &libc::stat, index: Option<u8>) -> Result<Resolution, FsError> {
    // SAFETY: F_SETFL on an open descriptor touches no memory. Only the
    // status flags F_SETFL can change are affected; 0 clears O_NONBLOCK.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) } < 0 {
        return Err(FsError::from_io(&io::Error::last_os_error()));
    }
    // No kernel readahead on this open file (shared with the main process
    // through SCM_RIGHTS): prefetches load exactly their window, and the
    // main process's sendfile never meets a readahead mark that would start
    // disk reads from its context. An error only loses the hint.
    // SAFETY: posix_fadvise on an open descriptor touches no memory.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    Ok(Resolution::File {
        file,
        meta: FileMeta::from_stat(st),
        index,
    })
}

/// Largest file whose bytes travel to the main process in memory instead of
/// as a descriptor: such files then cost the main process no descriptor and
/// no mapping, and their response is one `writev` from memory.
pub const INLINE_MAX: u64 = 32 * 1024;

/// How often [`settle`] rereads a file that keeps changing under it.
const SETTLE_TRIES: usize = 3;

/// The final metadata of an opened file (`opened`: its `fstat` at open) and,
/// for a file of at most `inline_max` bytes, its whole contents.
///
/// The contents are a snapshot: metadata read before and after the read
/// must agree and the read must return exactly `size` bytes, else it tries
/// again (a same-size write within one timestamp tick can still slip
/// through; see docs/ARCHITECTURE.md, *Integrity*); a file that keeps
/// changing is returned without contents (it is then served through its
/// descriptor, whose `sendfile` never sends past the end of file).
pub fn settle(
    file: BorrowedFd<'_>,
    opened: FileMeta,
    inline_max: u64,
) -> Result<(FileMeta, Option<Vec<u8>>), FsError> {
    let mut before = opened;
    for _ in 0..SETTLE_TRIES {
        if before.size > inline_max {
            return Ok((before, None));
        }
        // Exactly `size` bytes; a file that grew or shrank meanwhile shows
        // in the metadata read after.
        let mut bytes = vec![0u8; before.size as usize];
        let mut got = 0;
        while got < bytes.len() {
            match pread(file, &mut bytes[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(FsError::from_io(&e)),
            }
        }
        let after = file_meta(file)?;
        if got == bytes.len() && after == before {
            return Ok((after, Some(bytes)));
        }
        before = after;
    }
    Ok((before, None))
}

/// `fstat` of an open descriptor, as a [`FileMeta`].
pub fn file_meta(file: BorrowedFd<'_>) -> Result<FileMeta, FsError> {
    fstat(file)
        .map(|st| FileMeta::from_stat(&st))
        .map_err(|e| FsError::from_io(&e))
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `struct stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// `openat2(dir, path, {flags, mode: 0, resolve})`, retrying `EINTR` and a
/// bounded number of `EAGAIN`s.
fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is three integers; all-zero is valid (mode 0).
    let mut how: libc::open_how = unsafe { mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    let mut eagain = 0;
    loop {
        // SAFETY: `path` is NUL-terminated and `how` is a valid open_how whose
        // size we pass; both outlive the call. The kernel writes no memory.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                mem::size_of::<libc::open_how>(),
            )
        };
        if rc >= 0 {
            // SAFETY: openat2 returned a new descriptor that nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) if eagain < EAGAIN_RETRIES => eagain += 1,
            _ => return Err(err),
        }
    }
}

/// Size of the per-thread scratch buffer [`prefetch`] reads through.
pub const PREFETCH_CHUNK: usize = 256 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; PREFETCH_CHUNK].into_boxed_slice());
}

/// Blocks until `offset..offset+len` of `file` is in the page cache (short at EOF is fine).
///
/// Advises the kernel (`POSIX_FADV_WILLNEED`) so readahead starts on the
/// whole range at once, then `pread`s the range through a reused per-thread
/// buffer until `len` bytes or end of file; when it returns, the range that
/// exists is resident. Errors: `Io { errno }` (e.g. `EBADF`, `EISDIR`,
/// `EIO`).
pub fn prefetch(file: BorrowedFd<'_>, offset: u64, len: u64) -> Result<(), FsError> {
    const OFF_MAX: u64 = i64::MAX as u64;
    if len == 0 || offset >= OFF_MAX {
        return Ok(());
    }
    let end = offset.saturating_add(len).min(OFF_MAX);
    // SAFETY: posix_fadvise touches no memory. Its result is only advice
    // and is ignored: pread below reports any real problem.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            (end - offset) as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut pos = offset;
        while pos < end {
            let want = (end - pos).min(scratch.len() as u64) as usize;
            let n = pread(file, &mut scratch[..want], pos).map_err(|e| FsError::Io {
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            })?;
            if n == 0 {
                break; // end of file
            }
            pos += n as u64;
        }
        Ok(())
    })
}

/// `pread`, retrying `EINTR`.
fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `offset`
        // was checked by the caller to fit in off_t.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
