#!/usr/bin/env python3
"""Side-by-side static-file benchmark: flash (AMPED, SPED) vs nginx vs lighttpd.

Every server runs with ONE worker pinned to one CPU; wrk runs pinned to another
CPU (--mode sizes, the default).  --mode workers runs each server with 1 and 2
workers on all CPUs, wrk niced on all CPUs; --mode access-log compares flash
and nginx with the access log on and off.  For each file size and each run the servers are measured one after the
other (interleaved), so background load drifts affect all of them alike, and
the numbers are reported as medians and as ratios flash / best peer.

Server CPU time per request is taken from the scheduler: the sum, over the
server's whole process tree (main pid, every descendant, every thread), of the
first field of /proc/PID/task/TID/schedstat (ns spent on a CPU), after the wrk
run minus before, divided by the number of requests wrk completed.

See bench/README.md.  Invoked by bench/run.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import filecmp
import glob
import os
import platform
import re
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)

KiB = 1024
MiB = 1024 * 1024
DEFAULT_SIZES = [0, 1 * KiB, 4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB]
ALL_SERVERS = ["nginx", "lighttpd", "flash-amped", "flash-sped"]
PEERS = ["nginx", "lighttpd"]
FLASH = ["flash-amped", "flash-sped"]

START_TIMEOUT = 15.0  # seconds for a server to accept connections
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def size_name(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= KiB and n % KiB == 0:
        return f"{n // KiB} KiB"
    return f"{n} B"


def file_name(n: int) -> str:
    return "f_" + size_name(n).replace(" ", "")  # f_0B, f_1KiB, ...


def parse_size(s: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*(B|K|KiB|KB|k|M|MiB|MB|m)?\s*", s)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r}")
    n = int(m.group(1))
    unit = (m.group(2) or "B").upper()
    return n * (MiB if unit.startswith("M") else KiB if unit.startswith("K") else 1)


# ---------------------------------------------------------------- processes


def proc_children_map() -> dict[int, list[int]]:
    """ppid -> [pid] for every process currently visible in /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2 :].split()
        ppid = int(rest[1])
        children.setdefault(ppid, []).append(int(d))
    return children


def process_tree(root: int) -> list[int]:
    """root and all its descendants (that are still alive)."""
    children = proc_children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        if not os.path.exists(f"/proc/{p}"):
            continue
        out.append(p)
        todo.extend(children.get(p, []))
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot(root: int) -> dict:
    """CPU ns of the process tree of root.

    ("t", pid, tid) -> schedstat ns of each live thread (the primary measure);
    ("p", pid) -> utime+stime of each process in ns, from /proc/PID/stat, which
    also includes threads that have exited (1/CLK_TCK resolution).
    """
    snap: dict = {}
    for pid in process_tree(root):
        for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
            tid = int(path.split("/")[4])
            try:
                with open(path) as f:
                    fields = f.read().split()
                snap[("t", pid, tid)] = int(fields[0])
                snap[("c", pid, tid)] = int(fields[2])  # times scheduled in (wake-ups)
            except (OSError, ValueError, IndexError):
                pass
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
            fields = st[st.rfind(")") + 2 :].split()
            snap[("p", pid)] = (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLK_TCK
        except (OSError, ValueError, IndexError):
            pass
    return snap


def cpu_delta_ns(before: dict, after: dict) -> tuple[int, str]:
    """(ns, source).  source "schedstat" normally; "stat" when threads exited
    during the run (their schedstat is gone, but /proc/PID/stat still counts
    them), detected as utime+stime exceeding the schedstat sum by > 5% + 20 ms.
    Threads/processes that appear during the run count from 0.  Processes
    that exit during the run are lost to both measures."""
    sched = sum(v - before.get(k, 0) for k, v in after.items() if k[0] == "t")
    stat = sum(v - before.get(k, 0) for k, v in after.items() if k[0] == "p")
    if stat > sched * 1.05 + 20_000_000:
        return stat, "stat"
    return sched, "schedstat"


def worker_of(root: int) -> dict[int, int]:
    """pid -> the child of root whose subtree it is in (a worker: flash's
    supervisor, nginx's master and lighttpd's watchdog fork one per worker;
    flash's helpers are children of their worker)."""
    children = proc_children_map()
    out: dict[int, int] = {}
    for c in children.get(root, []):
        todo = [c]
        while todo:
            p = todo.pop()
            if p in out:
                continue
            out[p] = c
            todo.extend(children.get(p, []))
    return out


def cpu_split(root: int, before: dict, after: dict) -> tuple[int, float | None, int]:
    """(ns of the root process itself, CPU share of the busiest worker subtree
    among all worker subtrees (None without workers), worker count) over a run."""
    groups = worker_of(root)
    root_ns = 0
    per: dict[int, int] = {}
    for k, v in after.items():
        if k[0] != "t":
            continue
        d = v - before.get(k, 0)
        if k[1] == root:
            root_ns += d
        elif k[1] in groups:
            per[groups[k[1]]] = per.get(groups[k[1]], 0) + d
    total = sum(per.values())
    share = max(per.values()) / total if total > 0 and len(per) > 1 else None
    return root_ns, share, len(per)


def signal_pids(pids, sig) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


# ------------------------------------------------------------------ servers


@dataclass
class Server:
    name: str
    cmd: list[str]
    tmp: str
    port: int | None = None  # None: read it from flash's "listening on" line
    config_files: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    known_pids: set = field(default_factory=set)
    missing_reason: str | None = None
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # base server, workers, access log (modes workers/access-log)
    _drain: threading.Thread | None = None

    @property
    def out_log(self) -> str:
        return os.path.join(self.tmp, f"{self.name}.stdout.log")

    @property
    def err_log(self) -> str:
        return os.path.join(self.tmp, f"{self.name}.stderr.log")

    def start(self) -> bool:
        log(f"starting {self.name}: {' '.join(self.cmd)}")
        stderr = open(self.err_log, "wb")
        reads_port = self.port is None
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if reads_port else open(self.out_log, "wb"),
                stderr=stderr,
                start_new_session=True,  # own process group: easy full cleanup
                preexec_fn=_die_with_parent,
                cwd=self.tmp,
            )
        except OSError as e:
            self.missing_reason = f"cannot execute: {e}"
            return False
        self.known_pids.add(self.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        if reads_port and not self._read_listening_line(deadline):
            self.stop()
            return False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.missing_reason = (
                    f"exited with code {self.proc.returncode} before accepting "
                    f"connections; stderr: {self.stderr_tail()}"
                )
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                self.known_pids.update(process_tree(self.proc.pid))
                log(f"{self.name} up on port {self.port}, pids {sorted(self.known_pids)}")
                return True
            except OSError:
                time.sleep(0.05)
        self.missing_reason = f"did not accept connections within {START_TIMEOUT:.0f}s"
        self.stop()
        return False

    def _read_listening_line(self, deadline: float) -> bool:
        fd = self.proc.stdout.fileno()
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:  # EOF: it exited (or closed stdout)
                    try:
                        self.proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        pass
                    break
                buf += chunk
                m = re.search(rb"listening on http://[^\s:]+:(\d+)", buf)
                if m:
                    self.port = int(m.group(1))
                    # keep draining stdout so the server never blocks on a full pipe
                    out = open(self.out_log, "wb")
                    out.write(buf)
                    self._drain = threading.Thread(
                        target=_drain_pipe, args=(self.proc.stdout, out), daemon=True
                    )
                    self._drain.start()
                    return True
            elif self.proc.poll() is not None:
                break
        rc = self.proc.poll()
        if rc is not None:
            self.missing_reason = (
                f"exited with code {rc} without printing 'listening on'; "
                f"stdout: {buf[-200:].decode(errors='replace')!r}; stderr: {self.stderr_tail()}"
            )
        else:
            self.missing_reason = f"no 'listening on' line within {START_TIMEOUT:.0f}s"
        return False

    def stderr_tail(self, n: int = 300) -> str:
        try:
            with open(self.err_log, "rb") as f:
                data = f.read()[-n:]
            return repr(data.decode(errors="replace").strip())
        except OSError:
            return "''"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        p = self.proc
        if p.poll() is None:
            tree = process_tree(p.pid)
            self.known_pids.update(tree)
            os.kill(p.pid, signal.SIGTERM)
            try:
                rc = p.wait(timeout=STOP_TIMEOUT)
                if rc != 0:
                    self.notes.append(f"exited with code {rc} on SIGTERM")
            except subprocess.TimeoutExpired:
                self.notes.append(f"did not exit within {STOP_TIMEOUT:.0f}s of SIGTERM; killed")
        # Anything of ours still around (main process, helpers re-parented
        # to init, the rest of the process group) gets SIGKILL.
        time.sleep(0.2)
        left = [q for q in self.known_pids if _is_alive_non_zombie(q)]
        if left and p.poll() is not None and any(q != p.pid for q in left):
            self.notes.append(f"left {len(left)} process(es) behind after exit: killed {sorted(left)}")
        signal_pids(left, signal.SIGKILL)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None


def _is_alive_non_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rfind(")") + 2] != "Z"
    except OSError:
        return False


def _drain_pipe(pipe, out) -> None:
    try:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            out.write(chunk)
            out.flush()
    except (OSError, ValueError):
        pass
    finally:
        out.close()


def _die_with_parent() -> None:
    """preexec_fn: get SIGTERM if bench.py dies, even by SIGKILL (survives exec)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


CURRENT_WRK: list = []  # the running wrk, killed by cleanup on a signal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_nginx(tmp: str, docroot: str, cpu: str, name: str = "nginx", workers: int | None = None,
               access_log: str | None = None) -> Server:
    """workers None: one process (master_process off), as in the size sweep;
    N: master + N workers (`listen ... reuseport`: a socket per worker, as
    flash's SO_REUSEPORT group).  access_log: None (off) or the text after
    `access_log` (e.g. "/path combined buffer=64k")."""
    d = os.path.join(tmp, name)
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    temps = "\n".join(
        f"    {k}_temp_path {d}/{k}_temp;"
        for k in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    )
    if workers is None:
        process_lines = "worker_processes 1;\nmaster_process off;"
    else:
        # root runs the workers as root too (`user` is ignored otherwise):
        # the docroot is in a 0700 temp dir.
        # worker_cpu_affinity auto: nginx pins its workers as flash's
        # --cpu-affinity auto does (nginx has no steering of connections
        # by CPU: its reuseport sockets are spread by the kernel's hash).
        process_lines = f"worker_processes {workers};\nmaster_process on;" + (
            "\nworker_cpu_affinity auto;" if workers > 1 else "") + (
            "\nuser root root;" if os.geteuid() == 0 else "")
    with open(conf, "w") as f:
        f.write(
            f"""# written by bench/bench.py
{process_lines}
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    access_log {access_log or "off"};
    keepalive_requests 1000000;
{temps}

    server {{
        listen 127.0.0.1:{port}{" reuseport" if workers else ""};
        root {docroot};
        location / {{ }}
    }}
}}
"""
        )
    cmd = ["taskset", "-c", cpu, "nginx", "-p", d + "/", "-c", conf, "-e", f"{d}/error.log"]
    return Server(name, cmd, tmp, port=port, config_files=[conf])


def make_lighttpd(tmp: str, docroot: str, cpu: str, name: str = "lighttpd",
                  workers: int | None = None) -> Server:
    """workers None: one process (the default); N: `server.max-worker = N`
    (a watchdog parent forks N workers that share the one listening socket)."""
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    port = free_port()
    conf = os.path.join(d, "lighttpd.conf")
    with open(conf, "w") as f:
        f.write(
            f"""# written by bench/bench.py -- lighttpd defaults except these
# (no server.max-keep-alive-requests etc.: the reference numbers use defaults;
# one process: server.max-worker defaults to 0)
server.document-root = "{docroot}"
server.bind = "127.0.0.1"
server.port = {port}
server.pid-file = "{d}/lighttpd.pid"
server.errorlog = "{d}/error.log"
"""
        )
        if workers is not None:
            f.write(f"server.max-worker = {workers}\n")
    cmd = ["taskset", "-c", cpu, "lighttpd", "-D", "-f", conf]
    return Server(name, cmd, tmp, port=port, config_files=[conf])


def make_flash(name: str, arch: str, tmp: str, docroot: str, cpu: str, bin_dir: str,
               helpers: int | None, extra: list[str], workers: int = 1) -> Server:
    """flash-server with `--workers N` (1 unless asked: its default "auto" is
    one worker per core, which would not be a one-worker comparison)."""
    exe = os.path.join(bin_dir, "flash-server")
    cmd = ["taskset", "-c", cpu, exe, docroot, "--listen", "127.0.0.1:0", "--arch", arch,
           "--workers", str(workers)]
    if helpers is not None and arch == "amped":
        cmd += ["--helpers", str(helpers)]
    cmd += extra
    s = Server(name, cmd, tmp, port=None)
    if not os.access(exe, os.X_OK):
        s.missing_reason = f"{exe} not found"
    return s


# ---------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int = 0
    req_s: float = 0.0
    non2xx: int = 0
    sock: dict = field(default_factory=dict)  # connect/read/write/timeout
    p50_us: float | None = None
    p99_us: float | None = None
    failed: str | None = None  # wrk itself failed

    @property
    def errors(self) -> int:
        return self.non2xx + sum(self.sock.values())

    def error_detail(self) -> str:
        parts = []
        if self.failed:
            parts.append(f"wrk failed: {self.failed}")
        if self.non2xx:
            parts.append(f"non-2xx/3xx {self.non2xx}")
        parts += [f"{k} {v}" for k, v in self.sock.items() if v]
        return "; ".join(parts)


def _lat_us(val: str, unit: str) -> float:
    return float(val) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[unit]


def parse_wrk(out: str) -> WrkResult:
    r = WrkResult()
    m = re.search(r"(\d+) requests in", out)
    if m:
        r.requests = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r.req_s = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        r.non2xx = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r.sock = dict(zip(["connect", "read", "write", "timeout"], map(int, m.groups())))
    for pct, attr in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            setattr(r, attr, _lat_us(*m.groups()))
    return r


def client_prefix(a, client_cpu: str) -> list[str]:
    """taskset (and nice, in --mode workers) in front of wrk."""
    cmd = ["taskset", "-c", client_cpu]
    if a.client_nice:
        cmd += ["nice", "-n", str(a.client_nice)]
    return cmd


def run_wrk(url: str, a, duration: int, client_cpu: str, threads: int | None = None) -> tuple[WrkResult, str]:
    cmd = client_prefix(a, client_cpu) + ["wrk", f"-t{threads or a.threads}", f"-c{a.connections}",
                                          f"-d{duration}s", "--latency", url]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    CURRENT_WRK.append(p)
    try:
        stdout, stderr = p.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return WrkResult(failed="wrk timed out"), ""
    finally:
        CURRENT_WRK.remove(p)
    out = stdout + stderr
    r = parse_wrk(out)
    if p.returncode != 0 and not r.failed:
        r.failed = f"exit {p.returncode}: {stderr.strip()[:200]}"
    if r.requests == 0 and not r.failed:
        r.failed = "no requests completed"
    return r, out


def verify(url: str, path: str, tmp: str) -> str | None:
    """None if the server returns status 200 and exactly the file's bytes."""
    dst = os.path.join(tmp, "verify.body")
    try:
        p = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "-o", dst, "-w", "%{http_code} %{size_download}", url],
            capture_output=True, text=True, timeout=20,
        )
    except subprocess.TimeoutExpired:
        return "curl timed out"
    if p.returncode != 0:
        return f"curl failed ({p.returncode}): {p.stderr.strip()[:200]}"
    code, got = p.stdout.split()
    want = os.path.getsize(path)
    if code != "200":
        return f"status {code}"
    if int(got) != want:
        return f"body is {got} bytes, expected {want}"
    if not filecmp.cmp(dst, path, shallow=False):
        return "body differs from the file"
    return None


# ------------------------------------------------------------------ helpers


def cmd_out(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not available"


def machine_description() -> list[str]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return [
        f"nproc: {os.cpu_count()}",
        f"CPU: {model}",
        f"kernel: {platform.system()} {platform.release()}",
        f"nginx: {cmd_out(['nginx', '-v'])}",
        f"lighttpd: {cmd_out(['lighttpd', '-v'])}",
        f"wrk: {cmd_out(['wrk', '-v'])}",
        f"load average at start (1/5/15 min): {load}",
    ]


def build_flash(timeout: int) -> str | None:
    """cargo build --release; None on success, else the reason."""
    log(f"building flash (cargo build --release, timeout {timeout}s)")
    try:
        p = subprocess.run(
            ["cargo", "build", "--release", "-p", "flash-server", "-p", "flash-helper"],
            cwd=REPO, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"cargo build timed out after {timeout}s"
    except OSError as e:
        return f"cannot run cargo: {e}"
    if p.returncode != 0:
        errs = [l for l in p.stderr.splitlines() if l.startswith("error")][:3]
        return f"cargo build failed: {' | '.join(errs) or p.stderr.strip()[-300:]}"
    return None


def median_or_none(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------- main


def main() -> int:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["sizes", "workers", "access-log"], default=env("BENCH_MODE", "sizes"),
                    help="sizes: one worker each, every size (the default); workers: each server with "
                         "--worker-counts workers, wrk niced on all CPUs (bench/run workers); access-log: "
                         "flash and nginx with the access log on and off, one worker (bench/run access-log)")
    ap.add_argument("--worker-counts", default=env("BENCH_WORKER_COUNTS", "1,2"),
                    help="--mode workers: worker counts to compare (1,2)")
    ap.add_argument("--cpu-layout", choices=["per-worker", "all"], default=env("BENCH_CPU_LAYOUT", "per-worker"),
                    help="--mode workers: per-worker: N workers on CPUs 0..N-1 and wrk (niced, -tN) on the same "
                         "N CPUs, so every worker shares its CPU with one wrk thread whatever N; all: every "
                         "server and wrk on all CPUs (--server-cpu/--client-cpu/--threads)")
    ap.add_argument("--client-nice", type=int, default=None,
                    help="run wrk under nice -n N (0; --mode workers 19)")
    ap.add_argument("--quick", action="store_true", help="smoke test: -d1s, 1 run, no warm-up")
    ap.add_argument("--duration", type=int, default=None, help="seconds per wrk run (4; quick 1; env BENCH_DURATION)")
    ap.add_argument("--connections", type=int, default=int(env("BENCH_CONNECTIONS", 64)), help="wrk -c (64)")
    ap.add_argument("--threads", type=int, default=int(env("BENCH_THREADS")) if env("BENCH_THREADS") else None,
                    help="wrk -t (1; --mode workers: the CPU count)")
    ap.add_argument("--runs", type=int, default=None, help="runs per server x size, median reported (3; quick 1; env BENCH_RUNS)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="seconds of unmeasured wrk load per server x size before the runs (1; quick 0; env BENCH_WARMUP)")
    ap.add_argument("--servers", default=env("BENCH_SERVERS"),
                    help="comma list of " + ",".join(ALL_SERVERS) + " (default all; --mode workers "
                         "nginx,lighttpd,flash-amped; --mode access-log nginx,flash-amped)")
    ap.add_argument("--sizes", default=env("BENCH_SIZES", ""),
                    help="comma list, e.g. 0,1K,64K,1M (default 0,1K,4K,16K,64K,256K,1M; "
                         "--mode workers 1K,64K; --mode access-log 1K)")
    ap.add_argument("--helpers", type=int, default=int(env("BENCH_HELPERS")) if env("BENCH_HELPERS") else None,
                    help="pass --helpers N to flash AMPED (default: flash's own default)")
    ap.add_argument("--flash-args", default=env("BENCH_FLASH_ARGS", ""),
                    help="extra arguments for both flash servers, e.g. '--log-level warn'")
    ap.add_argument("--server-cpu", default=env("BENCH_SERVER_CPU"),
                    help="taskset list for the servers (0; --mode workers: all CPUs)")
    ap.add_argument("--client-cpu", default=env("BENCH_CLIENT_CPU"),
                    help="taskset list for wrk (1; --mode workers: all CPUs)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--build-timeout", type=int, default=int(env("BENCH_BUILD_TIMEOUT", 300)))
    ap.add_argument("--flash-bin-dir", default=env("FLASH_BIN_DIR", ""),
                    help="dir with flash-server/flash-helper (default: $CARGO_TARGET_DIR or target, /release)")
    ap.add_argument("--max-time", type=int, default=int(env("BENCH_MAX_TIME", 780)),
                    help="stop measuring after this many seconds (partial results are still written)")
    ap.add_argument("--out", default=env("BENCH_OUT"),
                    help="output dir (bench/out; --mode workers bench/out/workers; access-log bench/out/access-log)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, docroot)")
    a = ap.parse_args()
    # explicit flag > environment > --quick default > normal default
    for attr, var, normal, quick in (("duration", "BENCH_DURATION", 4, 1), ("runs", "BENCH_RUNS", 3, 1),
                                     ("warmup", "BENCH_WARMUP", 1, 0)):
        if getattr(a, attr) is None:
            setattr(a, attr, int(env(var)) if env(var) else (quick if a.quick else normal))
    ncpu = os.cpu_count() or 1
    all_cpus = f"0-{ncpu - 1}"
    workers_mode = a.mode == "workers"
    if a.threads is None:
        a.threads = ncpu if workers_mode else 1
    if a.server_cpu is None:
        a.server_cpu = all_cpus if workers_mode else "0"
    if a.client_cpu is None:
        a.client_cpu = all_cpus if workers_mode else "1"
    if a.client_nice is None:
        a.client_nice = 19 if workers_mode else 0
    if a.servers is None:
        a.servers = {"workers": "nginx,lighttpd,flash-amped", "access-log": "nginx,flash-amped"}.get(
            a.mode, ",".join(ALL_SERVERS))
    if not a.sizes:
        a.sizes = {"workers": "1K,64K", "access-log": "1K"}.get(a.mode, "")
    if a.out is None:
        a.out = os.path.join(BENCH_DIR, "out", *([a.mode] if a.mode != "sizes" else []))
    worker_counts = [int(x) for x in a.worker_counts.split(",") if x.strip()]
    if workers_mode and a.cpu_layout == "per-worker" and max(worker_counts) > ncpu:
        ap.error(f"--cpu-layout per-worker needs --worker-counts <= {ncpu} (CPUs); use --cpu-layout all")
    if a.mode == "access-log" and any(x.strip() not in ("nginx", "flash-amped", "flash-sped")
                                      for x in a.servers.split(",") if x.strip()):
        ap.error("--mode access-log measures nginx and flash only")
    if a.duration < 1 or a.runs < 1 or a.connections < a.threads:
        ap.error("need --duration >= 1, --runs >= 1, --connections >= --threads")
    servers_wanted = [s.strip() for s in a.servers.split(",") if s.strip()]
    for s in servers_wanted:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}")
    sizes = [parse_size(s) for s in a.sizes.split(",")] if a.sizes else DEFAULT_SIZES
    t_start = time.monotonic()

    for tool in ["wrk", "taskset", "curl"] + [s for s in ("nginx", "lighttpd") if s in servers_wanted]:
        if not shutil.which(tool):
            log(f"missing tool {tool!r} (bench/run installs it)")
            return 2
    if not workers_mode and ((os.cpu_count() or 1) < 2 or a.server_cpu == a.client_cpu):
        log("WARNING: server and wrk share a CPU; numbers will be distorted")

    os.makedirs(a.out, exist_ok=True)
    machine = machine_description()
    notes: list[str] = []

    # --- flash build
    bin_dir = a.flash_bin_dir or os.path.join(env("CARGO_TARGET_DIR") or os.path.join(REPO, "target"), "release")
    flash_wanted = [s for s in servers_wanted if s in FLASH]
    if flash_wanted and not a.no_build:
        why = build_flash(a.build_timeout)
        if why:
            exe = os.path.join(bin_dir, "flash-server")
            if os.access(exe, os.X_OK):
                notes.append(f"flash build failed ({why}); measured the EXISTING binary {exe} "
                             f"built {time.ctime(os.path.getmtime(exe))}")
            else:
                notes.append(f"flash build failed: {why}")
            log(notes[-1])
    if flash_wanted:
        exe = os.path.join(bin_dir, "flash-server")
        if os.path.exists(exe):
            machine.append(f"flash-server: {exe} (built {time.ctime(os.path.getmtime(exe))})")

    tmp = tempfile.mkdtemp(prefix="flash-bench-")
    servers: list[Server] = []

    def cleanup() -> None:
        for w in list(CURRENT_WRK):
            try:
                w.kill()
                w.wait(timeout=5)
            except Exception:
                pass
        for s in servers:
            try:
                s.stop()
            except Exception as e:  # never leave processes behind
                log(f"cleanup of {s.name}: {e}")
        if not a.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping servers")
        sys.exit(128 + signum)  # runs atexit cleanup

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    # --- document root, warmed into the page cache
    docroot = os.path.join(tmp, "docroot")
    os.makedirs(docroot)
    files = {}
    for n in sizes:
        path = os.path.join(docroot, file_name(n))
        with open(path, "wb") as f:
            f.write(os.urandom(n))
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
        files[n] = path
    log(f"docroot {docroot}: {', '.join(os.path.basename(p) for p in files.values())}")

    # --- servers (variants: the servers in --mode sizes; server x workers in
    # --mode workers; server x access log on/off in --mode access-log)
    def factory(base: str, name: str, workers: int | None = None, log: str | None = None, cpu: str | None = None):
        extra = shlex.split(a.flash_args)
        cpu = cpu or a.server_cpu
        if base == "nginx":
            return lambda: make_nginx(tmp, docroot, cpu, name, workers, log)
        if base == "lighttpd":
            return lambda: make_lighttpd(tmp, docroot, cpu, name, workers)
        if log:
            extra += ["--access-log", log]
        return lambda: make_flash(name, base.split("-")[1], tmp, docroot, cpu, bin_dir, a.helpers,
                                  extra, workers or 1)

    variants = []  # (name, factory, meta)
    if a.mode == "sizes":
        variants = [(b, factory(b, b), {"base": b}) for b in servers_wanted]
    elif a.mode == "workers":
        for b in servers_wanted:
            for w in worker_counts:
                meta = {"base": b, "workers": w}
                cpu = None
                if a.cpu_layout == "per-worker":  # server and wrk on CPUs 0..w-1, wrk -tw
                    cpu = f"0-{w - 1}"
                    meta.update(server_cpu=cpu, client_cpu=cpu, threads=w)
                variants.append((f"{b}-w{w}", factory(b, f"{b}-w{w}", w, cpu=cpu), meta))
    else:  # access-log: off, on (combined, unbuffered), nginx also buffer=64k
        logdir = os.path.join(tmp, "logs")
        os.makedirs(logdir)
        for b in servers_wanted:
            variants.append((f"{b}-log-off", factory(b, f"{b}-log-off"), {"base": b, "log": "off"}))
            path = os.path.join(logdir, f"{b}-log-on.log")
            log_arg = path if b in FLASH else f"{path} combined"
            variants.append((f"{b}-log-on", factory(b, f"{b}-log-on", log=log_arg),
                             {"base": b, "log": "on", "path": path}))
            if b == "nginx":
                path = os.path.join(logdir, "nginx-log-buf64k.log")
                variants.append(("nginx-log-buf64k", factory(b, "nginx-log-buf64k", log=f"{path} combined buffer=64k"),
                                 {"base": b, "log": "buffer=64k", "path": path}))
    servers_wanted = [v[0] for v in variants]
    cfg_dir = os.path.join(a.out, "configs")
    shutil.rmtree(cfg_dir, ignore_errors=True)
    os.makedirs(cfg_dir)
    for name, make, meta in variants:
        s = make()
        s.meta = meta
        servers.append(s)
        if s.missing_reason is None:
            s.start()
        for c in s.config_files:
            shutil.copy(c, os.path.join(cfg_dir, f"{name}.{os.path.basename(c)}"
                                        if a.mode != "sizes" else os.path.basename(c)))
        with open(os.path.join(cfg_dir, f"{name}.cmdline"), "w") as f:
            f.write(" ".join(s.cmd) + "\n")
        if s.missing_reason:
            log(f"{name}: MISSING ({s.missing_reason})")

    # --- verify every file on every server (status 200, exact bytes)
    skip: dict[tuple[str, int], str] = {}
    for s in servers:
        if s.missing_reason:
            continue
        for n, path in files.items():
            err = verify(f"http://127.0.0.1:{s.port}/{os.path.basename(path)}", path, tmp)
            if err:
                skip[(s.name, n)] = f"verification failed: {err}"
                log(f"{s.name} {size_name(n)}: {skip[(s.name, n)]}")

    # --- measure, interleaving servers inside each (size, run)
    rows = []  # dicts for results.csv
    raw_dir = os.path.join(a.out, "wrk")
    shutil.rmtree(raw_dir, ignore_errors=True)
    os.makedirs(raw_dir)
    out_of_time = False
    served: dict[str, int] = {}  # responses wrk counted (warm-ups included), per server
    for n in sizes:
        fname = os.path.basename(files[n])
        active = [s for s in servers if not s.missing_reason and (s.name, n) not in skip]
        if a.warmup > 0:
            for s in active:
                r, _ = run_wrk(f"http://127.0.0.1:{s.port}/{fname}", a, a.warmup,
                               s.meta.get("client_cpu", a.client_cpu), s.meta.get("threads"))
                served[s.name] = served.get(s.name, 0) + r.requests
        for run in range(1, a.runs + 1):
            for s in active:
                if time.monotonic() - t_start > a.max_time:
                    out_of_time = True
                    break
                if not s.alive():
                    if not s.missing_reason:
                        s.missing_reason = f"died during the benchmark (exit {s.proc.returncode if s.proc else '?'}); stderr: {s.stderr_tail()}"
                        log(f"{s.name}: {s.missing_reason}")
                    continue
                url = f"http://127.0.0.1:{s.port}/{fname}"
                before = cpu_snapshot(s.proc.pid)
                r, out = run_wrk(url, a, a.duration, s.meta.get("client_cpu", a.client_cpu), s.meta.get("threads"))
                time.sleep(0.2)  # let the server finish closing the connections
                after = cpu_snapshot(s.proc.pid)
                cpu_ns, cpu_src = cpu_delta_ns(before, after)
                root_ns, busiest, nworkers = cpu_split(s.proc.pid, before, after)
                slices = sum(v - before.get(k, 0) for k, v in after.items() if k[0] == "c")
                per_req = cpu_ns / r.requests if r.requests else None
                served[s.name] = served.get(s.name, 0) + r.requests
                with open(os.path.join(raw_dir, f"{s.name}_{fname}_run{run}.txt"), "w") as f:
                    f.write(out)
                rows.append(dict(
                    server=s.name, size=n, run=run, req_s=None if r.failed else r.req_s,
                    cpu_ns_per_req=per_req, errors=r.errors + (1 if r.failed else 0),
                    requests=r.requests, cpu_ns_total=cpu_ns, cpu_source=cpu_src,
                    p50_us=r.p50_us, p99_us=r.p99_us, error_detail=r.error_detail(),
                    root_ns_per_req=root_ns / r.requests if r.requests else None,
                    busiest_worker_share=busiest, worker_procs=nworkers,
                    requests_per_slice=r.requests / slices if slices > 0 else None,
                ))
                flag = f"  ERRORS: {r.error_detail()}" if r.errors or r.failed else ""
                if cpu_src != "schedstat":
                    flag += "  (threads exited mid-run: CPU from /proc/PID/stat)"
                log(f"{s.name:12s} {size_name(n):>8s} run {run}: {r.req_s:10.0f} req/s  "
                    f"{(per_req or 0) / 1000:8.2f} us CPU/req{flag}")
            if out_of_time:
                break
        if out_of_time:
            notes.append(f"stopped early: --max-time {a.max_time}s reached (partial results)")
            log(notes[-1])
            break

    with open("/proc/loadavg") as f:
        machine.append(f"load average at end (1/5/15 min): {' '.join(f.read().split()[:3])}")

    # stop servers now (records exit codes / leftovers as notes)
    for s in servers:
        s.stop()
        for note in s.notes:
            notes.append(f"{s.name}: {note}")
    for s in servers:
        if s.missing_reason:
            notes.append(f"{s.name}: MISSING -- {s.missing_reason}")
    stat_rows = sorted({(r["server"], size_name(r["size"])) for r in rows if r["cpu_source"] != "schedstat"})
    if stat_rows:
        notes.append("threads exited during these runs, so their CPU was taken from /proc/PID/stat "
                     "utime+stime (10 ms resolution) instead of schedstat: "
                     + ", ".join(f"{a} {b}" for a, b in stat_rows))
    for (name, n), why in skip.items():
        notes.append(f"{name} {size_name(n)}: not measured, {why}")

    # access log: lines written vs responses counted by wrk (all logged: >= 1)
    log_lines: dict[str, int] = {}
    for s in servers:
        path = s.meta.get("path")
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                log_lines[s.name] = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    # --- outputs
    write_csv(os.path.join(a.out, "results.csv"), rows)
    if workers_mode and a.cpu_layout == "per-worker":
        settings = (f"N workers: servers under `taskset -c 0-(N-1)`, `{' '.join(client_prefix(a, '0-(N-1)'))} "
                    f"wrk -tN -c{a.connections} -d{a.duration}s --latency` (the same N CPUs), "
                    f"{a.runs} run(s) (median), warm-up {a.warmup}s")
    else:
        settings = (f"`{' '.join(client_prefix(a, a.client_cpu))} wrk -t{a.threads} -c{a.connections} "
                    f"-d{a.duration}s --latency`, {a.runs} run(s) (median), warm-up {a.warmup}s; "
                    f"servers under `taskset -c {a.server_cpu}`")
    missing = {s.name: s.missing_reason for s in servers}
    if a.mode == "workers":
        md = render_workers(rows, servers, sizes, worker_counts)
        title = "Workers: each server with " + " and ".join(map(str, worker_counts)) + " workers"
    elif a.mode == "access-log":
        md = render_access_log(rows, servers, sizes, log_lines, served)
        title = "Access log cost: on vs off, one worker"
    else:
        md = render_markdown(rows, servers_wanted, sizes, skip, missing)
        title = "flash vs nginx vs lighttpd"
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(f"# {title}\n\n")
        f.write(f"Run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {settings}.\n\n")
        f.write("Machine:\n\n" + "".join(f"- {m}\n" for m in machine) + "\n")
        f.write(md + "\n")
        if notes:
            f.write("\nNotes:\n\n" + "".join(f"- {x}\n" for x in notes))
        f.write("\nConfigs: see `configs/` next to this file; raw wrk output in `wrk/`.\n")
    with open(os.path.join(a.out, "machine.txt"), "w") as f:
        f.write("\n".join(machine) + "\n")
    try:
        if a.mode == "sizes":
            plot(os.path.join(a.out, "results.png"), rows, servers_wanted, sizes)
    except Exception as e:  # plotting must not lose the numbers
        notes.append(f"plot failed: {e}")
        log(notes[-1])

    print()
    print("Machine:")
    for m in machine:
        print(f"  {m}")
    print(f"Settings: {settings}")
    print()
    print(md)
    if notes:
        print("\nNotes:")
        for x in notes:
            print(f"  - {x}")
    png = ", results.png" if a.mode == "sizes" else ""
    print(f"\nWrote {a.out}/results.csv, results.md{png} (total {time.monotonic() - t_start:.0f}s)")
    return 0


def write_csv(path: str, rows: list[dict]) -> None:
    cols = ["server", "size", "run", "req_s", "cpu_ns_per_req", "errors",
            "requests", "cpu_ns_total", "cpu_source", "p50_us", "p99_us", "error_detail",
            "root_ns_per_req", "busiest_worker_share", "worker_procs", "requests_per_slice"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            r = dict(r)
            for k in ("req_s", "cpu_ns_per_req", "p50_us", "p99_us", "root_ns_per_req", "requests_per_slice"):
                if r[k] is not None:
                    r[k] = f"{r[k]:.1f}"
            w.writerow(r)


def summarize(rows, name, n):
    rs = [r for r in rows if r["server"] == name and r["size"] == n]
    if not rs:
        return None
    return dict(
        req_s=median_or_none([r["req_s"] for r in rs]),
        spread=(lambda xs: (max(xs) - min(xs)) / statistics.median(xs) * 100 if len(xs) > 1 and statistics.median(xs) else None)(
            [r["req_s"] for r in rs if r["req_s"] is not None]),
        cpu_us=(lambda m: m / 1000 if m is not None else None)(median_or_none([r["cpu_ns_per_req"] for r in rs])),
        errors=sum(r["errors"] for r in rs),
        detail="; ".join(f"run {r['run']}: {r['error_detail']}" for r in rs if r["errors"]),
    )


def render_markdown(rows, servers, sizes, skip, missing) -> str:
    lines = [
        "| size | server | req/s (median) | req/s spread | server CPU µs/req (median) "
        "| req/s vs best peer (higher better) | CPU/req vs best peer (lower better) | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for n in sizes:
        stats = {s: summarize(rows, s, n) for s in servers}
        peers = {p: stats[p] for p in PEERS if stats.get(p)}
        best_tput = max(peers.items(), key=lambda kv: kv[1]["req_s"] or 0, default=None)
        cpu_peers = [kv for kv in peers.items() if kv[1]["cpu_us"]]
        best_cpu = min(cpu_peers, key=lambda kv: kv[1]["cpu_us"], default=None)
        first = True
        for s in servers:
            st = stats[s]
            label = size_name(n) if first else ""
            first = False
            if st is None:
                why = skip.get((s, n)) or (missing.get(s) and "missing") or "not measured"
                lines.append(f"| {label} | {s} | — | | — | — | — | {why[:80]} |")
                continue
            tput = f"{st['req_s']:,.0f}" if st["req_s"] is not None else "—"
            cpu = f"{st['cpu_us']:.2f}" if st["cpu_us"] is not None else "—"
            rt = rc = ""
            if s in FLASH:
                if best_tput and best_tput[1]["req_s"] and st["req_s"] is not None:
                    rt = f"**{st['req_s'] / best_tput[1]['req_s']:.2f}×** ({best_tput[0]})"
                if best_cpu and st["cpu_us"] is not None:
                    rc = f"**{st['cpu_us'] / best_cpu[1]['cpu_us']:.2f}×** ({best_cpu[0]})"
            err = f"⚠ {st['errors']}: {st['detail'][:120]}" if st["errors"] else ""
            spread = f"±{st['spread'] / 2:.0f}%" if st["spread"] is not None else ""
            lines.append(f"| {label} | {s} | {tput} | {spread} | {cpu} | {rt} | {rc} | {err} |")
    return "\n".join(lines)


def _fmt(x, spec: str, none: str = "—") -> str:
    return format(x, spec) if x is not None else none


def _paired_ratio(rows, a_name, b_name, n, key="cpu_ns_per_req"):
    """Median over runs k of a's run k / b's run k (runs are interleaved, so
    run k of both saw the same background load)."""
    by = {(r["server"], r["run"]): r[key] for r in rows if r["size"] == n}
    xs = [by[(a_name, k)] / by[(b_name, k)] for (srv, k) in by
          if srv == a_name and by.get((b_name, k)) and by[(a_name, k)] is not None]
    return statistics.median(xs) if xs else None


def render_workers(rows, servers, sizes, counts) -> str:
    lines = [
        "| size | server | workers | req/s (median) | req/s spread | server CPU µs/req (median) "
        f"| CPU/req vs {counts[0]} worker(s) | req/s vs {counts[0]} worker(s) "
        "| flash CPU/req vs nginx | flash CPU/req vs lighttpd | busiest worker's CPU share "
        "| supervisor/master µs/req | requests per time slice | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_name = {s.name: s for s in servers}
    for n in sizes:
        first = True
        for s in servers:
            st = summarize(rows, s.name, n)
            label = size_name(n) if first else ""
            first = False
            base, w = s.meta["base"], s.meta["workers"]
            if st is None:
                lines.append(f"| {label} | {base} | {w} | — | | — | | | | | | | | {s.missing_reason or 'not measured'} |")
                continue
            ref = f"{base}-w{counts[0]}"
            ref_st = summarize(rows, ref, n) if ref in by_name else None
            rc = rt = ""
            if ref_st and w != counts[0] and ref_st["cpu_us"] and st["cpu_us"] is not None:
                rc = f"**{st['cpu_us'] / ref_st['cpu_us']:.2f}×**"
                rt = f"{st['req_s'] / ref_st['req_s']:.2f}×" if ref_st["req_s"] and st["req_s"] else ""
            vs = {}
            if base in FLASH:
                for peer in PEERS:
                    pst = summarize(rows, f"{peer}-w{w}", n)
                    if pst and pst["cpu_us"] and st["cpu_us"] is not None:
                        vs[peer] = f"**{st['cpu_us'] / pst['cpu_us']:.2f}×**"
            rs = [r for r in rows if r["server"] == s.name and r["size"] == n]
            share = median_or_none([r["busiest_worker_share"] for r in rs])
            root = median_or_none([r["root_ns_per_req"] for r in rs])
            rps = median_or_none([r["requests_per_slice"] for r in rs])
            err = f"⚠ {st['errors']}: {st['detail'][:120]}" if st["errors"] else ""
            lines.append(
                f"| {label} | {base} | {w} | {_fmt(st['req_s'], ',.0f')} | "
                f"{'±%.0f%%' % (st['spread'] / 2) if st['spread'] is not None else ''} | "
                f"{_fmt(st['cpu_us'], '.2f')} | {rc} | {rt} | {vs.get('nginx', '')} | {vs.get('lighttpd', '')} | "
                f"{'%.0f%%' % (share * 100) if share is not None else ''} | "
                f"{_fmt(root / 1000 if root is not None else None, '.3f', '')} | {_fmt(rps, '.1f', '')} | {err} |")
    return "\n".join(lines)


def render_access_log(rows, servers, sizes, log_lines, served) -> str:
    lines = [
        "| size | server | access log | req/s (median) | req/s spread | server CPU µs/req (median) "
        "| CPU/req vs off (medians) | CPU/req vs off (median of paired runs) | req/s vs off "
        "| log lines / responses | errors |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in sizes:
        first = True
        for s in servers:
            st = summarize(rows, s.name, n)
            label = size_name(n) if first else ""
            first = False
            base, mode = s.meta["base"], s.meta["log"]
            if st is None:
                lines.append(f"| {label} | {base} | {mode} | — | | — | | | | | {s.missing_reason or 'not measured'} |")
                continue
            off = f"{base}-log-off"
            off_st = summarize(rows, off, n)
            rc = rp = rt = ""
            if mode != "off" and off_st and off_st["cpu_us"] and st["cpu_us"] is not None:
                rc = f"**{(st['cpu_us'] / off_st['cpu_us'] - 1) * 100:+.1f}%**"
                pr = _paired_ratio(rows, s.name, off, n)
                rp = f"{(pr - 1) * 100:+.1f}%" if pr else ""
                rt = f"{st['req_s'] / off_st['req_s']:.2f}×" if off_st["req_s"] and st["req_s"] else ""
            ll = ""
            if s.name in log_lines and served.get(s.name):
                ll = f"{log_lines[s.name]:,} / {served[s.name]:,}"
            err = f"⚠ {st['errors']}: {st['detail'][:120]}" if st["errors"] else ""
            lines.append(
                f"| {label} | {base} | {mode} | {_fmt(st['req_s'], ',.0f')} | "
                f"{'±%.0f%%' % (st['spread'] / 2) if st['spread'] is not None else ''} | "
                f"{_fmt(st['cpu_us'], '.2f')} | {rc} | {rp} | {rt} | {ll} | {err} |")
    return "\n".join(lines)


def plot(path, rows, servers, sizes) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # log-x cannot show 0 B: draw it at 256 B and label the tick "0 B"
    xpos = {n: (n if n > 0 else 256) for n in sizes}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    styles = {"nginx": ("tab:green", "s"), "lighttpd": ("tab:orange", "^"),
              "flash-amped": ("tab:blue", "o"), "flash-sped": ("tab:purple", "D")}
    for s in servers:
        pts = [(xpos[n], summarize(rows, s, n)) for n in sizes]
        pts = [(x, st) for x, st in pts if st and st["req_s"] is not None]
        if not pts:
            continue
        color, marker = styles.get(s, (None, "o"))
        xs = [x for x, _ in pts]
        axes[0].plot(xs, [st["req_s"] for _, st in pts], marker=marker, color=color, label=s)
        cpts = [(x, st["cpu_us"]) for x, st in pts if st["cpu_us"] is not None]
        axes[1].plot([x for x, _ in cpts], [y for _, y in cpts], marker=marker, color=color, label=s)
    titles = ["Throughput (higher is better)", "Server CPU per request (lower is better)"]
    ylabels = ["requests/s (median)", "server CPU µs / request (median)"]
    for ax, t, yl in zip(axes, titles, ylabels):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([xpos[n] for n in sizes])
        ax.set_xticklabels([size_name(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("file size")
        ax.set_ylabel(yl)
        ax.set_title(t)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    fig.suptitle("flash vs nginx vs lighttpd — one worker each, pinned to one CPU; wrk on another")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
