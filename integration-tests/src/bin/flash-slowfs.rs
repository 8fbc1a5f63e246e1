//! `flash-slowfs`: a read-only passthrough FUSE filesystem that makes a directory look like
//! it lives on a slow disk, so tests can prove flash's event loop never waits for the disk.
//!
//! Usage: `flash-slowfs SOURCE MOUNTPOINT --delay-ms N [--read-log FILE]
//! [--hang-path REL]... [--hang-gate FILE]`
//!
//! * Every FUSE `read` request that reaches this process is answered only after `N` ms.
//!   Reads are concurrent: each read is served on its own thread, so `k` cold reads issued
//!   at once take about `N` ms in total, not `k * N` ms. (The kernel may split one large
//!   `read(2)` into several FUSE reads, and readahead may add some; each is delayed.)
//!   Lookups, `getattr`, `open` and `readdir` are not delayed.
//! * The kernel page cache is kept: files are opened with `FOPEN_KEEP_CACHE`, entries and
//!   attributes get long TTLs and `direct_io` is never used, so data read once stays cached
//!   and later reads of it never reach this process (and are not delayed).
//! * `--read-log FILE`: one line `<path relative to SOURCE> <offset> <size> <reader pid>` is appended for
//!   every read request, when it arrives (before the delay), so tests can count disk reads
//!   and can see a read that is still in progress.
//! * `--hang-path REL` (repeatable) with `--hang-gate FILE`: a read of the file at `REL`
//!   (relative to SOURCE, as in the read log) is logged, then blocks for as long as `FILE`
//!   exists, then takes the delay as usual: a disk that hangs on one file until the test
//!   releases it (removes `FILE`). Other files are unaffected. A process killed while its read
//!   is held stays in the kernel (uninterruptible) until the read is released.
//! * Ownership and modes are passed through from SOURCE; the mount uses `ro`,
//!   `allow_other` (so an unprivileged server can read root-owned files) and
//!   `default_permissions` (so the kernel checks mode bits). Symlinks are exposed as
//!   symlinks with their target text unchanged.
//! * Prints `ready` on stdout once the mount is live, serves until SIGTERM/SIGINT or an
//!   external unmount, then unmounts and exits 0.
//!
//! The source tree is assumed not to change while mounted (inodes are never forgotten and
//! attributes are cached for a long time).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request, Session, SessionACL,
    SessionUnmounter,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The source never changes while mounted, so the kernel may cache names and attributes
/// for as long as the mount lives.
const CACHE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Allow many cold reads (readahead is sent as background requests) to be in flight at
/// once; the kernel default of 12-16 would queue the rest and serialise the delays.
const MAX_BACKGROUND_REQUESTS: u16 = 256;

const USAGE: &str = "usage: flash-slowfs SOURCE MOUNTPOINT --delay-ms N [--read-log FILE] \
                     [--hang-path REL]... [--hang-gate FILE]";

/// How often a held read looks whether its gate is gone.
const HANG_POLL: Duration = Duration::from_millis(5);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("flash-slowfs: {message}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    source: PathBuf,
    mountpoint: PathBuf,
    delay: Duration,
    read_log: Option<PathBuf>,
    hang: Option<Hang>,
}

/// Reads of `paths` block while `gate` exists.
#[derive(Clone)]
struct Hang {
    paths: Vec<PathBuf>,
    gate: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut delay = None;
    let mut read_log = None;
    let mut hang_paths = Vec::new();
    let mut hang_gate = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--delay-ms") => {
                let value = args.next().ok_or(USAGE)?;
                let millis: u64 = value
                    .to_str()
                    .and_then(|text| text.parse().ok())
                    .ok_or_else(|| format!("--delay-ms needs a whole number, got {value:?}"))?;
                delay = Some(Duration::from_millis(millis));
            }
            Some("--read-log") => read_log = Some(PathBuf::from(args.next().ok_or(USAGE)?)),
            Some("--hang-path") => hang_paths.push(PathBuf::from(args.next().ok_or(USAGE)?)),
            Some("--hang-gate") => hang_gate = Some(PathBuf::from(args.next().ok_or(USAGE)?)),
            Some("-h" | "--help") => return Err(USAGE.to_string()),
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [source, mountpoint]: [PathBuf; 2] = positional.try_into().map_err(|_| USAGE)?;
    let hang = match (hang_paths.is_empty(), hang_gate) {
        (true, None) => None,
        (false, Some(gate)) => Some(Hang {
            paths: hang_paths,
            gate,
        }),
        _ => return Err(format!("--hang-path and --hang-gate go together\n{USAGE}")),
    };
    Ok(Args {
        source,
        mountpoint,
        delay: delay.ok_or(USAGE)?,
        read_log,
        hang,
    })
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let source = args
        .source
        .canonicalize()
        .map_err(|e| format!("source {}: {e}", args.source.display()))?;
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .map_err(|e| format!("mountpoint {}: {e}", args.mountpoint.display()))?;
    let read_log = match &args.read_log {
        Some(path) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("read log {}: {e}", path.display()))?,
        ),
        None => None,
    };

    // Register before mounting: an early SIGTERM must not kill us with the mount left behind.
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signal handlers: {e}"))?;

    let filesystem = SlowFs::new(source.clone(), args.delay, read_log, args.hang);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("flash-slowfs".to_string()),
        MountOption::Subtype("flash-slowfs".to_string()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    config.acl = SessionACL::All; // the `allow_other` mount option
                                  // Session::new mounts and completes the FUSE INIT handshake, so the mount is live after it.
    let mut session = Session::new(filesystem, &mountpoint, &config).map_err(|e| {
        format!(
            "cannot mount {} on {}: {e} (needs /dev/fuse, and root or fusermount3)",
            source.display(),
            mountpoint.display()
        )
    })?;

    let mut unmounter = session.unmount_callable();
    thread::Builder::new()
        .name("slowfs-signals".to_string())
        .spawn(move || {
            if signals.forever().next().is_some() {
                unmount_on_signal(&mut unmounter, &mountpoint);
            }
        })
        .map_err(|e| format!("signal thread: {e}"))?;

    let mut stdout = io::stdout().lock();
    writeln!(stdout, "ready")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing ready: {e}"))?;
    drop(stdout);

    // Returns once the filesystem is unmounted (by our signal thread or externally).
    session.run().map_err(|e| format!("session ended: {e}"))
}

/// Unmounts so that `Session::run` returns. If the mount is busy (a file is still open), it
/// is detached lazily and the process exits at once: closing /dev/fuse ends the connection.
fn unmount_on_signal(unmounter: &mut SessionUnmounter, mountpoint: &Path) {
    if let Err(err) = unmounter.unmount() {
        eprintln!(
            "flash-slowfs: unmount of {} failed ({err}); detaching lazily",
            mountpoint.display()
        );
        if let Err(err) = integration_tests::slowfs::detach(mountpoint) {
            eprintln!("flash-slowfs: lazy unmount failed too: {err}");
        }
        std::process::exit(0);
    }
}

/// Maps FUSE inode numbers to paths relative to the source root (root is the empty path).
struct InodeTable {
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next: u64,
}

impl InodeTable {
    fn new() -> InodeTable {
        let root = PathBuf::new();
        InodeTable {
            paths: HashMap::from([(INodeNo::ROOT.0, root.clone())]),
            inodes: HashMap::from([(root, INodeNo::ROOT.0)]),
            next: INodeNo::ROOT.0 + 1,
        }
    }

    fn path(&self, ino: INodeNo) -> Option<PathBuf> {
        self.paths.get(&ino.0).cloned()
    }

    fn inode_for(&mut self, rel_path: &Path) -> INodeNo {
        if let Some(&ino) = self.inodes.get(rel_path) {
            return INodeNo(ino);
        }
        let ino = self.next;
        self.next += 1;
        self.paths.insert(ino, rel_path.to_path_buf());
        self.inodes.insert(rel_path.to_path_buf(), ino);
        INodeNo(ino)
    }
}

#[derive(Clone)]
struct OpenFile {
    file: Arc<File>,
    rel_path: PathBuf,
}

struct SlowFs {
    source: PathBuf,
    delay: Duration,
    inodes: Mutex<InodeTable>,
    open_files: Mutex<HashMap<u64, OpenFile>>,
    next_handle: AtomicU64,
    read_log: Option<Mutex<File>>,
    hang: Option<Hang>,
}

/// Locks a mutex, ignoring poisoning: a panicked request must not take the mount down.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SlowFs {
    fn new(source: PathBuf, delay: Duration, read_log: Option<File>, hang: Option<Hang>) -> SlowFs {
        SlowFs {
            source,
            delay,
            inodes: Mutex::new(InodeTable::new()),
            open_files: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            read_log: read_log.map(Mutex::new),
            hang,
        }
    }

    /// The gate a read of `rel_path` must wait for (while it exists), if any.
    fn gate_for(&self, rel_path: &Path) -> Option<PathBuf> {
        let hang = self.hang.as_ref()?;
        hang.paths
            .iter()
            .any(|p| p == rel_path)
            .then(|| hang.gate.clone())
    }

    fn rel_path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.inodes).path(ino).ok_or(Errno::ENOENT)
    }

    fn full_path(&self, rel_path: &Path) -> PathBuf {
        if rel_path.as_os_str().is_empty() {
            self.source.clone()
        } else {
            self.source.join(rel_path)
        }
    }

    /// `lstat` of the source entry, so symlinks are reported as symlinks.
    fn attr_of(&self, ino: INodeNo, rel_path: &Path) -> Result<FileAttr, Errno> {
        let metadata = self.full_path(rel_path).symlink_metadata()?;
        Ok(file_attr(ino, &metadata))
    }

    /// Logs `<path> <offset> <size> <pid>`: the pid of the process whose
    /// read reached the filesystem (tests check it is never flash's main process).
    fn log_read(&self, rel_path: &Path, offset: u64, size: u32, pid: u32) {
        if let Some(log) = &self.read_log {
            let line = format!("{} {offset} {size} {pid}\n", rel_path.display());
            // One write(2) on an O_APPEND file: the line lands whole and is visible at once.
            if let Err(err) = lock(log).write_all(line.as_bytes()) {
                eprintln!("flash-slowfs: writing read log: {err}");
            }
        }
    }
}

fn file_attr(ino: INodeNo, metadata: &Metadata) -> FileAttr {
    FileAttr {
        ino,
        size: metadata.size(),
        blocks: metadata.blocks(),
        atime: system_time(metadata.atime(), metadata.atime_nsec()),
        mtime: system_time(metadata.mtime(), metadata.mtime_nsec()),
        ctime: system_time(metadata.ctime(), metadata.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(metadata.file_type()).unwrap_or(FileType::RegularFile),
        perm: (metadata.mode() & 0o7777) as u16,
        nlink: metadata.nlink() as u32,
        uid: metadata.uid(),
        gid: metadata.gid(),
        rdev: metadata.rdev() as u32,
        blksize: metadata.blksize() as u32,
        flags: 0,
    }
}

fn system_time(secs: i64, nanos: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nanos as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

/// Reads up to `size` bytes at `offset`, short only at end of file (FUSE fills any
/// shortfall before EOF with zeroes, so a short read must mean EOF).
fn read_at(file: &File, offset: u64, size: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is NUL-terminated and `stats` is a writable statvfs-sized buffer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled in the whole struct.
    Ok(unsafe { stats.assume_init() })
}

impl Filesystem for SlowFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Best effort: on failure the kernel default limit stays, which only serialises more.
        let _ = config.set_max_background(MAX_BACKGROUND_REQUESTS);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND_REQUESTS * 3 / 4);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = (|| {
            let parent_path = self.rel_path(parent)?;
            let rel_path = match Path::new(name).components().next() {
                Some(Component::Normal(_)) => parent_path.join(name),
                Some(Component::ParentDir) => parent_path.parent().ok_or(Errno::ENOENT)?.into(),
                _ => parent_path,
            };
            let metadata = self.full_path(&rel_path).symlink_metadata()?;
            let ino = lock(&self.inodes).inode_for(&rel_path);
            Ok(file_attr(ino, &metadata))
        })();
        match result {
            Ok(attr) => reply.entry(&CACHE_TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self
            .rel_path(ino)
            .and_then(|rel_path| self.attr_of(ino, &rel_path))
        {
            Ok(attr) => reply.attr(&CACHE_TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self
            .rel_path(ino)
            .and_then(|rel_path| Ok(std::fs::read_link(self.full_path(&rel_path))?));
        match result {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(errno) => reply.error(errno),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        let result = self.rel_path(ino).and_then(|rel_path| {
            // O_NONBLOCK so that opening a FIFO in the source cannot hang the session loop.
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(self.full_path(&rel_path))?;
            let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
            let open_file = OpenFile {
                file: Arc::new(file),
                rel_path,
            };
            lock(&self.open_files).insert(handle, open_file);
            Ok(handle)
        });
        match result {
            // KEEP_CACHE: do not drop this file's cached pages on open; that is the point.
            Ok(handle) => reply.opened(FileHandle(handle), FopenFlags::FOPEN_KEEP_CACHE),
            Err(errno) => reply.error(errno),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(open_file) = lock(&self.open_files).get(&fh.0).cloned() else {
            reply.error(Errno::EBADF);
            return;
        };
        self.log_read(&open_file.rel_path, offset, size, req.pid());
        let delay = self.delay;
        let gate = self.gate_for(&open_file.rel_path);
        // One thread per read so concurrent reads are delayed in parallel and the session
        // loop keeps answering lookups meanwhile. If the spawn fails, the dropped reply
        // answers EIO.
        let spawned = thread::Builder::new()
            .name("slowfs-read".to_string())
            .spawn(move || {
                if let Some(gate) = gate {
                    while gate.exists() {
                        thread::sleep(HANG_POLL);
                    }
                }
                if !delay.is_zero() {
                    thread::sleep(delay);
                }
                match read_at(&open_file.file, offset, size) {
                    Ok(data) => reply.data(&data),
                    Err(err) => reply.error(err.into()),
                }
            });
        if let Err(err) = spawned {
            eprintln!("flash-slowfs: cannot spawn read thread: {err}");
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // In-flight read threads hold their own Arc<File>, so removing it here is safe.
        lock(&self.open_files).remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.rel_path(ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = (|| {
            let rel_path = self.rel_path(ino)?;
            let mut children = Vec::new();
            for entry in std::fs::read_dir(self.full_path(&rel_path))? {
                let entry = entry?;
                let kind = FileType::from_std(entry.file_type()?).unwrap_or(FileType::RegularFile);
                children.push((entry.file_name(), kind));
            }
            // Sorted so that offsets stay stable between the calls of one listing.
            children.sort_by(|a, b| a.0.cmp(&b.0));
            Ok::<_, Errno>((rel_path, children))
        })();
        let (rel_path, children) = match result {
            Ok(listing) => listing,
            Err(errno) => {
                reply.error(errno);
                return;
            }
        };
        let mut inodes = lock(&self.inodes);
        let parent_ino = match rel_path.parent() {
            Some(parent) => inodes.inode_for(parent),
            None => INodeNo::ROOT,
        };
        let dots = [(ino, ".".into()), (parent_ino, "..".into())]
            .into_iter()
            .map(|(entry_ino, name)| (entry_ino, FileType::Directory, name));
        let named = children
            .into_iter()
            .map(|(name, kind)| (inodes.inode_for(&rel_path.join(&name)), kind, name));
        let entries: Vec<_> = dots.chain(named).collect();
        drop(inodes);
        for (index, (entry_ino, kind, name)) in
            entries.into_iter().enumerate().skip(offset as usize)
        {
            // The offset given with an entry is where the next readdir call resumes.
            if reply.add(entry_ino, index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match statvfs(&self.source) {
            Ok(stats) => reply.statfs(
                stats.f_blocks,
                stats.f_bfree,
                stats.f_bavail,
                stats.f_files,
                stats.f_ffree,
                stats.f_bsize as u32,
                stats.f_namemax as u32,
                stats.f_frsize as u32,
            ),
            Err(err) => reply.error(err.into()),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions makes the kernel check modes itself; only existence is ours.
        match self
            .rel_path(ino)
            .and_then(|rel_path| self.attr_of(ino, &rel_path))
        {
            Ok(_) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }
}
