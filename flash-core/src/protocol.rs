//! Messages exchanged between the main process and a disk helper.
//!
//! In the AMPED architecture the main process never performs an operation
//! that may block on the disk; it asks a helper process instead. This module
//! defines *what* is said on that channel: one request type per direction
//! ([`ToHelper`], [`FromHelper`]) and the protocol version checked in the
//! spawn handshake. *How* the messages are framed lives in [`crate::codec`]
//! (the only module that knows the serialisation format), and *how* frames
//! and descriptors travel lives in [`crate::ipc`]. The normative description
//! of the whole exchange is `docs/PROTOCOL.md`.
//!
//! Rules the types cannot express:
//! - exactly one request is outstanding per helper; the helper answers every
//!   request with exactly one reply carrying the request's `id`;
//! - [`FromHelper::Resolved`] carries either the file's whole contents (small
//!   files) or the opened file as an `SCM_RIGHTS` descriptor, never both;
//!   [`ToHelper::Prefetch`] always carries the file to prefetch; no other
//!   message carries a descriptor.
use serde::{Deserialize, Serialize};

pub use crate::fs::{FileMeta, FsError};

/// Bumped on any incompatible change; checked in the spawn handshake.
///
/// The main process kills a helper whose [`FromHelper::Hello`] announces a
/// different version.
pub const PROTOCOL_VERSION: u32 = 2;

/// Main process -> helper. One outstanding request per helper at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToHelper {
    /// Resolve a normalised relative path (as produced by flash-http) under the root and open it.
    ///
    /// `path` has no leading `/` and no dot segments; `""` is the document
    /// root. `ends_with_slash` tells whether the request path ended in `/`
    /// (a directory request: serve its `index.html`). No descriptor attached.
    /// Answered by `Resolved`, `Redirect` or `Failed`.
    Resolve {
        /// Chosen by the main process; echoed in the reply.
        id: u64,
        /// Normalised relative path; treated as hostile by the helper anyway.
        path: String,
        /// Whether the request path ended in `/`.
        ends_with_slash: bool,
    },
    /// Bring bytes `offset..offset+len` of the file passed along (SCM_RIGHTS) into the page cache.
    ///
    /// A range past end of file is cut short at EOF. Answered by `Prefetched`
    /// or `Failed` (`Io { errno: EBADF }` when no descriptor was attached).
    Prefetch {
        /// Chosen by the main process; echoed in the reply.
        id: u64,
        /// First byte of the range.
        offset: u64,
        /// Length of the range in bytes.
        len: u64,
    },
}

/// Helper -> main process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromHelper {
    /// First frame after spawn.
    ///
    /// Sent once, before any request is read, after the helper has opened the
    /// document root: it means "ready". No descriptor attached.
    Hello {
        /// The helper's [`PROTOCOL_VERSION`].
        version: u32,
        /// The helper's process id (for logs and for killing it).
        pid: u32,
    },
    /// A regular file was found: its contents, or its descriptor.
    ///
    /// A file of at most [`crate::fs::INLINE_MAX`] bytes comes whole in
    /// `contents` (exactly `meta.size` bytes, read between two `fstat`s that
    /// agreed) and no descriptor travels. Otherwise `contents` is `None` and
    /// the open file travels with this frame (SCM_RIGHTS): read-only,
    /// close-on-exec, blocking mode.
    Resolved {
        /// The request's id.
        id: u64,
        /// `fstat` of the file, taken after the watch was added.
        meta: FileMeta,
        /// When the request named a directory: which index name (position
        /// in the list given to the helper) this file is.
        index: Option<u8>,
        /// The whole file, for small files.
        contents: Option<Vec<u8>>,
        /// The inotify watch (on the instance the helper inherited) that
        /// reports changes of this file, if one could be added.
        watch: Option<i32>,
    },
    /// A directory named without its trailing slash: answer 301 to path + "/".
    Redirect {
        /// The request's id.
        id: u64,
    },
    /// The requested range is now in the page cache.
    Prefetched {
        /// The request's id.
        id: u64,
    },
    /// The request failed; `error` says how the main process should answer.
    Failed {
        /// The request's id.
        id: u64,
        /// Why: `NotFound` 404, `Forbidden` and `NotAFile` 403, `Io` 500.
        error: FsError,
    },
}

impl FromHelper {
    /// The id of the request this message answers; `None` for `Hello`,
    /// which answers no request.
    pub fn id(&self) -> Option<u64> {
        match *self {
            FromHelper::Hello { .. } => None,
            FromHelper::Resolved { id, .. }
            | FromHelper::Redirect { id }
            | FromHelper::Prefetched { id }
            | FromHelper::Failed { id, .. } => Some(id),
        }
    }

    /// Whether this message must arrive with a descriptor attached
    /// (only `Resolved` without contents).
    pub fn carries_fd(&self) -> bool {
        matches!(self, FromHelper::Resolved { contents: None, .. })
    }
}

impl ToHelper {
    /// The id of this request.
    pub fn id(&self) -> u64 {
        match *self {
            ToHelper::Resolve { id, .. } | ToHelper::Prefetch { id, .. } => id,
        }
    }

    /// Whether this message must be sent with a descriptor attached
    /// (only `Prefetch`).
    pub fn carries_fd(&self) -> bool {
        matches!(self, ToHelper::Prefetch { .. })
    }
}
