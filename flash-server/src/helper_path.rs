//! Where `flash-helper` is looked for when `--helper-path` is not given.
//!
//! Every way flash is installed puts the helper beside the server: `cargo
//! build` (target/DIR/), `cargo install` of both packages (~/.cargo/bin/), the
//! Debian package (/usr/bin/). Distributions that keep internal executables
//! out of PATH put it in `libexec` instead (`PREFIX/libexec/flash/`), which
//! is the second place looked at.

use std::path::{Path, PathBuf};

/// The helper's file name.
const HELPER: &str = "flash-helper";

/// The places a helper for the server at `exe` may be, in the order they
/// are tried: beside it, then `../libexec/flash/` from its directory.
pub fn candidates(exe: &Path) -> [PathBuf; 2] {
    let dir = exe.parent().unwrap_or(Path::new("."));
    [dir.join(HELPER), dir.join("../libexec/flash").join(HELPER)]
}

/// The first candidate that is a file; if none is, the first one (so the
/// "not found" error names the usual place).
pub fn find(exe: &Path) -> PathBuf {
    let [beside, libexec] = candidates(exe);
    if !beside.is_file() && libexec.is_file() {
        libexec
    } else {
        beside
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beside_first_then_libexec() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let libexec = dir.path().join("libexec/flash");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&libexec).unwrap();
        let exe = bin.join("flash-server");

        // Neither: the usual place, for the error message.
        assert_eq!(find(&exe), bin.join(HELPER));
        // Only in libexec.
        std::fs::write(libexec.join(HELPER), "").unwrap();
        assert_eq!(find(&exe), bin.join("../libexec/flash").join(HELPER));
        // Both: the one beside the server wins.
        std::fs::write(bin.join(HELPER), "").unwrap();
        assert_eq!(find(&exe), bin.join(HELPER));
    }
}
