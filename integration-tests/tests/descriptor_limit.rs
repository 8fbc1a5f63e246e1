//! Running out of descriptors (EMFILE on accept) pauses accepting: the
//! server neither exits nor spins, keeps serving the connections it has, and
//! accepts again once descriptors are free.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::harness::{binary, read_response, signal, TempDir, IO_TIMEOUT};

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
fn emfile_pauses_accepting_without_spinning_or_exiting() {
    let root = TempDir::new("emfile");
    root.write("a.txt", "a");
    // 24 descriptors: stdio, the poller, the listener, the signal pipe and a
    // dozen connections. SPED keeps helper sockets out of the count.
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
            // The file stays open in the path cache: this test is about
            // accepting, not about opening files without descriptors.
            .args(["--path-cache-ttl", "1h"])
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

    // Served before the flood: the file is then open in the path cache.
    let mut first = connect(&addr);
    assert_eq!(ask(&mut first), 200);

    // Far more connections than descriptors: the kernel completes the
    // handshakes; the server can accept only some of them.
    let mut flood: Vec<TcpStream> = (0..40).map(|_| connect(&addr)).collect();
    let mut late = flood.pop().unwrap();
    late.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    late.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = late.read(&mut byte);
    assert!(
        waited.is_err(),
        "no answer expected while out of descriptors, got {waited:?}"
    );

    // The connection accepted before the limit is still served.
    assert_eq!(ask(&mut first), 200);

    // Not spinning: over a second at the limit, the server uses a small
    // fraction of a CPU (a retry loop on EMFILE would use all of it).
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 30,
        "{used} ticks of CPU in 1 s while out of descriptors: spinning on accept"
    );
    assert!(server.0.try_wait().unwrap().is_none(), "the server exited");

    // Free descriptors: the late connection is accepted and answered.
    flood.clear();
    late.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut reader = BufReader::new(late.try_clone().unwrap());
    let response = read_response(&mut reader, false).expect("answered once descriptors are free");
    assert_eq!(response.status, 200);
    assert_eq!(ask(&mut first), 200, "the first connection still works");

    signal(pid, libc::SIGTERM);
    assert!(server.0.wait().unwrap().success());
}
