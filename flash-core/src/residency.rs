//! The residency oracle: "are these file bytes in memory right now?"
//!
//! `sendfile` on pages that are not resident blocks the event loop, so AMPED
//! asks before sending. Three probes exist and each lies or fails somewhere
//! (see docs/ARCHITECTURE.md):
//! - `mincore` on the mapping: truthful only when the kernel lets this process
//!   see the page cache of the file (owner, CAP_FOWNER, or write permission);
//!   otherwise it reports every page resident.
//! - `preadv2(RWF_NOWAIT)`: truthful for anyone on ext4/xfs/btrfs, but
//!   EOPNOTSUPP on FUSE and some others.
//! - the paper's fallback: trust only windows a helper loaded recently,
//!   tracked in an LRU sized to a memory budget.
//!
//! The oracle picks, per file, the probe whose answer is true, and never takes
//! an unverifiable "resident" as an answer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;

use crate::cache::MapCache;
use crate::file::OpenFile;
use crate::fs::FileMeta;
use crate::sys;

/// Bytes checked, prefetched and trusted as one unit.
pub const WINDOW: u64 = 1024 * 1024;

/// Start of the window holding `offset`.
pub fn window_start(offset: u64) -> u64 {
    offset - offset % WINDOW
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Mincore,
    NoWaitRead,
    LoadedRecently,
}

pub struct Residency {
    euid: u32,
    page_size: u64,
    mincore_vec: Vec<u8>,
    nowait_scratch: Vec<u8>,
    /// Devices where RWF_NOWAIT turned out unsupported (e.g. FUSE).
    no_nowait_devices: HashSet<u64>,
    loaded: LoadedWindows,
}

impl Residency {
    /// `budget` bounds the memory the "loaded recently" model may assume is cached.
    pub fn new(budget: u64) -> Residency {
        Residency {
            euid: sys::effective_uid(),
            page_size: sys::page_size() as u64,
            mincore_vec: Vec::new(),
            nowait_scratch: Vec::new(),
            no_nowait_devices: HashSet::new(),
            loaded: LoadedWindows::new((budget / WINDOW).max(16) as usize),
        }
    }

    /// The truthful probe for a file with this metadata. The kernel lets
    /// `mincore` see a file's page cache for its owner, for CAP_FOWNER
    /// (root), or with write permission; the last is not trusted here (a
    /// read-only mount or an ACL makes the mode bits lie), so only owner and
    /// root get `mincore`. Everyone else gets the next truthful probe.
    pub fn probe_for(&self, meta: &FileMeta) -> Probe {
        if self.euid == 0 || meta.uid == self.euid {
            Probe::Mincore
        } else if self.no_nowait_devices.contains(&meta.dev) {
            Probe::LoadedRecently
        } else {
            Probe::NoWaitRead
        }
    }

    /// How far from `start` (towards `end`, at most one window) the bytes are
    /// known resident. Returns `start` when the first byte is not.
    pub fn resident_until(
        &mut self,
        file: &OpenFile,
        maps: &mut MapCache,
        start: u64,
        end: u64,
    ) -> u64 {
        let end = end.min(window_start(start) + WINDOW).min(file.len());
        if start >= end {
            return start;
        }
        let Some(fd) = file.fd() else {
            // Held in memory: nothing to wait for.
            return end;
        };
        loop {
            let answer = match file.probe.get() {
                Probe::Mincore => self.by_mincore(file, maps, start, end),
                Probe::NoWaitRead => self.by_nowait_read(fd, start, end),
                Probe::LoadedRecently => Ok(self.loaded.resident_until(&file.meta, start, end)),
            };
            match answer {
                Ok(until) => return until,
                Err(_) => {
                    // The probe cannot answer for this file: fall back to the
                    // next truthful one, remembering unsupported devices.
                    let next = match file.probe.get() {
                        Probe::Mincore => Probe::NoWaitRead,
                        _ => {
                            self.no_nowait_devices.insert(file.meta.dev);
                            Probe::LoadedRecently
                        }
                    };
                    file.probe.set(next);
                }
            }
        }
    }

    /// A helper brought `start..end` into memory.
    pub fn note_loaded(&mut self, meta: &FileMeta, start: u64, end: u64) {
        self.loaded.note(meta, start, end);
    }

    fn by_mincore(
        &mut self,
        file: &OpenFile,
        maps: &mut MapCache,
        start: u64,
        end: u64,
    ) -> io::Result<u64> {
        let first_page = start - start % self.page_size;
        let region = maps
            .region(file, first_page, end)
            .ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?;
        sys::mincore(region, &mut self.mincore_vec)?;
        let resident_pages = self.mincore_vec.iter().take_while(|&&b| b & 1 != 0).count() as u64;
        Ok((first_page + resident_pages * self.page_size)
            .min(end)
            .max(start))
    }

    fn by_nowait_read(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        start: u64,
        end: u64,
    ) -> io::Result<u64> {
        let want = (end - start) as usize;
        if self.nowait_scratch.len() < want {
            self.nowait_scratch.resize(WINDOW as usize, 0);
        }
        match sys::pread_nowait(fd, &mut self.nowait_scratch[..want], start) {
            Ok(n) => Ok(start + n as u64),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(start),
            Err(e) => Err(e),
        }
    }
}

/// Key of one window of one version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct WindowKey {
    dev: u64,
    ino: u64,
    mtime: (i64, u32),
    size: u64,
    index: u64,
}

impl WindowKey {
    fn new(meta: &FileMeta, offset: u64) -> WindowKey {
        WindowKey {
            dev: meta.dev,
            ino: meta.ino,
            mtime: (meta.mtime_secs, meta.mtime_nsec),
            size: meta.size,
            index: offset / WINDOW,
        }
    }
}

/// The paper's model of the page cache: windows helpers loaded, most recent
/// last, forgotten beyond a capacity (the memory budget in windows).
struct LoadedWindows {
    capacity: usize,
    stamps: HashMap<WindowKey, u64>,
    order: VecDeque<(WindowKey, u64)>,
    clock: u64,
}

impl LoadedWindows {
    fn new(capacity: usize) -> Self {
        LoadedWindows {
            capacity,
            stamps: HashMap::new(),
            order: VecDeque::new(),
            clock: 0,
        }
    }

    fn touch(&mut self, key: WindowKey) {
        self.clock += 1;
        self.stamps.insert(key, self.clock);
        self.order.push_back((key, self.clock));
        while self.stamps.len() > self.capacity || self.order.len() > 2 * self.capacity + 64 {
            let Some((old, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.stamps.get(&old) == Some(&stamp) {
                self.stamps.remove(&old);
            }
        }
    }

    /// Whole windows only: a helper always loads from a window's start.
    fn note(&mut self, meta: &FileMeta, start: u64, end: u64) {
        let mut offset = window_start(start);
        while offset < end {
            self.touch(WindowKey::new(meta, offset));
            offset += WINDOW;
        }
    }

    fn resident_until(&mut self, meta: &FileMeta, start: u64, end: u64) -> u64 {
        let key = WindowKey::new(meta, start);
        if self.stamps.contains_key(&key) {
            self.touch(key);
            end
        } else {
            start
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: u32, gid: u32, mode: u32) -> FileMeta {
        FileMeta {
            size: 10 * WINDOW,
            mtime_secs: 1,
            mtime_nsec: 0,
            ino: 7,
            dev: 3,
            uid,
            gid,
            mode,
        }
    }

    #[test]
    fn loaded_windows_forget_the_oldest_beyond_capacity() {
        let mut lru = LoadedWindows::new(2);
        let m = meta(0, 0, 0o644);
        lru.note(&m, 0, WINDOW);
        lru.note(&m, WINDOW, 2 * WINDOW);
        assert_eq!(lru.resident_until(&m, 10, WINDOW), WINDOW); // refreshes window 0
        lru.note(&m, 2 * WINDOW, 3 * WINDOW); // evicts window 1, the oldest
        assert_eq!(lru.resident_until(&m, WINDOW, 2 * WINDOW), WINDOW);
        assert_eq!(lru.resident_until(&m, 0, WINDOW), WINDOW);
        assert_eq!(lru.resident_until(&m, 2 * WINDOW, 3 * WINDOW), 3 * WINDOW);
    }

    #[test]
    fn a_changed_file_is_not_trusted() {
        let mut lru = LoadedWindows::new(8);
        let m = meta(0, 0, 0o644);
        lru.note(&m, 0, WINDOW);
        let changed = FileMeta { mtime_secs: 2, ..m };
        assert_eq!(lru.resident_until(&changed, 0, WINDOW), 0);
    }

    #[test]
    fn mincore_is_trusted_only_for_owner_and_root() {
        let mut oracle = Residency::new(1 << 20);
        oracle.euid = 1000;
        assert_eq!(oracle.probe_for(&meta(1000, 5, 0o400)), Probe::Mincore); // owner
                                                                             // Write permission by mode bits is not trusted (read-only mounts, ACLs).
        assert_eq!(oracle.probe_for(&meta(0, 1000, 0o664)), Probe::NoWaitRead);
        assert_eq!(oracle.probe_for(&meta(0, 0, 0o666)), Probe::NoWaitRead);
        assert_eq!(oracle.probe_for(&meta(0, 0, 0o644)), Probe::NoWaitRead);
        oracle.no_nowait_devices.insert(3);
        assert_eq!(oracle.probe_for(&meta(0, 0, 0o644)), Probe::LoadedRecently);
        oracle.euid = 0;
        assert_eq!(oracle.probe_for(&meta(1, 1, 0o400)), Probe::Mincore); // CAP_FOWNER
    }
}
