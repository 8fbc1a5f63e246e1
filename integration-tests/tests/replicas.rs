//! Two flash replicas behind HAProxy, each on a host of its own: network namespaces joined by
//! veth links, as docs/DEPLOYMENT.md describes.
//!
//! ```text
//!   client ns              balancer ns                       replica ns (x2)
//!   10.77.0.1 --veth-- 10.77.0.2 HAProxy :8080 --veth-- 10.77.1.2 flash-server :8080  (r1)
//!                        10.77.1.1 / 10.77.2.1  --veth-- 10.77.2.2 flash-server :8080  (r2)
//! ```
//!
//! Nothing is added to the test's own (root) namespace: the links are created directly in
//! their namespaces, and the client threads enter the client namespace with `setns`, so
//! the addresses cannot clash with the machine's. Both replicas serve copies of one tree
//! made with preserved mtimes (`cp -a`), plus a `/replica.txt` that differs, and HAProxy
//! adds `X-Server` (its name for the replica) to every response.
//!
//! Under a load of keep-alive and `Connection: close` clients, replica r1 is SIGKILLed.
//! Asserted: both replicas served before the kill and only r2 after; no response is ever
//! malformed (every completed one is a 200 byte-identical to the file); the only failures
//! a client sees are of requests sent before the kill was over, at most one per client
//! connection (see [`judge`]); HAProxy marks r1 DOWN; and the ETag and Last-Modified of a
//! file are the same from both replicas.
//!
//! Root only (namespaces); skipped with a message when not root or when `haproxy` or `ip`
//! is missing (`.ci/run` installs them).

use std::collections::BTreeMap;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration_tests::harness::{
    binary, cmdline, imf_fixdate, read_response, require_root, seeded_bytes, set_mtime, signal,
    still_running, wait_until, Launch, Server, TempDir, IO_TIMEOUT,
};

/// The data path between HAProxy and the replicas: PROXY protocol v2, so the
/// replicas see the real client (HAProxy connects from the balancer's
/// network, which they trust for it).
const DATA_PATH: DataPath = DataPath {
    flag: "--proxy-protocol",
    extra: &["--proxy-trusted", "10.77.0.0/16"],
    haproxy: "send-proxy-v2",
    curl: &["--haproxy-protocol"],
};

/// HAProxy's health check: `/healthz` on the metrics listener, which turns
/// 503 while a replica stops, so HAProxy drains it before it goes.
const HEALTH_CHECK: HealthCheck = HealthCheck {
    flag: Some("--metrics-listen"),
    uri: "/healthz",
};

/// How HAProxy talks to the replicas' data port.
struct DataPath {
    /// The flash flag that opens the data port (`ADDR` follows it).
    flag: &'static str,
    /// More flash flags it needs (the balancer's networks as trusted PROXY senders).
    extra: &'static [&'static str],
    /// HAProxy's option on each `server` line.
    haproxy: &'static str,
    /// curl options for asking a replica directly from the balancer's host.
    curl: &'static [&'static str],
}

/// Where HAProxy's health check goes.
struct HealthCheck {
    /// The flash flag that opens the port it goes to (`None`: the data port).
    flag: Option<&'static str>,
    uri: &'static str,
}

/// Port of the replicas' data listener, and of their health listener when it is separate.
const DATA_PORT: u16 = 8080;
const HEALTH_PORT: u16 = 9180;
/// The balancer's address as the client sees it.
const BALANCER: &str = "10.77.0.2";
/// Each replica: HAProxy's name for it, the balancer's address on its link, its own.
const REPLICAS: [(&str, &str, &str); 2] = [
    ("r1", "10.77.1.1", "10.77.1.2"),
    ("r2", "10.77.2.1", "10.77.2.2"),
];

/// The files both replicas serve (beside `/replica.txt`): an index for the health check,
/// small files (held in memory by flash) and larger ones (sent with `sendfile`).
const FILES: [(&str, usize); 5] = [
    ("index.html", 600),
    ("small.bin", 3_000),
    ("medium.bin", 30_000),
    ("large.bin", 200_000),
    ("docs/big.bin", 1_100_000),
];
/// A fixed mtime for the tree (2021-01-01), so the expected validators are known.
const TREE_MTIME: u64 = 1_609_459_200;

/// Client threads of each kind: one keep-alive connection each, or a new connection with
/// `Connection: close` for every request.
const KEEP_ALIVE_CLIENTS: usize = 2;
const CLOSE_CLIENTS: usize = 2;
/// The load stops by itself after this many requests or this long, whichever comes first.
const MAX_REQUESTS: usize = 40_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(30);
/// Before the kill: this long, and this many responses from each replica.
const BEFORE_KILL: Duration = Duration::from_secs(1);
const MIN_PER_REPLICA: usize = 30;
/// After the kill: this long, and this many successful responses.
const AFTER_KILL: Duration = Duration::from_millis(1500);
const MIN_AFTER_KILL: usize = 100;
/// HAProxy checks every 100 ms and needs 2 failures: DOWN within a fraction of this.
const DOWN_DEADLINE: Duration = Duration::from_secs(5);

#[test]
fn replicas_behind_haproxy_survive_a_killed_replica() {
    if !require_root("creates network namespaces") {
        return;
    }
    for tool in ["haproxy", "ip"] {
        if !on_path(tool) {
            // Straight to stderr, past the test harness's capture, as `require_root` does.
            let _ = writeln!(
                std::io::stderr(),
                "skipped replicas_behind_haproxy_survive_a_killed_replica: needs `{tool}` \
                 (apt-get install haproxy iproute2)"
            );
            return;
        }
    }
    // Build the binaries here: the client namespace has no route to a registry, should
    // cargo need one.
    binary("flash-server");
    // Everything runs on a thread in the client namespace (threads and processes it
    // starts inherit it); the test's own thread keeps its namespace.
    let names = Names::new();
    let net = Network::create(&names);
    let outcome = std::thread::Builder::new()
        .name("replicas-client".into())
        .spawn(move || {
            enter_netns(&names.client);
            scenario(&names)
        })
        .expect("spawn the client thread")
        .join();
    drop(net);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

// ---- the scenario -------------------------------------------------------------------

fn scenario(names: &Names) {
    let dir = TempDir::new("replicas");
    // One tree, copied to each replica with its mtimes (as rsync -a, cp -p or tar would).
    let tree = dir.path().join("tree");
    let mut contents = BTreeMap::new();
    for (i, (rel, len)) in FILES.iter().enumerate() {
        let path = tree.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = seeded_bytes(*len, i as u32 + 1);
        std::fs::write(&path, &bytes).unwrap();
        set_mtime(&path, TREE_MTIME + i as u64);
        contents.insert(format!("/{rel}"), bytes);
    }
    let mut roots = Vec::new();
    for (name, _, _) in REPLICAS {
        let root = dir.path().join(name);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&tree)
            .arg(&root)
            .status()
            .expect("run cp");
        assert!(status.success(), "cp -a {tree:?} {root:?}: {status}");
        std::fs::write(root.join("replica.txt"), replica_body(name)).unwrap();
        roots.push(root);
    }

    // The replicas, each in its namespace.
    let mut servers: Vec<Option<Server>> = Vec::new();
    for (i, (name, _, addr)) in REPLICAS.iter().enumerate() {
        let data = format!("{addr}:{DATA_PORT}");
        let health = format!("{addr}:{HEALTH_PORT}");
        let mut args = vec![DATA_PATH.flag, data.as_str(), "--helpers", "2"];
        args.extend(DATA_PATH.extra);
        if let Some(flag) = HEALTH_CHECK.flag {
            args.extend([flag, health.as_str()]);
        }
        let prefix = ["ip", "netns", "exec", names.replicas[i].as_str()];
        let server = Server::launch(&Launch {
            root: Some(&roots[i]),
            args: &args,
            prefix: &prefix,
            ..Launch::default()
        })
        .unwrap_or_else(|e| panic!("replica {name}: {e}"));
        // `ip netns exec` execs the server: the pid is the server's, so SIGKILL hits it.
        let argv = cmdline(server.pid());
        assert!(
            argv.first().is_some_and(|a| a.ends_with("flash-server")),
            "replica {name}'s pid runs {argv:?}"
        );
        servers.push(Some(server));
    }

    // The balancer.
    let haproxy = HaProxy::start(dir.path(), &names.balancer);
    let ready = wait_until(IO_TIMEOUT, || {
        let status = haproxy.server_status();
        REPLICAS
            .iter()
            .all(|(name, _, _)| status.get(*name).is_some_and(|s| s.status == "UP"))
    });
    assert!(
        ready,
        "HAProxy did not see both replicas UP within {IO_TIMEOUT:?}: {:?}\n{}",
        haproxy.server_status(),
        haproxy.log()
    );

    check_validators_agree(&names.balancer, &contents);

    // The load, through the balancer.
    let balancer: SocketAddr = format!("{BALANCER}:{DATA_PORT}").parse().unwrap();
    let mut paths: Vec<String> = contents.keys().cloned().collect();
    paths.push("/replica.txt".to_string());
    let records = Mutex::new(Vec::<Record>::new());
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    let start = Instant::now();
    let (killed_at, down_after) = std::thread::scope(|scope| {
        for client in 0..KEEP_ALIVE_CLIENTS + CLOSE_CLIENTS {
            let keep_alive = client < KEEP_ALIVE_CLIENTS;
            let (paths, contents, records) = (&paths, &contents, &records);
            let (stop, sent) = (&stop, &sent);
            scope.spawn(move || {
                run_client(
                    balancer, keep_alive, client, paths, contents, records, stop, sent, start,
                )
            });
        }
        // The load stops by itself even if an assertion below fails.
        let _stop = StopOnDrop(&stop);

        // Before the kill: both replicas have served.
        let served_both = wait_until(MAX_LOAD_TIME, || {
            let records = records.lock().unwrap();
            start.elapsed() >= BEFORE_KILL
                && REPLICAS.iter().all(|(name, _, _)| {
                    records
                        .iter()
                        .filter(|r| r.server.as_deref() == Some(name))
                        .count()
                        >= MIN_PER_REPLICA
                })
        });
        assert!(
            served_both,
            "both replicas should serve within {MAX_LOAD_TIME:?} (requests sent: {})",
            sent.load(Ordering::Relaxed)
        );

        // SIGKILL r1 and reap it: from `killed_at` on it holds no socket.
        let mut victim = servers[0].take().unwrap();
        let helpers = victim.helper_pids();
        assert!(!helpers.is_empty(), "r1 should have helpers");
        signal(victim.pid(), libc::SIGKILL);
        victim
            .wait_exit(IO_TIMEOUT)
            .expect("the SIGKILLed replica exits");
        let killed_at = Instant::now();
        // Its helpers follow it (PR_SET_PDEATHSIG): nothing of r1 is left running.
        assert!(
            wait_until(IO_TIMEOUT, || still_running(&helpers).is_empty()),
            "r1's helpers outlived it: {:?}",
            still_running(&helpers)
        );

        let down = wait_until(DOWN_DEADLINE, || {
            haproxy
                .server_status()
                .get(REPLICAS[0].0)
                .is_some_and(|s| s.status == "DOWN")
        });
        assert!(
            down,
            "HAProxy should mark the killed replica DOWN within {DOWN_DEADLINE:?}: {:?}",
            haproxy.server_status()
        );
        let down_after = killed_at.elapsed();

        // After the kill: the survivor carries the load.
        let carried = wait_until(MAX_LOAD_TIME, || {
            let records = records.lock().unwrap();
            killed_at.elapsed() >= AFTER_KILL
                && records
                    .iter()
                    .filter(|r| r.sent_at > killed_at && r.outcome == Outcome::Ok)
                    .count()
                    >= MIN_AFTER_KILL
        });
        assert!(carried, "the survivor should carry the load after the kill");
        (killed_at, down_after)
    });

    let records = records.into_inner().unwrap();
    let stats = haproxy.server_status();
    let survivor = REPLICAS[1].0;
    let count = |f: &dyn Fn(&Record) -> bool| records.iter().filter(|r| f(r)).count();
    let before = |r: &Record| r.sent_at <= killed_at;
    let served_by = |name: &'static str| move |r: &Record| r.server.as_deref() == Some(name);
    let failures: Vec<&Record> = records
        .iter()
        .filter(|r| r.outcome != Outcome::Ok)
        .collect();
    eprintln!(
        "replicas: {} requests in {:?}; before the kill r1 {} r2 {}, after it r1 {} r2 {}; \
         failures {} (the first: {:?}); r1 DOWN {:?} after the kill; HAProxy retries {:?}, redispatches {:?}",
        records.len(),
        start.elapsed(),
        count(&|r| before(r) && served_by("r1")(r)),
        count(&|r| before(r) && served_by("r2")(r)),
        count(&|r| !before(r) && served_by("r1")(r)),
        count(&|r| !before(r) && served_by("r2")(r)),
        failures.len(),
        failures
            .iter()
            .take(10)
            .map(|r| (&r.path, &r.outcome))
            .collect::<Vec<_>>(),
        down_after,
        stats.values().map(|s| s.retries).collect::<Vec<_>>(),
        stats.values().map(|s| s.redispatches).collect::<Vec<_>>(),
    );

    // No malformed response, ever.
    for record in &records {
        if let Outcome::Malformed(why) = &record.outcome {
            panic!("malformed response to {}: {why}", record.path);
        }
    }
    // Both served before the kill; only the survivor after it.
    for (name, _, _) in REPLICAS {
        assert!(
            count(&|r| before(r) && served_by(name)(r)) >= MIN_PER_REPLICA,
            "{name} should have served before the kill"
        );
    }
    let after: Vec<&Record> = records
        .iter()
        .filter(|r| !before(r) && r.outcome == Outcome::Ok)
        .collect();
    assert!(after.len() >= MIN_AFTER_KILL);
    for r in &after {
        assert_eq!(
            r.server.as_deref(),
            Some(survivor),
            "{} sent {:?} after the kill was served by {:?}",
            r.path,
            r.sent_at - killed_at,
            r.server
        );
    }
    // The failure window: see `judge`.
    for r in &failures {
        assert!(
            before(r),
            "a request sent {:?} after the kill failed ({:?}): HAProxy should have retried \
             it on the survivor",
            r.sent_at - killed_at,
            r.outcome
        );
    }
    assert!(
        failures.len() <= KEEP_ALIVE_CLIENTS + CLOSE_CLIENTS,
        "{} client-visible failures; at most one per client connection can be in flight at \
         the kill",
        failures.len()
    );
    // The survivor still serves, and the balancer too.
    let mut survivor_server = servers[1].take().unwrap();
    assert!(survivor_server.is_running(), "the survivor died");
    let (status, _) = survivor_server.stop();
    assert!(status.success(), "the survivor's graceful stop: {status}");
}

/// The body of `/replica.txt` on replica `name`.
fn replica_body(name: &str) -> Vec<u8> {
    format!("served by replica {name}\n").into_bytes()
}

/// Asks each replica directly (from the balancer's namespace, with curl) for the head of
/// every file: ETag and Last-Modified agree between replicas and are what the tree's
/// mtimes and sizes make them (`"<mtime hex>-<size hex>"`), so a CDN or browser
/// revalidating against either replica gets a 304.
fn check_validators_agree(balancer_ns: &str, contents: &BTreeMap<String, Vec<u8>>) {
    for (i, (path, bytes)) in contents.iter().enumerate() {
        let mtime = TREE_MTIME
            + FILES
                .iter()
                .position(|(rel, _)| format!("/{rel}") == *path)
                .unwrap() as u64;
        let expected_etag = format!("\"{mtime:x}-{:x}\"", bytes.len());
        let expected_date = imf_fixdate(mtime);
        for (name, _, addr) in REPLICAS {
            let output = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    balancer_ns,
                    "curl",
                    "-sS",
                    "--max-time",
                    "10",
                ])
                .args(["--noproxy", "*", "-o", "/dev/null", "-D", "-"])
                .args(DATA_PATH.curl)
                .arg(format!("http://{addr}:{DATA_PORT}{path}"))
                .output()
                .expect("run curl in the balancer namespace");
            assert!(output.status.success(), "curl {name}{path}: {output:?}");
            let head = String::from_utf8_lossy(&output.stdout).to_string();
            let header = |field: &str| {
                head.lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case(field).then(|| v.trim().to_string())
                    })
                    .unwrap_or_else(|| panic!("{name}{path}: no {field} in {head:?}"))
            };
            assert_eq!(
                header("etag"),
                expected_etag,
                "ETag of {path} from {name} ({i})"
            );
            assert_eq!(
                header("last-modified"),
                expected_date,
                "Last-Modified of {path} from {name}"
            );
        }
    }
}

// ---- the clients --------------------------------------------------------------------

/// One request as the client saw it.
struct Record {
    path: String,
    sent_at: Instant,
    /// HAProxy's name for the replica that answered (`X-Server`), if a response came.
    server: Option<String>,
    outcome: Outcome,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Status 200, the file's bytes exactly, from a replica HAProxy named.
    Ok,
    /// The connection closed or was reset before the whole response came, or the balancer
    /// answered an error status (502/503/504): a failure the client sees, but no lie.
    Failed(String),
    /// Anything else: wrong bytes, a head that does not parse, bytes after the response,
    /// a stall, a 200 for the wrong replica's file. Never acceptable.
    Malformed(String),
}

/// Sends requests for `paths` in turn until `stop` or the budget runs out: on one
/// keep-alive connection (replaced after a failure), or a new connection with
/// `Connection: close` per request.
#[allow(clippy::too_many_arguments)]
fn run_client(
    balancer: SocketAddr,
    keep_alive: bool,
    client: usize,
    paths: &[String],
    contents: &BTreeMap<String, Vec<u8>>,
    records: &Mutex<Vec<Record>>,
    stop: &AtomicBool,
    sent: &AtomicUsize,
    start: Instant,
) {
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut n = client;
    while !stop.load(Ordering::Relaxed)
        && start.elapsed() < MAX_LOAD_TIME
        && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
    {
        n += 1;
        let path = &paths[n % paths.len()];
        let sent_at = Instant::now();
        if conn.is_none() {
            match TcpStream::connect_timeout(&balancer, IO_TIMEOUT) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                    let reader = BufReader::new(stream.try_clone().unwrap());
                    conn = Some((stream, reader));
                }
                Err(e) => {
                    // The balancer itself never goes away in this test.
                    records.lock().unwrap().push(Record {
                        path: path.clone(),
                        sent_at,
                        server: None,
                        outcome: Outcome::Malformed(format!("connect to HAProxy: {e}")),
                    });
                    continue;
                }
            }
        }
        let (stream, reader) = conn.as_mut().unwrap();
        let close = if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: flash\r\n{close}\r\n");
        let (server, outcome) = match stream.write_all(request.as_bytes()) {
            Err(e) => (None, Outcome::Failed(format!("send: {e}"))),
            Ok(()) => judge(path, reader, contents),
        };
        if outcome != Outcome::Ok || !keep_alive {
            conn = None;
        }
        records.lock().unwrap().push(Record {
            path: path.clone(),
            sent_at,
            server,
            outcome,
        });
    }
}

/// Reads and classifies one response to `GET path`.
///
/// Why failures are bounded: a request HAProxy could not deliver (connection refused,
/// reset or closed before any response byte: `retry-on all-retryable-errors`) is retried
/// up to `retries 3` times, each time on another server (`option redispatch 1`), so only a
/// response that had begun to reach the client when its replica died can fail. Each client
/// has at most one request outstanding, so at most one failure per client, and only for
/// requests sent before the kill was over.
fn judge(
    path: &str,
    reader: &mut BufReader<TcpStream>,
    contents: &BTreeMap<String, Vec<u8>>,
) -> (Option<String>, Outcome) {
    let response = match read_response(reader, false) {
        Ok(response) => response,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            return (None, Outcome::Malformed(format!("stalled: {e}")))
        }
        Err(e) if e.kind() == ErrorKind::InvalidData => {
            return (None, Outcome::Malformed(e.to_string()))
        }
        Err(e) => return (None, Outcome::Failed(format!("cut: {e}"))),
    };
    let server = response.header("x-server").map(str::to_string);
    if !reader.buffer().is_empty() {
        return (
            server,
            Outcome::Malformed(format!(
                "{} bytes after the response",
                reader.buffer().len()
            )),
        );
    }
    if matches!(response.status, 502..=504) {
        return (
            server,
            Outcome::Failed(format!("HAProxy answered {}", response.status)),
        );
    }
    let Some(name) = server.clone() else {
        return (
            None,
            Outcome::Malformed(format!("status {} without X-Server", response.status)),
        );
    };
    if response.status != 200 {
        return (
            server,
            Outcome::Malformed(format!("status {}", response.status)),
        );
    }
    let expected = match contents.get(path) {
        Some(bytes) => bytes.as_slice(),
        None => &replica_body(&name),
    };
    if response.body != expected {
        return (
            server,
            Outcome::Malformed(format!(
                "{} body bytes differ from the file's {} (from {name})",
                response.body.len(),
                expected.len()
            )),
        );
    }
    (server, Outcome::Ok)
}

/// Sets the flag when dropped, so client threads stop even when the scenario panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

// ---- HAProxy ------------------------------------------------------------------------

/// HAProxy in the foreground (`-db`) in the balancer namespace; killed on drop.
struct HaProxy {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

/// One server line of `show stat`.
#[derive(Debug)]
struct ServerStat {
    /// `UP`, `DOWN`, `UP 1/2` (going down), `no check`...
    status: String,
    /// Requests retried (`wretr`) and redispatched to another server (`wredis`).
    retries: u64,
    redispatches: u64,
}

impl HaProxy {
    /// Writes the configuration to `dir/haproxy.cfg` and starts HAProxy with it.
    fn start(dir: &Path, namespace: &str) -> HaProxy {
        let socket = dir.join("haproxy.sock");
        let log = dir.join("haproxy.log");
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(&socket)).unwrap();
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", namespace, "haproxy", "-db", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start haproxy");
        HaProxy { child, socket, log }
    }

    /// HAProxy's output so far (for failure messages).
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The backend's servers by name, from the stats socket's `show stat` (CSV); empty
    /// while HAProxy is not answering yet.
    fn server_status(&self) -> BTreeMap<String, ServerStat> {
        let mut out = BTreeMap::new();
        let Ok(mut stream) = UnixStream::connect(&self.socket) else {
            return out;
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let mut text = String::new();
        if stream.write_all(b"show stat\n").is_err() || stream.read_to_string(&mut text).is_err() {
            return out;
        }
        let mut columns: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(header) = line.strip_prefix("# ") {
                columns = header.split(',').collect();
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            let field = |name: &str| {
                columns
                    .iter()
                    .position(|c| *c == name)
                    .and_then(|i| fields.get(i).copied())
                    .unwrap_or("")
            };
            if field("pxname") == "flash" && !matches!(field("svname"), "BACKEND" | "FRONTEND") {
                out.insert(
                    field("svname").to_string(),
                    ServerStat {
                        status: field("status").to_string(),
                        retries: field("wretr").parse().unwrap_or(0),
                        redispatches: field("wredis").parse().unwrap_or(0),
                    },
                );
            }
        }
        out
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        // `ip netns exec` execs HAProxy, so this is HAProxy's pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration docs/DEPLOYMENT.md shows: round robin over the replicas with HTTP
/// health checks every 100 ms (down after 2 failures, up after 2 successes), and requests
/// that could not be delivered retried on another replica.
fn haproxy_config(socket: &Path) -> String {
    // With a `port`, HAProxy's checks carry no PROXY header (check-send-proxy is implied
    // only for checks to the data port).
    let check_port = match HEALTH_CHECK.flag {
        Some(_) => format!(" port {HEALTH_PORT}"),
        None => String::new(),
    };
    let check_uri = HEALTH_CHECK.uri;
    let mut servers = String::new();
    for (name, _, addr) in REPLICAS {
        servers.push_str(&format!(
            "    server {name} {addr}:{DATA_PORT} check inter 100ms fall 2 rise 2{check_port} {}\n",
            DATA_PATH.haproxy
        ));
    }
    format!(
        "global
    stats socket {socket} mode 600 level admin
    maxconn 1000

defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout check 1s
    timeout http-request 10s
    retries 3
    option redispatch 1
    retry-on all-retryable-errors

frontend web
    bind {BALANCER}:{DATA_PORT}
    default_backend flash

backend flash
    balance roundrobin
    option httpchk
    http-check send meth GET uri {check_uri} ver HTTP/1.1 hdr Host flash
    http-check expect status 200
    http-response set-header X-Server %s
{servers}",
        socket = socket.display()
    )
}

// ---- network namespaces -------------------------------------------------------------

/// Unique (pid-based) namespace names.
struct Names {
    client: String,
    balancer: String,
    replicas: [String; 2],
}

impl Names {
    fn new() -> Names {
        let pid = std::process::id();
        Names {
            client: format!("flash-cl-{pid}"),
            balancer: format!("flash-lb-{pid}"),
            replicas: [format!("flash-r1-{pid}"), format!("flash-r2-{pid}")],
        }
    }

    fn all(&self) -> Vec<&str> {
        let mut all = vec![self.client.as_str(), self.balancer.as_str()];
        all.extend(self.replicas.iter().map(String::as_str));
        all
    }
}

/// The namespaces and links; every namespace is deleted on drop (also on panic), which
/// destroys the veth links in it once the processes in it are gone.
struct Network {
    namespaces: Vec<String>,
}

impl Network {
    fn create(names: &Names) -> Network {
        let mut net = Network {
            namespaces: Vec::new(),
        };
        for ns in names.all() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            net.namespaces.push(ns.to_string());
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // client <-> balancer
        link(&names.client, "10.77.0.1", &names.balancer, BALANCER, "cl");
        // balancer <-> each replica
        for (i, (name, lb_addr, addr)) in REPLICAS.iter().enumerate() {
            link(&names.balancer, lb_addr, &names.replicas[i], addr, name);
        }
        net
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A veth pair `TAG-a` in namespace `a` (address `a_addr`/24) and `TAG-b` in `b`.
fn link(a: &str, a_addr: &str, b: &str, b_addr: &str, tag: &str) {
    let (a_dev, b_dev) = (format!("{tag}-a"), format!("{tag}-b"));
    ip(&[
        "link", "add", &a_dev, "netns", a, "type", "veth", "peer", "name", &b_dev, "netns", b,
    ]);
    for (ns, dev, addr) in [(a, &a_dev, a_addr), (b, &b_dev, b_addr)] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Moves the calling thread into the named network namespace (threads and processes it
/// creates afterwards inherit it).
fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("open /run/netns/{name}: {e}"));
    // SAFETY: setns takes a descriptor we own (open for the call) and a flag; it changes
    // only this thread's network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// Whether `program` is an executable file in a `$PATH` directory.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}
