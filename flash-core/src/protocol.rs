//! API CONTRACT STUB — messages between the main process and a helper.
//! (The implementer documents each item and keeps names/shapes.)
use serde::{Deserialize, Serialize};

pub use crate::fs::{FileMeta, FsError};

/// Bumped on any incompatible change; checked in the spawn handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// Main process -> helper. One outstanding request per helper at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToHelper {
    /// Resolve a normalised relative path (as produced by flash-http) under the root and open it.
    Resolve { id: u64, path: String, ends_with_slash: bool },
    /// Bring bytes `offset..offset+len` of the file passed along (SCM_RIGHTS) into the page cache.
    Prefetch { id: u64, offset: u64, len: u64 },
}

/// Helper -> main process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromHelper {
    /// First frame after spawn.
    Hello { version: u32, pid: u32 },
    /// The open regular file travels with this frame (SCM_RIGHTS).
    Resolved { id: u64, meta: FileMeta, is_index: bool },
    /// A directory named without its trailing slash: answer 301 to path + "/".
    Redirect { id: u64 },
    /// The requested range is now in the page cache.
    Prefetched { id: u64 },
    Failed { id: u64, error: FsError },
}

impl FromHelper {
    pub fn id(&self) -> Option<u64> {
        todo!()
    }
}
