//! Overload: when descriptors or `--max-connections` run out, the server
//! makes room for a new client by closing the connections that cost most and
//! give least (idle keep-alive first, then the oldest unfinished request
//! heads), so a normal client is served at once even while hundreds of
//! clients trickle request heads. (nginx with 256 descriptors and 400
//! slowloris connections does not accept a normal client at all.)

use std::io::{BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use integration_tests::harness::{
    raise_nofile_limit, read_response, Launch, Server, TempDir, IO_TIMEOUT,
};

/// The bound the issue sets on serving a normal client under attack.
const SERVED_WITHIN: Duration = Duration::from_secs(1);
/// Normal clients tried per scenario ("every time").
const TRIALS: usize = 5;

/// Connections that send a partial request head, then one more byte now
/// and then (`trickle`), never finishing it.
struct Tricklers(Vec<TcpStream>);

impl Tricklers {
    fn open(server: &Server, count: usize) -> Tricklers {
        let streams = (0..count)
            .filter_map(|_| TcpStream::connect(server.addr).ok())
            .map(|mut s| {
                let _ = s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nX-Slow: ");
                s.set_nonblocking(true).expect("non-blocking");
                s
            })
            .collect();
        Tricklers(streams)
    }

    /// One more header byte on every connection the server kept.
    fn trickle(&mut self) {
        self.0.retain_mut(|s| match s.write(b"x") {
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        });
    }
}

/// A normal client: connect, ask, read the whole response; how long it took.
fn normal_client(server: &Server) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    let response = read_response(&mut BufReader::new(stream), false).expect("a response");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello");
    started.elapsed()
}

fn normal_clients_are_served_under(prefix: &[&str], args: &[&str], tricklers: usize) {
    raise_nofile_limit(4 * tricklers as u64 + 256);
    let root = TempDir::new("overload");
    root.write("a.txt", "hello");
    let server = Server::launch(&Launch {
        root: Some(root.path()),
        args,
        prefix,
        ..Launch::default()
    })
    .expect("flash-server starts");
    let mut attack = Tricklers::open(&server, tricklers);
    let mut worst = Duration::ZERO;
    for trial in 0..TRIALS {
        attack.trickle();
        let took = normal_client(&server);
        worst = worst.max(took);
        assert!(
            took < SERVED_WITHIN,
            "trial {trial}: a normal client waited {took:?} beside {tricklers} tricklers"
        );
        // More attackers keep arriving between the normal clients.
        attack.0.extend(Tricklers::open(&server, tricklers / 10).0);
    }
    let (_, stderr) = server.stop();
    let room_lines = stderr.lines().filter(|l| l.contains("make room")).count();
    println!(
        "{prefix:?} {args:?}: {tricklers} tricklers, {TRIALS} normal clients served, slowest {worst:?}; \
         {room_lines} 'make room' log line(s)"
    );
    assert!(
        room_lines <= 2,
        "shedding is logged once per interval, not per connection:\n{stderr}"
    );
}

#[test]
fn with_256_descriptors_400_tricklers_do_not_keep_a_client_out() {
    normal_clients_are_served_under(&["prlimit", "--nofile=256:256"], &[], 400);
}

#[test]
fn with_max_connections_200_a_thousand_tricklers_do_not_keep_a_client_out() {
    normal_clients_are_served_under(&[], &["--max-connections", "200"], 1000);
}
