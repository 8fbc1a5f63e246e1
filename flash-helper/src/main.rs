//! flash-helper: the disk helper process of the flash web server.
//!
//! flash follows the AMPED architecture of the Flash web server: one
//! event-driven main process does all the HTTP work and never blocks on the
//! disk. Every operation that may block on the disk — path lookup, `stat`,
//! `open`, bringing file pages into memory — is handed to a helper process
//! instead, and the main loop learns of the answer like any other I/O event.
//! This binary is that helper. flash-server spawns one per helper slot and
//! talks to it over a `SOCK_SEQPACKET` socket whose number it passes as
//! `--socket-fd N` (see `docs/PROTOCOL.md`).
//!
//! A helper is blocking by design: it is the part of flash that is allowed to
//! wait on the disk. It serves one request at a time, in order, and answers
//! each with exactly one reply. It holds no state beyond the document root
//! descriptor and does no HTTP: the resolution and prefetch logic lives in
//! `flash_core::fs`, the message types in `flash_core::protocol`, framing in
//! `flash_core::codec` and transport in `flash_core::ipc`. It dies with its
//! parent (`PR_SET_PDEATHSIG`) and exits when the main process hangs up.
//!
//! `--text` runs the same resolution and prefetch code interactively, for
//! debugging a document root by hand.
//!
//! Exit status: 0 after the main process hung up (or `quit` in text mode),
//! 1 on a startup or I/O failure, 2 on a usage error or a protocol violation
//! by the main process.
use clap::{CommandFactory, Parser, ValueEnum};
use flash_core::fs::SymlinkPolicy;
use std::path::PathBuf;
use std::process::ExitCode;

mod serve;
mod text;

/// Disk helper of the flash web server (normally spawned by flash-server).
#[derive(Debug, Parser)]
#[command(name = "flash-helper", version)]
struct Cli {
    /// Document root: every path is resolved beneath it.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,

    /// Which symlinks may be followed.
    #[arg(long, value_enum, default_value_t = Symlinks::WithinRoot)]
    symlinks: Symlinks,

    /// Protocol mode: serve the main process on this inherited
    /// SOCK_SEQPACKET socket.
    #[arg(long, value_name = "N", conflicts_with = "text")]
    socket_fd: Option<i32>,

    /// Debug mode: read commands (resolve, prefetch, help, quit) from stdin.
    #[arg(long)]
    text: bool,

    /// Directory index names, tried in order (repeatable)
    /// [default: index.html, index.htm].
    #[arg(long = "index", value_name = "NAME")]
    index: Vec<String>,

    /// Protocol mode: an inherited inotify instance to add a change watch
    /// to for every file resolved (the main process reads the events).
    #[arg(long, value_name = "N", requires = "socket_fd")]
    watch_fd: Option<i32>,
}

/// `--symlinks` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Symlinks {
    /// Follow symlinks that stay beneath the root.
    WithinRoot,
    /// Refuse every symlink.
    Never,
}

impl From<Symlinks> for SymlinkPolicy {
    fn from(s: Symlinks) -> SymlinkPolicy {
        match s {
            Symlinks::WithinRoot => SymlinkPolicy::WithinRoot,
            Symlinks::Never => SymlinkPolicy::Never,
        }
    }
}

const USAGE: &str = "\
flash-helper is the disk helper of the flash web server; flash-server normally
spawns it with --socket-fd N. To resolve paths by hand, run:

    flash-helper --root DIR --text [--symlinks within-root|never]

and type `help`. See --help for all options.";

/// A helper may be started by a worker whose event loop is pinned to one
/// CPU (`--cpu-affinity`), and inherits that mask; it waits on the disk,
/// which it may do on any CPU the process is allowed (the kernel narrows a
/// full mask to the cpuset's), not on its worker's.
fn unpin() {
    // SAFETY: cpu_set_t is a plain bit array: all ones is every CPU.
    let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in 0..libc::CPU_SETSIZE as usize {
        // SAFETY: `cpu` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut all) };
    }
    // SAFETY: `all` is a valid cpu_set_t of the size passed; pid 0 is this
    // (single-threaded) process. A failure leaves the inherited mask.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &all) };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    unpin();
    if cli.socket_fd.is_none() && !cli.text {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let Some(root) = cli.root else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--root DIR is required",
            )
            .exit();
    };
    let options = serve::Options {
        policy: cli.symlinks.into(),
        index_names: if cli.index.is_empty() {
            flash_core::DEFAULT_INDEX_NAMES.map(String::from).to_vec()
        } else {
            cli.index
        },
        watch_fd: cli.watch_fd,
    };
    let result = match cli.socket_fd {
        Some(fd) => serve::run(&root, options, fd),
        None => text::run(&root, options.policy, options.index_names),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flash-helper: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
