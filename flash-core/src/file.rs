//! A file as the main process holds it: its bytes (a copy in memory for
//! small files, else the descriptor a helper or the inline resolver opened),
//! its metadata, and what is derived from them once: the entity tag, the
//! residency probe to trust, and the cached response head (the paper's
//! response header cache).

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use flash_http::ETag;

use crate::fs::FileMeta;
use crate::residency::Probe;

/// Where a file's bytes come from when it is sent.
pub enum Contents {
    /// A small file, read whole by the helper that resolved it (a consistent
    /// snapshot: the helper checked the metadata before and after reading).
    /// Sent from this memory with `writev`: no descriptor, no mapping and no
    /// residency check, and a later change of the file cannot alter it.
    InMemory(Box<[u8]>),
    /// A larger file: sent with `sendfile` (which never reads past the
    /// current end of file) after a residency check.
    Descriptor(File),
}

/// A file ready to be served. Shared (`Rc`) by every connection sending it
/// and by the path cache.
pub struct OpenFile {
    contents: Contents,
    pub meta: FileMeta,
    pub etag: ETag,
    /// Which residency probe tells the truth for this file (downgraded once
    /// a probe turns out unsupported).
    pub probe: Cell<Probe>,
    head: RefCell<Option<HeadTemplate>>,
    /// Last residency answer: (loop iteration, start, resident until).
    residency_memo: Cell<(u64, u64, u64)>,
}

/// A complete `200 OK` keep-alive head for this file; only Date changes.
struct HeadTemplate {
    content_type: &'static str,
    bytes: Vec<u8>,
    date_at: usize,
}

const DATE_FIELD: &[u8] = b"\r\nDate: ";
const DATE_LEN: usize = 29;

impl OpenFile {
    /// A file served through its descriptor.
    pub fn with_descriptor(fd: OwnedFd, meta: FileMeta, probe: Probe) -> OpenFile {
        OpenFile::new(Contents::Descriptor(File::from(fd)), meta, probe)
    }

    /// A small file whose `bytes` (exactly `meta.size` of them) were read whole.
    pub fn in_memory(bytes: Box<[u8]>, meta: FileMeta) -> OpenFile {
        debug_assert_eq!(bytes.len() as u64, meta.size);
        OpenFile::new(Contents::InMemory(bytes), meta, Probe::Mincore)
    }

    fn new(contents: Contents, meta: FileMeta, probe: Probe) -> OpenFile {
        OpenFile {
            contents,
            etag: ETag::new(meta.mtime_secs.max(0) as u64, meta.size),
            meta,
            probe: Cell::new(probe),
            head: RefCell::new(None),
            residency_memo: Cell::new((u64::MAX, 0, 0)),
        }
    }

    /// The residency answer given for `offset` during loop iteration `tick`, if any.
    pub fn memo_resident_until(&self, tick: u64, offset: u64) -> Option<u64> {
        let (at, start, until) = self.residency_memo.get();
        (at == tick && start <= offset && offset < until).then_some(until)
    }

    pub fn memo_residency(&self, tick: u64, start: u64, until: u64) {
        self.residency_memo.set((tick, start, until));
    }

    pub fn contents(&self) -> &Contents {
        &self.contents
    }

    /// The descriptor, for files not held in memory.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.contents {
            Contents::Descriptor(file) => Some(file.as_fd()),
            Contents::InMemory(_) => None,
        }
    }

    /// Whether this file holds a descriptor (counted against the cache's share).
    pub fn holds_descriptor(&self) -> bool {
        matches!(self.contents, Contents::Descriptor(_))
    }

    /// Bytes of memory this file's contents occupy (0 for a descriptor).
    pub fn memory_cost(&self) -> u64 {
        match &self.contents {
            Contents::InMemory(bytes) => bytes.len() as u64,
            Contents::Descriptor(_) => 0,
        }
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

    /// Appends the cached head for `content_type` with today's `date`;
    /// false when none is cached.
    pub fn write_cached_head(
        &self,
        out: &mut Vec<u8>,
        content_type: &'static str,
        date: &str,
    ) -> bool {
        let head = self.head.borrow();
        let Some(t) = head
            .as_ref()
            .filter(|t| std::ptr::eq(t.content_type, content_type))
        else {
            return false;
        };
        let start = out.len();
        out.extend_from_slice(&t.bytes);
        if date.len() == DATE_LEN {
            out[start + t.date_at..start + t.date_at + DATE_LEN].copy_from_slice(date.as_bytes());
        }
        true
    }

    /// Keeps a copy of a freshly built `200 OK` keep-alive head.
    pub fn cache_head(&self, content_type: &'static str, head: &[u8]) {
        let Some(pos) = head.windows(DATE_FIELD.len()).position(|w| w == DATE_FIELD) else {
            return;
        };
        let date_at = pos + DATE_FIELD.len();
        if head.len() >= date_at + DATE_LEN {
            *self.head.borrow_mut() = Some(HeadTemplate {
                content_type,
                bytes: head.to_vec(),
                date_at,
            });
        }
    }
}
