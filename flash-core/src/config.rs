//! Engine configuration: what the binary decides and the engine obeys.

use std::path::PathBuf;
use std::time::Duration;

use crate::fs::SymlinkPolicy;

/// Which architecture of the paper the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Event loop plus helper processes for all disk work (the default).
    Amped,
    /// Event loop doing disk work inline: the comparison baseline, which
    /// stalls every client while it waits on the disk.
    Sped,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Document root.
    pub root: PathBuf,
    pub arch: Arch,
    pub symlinks: SymlinkPolicy,
    /// Helper processes (AMPED).
    pub helpers: usize,
    /// The `flash-helper` executable.
    pub helper_path: PathBuf,
    /// Jobs that may wait for a helper before new requests get 503.
    pub helper_queue: usize,
    /// A helper busy longer than this is killed; a job queued longer gets 503.
    pub helper_timeout: Duration,
    /// Time a client has to send a complete request head.
    pub header_timeout: Duration,
    /// Time a client has to send a request body (a trickled body gets 408).
    pub body_timeout: Duration,
    /// Time an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Time a response may go without progress.
    pub send_timeout: Duration,
    /// Bytes per second a client must at least read of a response, averaged
    /// over `send_rate_window` (0: no minimum; only `send_timeout` applies).
    pub min_send_rate: u64,
    /// The window over which `min_send_rate` is measured.
    pub send_rate_window: Duration,
    /// Time in-flight responses get to finish after a shutdown request.
    pub shutdown_timeout: Duration,
    /// Connections served at once; accepting pauses at the limit.
    pub max_connections: usize,
    /// Memory the residency model may assume cached when no truthful probe exists.
    pub residency_budget: u64,
    /// Entries of the pathname translation cache (0: off, every request resolves).
    pub path_cache_entries: usize,
    /// A cached path is revalidated within this time: a file replaced,
    /// changed or deleted on disk is noticed within it.
    pub path_freshness: Duration,
    /// Reuse each file's response head, patching only Date.
    pub header_cache: bool,
    /// Bytes of files that stay mapped (0: map on every use).
    pub map_cache_bytes: u64,
    pub limits: flash_http::Limits,
    /// Whether paths with a segment starting with `.` are served.
    pub hidden: HiddenFiles,
    /// Names tried, in order, when a directory is requested with its slash.
    pub index_names: Vec<String>,
    /// Listeners expecting a PROXY protocol header, and the peers trusted
    /// to send one (none by default).
    pub proxy_protocol: crate::proxy::ProxyProtocol,
}

/// Paths with a segment starting with `.` (`/.git/config`, `/.env`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HiddenFiles {
    /// Answer 404, except under `/.well-known/` (RFC 8615).
    #[default]
    Deny,
    /// Serve them like any other file.
    Allow,
}

/// Helper processes when the embedder does not say.
pub const DEFAULT_HELPERS: usize = 8;
/// Directory index names when the embedder does not say.
pub const DEFAULT_INDEX_NAMES: [&str; 2] = ["index.html", "index.htm"];

/// The longest any timeout may be: far beyond any use, and short enough
/// that a deadline (`Instant` + timeout) cannot overflow the clock.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl Config {
    /// The configuration with every duration capped at [`MAX_TIMEOUT`]
    /// (applied by `Server::new`, so no embedder can make a deadline panic).
    pub fn with_timeouts_capped(mut self) -> Config {
        for d in [
            &mut self.helper_timeout,
            &mut self.header_timeout,
            &mut self.body_timeout,
            &mut self.idle_timeout,
            &mut self.send_timeout,
            &mut self.send_rate_window,
            &mut self.shutdown_timeout,
            &mut self.path_freshness,
        ] {
            *d = (*d).min(MAX_TIMEOUT);
        }
        self
    }

    /// Defaults for everything but the root and helper path.
    pub fn new(root: PathBuf, helper_path: PathBuf) -> Config {
        Config {
            root,
            arch: Arch::Amped,
            symlinks: SymlinkPolicy::WithinRoot,
            helpers: DEFAULT_HELPERS,
            helper_path,
            helper_queue: 1024,
            helper_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            min_send_rate: 1024,
            send_rate_window: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            residency_budget: 256 << 20,
            path_cache_entries: 6000,
            path_freshness: Duration::from_secs(1),
            header_cache: true,
            map_cache_bytes: 128 << 20,
            limits: flash_http::Limits::default(),
            hidden: HiddenFiles::Deny,
            index_names: DEFAULT_INDEX_NAMES.map(String::from).to_vec(),
            proxy_protocol: crate::proxy::ProxyProtocol::default(),
        }
    }
}
