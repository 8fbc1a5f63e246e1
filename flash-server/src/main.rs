//! flash-server: the binary. A thin layer over `flash-core`. Started by an
//! operator it is the [`supervisor`]: it parses the command line, binds the
//! listeners and runs `--workers` copies of itself as [`worker`] processes,
//! each one complete engine (`flash_core::Server`) with its own helpers,
//! restarting, reloading and stopping them on signals. With no document root
//! it serves an embedded demo site.

mod access;
mod affinity;
mod check;
mod demo_site;
mod fds;
mod helper_path;
mod listen;
mod metrics_http;
mod process;
mod settings;
mod supervisor;
mod systemd;
mod worker;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use flash_core::{Arch, Config, HiddenFiles, SymlinkPolicy, DEFAULT_INDEX_NAMES};

/// A fast static-file HTTP/1.1 server: one event loop, helper processes for
/// the disk (the AMPED architecture of the Flash web server).
#[derive(Parser, Debug)]
#[command(name = "flash-server", version)]
struct Cli {
    /// Directory to serve. Without it, an embedded demo site is served.
    root: Option<PathBuf>,

    /// Read settings from this TOML file (keys: the long flag names); flags given here win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Check the flags, the configuration file, the root and the helper, then exit (0: OK, 1: not).
    #[arg(long)]
    check: bool,

    /// Worker processes, each a complete engine with its own helpers ("auto": one per core).
    #[arg(long, value_name = "N|auto", default_value = "auto", value_parser = parse_workers)]
    workers: Workers,

    /// auto: with one worker per CPU (and more than one), each worker's event loop runs on its own CPU and gets the connections whose packets that CPU handles; off: the kernel's scheduler and a hash decide.
    #[arg(long, value_enum, default_value_t = CpuAffinity::Auto)]
    cpu_affinity: CpuAffinity,

    /// Address to listen on (repeatable). Port 0 picks a free port [default: 127.0.0.1:8080, unless --proxy-protocol is given].
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,

    /// Address to listen on for connections that start with a PROXY protocol header, v1 or v2 (repeatable), from a load balancer.
    #[arg(long = "proxy-protocol", value_name = "ADDR")]
    proxy_protocol: Vec<SocketAddr>,

    /// Network allowed to connect to --proxy-protocol listeners (repeatable) [default: 127.0.0.0/8 and ::1/128].
    #[arg(long = "proxy-trusted", value_name = "CIDR")]
    proxy_trusted: Vec<flash_core::Cidr>,

    /// Connections the kernel queues for accept per listener [default: net.core.somaxconn, which also caps it].
    #[arg(long, value_name = "N")]
    backlog: Option<u32>,

    /// amped: disk work in helper processes; sped: inline (the baseline).
    #[arg(long, value_enum, default_value_t = ArchArg::Amped)]
    arch: ArchArg,

    /// Helper processes (AMPED; at least 1). Ignored with --arch sped.
    #[arg(long, value_name = "N", default_value_t = flash_core::DEFAULT_HELPERS)]
    helpers: usize,

    /// The flash-helper executable [default: next to flash-server, else ../libexec/flash/].
    #[arg(long, value_name = "PATH")]
    helper_path: Option<PathBuf>,

    /// A helper busy longer than this is killed and respawned.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    helper_timeout: Duration,

    /// Disk jobs that may wait for a free helper before requests get 503.
    #[arg(long, default_value_t = 1024)]
    helper_queue: usize,

    /// Follow symbolic links only when they stay inside the root, or never.
    #[arg(long, value_enum, default_value_t = SymlinksArg::WithinRoot)]
    symlinks: SymlinksArg,

    /// Paths with a segment starting with "." (/.git, /.env): deny answers 404 (except under /.well-known/), allow serves them.
    #[arg(long, value_enum, default_value_t = HiddenArg::from(HiddenFiles::default()))]
    hidden: HiddenArg,

    /// Directory index file names, tried in order; separated by spaces or commas.
    #[arg(long, value_name = "NAMES", default_value_t = IndexNames::default(), value_parser = parse_index_names)]
    index: IndexNames,

    /// Run as this user after binding (helpers too).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,

    /// Time a client has to send a request head.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,

    /// Time a client has to send a request body [default: --header-timeout].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    body_timeout: Option<Duration>,

    /// Time an idle keep-alive connection stays open.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Time a response may make no progress before the connection is closed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    send_timeout: Duration,

    /// Bytes per second a client must read of a response, averaged over --send-rate-window ("1K", "1K/s"; 0: no minimum).
    #[arg(long, value_name = "RATE", default_value = "1K/s", value_parser = parse_rate)]
    min_send_rate: u64,

    /// The window over which --min-send-rate is measured (at least 1s).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_rate_window)]
    send_rate_window: Duration,

    /// Time in-flight responses get to finish on SIGINT/SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,

    /// Connections served at once; accepting pauses at the limit.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,

    /// Largest request head in bytes (larger: 431).
    #[arg(long, value_name = "BYTES", default_value = "16K", value_parser = parse_size)]
    max_head_bytes: u64,

    /// Most header fields in a request (more: 431).
    #[arg(long, default_value_t = 64)]
    max_headers: usize,

    /// Longest request target in bytes (longer: 414).
    #[arg(long, value_name = "BYTES", default_value = "8K", value_parser = parse_size)]
    max_target_bytes: u64,

    /// Largest request body read and discarded (larger: 413).
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_size)]
    max_body_bytes: u64,

    /// Memory assumed cached for files whose residency no probe can report.
    #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = parse_size)]
    residency_budget: u64,

    /// Entries of the pathname translation cache (0 switches it off).
    #[arg(long, default_value_t = 6000)]
    path_cache_entries: usize,

    /// Cached paths are revalidated within this time: changes on disk show by then.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    path_cache_ttl: Duration,

    /// Build every response head anew instead of reusing each file's.
    #[arg(long)]
    no_header_cache: bool,

    /// Bytes of files kept mapped (the mapped-file cache; 0 maps on every use).
    #[arg(long, value_name = "BYTES", default_value = "128M", value_parser = parse_size)]
    cache_memory: u64,

    /// Serve GET /metrics (Prometheus text format) and GET /healthz on this address [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,

    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info", value_parser = parse_level)]
    log_level: log::LevelFilter,

    /// Access log: a file (appended; reopened on SIGUSR1), - for standard output, or off.
    #[arg(long, value_name = "PATH", default_value = "off", value_parser = access::parse_target)]
    access_log: access::TargetArg,

    /// Access log line format.
    #[arg(long, value_enum, default_value_t = access::FormatArg::Combined)]
    log_format: access::FormatArg,
}

/// `--workers`: how many worker processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workers {
    /// One per core the process may run on.
    Auto,
    Count(usize),
}

fn parse_workers(text: &str) -> Result<Workers, String> {
    if text == "auto" {
        return Ok(Workers::Auto);
    }
    match text.parse() {
        Ok(n) if (1..=supervisor::MAX_WORKERS).contains(&n) => Ok(Workers::Count(n)),
        _ => Err(format!(
            "invalid worker count {text} (auto, or 1 to {})",
            supervisor::MAX_WORKERS
        )),
    }
}

/// `--cpu-affinity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CpuAffinity {
    Auto,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ArchArg {
    Amped,
    Sped,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SymlinksArg {
    WithinRoot,
    Never,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HiddenArg {
    Deny,
    Allow,
}

impl From<HiddenFiles> for HiddenArg {
    fn from(policy: HiddenFiles) -> HiddenArg {
        match policy {
            HiddenFiles::Deny => HiddenArg::Deny,
            HiddenFiles::Allow => HiddenArg::Allow,
        }
    }
}

impl From<HiddenArg> for HiddenFiles {
    fn from(arg: HiddenArg) -> HiddenFiles {
        match arg {
            HiddenArg::Deny => HiddenFiles::Deny,
            HiddenArg::Allow => HiddenFiles::Allow,
        }
    }
}

/// The `--index` list: at least one name, none with a `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IndexNames(Vec<String>);

impl Default for IndexNames {
    fn default() -> IndexNames {
        IndexNames(DEFAULT_INDEX_NAMES.map(String::from).to_vec())
    }
}

impl std::fmt::Display for IndexNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

fn main() {
    fds::sanitize_inherited();
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli: Cli = settings::load_or_exit(&args);
    process::init_logging(cli.log_level);
    let result = match worker::Inherited::from_env() {
        Ok(Some(inherited)) => worker::run(cli, inherited),
        Ok(None) if cli.check => check::exit_with_verdict(&cli),
        Ok(None) => supervisor::run(&args),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("flash-server: {e:#}");
        std::process::exit(1);
    }
}

/// The document root and helper executable `cli` asks for, checked:
/// `root_override` is the supervisor's choice (the demo site) when no root
/// is given.
fn locate(cli: &Cli, root_override: Option<PathBuf>) -> Result<(PathBuf, PathBuf)> {
    check::check_helper_count(cli)?;
    let root = match (&cli.root, root_override) {
        (Some(root), _) => root.clone(),
        (None, Some(root)) => root,
        (None, None) => bail!("no document root"),
    };
    let root = std::fs::canonicalize(&root)
        .with_context(|| format!("document root {}", root.display()))?;
    if !root.is_dir() {
        bail!("document root {} is not a directory", root.display());
    }
    let helper_path = check::helper_path(cli)?;
    if matches!(cli.arch, ArchArg::Amped) && !helper_path.is_file() {
        bail!(
            "helper executable {} not found (build or install it too: `cargo install --path flash-helper`; or pass --helper-path)",
            helper_path.display()
        );
    }
    Ok((root, helper_path))
}

/// The engine's configuration from the command line.
fn engine_config(cli: &Cli, root: PathBuf, helper_path: PathBuf) -> Config {
    let mut config = Config::new(root, helper_path);
    config.arch = match cli.arch {
        ArchArg::Amped => Arch::Amped,
        ArchArg::Sped => Arch::Sped,
    };
    config.symlinks = match cli.symlinks {
        SymlinksArg::WithinRoot => SymlinkPolicy::WithinRoot,
        SymlinksArg::Never => SymlinkPolicy::Never,
    };
    config.hidden = cli.hidden.into();
    config.index_names = cli.index.0.clone();
    config.helpers = cli.helpers;
    config.helper_timeout = cli.helper_timeout;
    config.helper_queue = cli.helper_queue;
    config.header_timeout = cli.header_timeout;
    config.body_timeout = cli.body_timeout.unwrap_or(cli.header_timeout);
    config.idle_timeout = cli.idle_timeout;
    config.send_timeout = cli.send_timeout;
    config.min_send_rate = cli.min_send_rate;
    config.send_rate_window = cli.send_rate_window;
    config.shutdown_timeout = cli.shutdown_timeout;
    config.max_connections = cli.max_connections.max(1);
    config.residency_budget = cli.residency_budget;
    config.path_cache_entries = cli.path_cache_entries;
    config.path_freshness = cli.path_cache_ttl;
    config.header_cache = !cli.no_header_cache;
    config.map_cache_bytes = cli.cache_memory;
    if !cli.proxy_trusted.is_empty() {
        config.proxy_protocol.trusted = cli.proxy_trusted.clone();
    }
    config.limits = flash_http::Limits {
        max_head_bytes: usize::try_from(cli.max_head_bytes).unwrap_or(usize::MAX),
        max_headers: cli.max_headers,
        max_target_bytes: usize::try_from(cli.max_target_bytes).unwrap_or(usize::MAX),
        max_discard_body: cli.max_body_bytes,
    };
    config
}

/// The plain listeners: `--listen`, or 127.0.0.1:8080 when neither it nor
/// `--proxy-protocol` is given (a server meant to sit behind a proxy should
/// not also open a port that takes clients directly).
fn listen_addrs(cli: &Cli) -> Vec<SocketAddr> {
    if cli.listen.is_empty() && cli.proxy_protocol.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 8080))]
    } else {
        cli.listen.clone()
    }
}

fn parse_level(text: &str) -> Result<log::LevelFilter, String> {
    text.parse()
        .map_err(|_| format!("invalid log level: {text} (error, warn, info, debug, trace, off)"))
}

/// "10s", "500ms", "2m", "1h"; a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration: {text}"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {text} (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("invalid duration: {text}"))
}

/// "index.html index.htm", "index.html,default.htm": file names, in order.
fn parse_index_names(text: &str) -> Result<IndexNames, String> {
    let names: Vec<String> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err("no index file name given (e.g. --index \"index.html index.htm\")".into());
    }
    if let Some(bad) = names
        .iter()
        .find(|name| name.contains(['/', '\0']) || *name == "." || *name == "..")
    {
        return Err(format!(
            "invalid index file name {bad:?}: a file in the requested directory itself, without '/'"
        ));
    }
    Ok(IndexNames(names))
}

/// A rate window: a duration of at least a second (the deadlines are
/// checked four times a second; a shorter window would measure noise).
fn parse_rate_window(text: &str) -> Result<Duration, String> {
    let window = parse_duration(text)?;
    if window < Duration::from_secs(1) {
        return Err(format!("rate window {text} is too short (at least 1s)"));
    }
    Ok(window)
}

/// A size per second: "1K/s", "512", "1M/s" ("/s" optional).
fn parse_rate(text: &str) -> Result<u64, String> {
    parse_size(text.strip_suffix("/s").unwrap_or(text))
}

/// "16384", "16K", "1M", "2G" (binary multiples).
fn parse_size(text: &str) -> Result<u64, String> {
    let (number, shift) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 10),
        Some((i, 'M' | 'm')) => (&text[..i], 20),
        Some((i, 'G' | 'g')) => (&text[..i], 30),
        _ => (text, 0),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid size: {text}"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size too large: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("10 parsecs").is_err());
        assert_eq!(parse_size("16K"), Ok(16384));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("x").is_err());
        assert_eq!(parse_rate("1K/s"), Ok(1024));
        assert_eq!(parse_rate("0"), Ok(0));
        assert!(parse_rate("1K/m").is_err());
        assert_eq!(parse_rate_window("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_rate_window("0").is_err());
        assert!(parse_rate_window("500ms").is_err());
    }

    #[test]
    fn index_names_parse() {
        let names = |v: &[&str]| Ok(IndexNames(v.iter().map(|s| s.to_string()).collect()));
        assert_eq!(parse_index_names("index.html"), names(&["index.html"]));
        assert_eq!(
            parse_index_names("index.html index.htm"),
            names(&["index.html", "index.htm"])
        );
        assert_eq!(
            parse_index_names(" a.html, b.htm ,c "),
            names(&["a.html", "b.htm", "c"])
        );
        assert!(parse_index_names("").is_err());
        assert!(parse_index_names(" , ").is_err());
        assert!(parse_index_names("index.html sub/index.html").is_err());
        assert!(parse_index_names("..").is_err());
        // The default round-trips through its own parser.
        assert_eq!(
            parse_index_names(&IndexNames::default().to_string()),
            Ok(IndexNames::default())
        );
    }

    fn config_of(args: &[&str]) -> Config {
        let cli = Cli::try_parse_from(std::iter::once("flash-server").chain(args.iter().copied()))
            .unwrap();
        engine_config(&cli, "/srv".into(), "/bin/flash-helper".into())
    }

    #[test]
    fn body_timeout_follows_header_timeout() {
        assert_eq!(config_of(&[]).body_timeout, Duration::from_secs(10));
        let config = config_of(&["--header-timeout", "3s"]);
        assert_eq!(config.body_timeout, Duration::from_secs(3));
        let config = config_of(&["--header-timeout", "3s", "--body-timeout", "5s"]);
        assert_eq!(config.body_timeout, Duration::from_secs(5));
    }

    #[test]
    fn hidden_and_index_reach_the_config() {
        let config = config_of(&[]);
        assert_eq!(config.hidden, HiddenFiles::Deny);
        assert_eq!(config.index_names, DEFAULT_INDEX_NAMES);
        let config = config_of(&["--hidden", "allow", "--index", "default.htm,index.html"]);
        assert_eq!(config.hidden, HiddenFiles::Allow);
        assert_eq!(config.index_names, ["default.htm", "index.html"]);
    }

    #[test]
    fn proxy_flags_reach_the_config() {
        let cli = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("flash-server").chain(args.iter().copied()))
                .unwrap()
        };
        assert_eq!(listen_addrs(&cli(&[])), ["127.0.0.1:8080".parse().unwrap()]);
        assert!(listen_addrs(&cli(&["--proxy-protocol", "127.0.0.1:0"])).is_empty());
        let both = cli(&["--listen", "[::1]:80", "--proxy-protocol", "127.0.0.1:0"]);
        assert_eq!(listen_addrs(&both), ["[::1]:80".parse().unwrap()]);
        let default = config_of(&[]).proxy_protocol;
        assert_eq!(default, flash_core::ProxyProtocol::default());
        let config = config_of(&[
            "--proxy-trusted",
            "10.0.0.0/8",
            "--proxy-trusted",
            "fd00::/8",
        ]);
        let trusted: Vec<String> = config
            .proxy_protocol
            .trusted
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(trusted, ["10.0.0.0/8", "fd00::/8"]);
        let bad = ["flash-server", "--proxy-trusted", "10.0.0.0/33"];
        assert!(Cli::try_parse_from(bad).is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
