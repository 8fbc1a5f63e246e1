//! `--access-log` and `--log-format`: what the flags mean to the engine's
//! access log.

use anyhow::{Context, Result};
use clap::ValueEnum;
use flash_core::{AccessLog, LogFormat, LogTarget};

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Apache/nginx "combined", then the duration in seconds.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// `--access-log`: where the lines go, or `None` for `off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetArg(pub Option<LogTarget>);

/// `--access-log`: a path, `-` for standard output, or `off`.
pub fn parse_target(text: &str) -> Result<TargetArg, String> {
    match text {
        "" => Err("empty access log path (use a path, - or off)".into()),
        "off" => Ok(TargetArg(None)),
        "-" => Ok(TargetArg(Some(LogTarget::Stdout))),
        path => Ok(TargetArg(Some(LogTarget::File(path.into())))),
    }
}

/// Opens the access log the flags ask for (before privileges are dropped).
pub fn open(target: &TargetArg, format: FormatArg) -> Result<Option<AccessLog>> {
    let Some(target) = &target.0 else {
        return Ok(None);
    };
    let format = match format {
        FormatArg::Combined => LogFormat::Combined,
        FormatArg::Json => LogFormat::Json,
    };
    let log = AccessLog::open(target.clone(), format).with_context(|| match target {
        LogTarget::Stdout => "cannot write the access log to standard output".to_string(),
        LogTarget::File(path) => format!(
            "cannot open the access log {} (a FIFO needs a reader)",
            path.display()
        ),
    })?;
    Ok(Some(log))
}

/// Before the workers reopen the access log (SIGUSR1, after logrotate moved
/// it): the supervisor, which keeps the privileges the server started with,
/// creates the new file and hands it to `--user`, as nginx's master does, so
/// workers that run as that user can open it in a directory they cannot
/// write to.
pub fn prepare_reopen(cli: &crate::Cli) -> Result<()> {
    let Some(LogTarget::File(path)) = &cli.access_log.0 else {
        return Ok(());
    };
    let Some(user) = &cli.user else {
        return Ok(());
    };
    let user = crate::process::lookup_user(user)?;
    use std::os::unix::fs::OpenOptionsExt;
    // The directory may be writable by the user, whose worker could have
    // put a link there: never follow one, and hand over only a plain file
    // that is already root's or the user's (not, say, a hard link to a
    // system file).
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create the access log {}", path.display()))?;
    let meta = file.metadata()?;
    use std::os::unix::fs::MetadataExt;
    if !meta.is_file() || meta.nlink() != 1 || (meta.uid() != 0 && meta.uid() != user.uid) {
        anyhow::bail!(
            "the access log {} is not a plain file of root or {}: not handing it over",
            path.display(),
            user.name
        );
    }
    if meta.uid() != user.uid {
        std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid)).with_context(|| {
            format!(
                "cannot give the access log {} to {}",
                path.display(),
                user.name
            )
        })?;
    }
    Ok(())
}
