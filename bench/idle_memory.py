#!/usr/bin/env python3
"""Resident memory of the flash main process holding N idle keep-alive
connections (the target: 10,000 under 64 MiB).

Starts flash-server on 127.0.0.1, opens N connections, sends one request on
each and reads the response (so each is an idle keep-alive connection, past
its first request), waits for the server's idle-buffer release (1 s), then
reads VmRSS of the main process from /proc. Bounded: N connections to
127.0.0.1 only, one request each, then everything is closed.

usage: bench/idle_memory.py [--connections N] [--bin-dir target/release] [--arch amped|sped]
"""
import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--bin-dir", default=os.path.join(os.path.dirname(__file__), "..", "target", "release"))
    ap.add_argument("--arch", default="amped")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 100
    if hard < need:
        sys.exit(f"need {need} descriptors, hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    root = tempfile.mkdtemp(prefix="flash-idle-")
    with open(os.path.join(root, "index.html"), "wb") as f:
        f.write(b"x" * 1024)
    server = subprocess.Popen(
        [os.path.join(args.bin_dir, "flash-server"), root, "--listen", "127.0.0.1:0",
         "--arch", args.arch, "--log-level", "warn", "--max-connections", str(args.connections + 10)],
        stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        host, port = line.strip().rsplit("/", 1)[-1].split(":")
        rss_start = vm_rss_kib(server.pid)
        conns = []
        request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
        for _ in range(args.connections):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(request)
            got = b""
            while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 1024:
                chunk = s.recv(4096)
                if not chunk:
                    sys.exit("server closed a connection")
                got += chunk
            conns.append(s)
        rss_busy = vm_rss_kib(server.pid)
        time.sleep(1.6)  # the server releases buffers of connections idle for 1 s
        rss_idle = vm_rss_kib(server.pid)
        print(f"flash {args.arch}: {len(conns)} idle keep-alive connections")
        print(f"  main process VmRSS at start:             {rss_start / 1024:7.1f} MiB")
        print(f"  right after the last response:           {rss_busy / 1024:7.1f} MiB")
        print(f"  after the idle buffer release (1.6 s):   {rss_idle / 1024:7.1f} MiB")
        print(f"  per connection: {(rss_idle - rss_start) * 1024 / len(conns):.0f} bytes")
        for s in conns:
            s.close()
    finally:
        server.terminate()
        server.wait(timeout=15)
        for name in os.listdir(root):
            os.unlink(os.path.join(root, name))
        os.rmdir(root)


if __name__ == "__main__":
    main()
