//! A client that stops reading cannot hold a connection forever: with
//! pipelined requests whose responses fill every buffer, the send timeout
//! still ends the connection, even when the response that blocks has not
//! sent a byte yet.

use std::io::{Read, Write};
use std::time::Duration;

use integration_tests::harness::{Server, TempDir, IO_TIMEOUT};

const REQUESTS: usize = 20_000;

#[test]
fn a_client_that_never_reads_is_dropped_after_the_send_timeout() {
    let root = TempDir::new("stuck");
    root.write("a.bin", vec![b'a'; 1024]);
    let server = Server::start(root.path(), &["--send-timeout", "1s"]);
    let mut stream = server.connect();
    let mut writer = stream.try_clone().unwrap();
    // Far more responses (25 MB) than socket buffers hold. The writer blocks
    // once the server stops reading, and fails once the server closes.
    let sender = std::thread::spawn(move || {
        let request = b"GET /a.bin HTTP/1.1\r\nHost: t\r\n\r\n";
        for _ in 0..REQUESTS {
            if writer.write_all(request).is_err() {
                break;
            }
        }
    });
    // The scenario itself: the client does not read for longer than the
    // server's send timeout.
    std::thread::sleep(Duration::from_secs(3));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match stream.read(&mut buf) {
            Ok(0) => break "eof",
            Ok(n) => received += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(e) => {
                panic!("the server kept the stalled connection open: {e} after {received} bytes")
            }
        }
    };
    let one_response = 1024 + 200;
    assert!(
        received < REQUESTS * one_response,
        "all {REQUESTS} responses arrived ({received} bytes, {ended}): the stalled connection was never timed out"
    );
    sender.join().unwrap();
}
