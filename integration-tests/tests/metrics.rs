//! The metrics endpoint (`--metrics-listen`) against the real binary: what
//! it counts after a known mix of requests, its gauges while the test holds
//! connections, helpers respawned after a kill, `/healthz`, and the shape of
//! the whole exposition (checked by a small parser of the text format).

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use integration_tests::harness::{
    get, read_response, request, signal, wait_until, Server, TempDir, IO_TIMEOUT,
};

/// A parsed exposition: series (name with its labels, as printed) to value.
struct Exposition {
    samples: HashMap<String, f64>,
}

impl Exposition {
    /// Parses the Prometheus text format strictly: every sample's family
    /// has a `# TYPE` line before it (histogram samples belong to their
    /// family through `_bucket`, `_sum`, `_count`), every family a `# HELP`,
    /// every value parses, no series appears twice.
    fn parse(text: &str) -> Exposition {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        let mut samples = HashMap::new();
        assert!(text.ends_with('\n'), "the last line ends with a line feed");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helps.insert(name.to_string()), "two HELP lines for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "type {kind} of {name}"
                );
                assert!(name.starts_with("flash_"), "metric {name} is not flash_...");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} ends in _total");
                }
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "two TYPE lines for {name}"
                );
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            if line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value of {line:?} does not parse"));
            let name = series.split('{').next().unwrap();
            let family = match types.get(name) {
                Some(_) => name,
                None => ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix)
                            .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                    })
                    .unwrap_or_else(|| panic!("sample {line:?} has no TYPE line before it")),
            };
            assert!(helps.contains(family), "family {family} has no HELP");
            assert!(
                samples.insert(series.to_string(), value).is_none(),
                "series {series} appears twice"
            );
        }
        Exposition { samples }
    }

    fn get(&self, series: &str) -> u64 {
        let value = *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series}"));
        value as u64
    }

    /// Cumulative bucket counts of the request duration histogram, in order.
    fn duration_buckets(&self) -> Vec<(f64, u64)> {
        let mut buckets: Vec<(f64, u64)> = self
            .samples
            .iter()
            .filter_map(|(series, &v)| {
                let le = series
                    .strip_prefix("flash_http_request_duration_seconds_bucket{le=\"")?
                    .strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                Some((le, v as u64))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// One request to the metrics endpoint: (status, content type, body).
fn fetch(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, method == "HEAD").expect("a response");
    assert_eq!(response.header("connection"), Some("close"));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("the endpoint closes");
    assert!(rest.is_empty(), "nothing after the response");
    let ctype = response.header("content-type").unwrap_or("").to_string();
    (
        response.status,
        ctype,
        String::from_utf8(response.body).unwrap(),
    )
}

fn scrape(addr: SocketAddr) -> Exposition {
    let (status, ctype, body) = fetch(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(
        ctype.starts_with("text/plain; version=0.0.4"),
        "content type {ctype}"
    );
    Exposition::parse(&body)
}

/// Scrapes until `done` holds (the engine publishes as it goes), returning
/// that exposition; panics with `what` and the last one after the deadline.
fn scrape_until(
    addr: SocketAddr,
    what: &str,
    mut done: impl FnMut(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let seen = scrape(addr);
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen; last exposition: {:?}",
            seen.samples
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start(root: &TempDir, args: &[&str]) -> (Server, SocketAddr) {
    let mut all = vec!["--metrics-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let server = Server::start(root.path(), &all);
    let line = server
        .stdout_line("metrics on http://", IO_TIMEOUT)
        .expect("a 'metrics on' line");
    let addr = line["metrics on http://".len()..].parse().unwrap();
    (server, addr)
}

#[test]
fn counts_a_known_mix_of_requests() {
    let root = TempDir::new("metrics-mix");
    let page = "<p>hello metrics</p>\n".repeat(20);
    root.write("page.html", &page);
    // A long TTL: every repeated lookup is a path cache hit.
    let (server, metrics) = start(&root, &["--path-cache-ttl", "60s"]);

    let mut stream = server.connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut send = |req: Vec<u8>, head_only: bool| {
        stream.write_all(&req).unwrap();
        read_response(&mut reader, head_only).expect("a response")
    };
    let mut bodies = 0;
    let first = send(request("GET", "/page.html", ""), false);
    assert_eq!(first.status, 200);
    bodies += first.body.len();
    for _ in 0..2 {
        let again = send(request("GET", "/page.html", ""), false);
        assert_eq!(again.status, 200);
        bodies += again.body.len();
    }
    let etag = first.header("etag").unwrap().to_string();
    let not_modified = send(
        request("GET", "/page.html", &format!("If-None-Match: {etag}\r\n")),
        false,
    );
    assert_eq!(not_modified.status, 304);
    let missing = send(request("GET", "/missing.html", ""), false);
    assert_eq!(missing.status, 404);
    bodies += missing.body.len();
    let head = send(request("HEAD", "/page.html", ""), true);
    assert_eq!(head.status, 200);
    let options = send(request("OPTIONS", "*", ""), false);
    assert_eq!(options.status, 204);
    let post = send(request("POST", "/page.html", ""), false);
    assert_eq!(post.status, 405);
    bodies += post.body.len();

    // 2xx: three GETs, the HEAD, the OPTIONS; 3xx: the 304; 4xx: 404, 405.
    let m = scrape_until(metrics, "8 requests counted", |m| {
        m.get("flash_http_request_duration_seconds_count") == 8
    });
    let by_class = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .map(|c| m.get(&format!("flash_http_requests_total{{code=\"{c}\"}}")));
    assert_eq!(by_class, [0, 5, 1, 2, 0]);
    let by_method = ["GET", "HEAD", "OPTIONS", "other"].map(|c| {
        m.get(&format!(
            "flash_http_requests_by_method_total{{method=\"{c}\"}}"
        ))
    });
    assert_eq!(by_method, [5, 1, 1, 1]);
    let sent = m.get("flash_http_sent_bytes_total");
    assert!(
        sent > bodies as u64 + 8 * "HTTP/1.1 200 OK\r\n\r\n".len() as u64,
        "bytes sent {sent}: at least the bodies ({bodies}) and eight heads"
    );
    let buckets = m.duration_buckets();
    assert_eq!(buckets.len(), 15);
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative buckets never decrease: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 8));
    // page.html: looked up five times (one miss, then hits); missing.html: a miss.
    assert_eq!(m.get("flash_cache_hits_total{cache=\"path\"}"), 4);
    assert_eq!(m.get("flash_cache_misses_total{cache=\"path\"}"), 2);
    // The prepared 200 head: built by the first GET, reused by two GETs and the HEAD.
    assert_eq!(m.get("flash_cache_hits_total{cache=\"response_head\"}"), 3);
    assert_eq!(
        m.get("flash_cache_misses_total{cache=\"response_head\"}"),
        1
    );
    assert_eq!(m.get("flash_helper_jobs_total{kind=\"resolve\"}"), 2);
    assert_eq!(m.get("flash_path_cache_entries"), 1);
    assert_eq!(m.get("flash_cached_contents_bytes"), page.len() as u64);
    assert_eq!(m.get("flash_open_connections"), 1, "the test's connection");
    assert_eq!(m.get("flash_helpers_respawned_total"), 0);

    // The endpoint's own answers.
    assert_eq!(
        fetch(metrics, "GET", "/healthz"),
        (200, "text/plain".into(), "ok\n".into())
    );
    assert_eq!(fetch(metrics, "GET", "/nope").0, 404);
    assert_eq!(fetch(metrics, "POST", "/metrics").0, 405);
    assert_eq!(fetch(metrics, "HEAD", "/metrics").0, 200);
    // None of that reached the engine's counters.
    let after = scrape(metrics);
    assert_eq!(after.get("flash_http_request_duration_seconds_count"), 8);
}

#[test]
fn open_connections_gauge_follows_the_clients() {
    let root = TempDir::new("metrics-conns");
    root.write("a.txt", "a");
    let (server, metrics) = start(&root, &[]);
    let mut clients: Vec<TcpStream> = (0..5).map(|_| server.connect()).collect();
    scrape_until(metrics, "5 open connections", |m| {
        m.get("flash_open_connections") == 5
    });
    clients.truncate(2);
    scrape_until(metrics, "2 open connections", |m| {
        m.get("flash_open_connections") == 2
    });
    drop(clients);
    scrape_until(metrics, "no open connection", |m| {
        m.get("flash_open_connections") == 0
    });
}

#[test]
fn helpers_respawned_after_a_kill() {
    let root = TempDir::new("metrics-respawn");
    root.write("a.txt", "a");
    let (server, metrics) = start(&root, &["--helpers", "2"]);
    let mut pids = Vec::new();
    assert!(
        wait_until(IO_TIMEOUT, || {
            pids = server.helper_pids();
            pids.len() == 2
        }),
        "two helpers running"
    );
    assert_eq!(scrape(metrics).get("flash_helpers_respawned_total"), 0);
    signal(pids[0], libc::SIGKILL);
    let m = scrape_until(metrics, "one helper respawned", |m| {
        m.get("flash_helpers_respawned_total") >= 1
    });
    assert_eq!(m.get("flash_helpers_respawned_total"), 1);
    assert!(
        wait_until(IO_TIMEOUT, || {
            let now = server.helper_pids();
            now.len() == 2 && !now.contains(&pids[0])
        }),
        "the killed helper was replaced"
    );
}

#[test]
fn a_large_file_is_probed_for_residency() {
    let root = TempDir::new("metrics-large");
    root.write("big.bin", vec![7u8; 3 << 20]);
    let (server, metrics) = start(&root, &[]);
    let mut stream = server.connect();
    stream.write_all(&request("GET", "/big.bin", "")).unwrap();
    let response = read_response(&mut BufReader::new(stream), false).unwrap();
    assert_eq!(response.body.len(), 3 << 20);
    let m = scrape_until(metrics, "the response counted", |m| {
        m.get("flash_http_request_duration_seconds_count") == 1
    });
    let probes: u64 = ["mincore", "rwf_nowait", "model"]
        .iter()
        .flat_map(|p| {
            ["resident", "not_resident"].map(|r| {
                m.get(&format!(
                    "flash_residency_probes_total{{probe=\"{p}\",result=\"{r}\"}}"
                ))
            })
        })
        .sum();
    assert!(probes >= 3, "each of the three windows checked: {probes}");
    assert!(m.get("flash_http_sent_bytes_total") > 3 << 20);
}

#[test]
fn a_stuck_scraper_holds_the_endpoint_briefly() {
    let root = TempDir::new("metrics-stuck");
    root.write("a.txt", "a");
    let (_server, metrics) = start(&root, &[]);
    // Three clients connect and send half a request, then nothing: each
    // holds one of the endpoint's threads for its 2 s limit.
    let stuck: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stuck = TcpStream::connect(metrics).unwrap();
            stuck.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
            stuck
        })
        .collect();
    let started = Instant::now();
    let (status, _, body) = fetch(metrics, "GET", "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a health check is answered at once, not after the stuck clients' 2 s: {:?}",
        started.elapsed()
    );
    drop(stuck);
}

/// With several workers the endpoint sums their slots, and what a worker
/// counted stays counted after it dies (its successor adds to the same
/// slot's counters).
#[test]
fn workers_are_summed_and_a_dead_workers_counts_remain() {
    let root = TempDir::new("metrics-workers");
    root.write("a.txt", "summed\n");
    let (server, metrics) = start(&root, &["--workers", "2"]);
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 2, "{workers:?}");
    // New connections, so the kernel spreads them over both workers.
    for _ in 0..40 {
        assert_eq!(get(&server, "/a.txt").status, 200);
    }
    let m = scrape_until(metrics, "40 requests from both workers", |m| {
        m.get("flash_http_requests_total{code=\"2xx\"}") == 40
    });
    assert_eq!(m.get("flash_http_request_duration_seconds_count"), 40);
    signal(workers[0], libc::SIGKILL);
    assert!(wait_until(IO_TIMEOUT, || {
        let now = server.worker_pids();
        now.len() == 2 && !now.contains(&workers[0])
    }));
    let m = scrape(metrics);
    assert_eq!(
        m.get("flash_http_requests_total{code=\"2xx\"}"),
        40,
        "a dead worker's counts remain"
    );
    for _ in 0..10 {
        assert_eq!(get(&server, "/a.txt").status, 200);
    }
    scrape_until(metrics, "50 requests", |m| {
        m.get("flash_http_requests_total{code=\"2xx\"}") == 50
    });
}
