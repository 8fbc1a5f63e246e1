//! flash-core: the engine of the flash web server, after the AMPED
//! architecture of the Flash paper (Pai, Druschel, Zwaenepoel, 1999).
//!
//! One event-driven thread ([`Server`]) does all HTTP work on non-blocking
//! sockets. Work that may block on the disk — resolving a path, opening and
//! stat-ing a file, bringing its pages into memory — goes to helper
//! processes (the `flash-helper` binary) over socketpairs; their replies wake
//! the loop like any other I/O event. With [`Arch::Sped`] the same engine
//! does that work inline instead, as the paper's baseline.
//!
//! Boundaries: this crate knows nothing of the command line, logging setup or
//! signals (the binary wires those); HTTP syntax lives in `flash-http`.
//!
//! Layout, in the order a request meets it:
//! - [`server`]: the event loop, accept, timers, completion delivery;
//! - [`connection`]: the per-connection state machine and the send path;
//! - [`pool`]: helper processes and their job queue;
//! - [`protocol`], [`codec`], [`ipc`]: what travels to helpers, and how;
//! - [`fs`]: confined resolution and prefetch (run by helpers, or inline);
//! - [`residency`]: which bytes may be sent without waiting on the disk;
//! - [`file`](mod@file), [`sys`], [`reactor`]: open files, libc and poller wrappers;
//! - [`cache`], [`watch`]: the path and mapped-file caches, change notification;
//! - [`access_log`]: one line per response, written by a thread of its own.
//! - [`metrics`]: counters and gauges in memory shared with a supervisor.
//! - [`proxy`]: listeners behind a load balancer (PROXY protocol, trusted networks).

pub mod access_log;
pub mod cache;
pub mod codec;
pub mod config;
pub mod connection;
pub mod file;
pub mod fs;
pub mod ipc;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod reactor;
pub mod residency;
pub mod server;
pub mod sys;
pub mod watch;

pub use access_log::{AccessLog, AccessLogHandle, LogFormat, LogTarget};
pub use config::{Arch, Config, HiddenFiles, DEFAULT_HELPERS, DEFAULT_INDEX_NAMES};
pub use fs::SymlinkPolicy;
pub use metrics::{MetricsRegion, RegionError, Snapshot, WorkerMetrics};
pub use proxy::{Cidr, ProxyProtocol};
pub use server::{Server, MAX_LISTENERS};
