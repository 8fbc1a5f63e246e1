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
