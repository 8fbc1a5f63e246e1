//! The embedded demo site, served when no document root is given: written
//! to a private temporary directory at start and removed at exit.

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
}

impl Drop for DemoSite {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
