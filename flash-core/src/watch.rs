//! Change notification for cached files, through inotify.
//!
//! The path cache trusts an entry for a while (the freshness interval); a
//! file rewritten, truncated, `chmod`ed, deleted or renamed over within that
//! time would be served as it was. The kernel can tell at once: whoever opens
//! a file for the cache (a helper, or the main process in SPED) reads it
//! ([`crate::fs::settle`]), adds an inotify watch on the open file to the
//! main process's inotify instance (helpers inherit its descriptor), and
//! then checks the metadata once more ([`settle_watched`]): a change before
//! the watch shows in that check, a change after it is reported. The main loop reads the events as ordinary I/O and
//! drops the entries of every changed file before it serves another request.
//!
//! Watch descriptors are shared: a second watch on the same inode returns
//! the first one's number. The path cache counts the entries relying on each
//! and removes a watch when none does. Two races are closed by
//! [`Watches::adopt`], which refuses a watch (the answer is served but not
//! cached):
//! - a reply may carry the number of a watch the main process removed
//!   meanwhile (the helper added it just before); the kernel numbers new
//!   watches in increasing order, so a number not in use and not above the
//!   highest removed one may be dead;
//! - the file may change between the helper's read and the main process
//!   receiving the reply: the event then arrives for a watch not yet in use,
//!   and is remembered (among the few replies in flight) until claimed.
//!
//! What the kernel does not report (a directory renamed above a cached file,
//! network file systems changed by another host) is caught by the freshness
//! interval, as before.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::fs::{self, FileMeta, FsError};

/// Events that make a cached file stale: its bytes or size changed
/// (`IN_MODIFY`, also truncation), its permissions or link count changed
/// (`IN_ATTRIB`: `chmod`, unlink, renamed over), it was deleted or moved.
pub const WATCH_MASK: u32 =
    libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;

/// Adds a watch on the open file `file` to the instance `inotify`, through
/// `/proc/self/fd` so it is the inode that was opened, not whatever the path
/// names now. `None` when it cannot be watched (no /proc, the watch limit):
/// the freshness interval then covers the entry alone.
pub fn add_watch(inotify: BorrowedFd<'_>, file: BorrowedFd<'_>) -> Option<i32> {
    let path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call; the
    // kernel only reads it.
    let wd = unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), path.as_ptr(), WATCH_MASK) };
    (wd >= 0).then_some(wd)
}

/// A resolved file as its opener replies with it.
pub struct Settled {
    pub meta: FileMeta,
    /// The whole file, when it is small (see [`crate::fs::settle`]).
    pub contents: Option<Vec<u8>>,
    /// The watch reporting later changes, if one could be added.
    pub watch: Option<i32>,
}

/// Reads an opened file (`opened`: its `fstat` at open; see
/// [`crate::fs::settle`]) and adds a change watch
/// (when `inotify` is given) *after* the read, so a slow read holds no
/// watch yet, then checks that the metadata did not change meanwhile
/// (reading again if it did): every change after the returned metadata was
/// taken is reported on the watch.
pub fn settle_watched(
    file: BorrowedFd<'_>,
    opened: FileMeta,
    inotify: Option<BorrowedFd<'_>>,
) -> Result<Settled, FsError> {
    let (mut meta, mut contents) = fs::settle(file, opened, fs::INLINE_MAX)?;
    let watch = inotify.and_then(|i| add_watch(i, file));
    if watch.is_some() {
        let now = fs::file_meta(file)?;
        if now != meta {
            // Changed before the watch was in place: read again, now watched.
            (meta, contents) = fs::settle(file, now, fs::INLINE_MAX)?;
        }
    }
    Ok(Settled {
        meta,
        contents,
        watch,
    })
}

/// What a batch of events says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The file(s) behind this watch changed.
    Watch(i32),
    /// Events were lost (queue overflow): anything may have changed.
    Unknown,
}

/// The main process's inotify instance and the watches in use.
pub struct Watches {
    inotify: OwnedFd,
    /// Watch descriptor -> number of cache entries relying on it.
    in_use: HashMap<i32, u32>,
    /// Highest watch descriptor removed so far (by us or by the kernel).
    highest_removed: i32,
    /// Watches not in use that reported a change: a reply carrying one is
    /// stale already. Only the last few matter (replies in flight).
    unclaimed_changes: VecDeque<i32>,
    buf: Box<[u8]>,
}

/// How many unclaimed changes are remembered; replies in flight are at most
/// one per helper.
const UNCLAIMED_CHANGES: usize = 1024;

/// Size of `struct inotify_event` without its name.
const EVENT_HEADER: usize = 16;

impl Watches {
    /// A new, non-blocking, close-on-exec inotify instance.
    pub fn new() -> io::Result<Watches> {
        // SAFETY: inotify_init1 takes flags only.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watches {
            // SAFETY: a new descriptor owned by nobody else.
            inotify: unsafe { OwnedFd::from_raw_fd(fd) },
            in_use: HashMap::new(),
            highest_removed: 0,
            unclaimed_changes: VecDeque::new(),
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
        })
    }

    /// The instance, to poll it, to add watches to it, or to hand to helpers.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// One more cache entry would rely on `wd`: true if it may (then the
    /// watch is held), false if the watch may be gone or already reported
    /// a change (then it is removed unless in use, and the entry must not
    /// be cached).
    pub fn adopt(&mut self, wd: i32) -> bool {
        if wd <= 0 {
            return false; // not a watch the kernel hands out
        }
        if let Some(count) = self.in_use.get_mut(&wd) {
            *count += 1;
            return true;
        }
        let changed = match self.unclaimed_changes.iter().position(|&w| w == wd) {
            Some(at) => {
                self.unclaimed_changes.remove(at);
                true
            }
            None => false,
        };
        if changed || wd <= self.highest_removed {
            self.remove(wd);
            return false;
        }
        self.in_use.insert(wd, 1);
        true
    }

    /// A watch no entry will rely on (its answer was not cached).
    pub fn discard(&mut self, wd: i32) {
        if !self.in_use.contains_key(&wd) {
            self.remove(wd);
        }
    }

    fn remove(&mut self, wd: i32) {
        // SAFETY: plain integers. EINVAL (no such watch: the kernel removed
        // it already, or a helper sent a bogus number) is harmless.
        if unsafe { libc::inotify_rm_watch(self.inotify.as_raw_fd(), wd) } == 0 {
            // Only real watches move the mark (a bogus huge number must not
            // make every later watch look dead); the kernel's IN_IGNORED for
            // it moves it too.
            self.highest_removed = self.highest_removed.max(wd);
        }
    }

    /// One cache entry less relies on `wd`; the watch is removed when none does.
    pub fn release(&mut self, wd: i32) {
        let Some(count) = self.in_use.get_mut(&wd) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.in_use.remove(&wd);
            self.remove(wd);
        }
    }

    /// Number of watches in use.
    pub fn len(&self) -> usize {
        self.in_use.len()
    }

    /// Whether no watch is in use.
    pub fn is_empty(&self) -> bool {
        self.in_use.is_empty()
    }

    /// Reads every pending event (without blocking) into `changes`.
    pub fn read_changes(&mut self, changes: &mut Vec<Change>) {
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::read(
                    self.inotify.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if n <= 0 {
                // EAGAIN: drained. EINTR: the next loop iteration reads on
                // (the descriptor is level-triggered).
                return;
            }
            let mut at = 0;
            let n = n as usize;
            while at + EVENT_HEADER <= n {
                let field = |i: usize| {
                    let b = &self.buf[at + i..at + i + 4];
                    [b[0], b[1], b[2], b[3]]
                };
                let wd = i32::from_ne_bytes(field(0));
                let mask = u32::from_ne_bytes(field(4));
                let name_len = u32::from_ne_bytes(field(12)) as usize;
                at += EVENT_HEADER + name_len;
                if mask & libc::IN_Q_OVERFLOW != 0 {
                    changes.push(Change::Unknown);
                } else if mask & libc::IN_IGNORED != 0 {
                    // The kernel dropped the watch (file deleted, file system
                    // unmounted), or we removed it: it is dead, whether or
                    // not its reply has arrived.
                    self.highest_removed = self.highest_removed.max(wd);
                    if self.in_use.remove(&wd).is_some() {
                        changes.push(Change::Watch(wd));
                    }
                } else if self.in_use.contains_key(&wd) {
                    changes.push(Change::Watch(wd));
                } else if wd > self.highest_removed && !self.unclaimed_changes.contains(&wd) {
                    // A watch whose reply has not arrived yet.
                    if self.unclaimed_changes.len() == UNCLAIMED_CHANGES {
                        self.unclaimed_changes.pop_front();
                    }
                    self.unclaimed_changes.push_back(wd);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_write_to_a_watched_file_is_reported_and_removal_is_tracked() {
        let mut watches = Watches::new().unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let opened = std::fs::File::open(file.path()).unwrap();
        let wd = add_watch(watches.fd(), opened.as_fd()).expect("watchable");
        assert!(watches.adopt(wd));
        assert_eq!(
            add_watch(watches.fd(), opened.as_fd()),
            Some(wd),
            "one watch per inode"
        );
        let mut changes = Vec::new();
        watches.read_changes(&mut changes);
        assert!(changes.is_empty(), "nothing happened yet: {changes:?}");
        file.write_all(b"x").unwrap();
        watches.read_changes(&mut changes);
        assert!(changes.contains(&Change::Watch(wd)), "{changes:?}");
        watches.release(wd);
        assert!(!watches.adopt(wd), "removed, and not re-added");
        let again = add_watch(watches.fd(), opened.as_fd()).unwrap();
        assert!(again > wd, "new watches get higher numbers");
        assert!(watches.adopt(again));
    }

    #[test]
    fn a_change_before_the_reply_is_claimed_makes_the_watch_unusable() {
        let mut watches = Watches::new().unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let opened = std::fs::File::open(file.path()).unwrap();
        // A helper added the watch and replied; the file changes before the
        // main process reads the reply.
        let wd = add_watch(watches.fd(), opened.as_fd()).unwrap();
        file.write_all(b"changed").unwrap();
        let mut changes = Vec::new();
        watches.read_changes(&mut changes);
        assert!(changes.is_empty(), "no entry relies on it yet");
        assert!(!watches.adopt(wd), "the reply is stale already");
        assert!(watches.is_empty());
    }
}
