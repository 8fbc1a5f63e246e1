//! The embedded demo site, served when no document root is given: written
//! to a private temporary directory at start and removed at exit.
//!
//! With `--user` the process that must remove it at exit no longer runs as
//! the one that created it, and the temporary directory is sticky (only an
//! entry's owner may delete it): the tree is handed to that user first.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

const FILES: &[(&str, &str)] = &[
    ("index.html", include_str!("demo/index.html")),
    ("style.css", include_str!("demo/style.css")),
    ("data.json", include_str!("demo/data.json")),
    ("about/index.html", include_str!("demo/about/index.html")),
];

/// The demo site on disk; removed when dropped.
pub struct DemoSite {
    dir: PathBuf,
}

impl DemoSite {
    pub fn create() -> io::Result<DemoSite> {
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("flash-demo-{}-{unique}", std::process::id()));
        // World-readable (0755): a server started with --user must read it.
        fs::DirBuilder::new().mode(0o755).create(&dir)?;
        let site = DemoSite { dir };
        for (name, text) in FILES {
            let path = site.dir.join(name);
            if let Some(parent) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)?;
            }
            fs::write(&path, text)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        }
        Ok(site)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes `uid:gid` the owner of the whole tree, so a process running as
    /// that user can remove it.
    pub fn give_to(&self, uid: u32, gid: u32) -> io::Result<()> {
        fn walk(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
            // lchown: nothing here is a symlink, and none must be followed.
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
            if fs::symlink_metadata(path)?.is_dir() {
                for entry in fs::read_dir(path)? {
                    walk(&entry?.path(), uid, gid)?;
                }
            }
            Ok(())
        }
        walk(&self.dir, uid, gid)
    }
}

impl Drop for DemoSite {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove the demo site {}: {e}", self.dir.display());
            }
        }
    }
}
