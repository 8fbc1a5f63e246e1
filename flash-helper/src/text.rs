//! Text (debug) mode: run the helper's resolution and prefetch code on
//! commands typed on stdin, and print readable results with timings.
//!
//! Paths are URL paths as a client would send them (`/docs/a.html`); they go
//! through `flash_http::normalize_path` exactly as in the server. The work is
//! done in this process by the same `flash_core::fs` calls the protocol mode
//! makes; no socket is involved.
use flash_core::fs::{self, FileMeta, FsError, Resolution, Resolver, SymlinkPolicy};
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: resolve PATH | prefetch PATH OFFSET LEN | help | quit";

const HELP: &str = "\
commands:
  resolve PATH                 resolve a URL path (e.g. /docs/a.html) under the root and open it
  prefetch PATH OFFSET LEN     resolve PATH, then bring bytes OFFSET..OFFSET+LEN into the page cache
  help                         this text
  quit                         leave (end of input works too)";

/// Runs text mode until `quit` or end of input.
pub fn run(
    root: &Path,
    policy: SymlinkPolicy,
    index_names: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let resolver = Resolver::open(root, policy)
        .map_err(|e| anyhow::anyhow!("cannot open document root {}: {e}", root.display()))?
        .with_index_names(index_names);
    // SAFETY: isatty only inspects descriptor 0.
    let interactive = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut line = String::new();
    loop {
        if interactive {
            write!(out, "flash-helper> ")?;
            out.flush()?;
        }
        line.clear();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["quit"] | ["exit"] => break,
            ["help"] | ["?"] => writeln!(out, "{HELP}")?,
            ["resolve", path] => {
                let text = match resolve(&resolver, path) {
                    Ok((_, line)) | Err(line) => line,
                };
                writeln!(out, "{text}")?;
            }
            ["prefetch", path, offset, len] => match (offset.parse::<u64>(), len.parse::<u64>()) {
                (Ok(offset), Ok(len)) => {
                    writeln!(out, "{}", prefetch(&resolver, path, offset, len))?
                }
                _ => writeln!(out, "{USAGE} (OFFSET and LEN are byte counts)")?,
            },
            _ => writeln!(out, "{USAGE}")?,
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Normalises and resolves `raw`. On an opened file returns it with the
/// result line; otherwise the line describing why there is no file.
fn resolve(resolver: &Resolver, raw: &str) -> Result<(OwnedFd, String), String> {
    // Like the server, ignore a query string.
    let target = raw.split('?').next().unwrap_or_default();
    let (path, ends_with_slash) = match flash_http::normalize_path(target) {
        Ok(p) => p,
        Err(e) => return Err(format!("bad path {raw}: {e}")),
    };
    let start = Instant::now();
    let result = resolver.resolve(&path, ends_with_slash);
    let took = ms(start);
    match result {
        Ok(Resolution::File { file, meta, index }) => {
            let line = format!(
                "file {raw} size={} mtime={} ino={} dev={} index={} ({took} ms)",
                meta.size,
                rfc3339(&meta),
                meta.ino,
                meta.dev,
                if index.is_some() { "yes" } else { "no" },
            );
            Ok((file, line))
        }
        Ok(Resolution::Redirect) => Err(format!("redirect {target} -> {target}/ ({took} ms)")),
        Err(e) => Err(format!("{} {raw} ({took} ms)", describe(e))),
    }
}

fn prefetch(resolver: &Resolver, raw: &str, offset: u64, len: u64) -> String {
    let file = match resolve(resolver, raw) {
        Ok((file, _)) => file,
        Err(line) => return line,
    };
    let start = Instant::now();
    let result = fs::prefetch(file.as_fd(), offset, len);
    let took = ms(start);
    match result {
        Ok(()) => format!("prefetched {raw} {offset}+{len} ({took} ms)"),
        Err(e) => format!("{} {raw} {offset}+{len} ({took} ms)", describe(e)),
    }
}

fn describe(e: FsError) -> String {
    match e {
        FsError::NotFound => "not found".into(),
        FsError::Forbidden => "forbidden".into(),
        FsError::NotAFile => "not a file".into(),
        FsError::Io { errno } => format!("error ({})", io::Error::from_raw_os_error(errno)),
    }
}

/// Milliseconds since `start`, for display.
fn ms(start: Instant) -> String {
    format!("{:.3}", start.elapsed().as_secs_f64() * 1000.0)
}

/// The modification time as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn rfc3339(meta: &FileMeta) -> String {
    let secs = meta.mtime_secs;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_at(secs: i64) -> FileMeta {
        FileMeta {
            size: 0,
            mtime_secs: secs,
            mtime_nsec: 0,
            ino: 0,
            dev: 0,
            uid: 0,
            gid: 0,
            mode: 0,
        }
    }

    #[test]
    fn formats_utc_dates() {
        assert_eq!(rfc3339(&meta_at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(&meta_at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(&meta_at(1_795_321_800)), "2026-11-22T04:30:00Z");
        assert_eq!(rfc3339(&meta_at(-1)), "1969-12-31T23:59:59Z");
    }
}
