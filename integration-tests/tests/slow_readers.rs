//! Slow readers: a client that reads its response slower than
//! `--min-send-rate` over `--send-rate-window` is cut off with a reset, so
//! 1,000 clients each asking for a 64 MB file and reading a byte a second
//! hold neither descriptors nor socket buffers past the window, while a
//! normal client downloads the same file whole and a client reading slowly
//! but above the minimum is never cut off.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::harness::{
    connect, proc_stats, raise_nofile_limit, read_response, request, seeded_bytes, wait_until,
    Server, TempDir,
};

const FILE_LEN: usize = 64 << 20;
const ATTACKERS: usize = 1000;
/// The rate window of these tests (the default is 20 s).
const WINDOW: Duration = Duration::from_secs(2);
/// A modest client reads this much a second: slow, but 64 times the minimum.
const MODEST_RATE: usize = 64 << 10;

/// TCP states in `/proc/net/tcp`.
const ESTABLISHED: &str = "01";
const FIN_WAIT1: &str = "04";

/// Server-side TCP connections of the server on `port` in state
/// ESTABLISHED, from `/proc/net/tcp` (the kernel's view, so a socket the
/// server closed is not counted even while the client still holds its end).
fn established_on(port: u16) -> usize {
    sockets_on(port, ESTABLISHED)
}

/// Server-side sockets on `port` in `state`. FIN_WAIT1 ones are orphans the
/// server closed without a reset while the kernel still held their bytes.
fn sockets_on(port: u16, state: &str) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1).unwrap_or("");
            let fields_state = fields.nth(1).unwrap_or("");
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields_state == state
        })
        .count()
}

/// Bytes the kernel holds for TCP sockets, in KiB (`/proc/net/sockstat`).
fn tcp_kernel_memory_kib() -> u64 {
    let stat = std::fs::read_to_string("/proc/net/sockstat").expect("read sockstat");
    let pages: u64 = stat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "mem")?;
            it.next()?.parse().ok()
        })
        .unwrap_or(0);
    pages * 4
}

/// Connections that ask for the big file and then read one byte a second.
fn start_attackers(server: &Server) -> Vec<TcpStream> {
    (0..ATTACKERS)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).expect("attacker connect");
            s.write_all(&request("GET", "/big.bin", "")).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

fn read_one_byte_each(attackers: &mut [TcpStream]) {
    let mut byte = [0u8; 1];
    for s in attackers {
        match s.read(&mut byte) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => {}
        }
    }
}

/// Reads the whole big file at full speed; returns whether it matched.
fn download_whole(server: &Server, expected: &[u8]) -> bool {
    let (mut stream, mut reader) = connect(server);
    stream.write_all(&request("GET", "/big.bin", "")).unwrap();
    let response = read_response(&mut reader, false).expect("normal client response");
    response.status == 200 && response.body == expected
}

/// The TCP state of `stream`'s end (`TCP_INFO`): 1 is ESTABLISHED; a
/// reset from the server moves it to CLOSE (7) even while received bytes
/// are still waiting to be read.
fn tcp_state(stream: &TcpStream) -> u8 {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into the buffer we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info[0]
}

/// Reads `MODEST_RATE` bytes a second for `duration`; returns the bytes
/// read, or how it was cut off.
fn read_modestly(server: &Server, duration: Duration) -> Result<usize, String> {
    let (mut stream, _) = connect(server);
    stream.write_all(&request("GET", "/big.bin", "")).unwrap();
    let mut chunk = vec![0u8; MODEST_RATE];
    let started = Instant::now();
    let mut total = 0;
    while started.elapsed() < duration {
        let second = Instant::now();
        let mut got = 0;
        while got < chunk.len() {
            match stream.read(&mut chunk[got..]) {
                Ok(0) => return Err(format!("closed after {total} bytes")),
                Ok(n) => got += n,
                Err(e) => return Err(format!("{e} after {total} bytes")),
            }
        }
        total += got;
        // The pace of this client, not a synchronisation.
        thread::sleep(Duration::from_secs(1).saturating_sub(second.elapsed()));
    }
    // Bytes already received could hide a reset; the kernel's state cannot.
    match tcp_state(&stream) {
        1 => Ok(total),
        state => Err(format!("TCP state {state} after {total} bytes")),
    }
}

#[test]
fn readers_below_the_minimum_rate_are_cut_off_after_the_window() {
    raise_nofile_limit(4 * ATTACKERS as u64 + 256);
    let root = TempDir::new_in_memory("slow-readers", 2 * FILE_LEN as u64);
    let content = seeded_bytes(FILE_LEN, 64);
    root.write("big.bin", &content);
    let window = format!("{}ms", WINDOW.as_millis());
    let server = Server::start(
        root.path(),
        &["--min-send-rate", "1K/s", "--send-rate-window", &window],
    );
    let port = server.addr.port();
    let idle = proc_stats(server.engine_pid()).expect("server stats");
    let memory_before = tcp_kernel_memory_kib();

    let mut attackers = start_attackers(&server);
    let attacked_at = Instant::now();
    // All accepted, each with a response under way.
    assert!(
        wait_until(Duration::from_secs(10), || {
            proc_stats(server.engine_pid())
                .is_some_and(|s| s.descriptors >= idle.descriptors + ATTACKERS)
        }),
        "the server accepted only {:?} of {ATTACKERS} attacking connections",
        proc_stats(server.engine_pid()).map(|s| s.descriptors - idle.descriptors)
    );
    let held = proc_stats(server.engine_pid()).expect("server stats");
    let memory_held = tcp_kernel_memory_kib();

    // Normal clients meanwhile: one at full speed, one slow but above the
    // minimum for three windows.
    let normal = thread::scope(|scope| {
        let whole = scope.spawn(|| download_whole(&server, &content));
        let modest = scope.spawn(|| read_modestly(&server, 3 * WINDOW));
        // The attackers read a byte a second until the server lets go of
        // them (bounded: the window twice, plus sweep and scheduling slack).
        let mut last_read = Instant::now() - Duration::from_secs(1);
        let released = wait_until(2 * WINDOW + Duration::from_secs(6), || {
            if last_read.elapsed() >= Duration::from_secs(1) {
                read_one_byte_each(&mut attackers);
                last_read = Instant::now();
            }
            // Only the two normal clients may remain.
            established_on(port) <= 2
        });
        (
            released,
            attacked_at.elapsed(),
            whole.join().unwrap(),
            modest.join().unwrap(),
        )
    });
    let (released, released_after, whole_ok, modest) = normal;
    let after = proc_stats(server.engine_pid()).expect("server survived");
    let memory_after = tcp_kernel_memory_kib();
    eprintln!(
        "slow readers: {ATTACKERS} held ({} server descriptors, idle {}), released after {:.1} s; \
         TCP kernel memory before {memory_before} KiB, held {memory_held} KiB, after release {memory_after} KiB \
         (the attackers' own receive buffers still count); server RSS {} KiB",
        held.descriptors,
        idle.descriptors,
        released_after.as_secs_f64(),
        after.rss_kib,
    );
    assert!(
        released,
        "slow readers still held past the window: {} established",
        established_on(port)
    );
    assert!(
        after.descriptors <= idle.descriptors + 2,
        "the server still holds {} descriptors (idle: {})",
        after.descriptors,
        idle.descriptors
    );
    assert!(
        whole_ok,
        "a normal client did not get the whole file during the attack"
    );
    let modest = modest.expect("a client reading 64 KiB/s was cut off");
    assert!(
        modest >= 3 * MODEST_RATE,
        "modest client read {modest} bytes"
    );
    drop(attackers);
}

#[test]
fn a_client_that_reads_nothing_is_cut_off_and_the_server_keeps_serving() {
    let root = TempDir::new("slow-readers-none");
    let content = seeded_bytes(8 << 20, 65);
    root.write("big.bin", &content);
    let server = Server::start(
        root.path(),
        &["--min-send-rate", "1K/s", "--send-rate-window", "1s"],
    );
    let (mut stalled, _) = connect(&server);
    stalled.write_all(&request("GET", "/big.bin", "")).unwrap();
    let port = server.addr.port();
    assert!(
        wait_until(Duration::from_secs(10), || established_on(port) == 0),
        "a client reading nothing is still connected"
    );
    // Closed with a reset: no orphan socket keeps the unsent bytes.
    assert_eq!(sockets_on(port, FIN_WAIT1), 0, "an orphan holds the bytes");
    // The reset reaches the client: it reads what was buffered, then the
    // reset, never the whole file.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let end = stalled.read_to_end(&mut got);
    assert!(got.len() < content.len(), "the stalled client got it all");
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset),
        "the cut is a reset, after {} bytes",
        got.len()
    );
    assert_eq!(
        integration_tests::harness::get(&server, "/big.bin").body,
        content
    );
}

/// Responses that fit in the kernel's buffers (a 1.5 MB file, or a stream
/// of pipelined small ones) are not a way around the minimum rate: clients
/// that stop reading are cut with a reset and leave neither a connection
/// nor an orphan socket holding their bytes, while the idle timeout alone
/// (a plain close) would have left orphans behind.
#[test]
fn clients_that_stop_reading_small_or_pipelined_responses_leave_nothing_behind() {
    const CLIENTS: usize = 20;
    let root = TempDir::new("slow-readers-small");
    root.write("mid.bin", seeded_bytes(1_500_000, 66));
    root.write("small.bin", seeded_bytes(2048, 67));
    let server = Server::start(
        root.path(),
        &[
            "--min-send-rate",
            "1K/s",
            "--send-rate-window",
            "1s",
            "--idle-timeout",
            "2s",
        ],
    );
    let port = server.addr.port();
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).expect("connect");
            s.write_all(&request("GET", "/mid.bin", "")).unwrap();
            s
        })
        .collect();
    // One client pipelines 3,000 small requests and reads 100 bytes a second.
    let mut pipeliner = TcpStream::connect(server.addr).expect("connect");
    let burst: Vec<u8> = (0..3000)
        .flat_map(|_| request("GET", "/small.bin", ""))
        .collect();
    pipeliner.write_all(&burst).unwrap();
    pipeliner.set_nonblocking(true).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || established_on(port) > CLIENTS),
        "not all clients connected"
    );
    let mut last_read = Instant::now();
    let released = wait_until(Duration::from_secs(15), || {
        if last_read.elapsed() >= Duration::from_secs(1) {
            let _ = pipeliner.read(&mut [0u8; 100]);
            last_read = Instant::now();
        }
        established_on(port) == 0 && sockets_on(port, FIN_WAIT1) == 0
    });
    assert!(
        released,
        "still held: {} established, {} orphans in FIN_WAIT1",
        established_on(port),
        sockets_on(port, FIN_WAIT1)
    );
    clients.clear();
}
