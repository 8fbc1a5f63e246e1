//! API CONTRACT STUB — confined path resolution and prefetch, shared by the
//! helper process (AMPED) and the main process (SPED baseline).
use serde::{Deserialize, Serialize};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nsec: u32,
    pub ino: u64,
    pub dev: u64,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsError {
    NotFound,
    Forbidden,
    NotAFile,
    Io { errno: i32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SymlinkPolicy {
    #[default]
    WithinRoot,
    Never,
}

#[derive(Debug)]
pub enum Resolution {
    File { file: OwnedFd, meta: FileMeta, is_index: bool },
    Redirect,
}

pub struct Resolver {/* private */}

impl Resolver {
    pub fn open(root: &Path, policy: SymlinkPolicy) -> std::io::Result<Resolver> {
        let _ = (root, policy);
        todo!()
    }
    pub fn resolve(&self, path: &str, ends_with_slash: bool) -> Result<Resolution, FsError> {
        let _ = (path, ends_with_slash);
        todo!()
    }
}

/// Blocks until `offset..offset+len` of `file` is in the page cache (short at EOF is fine).
pub fn prefetch(file: BorrowedFd<'_>, offset: u64, len: u64) -> Result<(), FsError> {
    let _ = (file, offset, len);
    todo!()
}
