//! A descriptor limit far below the number of clients: the server caps its
//! connections to what the limit allows, and at the cap makes room for a new
//! client by closing an idle keep-alive connection first, then the oldest
//! connection that has not finished sending a request. It neither exits nor
//! spins.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::harness::{binary, read_response, reads_eof, signal, TempDir, IO_TIMEOUT};

/// Kills the server if the test fails half-way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU ticks (user + system) the process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server is running");
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

fn ask(stream: &mut TcpStream) -> u16 {
    stream
        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    read_response(&mut reader, false)
        .expect("a response")
        .status
}

#[test]
fn at_a_tiny_descriptor_limit_idle_and_silent_connections_make_room() {
    let root = TempDir::new("emfile");
    root.write("a.txt", "a");
    // 24 descriptors: stdio, the poller, the listener, the signal pipe and a
    // handful of connections. SPED keeps helper sockets out of the count.
    let mut server = KillOnDrop(
        Command::new("prlimit")
            .arg("--nofile=24:24")
            .arg(binary("flash-server"))
            .arg(root.path())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--arch",
                "sped",
                "--log-level",
                "error",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("prlimit (util-linux) runs flash-server"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("listening line")
        .to_string();
    let pid = server.0.id();

    // Served, then idle on keep-alive.
    let mut first = connect(&addr);
    assert_eq!(ask(&mut first), 200);

    // Far more silent connections than descriptors, then a real client.
    let flood: Vec<TcpStream> = (0..40).map(|_| connect(&addr)).collect();
    let mut late = connect(&addr);
    assert_eq!(
        ask(&mut late),
        200,
        "the newest client is served: older silent connections made room"
    );
    assert!(
        reads_eof(&mut first),
        "the idle keep-alive connection was the first to be closed for room"
    );

    // Not spinning: over a second at the limit, the server uses a small
    // fraction of a CPU.
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 30,
        "{used} ticks of CPU in 1 s at the connection limit: spinning"
    );
    assert!(server.0.try_wait().unwrap().is_none(), "the server exited");
    assert_eq!(ask(&mut late), 200, "the late client is still served");
    drop(flood);

    signal(pid, libc::SIGTERM);
    assert!(server.0.wait().unwrap().success());
}
