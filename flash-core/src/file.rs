//! An open file as the main process holds it: descriptor, metadata from the
//! helper (or the inline resolver), the headers derived from it, and an
//! optional read-only mapping whose bytes user code never reads.

use std::cell::Cell;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use flash_http::ETag;
use memmap2::{Mmap, MmapOptions};

use crate::fs::FileMeta;
use crate::residency::Probe;
use crate::sys::RawRegion;

/// A file ready to be served. Shared (`Rc`) by every connection sending it.
pub struct OpenFile {
    file: File,
    pub meta: FileMeta,
    /// Mapping of the whole file: its address goes to `writev` and `mincore`
    /// only. `None` for empty files or when mapping failed.
    map: Option<Mmap>,
    pub etag: ETag,
    /// Which residency probe tells the truth for this file (may be downgraded
    /// once a probe turns out unsupported).
    pub probe: Cell<Probe>,
}

impl OpenFile {
    pub fn new(fd: OwnedFd, meta: FileMeta, probe: Probe) -> OpenFile {
        let file = File::from(fd);
        let map = if meta.size == 0 || usize::try_from(meta.size).is_err() {
            None
        } else {
            // SAFETY: the mapping is read-only and its bytes are never read in
            // user space (only addresses go to the kernel), so a concurrent
            // truncation cannot fault this process. The length comes from the
            // helper's fstat, so memmap2 does not stat the file itself.
            unsafe { MmapOptions::new().len(meta.size as usize).map(&file) }.ok()
        };
        let probe = if map.is_none() && probe == Probe::Mincore {
            Probe::NoWaitRead
        } else {
            probe
        };
        OpenFile {
            file,
            etag: ETag::new(meta.mtime_secs.max(0) as u64, meta.size),
            meta,
            map,
            probe: Cell::new(probe),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn len(&self) -> u64 {
        self.meta.size
    }

    pub fn is_empty(&self) -> bool {
        self.meta.size == 0
    }

    pub fn mtime_secs(&self) -> u64 {
        self.meta.mtime_secs.max(0) as u64
    }

    /// The mapped addresses of `start..end`, if the file is mapped.
    pub fn region(&self, start: u64, end: u64) -> Option<RawRegion> {
        let map = self.map.as_ref()?;
        let end = end.min(map.len() as u64);
        if start > end {
            return None;
        }
        // Pointer arithmetic only: the memory is not touched.
        let ptr = map.as_ptr().wrapping_add(start as usize);
        Some(RawRegion {
            ptr,
            len: (end - start) as usize,
        })
    }
}
