//! `--check`: validate a configuration without starting anything.
//!
//! The flags and the configuration file have been parsed (and so their
//! values validated) by the time this runs; it checks what a start would
//! then trip over that can be checked without side effects: the document
//! root, the helper executable, the user. It binds no socket (whether an
//! address is free can only be learnt by binding it), spawns nothing and
//! writes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{process, ArchArg, Cli};

/// What `--check` prints when the configuration is good.
pub const OK: &str = "flash-server: configuration OK";

/// Checks `cli` as a start would, without starting: `Ok` if nothing found
/// is wrong, else the first problem.
pub fn check(cli: &Cli) -> Result<()> {
    check_helper_count(cli)?;
    if let Some(root) = &cli.root {
        check_root(root)?;
    }
    if matches!(cli.arch, ArchArg::Amped) {
        check_helper(&helper_path(cli)?)?;
    }
    if let Some(user) = &cli.user {
        process::lookup_user(user)?;
    }
    Ok(())
}

/// Runs [`check`] and ends the process: [`OK`] on stdout and status 0, or
/// the problem on stderr and status 1.
pub fn exit_with_verdict(cli: &Cli) -> ! {
    match check(cli) {
        Ok(()) => {
            println!("{OK}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("flash-server: {e:#}");
            std::process::exit(1);
        }
    }
}

/// AMPED needs at least one helper process.
pub fn check_helper_count(cli: &Cli) -> Result<()> {
    if matches!(cli.arch, ArchArg::Amped) && cli.helpers == 0 {
        bail!("--helpers 0: the AMPED architecture needs at least one helper process (--arch sped runs without)");
    }
    Ok(())
}

/// The `flash-helper` executable: `--helper-path`, else the one beside
/// this executable (or in `../libexec/flash/` from it).
pub fn helper_path(cli: &Cli) -> Result<PathBuf> {
    match &cli.helper_path {
        Some(path) => Ok(path.clone()),
        None => Ok(crate::helper_path::find(
            &std::env::current_exe().context("cannot locate flash-server")?,
        )),
    }
}

/// The document root exists, is a directory (after symlinks) and can be
/// listed by this process.
fn check_root(root: &Path) -> Result<()> {
    let metadata =
        std::fs::metadata(root).with_context(|| format!("document root {}", root.display()))?;
    if !metadata.is_dir() {
        bail!("document root {} is not a directory", root.display());
    }
    std::fs::read_dir(root)
        .with_context(|| format!("document root {} is not readable", root.display()))?;
    Ok(())
}

/// The helper is a regular file with an execute bit.
fn check_helper(path: &Path) -> Result<()> {
    let hint = "build it, or pass --helper-path";
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("helper executable {} not found ({hint})", path.display()))?;
    if !metadata.is_file() {
        bail!(
            "helper executable {} is not a regular file ({hint})",
            path.display()
        );
    }
    if metadata.permissions().mode() & 0o111 == 0 {
        bail!("helper executable {} is not executable", path.display());
    }
    Ok(())
}
