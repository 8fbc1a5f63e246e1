#!/usr/bin/env python3
"""Resource-exhaustion attacks against flash and nginx, side by side.

Each scenario starts a fresh server on 127.0.0.1 (pinned to CPU 0; this
script runs on CPU 1), attacks it, checks whether normal clients are still
served meanwhile, stops it, and adds a row to a markdown table printed at the
end.  Everything is bounded (connection counts, per-client caps, checkpoints)
and the run stops by itself (~8 min with the defaults).

Scenarios (see bench/README.md, "Attacks", for the exact settings):

  slowloris-256   server under `prlimit --nofile=256` (nginx also
                  `worker_rlimit_nofile 256; worker_connections 256`);
                  400 connections each send a partial request head, then one
                  more header byte a second; 5 normal clients one after the
                  other (40 more attackers arrive before each), 5 s cap each.
  slowloris-200   flash `--max-connections 200` vs nginx
                  `worker_connections 200`; 1,000 tricklers (+100 per client).
  slow-readers    a 64 MB file; 1,000 clients send GET and read one byte a
                  second.  At t = 10, 30, 70 s (--checkpoints): the server's
                  TCP connections by state (/proc/net/tcp, local port = server
                  port) and the kernel's TCP memory (/proc/net/sockstat "mem"
                  pages x 4 KiB); at t = 5 s a normal client downloads the whole
                  file (SHA-256 checked, 60 s cap).  flash with its defaults
                  (--min-send-rate 1K/s --send-rate-window 20s) and with
                  --send-rate-window 2s; nginx with its defaults (send_timeout
                  60s, reset_timedout_connection off).
  big-heads       1,000 connections each send 15 KiB of request head (15 header
                  lines of ~1 KiB: under flash's 16 KiB head limit and nginx's
                  8 KiB per line) and stop before the blank line; RSS of the
                  serving process and of the whole tree; 5 normal clients.
  pipeline        one connection sends 100,000 pipelined GETs for a small
                  file without reading for 5 s (normal clients meanwhile),
                  then reads (30 s cap): RSS growth, responses received.

A normal client: connect, `GET /a.txt` with `Connection: close`, read the
whole response; served = status 200 and the exact body within the cap.

Needs root only for nginx's `user` switch; installs nothing (bench/run does:
`apt-get install nginx-light`).  Builds flash with `cargo build --release`
unless --no-build.

usage: bench/attacks.py [--scenarios a,b] [--servers flash,nginx]
                        [--checkpoints 10,30,70] [--no-window-2s] [--no-build]
"""

from __future__ import annotations

import argparse
import atexit
import collections
import hashlib
import os
import random
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (Server: start/stop of a process group, process_tree, build_flash)

SERVER_CPU, CLIENT_CPU = "0", "1"
HOST = "127.0.0.1"
SMALL = b"hello\n"  # /a.txt, what the normal clients fetch
BIG_LEN = 64 * 10**6  # /big.bin for the slow readers ("64 MB")
NORMAL_CLIENTS = 5
NORMAL_CAP = 5.0  # seconds per normal client
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}

log = B.log


# ------------------------------------------------------------------ /proc


def server_side_states(port: int) -> collections.Counter:
    """Server-side TCP sockets on `port` by state (local port = port; the
    listening socket excluded).  Includes connections still in the accept
    queue and sockets the server has closed but the kernel still holds.
    Also "tx_bytes": the sum of their send queues (bytes not yet acked)."""
    counts: collections.Counter = collections.Counter()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state = fields[1], int(fields[3], 16)
            if int(local.rsplit(":", 1)[1], 16) == port and state != 10:
                counts[TCP_STATES.get(state, str(state))] += 1
                counts["tx_bytes"] += int(fields[4].split(":")[0], 16)
    return counts


def tcp_mem_kib() -> int:
    """Memory the kernel holds for TCP sockets (both ends of loopback)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                words = line.split()
                return int(words[words.index("mem") + 1]) * 4
    return 0


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    try:
        n = os.stat(f"/proc/{pid}/fd").st_size  # Linux >= 6.2
        return n if n > 0 else len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Peaks(threading.Thread):
    """Samples the serving process (flash: the main process; nginx: its
    worker) and the whole tree every 0.2 s: peak RSS, peak descriptors."""

    def __init__(self, server: B.Server):
        super().__init__(daemon=True)
        self.root = server.proc.pid
        self.serving = serving_pid(server)
        self.halt = threading.Event()
        self.rss = self.tree_rss = self.fds = 0
        self.sample()
        self.base_rss, self.base_tree_rss, self.base_fds = self.rss, self.tree_rss, self.fds

    def sample(self) -> None:
        self.rss = max(self.rss, rss_kib(self.serving))
        self.fds = max(self.fds, fd_count(self.serving))
        self.tree_rss = max(self.tree_rss, sum(rss_kib(p) for p in B.process_tree(self.root)))

    def run(self) -> None:
        while not self.halt.wait(0.2):
            self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)
        self.sample()


def serving_pid(server: B.Server) -> int:
    """The process that holds the connections: nginx's worker, flash's main."""
    pid = server.proc.pid
    if server.name.startswith("nginx"):
        kids = [p for p in B.process_tree(pid) if p != pid]
        return kids[0] if kids else pid
    return pid


# ------------------------------------------------------------------ clients


def fetch(port: int, path: str, cap: float, want_len: int, want_sha: str) -> tuple[bool, float, str]:
    """One normal client: GET path (Connection: close), read the whole
    response within `cap` seconds.  Returns (served, seconds, what went
    wrong); served = status 200 and exactly the expected body."""
    t0 = time.monotonic()
    deadline = t0 + cap
    head, sha, got = b"", hashlib.sha256(), 0
    try:
        with socket.create_connection((HOST, port), timeout=cap) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            body_started = False
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False, cap, f"no full response in {cap:.0f} s ({got:,} body bytes)"
                s.settimeout(left)
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                if not body_started:
                    head += chunk
                    if b"\r\n\r\n" not in head:
                        continue
                    head, chunk = head.split(b"\r\n\r\n", 1)
                    body_started = True
                sha.update(chunk)
                got += len(chunk)
    except socket.timeout:
        return False, cap, f"no full response in {cap:.0f} s ({got:,} body bytes)"
    except OSError as e:
        return False, time.monotonic() - t0, f"{type(e).__name__}: {e.strerror or e}"
    took = time.monotonic() - t0
    status = head.split(b" ", 2)[1].decode(errors="replace") if head.count(b" ") >= 2 else "none"
    if not head:
        return False, took, "closed without a response"
    if status != "200":
        return False, took, f"status {status}"
    if got != want_len or sha.hexdigest() != want_sha:
        return False, took, f"wrong body ({got:,} of {want_len:,} bytes)"
    return True, took, ""


def normal_small(port: int, cap: float = NORMAL_CAP) -> tuple[bool, float, str]:
    return fetch(port, "/a.txt", cap, len(SMALL), hashlib.sha256(SMALL).hexdigest())


def summarize_normal(results: list[tuple[bool, float, str]]) -> str:
    ok = [t for served, t, _ in results if served]
    text = f"**{len(ok)}/{len(results)}** served"
    if ok:
        text += f" (slowest {max(ok) * 1000:.0f} ms)" if max(ok) < 1 else f" (slowest {max(ok):.1f} s)"
    fails = collections.Counter(why for served, _, why in results if not served)
    if fails:
        text += "; " + ", ".join(f"{n}× {why}" for why, n in fails.items())
    return text


class Crowd:
    """Attacking connections, all non-blocking after their opening bytes.
    `tick` is called once a second (by `pace`) with the live sockets; a
    socket the server closed (or answered) is dropped and closed."""

    def __init__(self, port: int):
        self.port = port
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        self.opened = self.refused = self.dropped = 0

    def open(self, n: int, first_bytes: bytes) -> None:
        for _ in range(n):
            try:
                s = socket.create_connection((HOST, self.port), timeout=2)
                s.sendall(first_bytes)
                s.setblocking(False)
            except OSError:
                self.refused += 1
                continue
            with self.lock:
                self.socks.append(s)
                self.opened += 1

    def prune(self) -> None:
        """Drop sockets the server has answered, closed or reset (readable)."""
        with self.lock:
            poller = select.poll()
            by_fd = {s.fileno(): s for s in self.socks}
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            gone = {fd for fd, _ in poller.poll(0)}
            for fd in gone:
                by_fd[fd].close()
            self.dropped += len(gone)
            self.socks = [s for fd, s in by_fd.items() if fd not in gone]

    def trickle(self) -> None:
        """One more header byte on every connection the server still holds."""
        self.prune()
        with self.lock:
            keep = []
            for s in self.socks:
                try:
                    s.send(b"x")
                    keep.append(s)
                except BlockingIOError:
                    keep.append(s)
                except OSError:
                    s.close()
                    self.dropped += 1
            self.socks = keep

    def live(self) -> int:
        with self.lock:
            return len(self.socks)

    def close(self) -> None:
        with self.lock:
            for s in self.socks:
                s.close()
            self.socks = []


def pace(action, every: float = 1.0) -> tuple[threading.Thread, threading.Event]:
    """Run action() every `every` seconds in a thread until the event is set."""
    halt = threading.Event()

    def loop():
        while not halt.wait(every):
            action()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t, halt


# ------------------------------------------------------------------ servers


class Servers:
    """Starts flash and nginx with the settings of a scenario; everything
    started is stopped by `stop_all` (also at exit)."""

    def __init__(self, tmp: str, docroot: str, bin_dir: str):
        self.tmp, self.docroot, self.bin_dir = tmp, docroot, bin_dir
        self.live: list[B.Server] = []
        self.configs: dict[str, str] = {}
        self.cmdlines: dict[str, str] = {}

    def flash(self, label: str, args: list[str], nofile: int | None = None) -> B.Server:
        exe = os.path.join(self.bin_dir, "flash-server")
        limit = ["prlimit", f"--nofile={nofile}:{nofile}"] if nofile else []
        cmd = ["taskset", "-c", SERVER_CPU, *limit, exe, self.docroot, "--listen", f"{HOST}:0", *args]
        return self._start(B.Server(label, cmd, self.tmp, port=None))

    def nginx(self, label: str, connections: int, nofile: int | None = None) -> B.Server:
        d = os.path.join(self.tmp, label)
        os.makedirs(d, exist_ok=True)
        port = B.free_port()
        rlimit = f"worker_rlimit_nofile {nofile};\n" if nofile else ""
        temps = "".join(f"    {k}_temp_path {d}/{k}_temp;\n"
                        for k in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
        conf = f"""# written by bench/attacks.py: nginx defaults except the lines below
# (master + 1 worker; the worker runs as nobody, as nginx started by root does)
user nobody nogroup;
worker_processes 1;
{rlimit}daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections {connections};
}}

http {{
    default_type application/octet-stream;
    sendfile on;
    access_log off;
{temps}
    server {{
        listen {HOST}:{port};
        root {self.docroot};
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.configs[label] = conf
        limit = ["prlimit", f"--nofile={nofile}:{nofile}"] if nofile else []
        cmd = ["taskset", "-c", SERVER_CPU, *limit, "nginx", "-p", d + "/", "-c", path, "-e", f"{d}/error.log"]
        return self._start(B.Server(label, cmd, self.tmp, port=port, config_files=[path]))

    def _start(self, s: B.Server) -> B.Server:
        self.live.append(s)
        self.cmdlines[s.name] = " ".join(s.cmd)
        if not s.start():
            raise RuntimeError(f"{s.name} did not start: {s.missing_reason}")
        # serve once before the attack (also warms caches and the page cache)
        served, _, why = normal_small(s.port)
        if not served:
            raise RuntimeError(f"{s.name} does not serve /a.txt before the attack: {why}")
        return s

    def stop(self, s: B.Server) -> None:
        s.stop()
        if s in self.live:
            self.live.remove(s)

    def stop_all(self) -> None:
        for s in list(self.live):
            try:
                self.stop(s)
            except Exception as e:  # cleanup must go on
                log(f"stopping {s.name}: {e}")


def log_lines(s: B.Server, *needles: str) -> list[str]:
    try:
        with open(s.err_log, errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    err = os.path.join(s.tmp, s.name, "error.log")  # nginx's own log
    if os.path.exists(err):
        with open(err, errors="replace") as f:
            text += f.read()
    return [l for l in text.splitlines() if any(n in l for n in needles)]


def wait_tcp_mem_settles(baseline_kib: int, cap: float = 30.0) -> None:
    """Between runs: let the kernel free the sockets of the last one."""
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline and tcp_mem_kib() > baseline_kib + 16 * 1024:
        time.sleep(0.5)


# ------------------------------------------------------------------ scenarios

Row = dict  # scenario, server, setting, normal, figures


def slowloris(servers: Servers, label: str, start, setting: str, attackers: int, scenario: str) -> Row:
    """Tricklers: a partial head, then a byte a second; normal clients one
    after another, attackers/10 more arriving before each."""
    s = start()
    head = b"GET /a.txt HTTP/1.1\r\nHost: t\r\nX-Slow: "
    crowd = Crowd(s.port)
    peaks = Peaks(s)
    peaks.start()
    try:
        crowd.open(attackers, head)
        _, halt = pace(crowd.trickle)
        time.sleep(2)
        held_at_start = crowd.live()
        results = []
        for _ in range(NORMAL_CLIENTS):
            results.append(normal_small(s.port))
            crowd.open(attackers // 10, head)
            time.sleep(1)
        halt.set()
        states = server_side_states(s.port)
        crowd.prune()
        figures = (f"{crowd.opened:,} attackers connected ({crowd.refused} refused), "
                   f"{held_at_start} still open 2 s in, {crowd.live()} at the end; "
                   f"server: peak {peaks.fds} fds in the serving process, "
                   f"{states.get('ESTABLISHED', 0)} ESTABLISHED on the port at the end (accept queue included)")
    finally:
        crowd.close()
        peaks.stop()
        servers.stop(s)
    notes = log_lines(s, "descriptor limit", "connection limit", "worker_connections", "Too many open files")
    if notes:
        figures += f"; log: `{notes[0].strip()[-110:]}`" + (f" (+{len(notes) - 1} similar)" if len(notes) > 1 else "")
    return dict(scenario=scenario, server=label, setting=setting, normal=summarize_normal(results), figures=figures)


def slow_readers(servers: Servers, label: str, start, setting: str, checkpoints: list[float],
                 big_sha: str, attackers: int = 1000) -> Row:
    """1,000 clients ask for the 64 MB file and read a byte a second; a
    client whose connection the server ended (reset: CLOSE; FIN: CLOSE_WAIT)
    closes its socket, as a real one would."""
    baseline = tcp_mem_kib()
    s = start()
    crowd = Crowd(s.port)
    peaks = Peaks(s)
    peaks.start()
    samples, download = [], {}
    released_at = freed_at = None
    try:
        t0 = time.monotonic()
        crowd.open(attackers, b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        connected_after = time.monotonic() - t0

        def read_a_byte_each():
            with crowd.lock:
                keep = []
                for sock in crowd.socks:
                    if tcp_state(sock) != 1:  # the server cut it off
                        sock.close()
                        crowd.dropped += 1
                        continue
                    try:
                        sock.recv(1)
                    except BlockingIOError:
                        pass
                    except OSError:
                        sock.close()
                        crowd.dropped += 1
                        continue
                    keep.append(sock)
                crowd.socks = keep

        _, halt = pace(read_a_byte_each)

        def normal_download():
            download["result"] = fetch(s.port, "/big.bin", 60.0, BIG_LEN, big_sha)

        dl = threading.Thread(target=normal_download, daemon=True)
        dl_started = False
        # polled each second: when the server's connections and the kernel's memory are released
        next_poll = 1.0
        for cp in checkpoints:
            while (now := time.monotonic() - t0) < cp:
                if not dl_started and now >= 5:
                    dl.start()
                    dl_started = True
                if now >= next_poll:
                    next_poll += 1.0
                    if released_at is None and server_side_states(s.port).get("ESTABLISHED", 0) <= 5:
                        released_at = now
                    if freed_at is None and tcp_mem_kib() < baseline + 64 * 1024:
                        freed_at = now
                time.sleep(0.05)
            states = server_side_states(s.port)
            samples.append((cp, states, tcp_mem_kib(), crowd.live()))
            log(f"{label} t={cp:.0f}s: server-side {dict(states)}, TCP mem {samples[-1][2] / 1024:.0f} MiB, "
                f"attackers open {crowd.live()}")
        halt.set()
        dl.join(timeout=65)
    finally:
        crowd.close()
        peaks.stop()
        servers.stop(s)
    wait_tcp_mem_settles(baseline)
    served, took, why = download.get("result", (False, 0.0, "not run"))
    normal = f"64 MB download at t=5 s: **{'OK' if served else 'FAILED'}** in {took:.1f} s" + (f" ({why})" if why else "")
    parts = []
    for cp, states, mem, live in samples:
        others = ", ".join(f"{n} {k}" for k, n in sorted(states.items()) if k not in ("ESTABLISHED", "tx_bytes"))
        parts.append(f"t={cp:.0f} s: **{states.get('ESTABLISHED', 0)}** ESTABLISHED"
                     + (f" ({others})" if others else "")
                     + f", server send queues {states['tx_bytes'] / 2**20:,.0f} MiB, TCP mem **{mem / 1024:,.0f} MiB**")
    end = f"t={checkpoints[-1]:.0f} s"
    released = (f"released (≤ 5 ESTABLISHED) at t≈{released_at:.0f} s" if released_at is not None
                else f"**not released by {end}**")
    freed = (f"TCP mem back under before + 64 MiB at t≈{freed_at:.0f} s" if freed_at is not None
             else f"**TCP mem not back by {end}**")
    figures = (f"{crowd.opened} readers connected in {connected_after:.1f} s; TCP mem before "
               f"{baseline / 1024:.0f} MiB; " + "; ".join(parts)
               + f"; {released}; {freed}")
    figures += f"; serving process peak RSS {peaks.rss / 1024:.0f} MiB, {peaks.fds} fds"
    return dict(scenario="slow readers, 1,000 × 64 MB", server=label, setting=setting, normal=normal, figures=figures)


def tcp_state(sock: socket.socket) -> int:
    """tcpi_state of TCP_INFO: 1 ESTABLISHED; a reset moves it to CLOSE (7),
    a FIN to CLOSE_WAIT (8), even while received bytes wait to be read."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except OSError:
        return 0


def big_heads(servers: Servers, label: str, start, setting: str, attackers: int = 1000) -> Row:
    """Each connection sends 15 KiB of head and stops before its end."""
    pad = "a" * (1024 - len("X-Pad-00: \r\n"))
    head = ("GET /a.txt HTTP/1.1\r\nHost: t\r\n"
            + "".join(f"X-Pad-{i:02d}: {pad}\r\n" for i in range(15))).encode()
    assert 15 * 1024 <= len(head) < 16 * 1024 - 100
    s = start()
    crowd = Crowd(s.port)
    peaks = Peaks(s)
    peaks.start()
    try:
        crowd.open(attackers, head)
        time.sleep(2)
        peaks.sample()
        held = crowd.live()
        results = [normal_small(s.port) for _ in range(NORMAL_CLIENTS)]
        crowd.prune()
        states = server_side_states(s.port)
    finally:
        crowd.close()
        peaks.stop()
        servers.stop(s)
    per_conn = (peaks.rss - peaks.base_rss) * 1024 / max(held, 1)
    figures = (f"{crowd.opened:,} heads of {len(head):,} B sent ({crowd.refused} refused), {held} open 2 s in, "
               f"{states.get('ESTABLISHED', 0)} ESTABLISHED after the normal clients; serving process RSS "
               f"{peaks.base_rss / 1024:.1f} → **{peaks.rss / 1024:.1f} MiB** (≈{per_conn / 1024:.1f} KiB per "
               f"held connection), whole tree {peaks.base_tree_rss / 1024:.1f} → {peaks.tree_rss / 1024:.1f} MiB")
    return dict(scenario="1,000 × 15 KiB unfinished heads", server=label, setting=setting,
                normal=summarize_normal(results), figures=figures)


def pipeline_flood(servers: Servers, label: str, start, setting: str, requests: int = 100_000) -> Row:
    """One connection writes `requests` pipelined GETs without reading for
    5 s (a normal client each second meanwhile), then reads (30 s cap)."""
    one = b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n"
    data = memoryview(one * requests)
    s = start()
    peaks = Peaks(s)
    peaks.start()
    sent = responses = 0
    closed = False
    mem_before = tcp_mem_kib()
    results = []
    try:
        flood = socket.create_connection((HOST, s.port), timeout=5)
        flood.setblocking(False)
        t0 = time.monotonic()
        next_normal = t0 + 1
        while time.monotonic() - t0 < 5:  # write only
            if sent < len(data):
                try:
                    sent += flood.send(data[sent : sent + (1 << 20)])
                except BlockingIOError:
                    select.select([], [flood], [], 0.05)
            else:
                time.sleep(0.05)
            if time.monotonic() >= next_normal and len(results) < NORMAL_CLIENTS:
                results.append(normal_small(s.port))
                next_normal += 1
        sent_unread = sent
        mem_unread = tcp_mem_kib()
        peaks.sample()
        rss_unread = peaks.rss
        tail, deadline = b"", time.monotonic() + 30
        while responses < requests and time.monotonic() < deadline:  # read (and write the rest)
            want_write = [flood] if sent < len(data) else []
            r, w, _ = select.select([flood], want_write, [], 0.5)
            if w:
                try:
                    sent += flood.send(data[sent : sent + (1 << 20)])
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
            if r:
                try:
                    chunk = flood.recv(1 << 20)
                except OSError:
                    chunk = b""
                if not chunk:
                    closed = True
                    break
                buf = tail + chunk
                responses += buf.count(b"HTTP/1.1 200")
                tail = buf[-11:]  # a status line split over two reads counts once
        flood.close()
    finally:
        peaks.stop()
        servers.stop(s)
    figures = (f"{sent_unread / len(one):,.0f} of {requests:,} requests written in the 5 s without reading; "
               f"then **{responses:,}** responses read"
               + (" before the server closed the connection" if closed else
                  (" (all)" if responses >= requests else " in 30 s"))
               + f"; serving process RSS {peaks.base_rss / 1024:.1f} MiB → {rss_unread / 1024:.1f} MiB at 5 s"
               f" → peak **{peaks.rss / 1024:.1f} MiB**; kernel TCP mem {mem_before / 1024:.0f} → "
               f"{mem_unread / 1024:.0f} MiB at 5 s (the unread requests and responses wait in socket buffers)")
    return dict(scenario="pipelined flood, 100,000 GETs", server=label, setting=setting,
                normal=summarize_normal(results), figures=figures)


# ------------------------------------------------------------------ main

SCENARIOS = ["slowloris-256", "slowloris-200", "slow-readers", "big-heads", "pipeline"]


def plan(a, servers: Servers, big_sha: str) -> list[tuple]:
    """(scenario, server, settings, start the server, run the attack) for
    every run, in order; filtered by --scenarios and --servers."""
    F, N = servers.flash, servers.nginx
    loris256 = partial(slowloris, servers, attackers=400, scenario="slowloris, 256 fds, 400 tricklers")
    loris200 = partial(slowloris, servers, attackers=1000, scenario="slowloris, 200 connections, 1,000 tricklers")
    readers = partial(slow_readers, servers, checkpoints=a.checkpoints, big_sha=big_sha)
    heads = partial(big_heads, servers)
    flood = partial(pipeline_flood, servers)
    nginx_many = "`worker_connections 4096`"
    runs = [
        ("slowloris-256", "flash", "`prlimit --nofile=256`", partial(F, "flash", [], nofile=256), loris256),
        ("slowloris-256", "nginx", "`prlimit --nofile=256`, `worker_rlimit_nofile 256; worker_connections 256`",
         partial(N, "nginx-256", 256, nofile=256), loris256),
        ("slowloris-200", "flash", "`--max-connections 200`", partial(F, "flash", ["--max-connections", "200"]),
         loris200),
        ("slowloris-200", "nginx", "`worker_connections 200`", partial(N, "nginx-200", 200), loris200),
        ("slow-readers", "flash", "defaults (`--min-send-rate 1K/s --send-rate-window 20s`)",
         partial(F, "flash", []), readers),
        ("slow-readers", "flash", "`--send-rate-window 2s`", partial(F, "flash", ["--send-rate-window", "2s"]),
         readers),
        ("slow-readers", "nginx", f"defaults (`send_timeout 60s`, `reset_timedout_connection off`), {nginx_many}",
         partial(N, "nginx-4096", 4096), readers),
        ("big-heads", "flash", "defaults (`--max-head-bytes 16K`, `--header-timeout 10s`)",
         partial(F, "flash", []), heads),
        ("big-heads", "nginx", f"defaults (`large_client_header_buffers 4 8k`, `client_header_timeout 60s`), "
         f"{nginx_many}", partial(N, "nginx-4096", 4096), heads),
        ("pipeline", "flash", "defaults", partial(F, "flash", []), flood),
        ("pipeline", "nginx", f"defaults (`keepalive_requests 1000`), {nginx_many}",
         partial(N, "nginx-4096", 4096), flood),
    ]
    if not a.window_2s:
        runs = [r for r in runs if "--send-rate-window 2s" not in r[2]]
    return [r for r in runs if r[0] in a.scenarios and r[1] in a.servers]


def run(a, servers: Servers, big_sha: str) -> list[Row]:
    rows = []
    for scenario, label, setting, start, attack in plan(a, servers, big_sha):
        log(f"--- {scenario} / {label}: {setting}")
        try:
            rows.append(attack(label, start, setting))
        except Exception as e:  # one failed run must not lose the others
            log(f"{label}: FAILED: {e}")
            rows.append(dict(scenario=scenario, server=label, setting=setting, normal="—",
                             figures=f"run failed: {e}"))
        log(f"{rows[-1]['scenario']} / {label}: {rows[-1]['normal']} | {rows[-1]['figures']}")
    return rows


LEGEND = """\
Normal clients: served = status 200 and the exact body within the cap. \
ESTABLISHED: server-side sockets on the server's port in /proc/net/tcp (the \
accept queue included; a socket the server closed but the kernel still holds \
shows in its own state, e.g. FIN_WAIT1); server send queues: the sum of their \
tx_queue (bytes sent or queued, not yet acknowledged). TCP mem: /proc/net/sockstat "mem" \
pages × 4 KiB, machine-wide, both ends of loopback (the attackers' receive \
buffers count too); the kernel caps it at tcp_mem max = {tcp_mem_max_mib:,} MiB \
here. RSS: VmRSS of the serving process (flash: the main process; nginx: its \
worker), peak of samples every 0.2 s; "whole tree" adds flash's helpers / \
nginx's master."""


def tcp_mem_limit_kib() -> int:
    with open("/proc/sys/net/ipv4/tcp_mem") as f:
        return int(f.read().split()[2]) * 4


def table(rows: list[Row]) -> str:
    out = ["| scenario | server | settings | normal clients meanwhile | figures |", "|---|---|---|---|---|"]
    last = None
    for r in rows:
        scenario = r["scenario"] if r["scenario"] != last else ""
        last = r["scenario"]
        out.append(f"| {scenario} | {r['server']} | {r['setting']} | {r['normal']} | {r['figures']} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of " + ",".join(SCENARIOS))
    ap.add_argument("--servers", default="flash,nginx", help="comma list of flash,nginx")
    ap.add_argument("--checkpoints", default="10,30,70",
                    help="slow readers: seconds after the attack starts to sample (10,30,70; e.g. 10,30 is shorter)")
    ap.add_argument("--no-window-2s", dest="window_2s", action="store_false",
                    help="skip the slow-readers run of flash with --send-rate-window 2s")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    ap.add_argument("--flash-bin-dir", default=os.environ.get("FLASH_BIN_DIR", ""),
                    help="dir with flash-server/flash-helper (default: target/release)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (docroot, configs, logs)")
    a = ap.parse_args()
    a.scenarios = [x.strip() for x in a.scenarios.split(",") if x.strip()]
    a.servers = [x.strip() for x in a.servers.split(",") if x.strip()]
    a.checkpoints = sorted(float(x) for x in a.checkpoints.split(",") if x.strip())
    if any(x not in SCENARIOS for x in a.scenarios) or any(x not in ("flash", "nginx") for x in a.servers):
        ap.error("unknown scenario or server")
    if not a.checkpoints or a.checkpoints[0] < 6:
        ap.error("checkpoints must be >= 6 s (the normal download starts at 5 s)")
    for tool in ["taskset", "prlimit"] + (["nginx"] if "nginx" in a.servers else []):
        if not shutil.which(tool):
            log(f"missing {tool!r} (apt-get install -y nginx-light util-linux)")
            return 2
    if "nginx" in a.servers and os.geteuid() != 0:
        log("nginx runs with `user nobody nogroup`, which needs root")
        return 2

    t_start = time.monotonic()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4096
    if hard < need:
        log(f"RLIMIT_NOFILE hard limit {hard} < {need}: raise it (ulimit -Hn)")
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    try:
        os.sched_setaffinity(0, {int(CLIENT_CPU)})
    except OSError as e:
        log(f"cannot pin this script to CPU {CLIENT_CPU}: {e}")

    bin_dir = a.flash_bin_dir or os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(B.REPO, "target"),
                                              "release")
    if "flash" in a.servers and not a.no_build:
        why = B.build_flash(300)
        if why:
            log(why)
            return 1

    tmp = tempfile.mkdtemp(prefix="flash-attacks-")
    os.chmod(tmp, 0o755)  # nginx's worker (nobody) reads the docroot
    docroot = os.path.join(tmp, "docroot")
    os.mkdir(docroot, 0o755)
    with open(os.path.join(docroot, "a.txt"), "wb") as f:
        f.write(SMALL)
    big = random.Random(64).randbytes(BIG_LEN)
    big_sha = hashlib.sha256(big).hexdigest()
    with open(os.path.join(docroot, "big.bin"), "wb") as f:
        f.write(big)
    del big
    for name in os.listdir(docroot):
        os.chmod(os.path.join(docroot, name), 0o644)
    servers = Servers(tmp, docroot, bin_dir)

    def cleanup():
        servers.stop_all()
        if not a.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _f: sys.exit(128 + signum))

    rows = run(a, servers, big_sha)

    print()
    print(f"# Attacks: flash vs nginx ({time.strftime('%Y-%m-%d %H:%M')}, {time.monotonic() - t_start:.0f} s)")
    print()
    versions = [B.cmd_out(["uname", "-r"])] + ([B.cmd_out(["nginx", "-v"])] if "nginx" in a.servers else [])
    print(f"Machine: {os.cpu_count()} CPUs, {', '.join(versions)}; load average "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])}; server on CPU {SERVER_CPU}, clients on CPU "
          f"{CLIENT_CPU}; normal clients: `GET /a.txt` ({len(SMALL)} B), {NORMAL_CAP:.0f} s cap each.")
    print()
    print(table(rows))
    print()
    print(LEGEND.format(tcp_mem_max_mib=tcp_mem_limit_kib() // 1024))
    print()
    print("Commands:")
    for label, cmd in servers.cmdlines.items():
        print(f"- {label}: `{cmd}`")
    for label, conf in servers.configs.items():
        print(f"\n{label} config:\n```nginx\n{conf}```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
