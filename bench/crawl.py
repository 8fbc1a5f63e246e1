#!/usr/bin/env python3
"""Crawl benchmark: every request a different file, over a large site.

A document root of 200,000 distinct small files (200 dirs x 1,000 files,
100 B - 4 KiB, log-uniform) is crawled by wrk + bench/crawl.lua: one pass,
each file requested exactly once, by 1 client and by 64 clients, against
flash (AMPED, SPED), nginx and lighttpd in one run.  Each run starts a fresh
server (so per-file state such as caches, mappings and descriptors starts
empty and the peaks belong to that pass), pinned to one CPU; wrk and this
script run on another.  Reported per server and client count (median of the
runs): req/s, server CPU per request (schedstat over the process tree, as in
bench.py), and the peak mappings (/proc/PID/maps lines), descriptors
(/proc/PID/fd) and RSS (VmHWM) of the main serving process, sampled in the
background.  A server that dies mid-pass is reported as "died at N
requests"; every pass is bounded in time.

See bench/README.md ("Crawl benchmark").  Invoked as `bench/run crawl`.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import math
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (the side-by-side bench: servers, CPU accounting, wrk parsing)

BENCH_DIR = B.BENCH_DIR
LUA = os.path.join(BENCH_DIR, "crawl.lua")
ALL_SERVERS = B.ALL_SERVERS
PEERS = B.PEERS
FLASH = B.FLASH

log = B.log


# ------------------------------------------------------------------ docroot


def make_site(docroot: str, dirs: int, per_dir: int, lo: int, hi: int, seed: int) -> tuple[list[str], int]:
    """dirs x per_dir files d000/p0000.html ..., sizes log-uniform in [lo, hi].
    Each file starts with its own path (so a mix-up shows in verification),
    then bytes from a random pool.  Returns (url paths in crawl order, total
    bytes).  The crawl order is a fixed shuffle (seed): consecutive requests hit
    unrelated directories and files, as a crawler following links would."""
    rng = random.Random(seed)
    pool = rng.randbytes(1 << 20)
    dw, fw = len(str(dirs - 1)), max(4, len(str(per_dir - 1)))
    paths, total = [], 0
    lnlo, lnhi = math.log(lo), math.log(hi)
    now_ns = time.time_ns()
    for d in range(dirs):
        dname = f"d{d:0{dw}d}"
        os.mkdir(os.path.join(docroot, dname))
        for i in range(per_dir):
            url = f"/{dname}/p{i:0{fw}d}.html"
            size = int(round(math.exp(rng.uniform(lnlo, lnhi))))
            head = (url + "\n").encode()
            off = rng.randrange(0, len(pool) - hi)
            body = (head + pool[off : off + size])[:size]
            fd = os.open(docroot + url, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, body)
                # atime after mtime and ctime: with relatime the first read
                # does not update atime, so the passes cause no inode writeback
                os.utime(fd, ns=(now_ns + 60 * 10**9, now_ns))
            finally:
                os.close(fd)
            paths.append(url)
            total += len(body)
    rng.shuffle(paths)
    return paths, total


# ------------------------------------------------------------------ sampler


def count_lines(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    n = 0
    try:
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return n
            n += b.count(b"\n")
    except OSError:
        return None
    finally:
        os.close(fd)


def count_fds(pid: int) -> int | None:
    """Open descriptors of pid.  Linux >= 6.2 reports the count as the size
    of /proc/PID/fd (cheap); older kernels report 0 there: list the dir."""
    try:
        n = os.stat(f"/proc/{pid}/fd").st_size
        return n if n > 0 else len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def status_kib(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line[:5]] = int(line.split()[1])
    except OSError:
        pass
    return out


class Sampler(threading.Thread):
    """Peaks of mappings, fds and RSS of the main process (and sums over the
    process tree) every `interval` s.  Reading /proc/PID/maps costs the
    reader time proportional to the mapping count (~1 ms per 1,000 lines,
    and it holds the target's mmap lock for reading meanwhile), so the pause
    after a sample is stretched to keep the sampler busy at most `duty` of
    the time: with 65,000 mappings a sample takes ~70 ms and they come every
    ~0.3 s.  A last sample is taken when the pass ends."""

    def __init__(self, root: int, interval: float = 0.1, duty: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.interval, self.duty = root, interval, duty
        self.halt = threading.Event()
        self.pids = [root]
        self.tree_at = 0.0
        self.samples = 0
        self.max_gap = 0.0
        self.main = dict(maps=0, fds=0, rss=0, hwm=0)
        self.tree = dict(maps=0, fds=0, rss=0, procs=0)

    def sample(self) -> None:
        t = time.monotonic()
        if t - self.tree_at > 1.0:
            self.pids = B.process_tree(self.root) or [self.root]
            self.tree_at = t
        tm = tf = tr = 0
        procs = 0
        for pid in self.pids:
            maps = count_lines(f"/proc/{pid}/maps")
            fds = count_fds(pid)
            st = status_kib(pid)
            if maps is None and fds is None and not st:
                continue  # gone
            procs += 1
            tm += maps or 0
            tf += fds or 0
            tr += st.get("VmRSS", 0)
            if pid == self.root:
                m = self.main
                m["maps"] = max(m["maps"], maps or 0)
                m["fds"] = max(m["fds"], fds or 0)
                m["rss"] = max(m["rss"], st.get("VmRSS", 0))
                m["hwm"] = max(m["hwm"], st.get("VmHWM", 0))
        tr_ = self.tree
        tr_["maps"], tr_["fds"] = max(tr_["maps"], tm), max(tr_["fds"], tf)
        tr_["rss"], tr_["procs"] = max(tr_["rss"], tr), max(tr_["procs"], procs)
        self.samples += 1

    def run(self) -> None:
        last = time.monotonic()
        while not self.halt.is_set():
            t0 = time.monotonic()
            self.max_gap = max(self.max_gap, t0 - last)
            last = t0
            self.sample()
            cost = time.monotonic() - t0
            self.halt.wait(max(self.interval - cost, cost * (1 / self.duty - 1)))

    def finish(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        self.sample()  # a last one (VmHWM covers the whole life of the process)


# ---------------------------------------------------------------------- wrk


CURRENT_WRK: list = []


def parse_crawl_line(out: str) -> dict | None:
    m = re.search(r"^crawl: paths=(\d+) responses=(\d+) ok=(\d+) other=(\d+) elapsed_s=([\d.]+) complete=(\d)",
                  out, re.M)
    if not m:
        return None
    k = ["paths", "responses", "ok", "other", "elapsed_s", "complete"]
    return {a: (float(v) if a == "elapsed_s" else int(v)) for a, v in zip(k, m.groups())}


def run_crawl(server: B.Server, paths_file: str, conns: int, cap: int, client_cpu: str) -> dict:
    """One pass.  Returns wrk's parsed result, the crawl line, raw output and
    whether the server died (its main process exited) during the pass."""
    url = f"http://127.0.0.1:{server.port}"
    cmd = ["taskset", "-c", client_cpu, "wrk", "-t1", f"-c{conns}", f"-d{cap}s", "--latency",
           "-s", LUA, url, "--", paths_file]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, preexec_fn=B._die_with_parent)
    CURRENT_WRK.append(p)
    died = None  # seconds into the pass when the server's main process was seen gone
    t0 = time.monotonic()
    interrupted = killed = False
    res: dict = {}

    # Collect output in threads, watch the server meanwhile.
    bufs = {"out": [], "err": []}

    def reader(stream, key):
        for line in stream:
            bufs[key].append(line)

    rt = [threading.Thread(target=reader, args=(p.stdout, "out"), daemon=True),
          threading.Thread(target=reader, args=(p.stderr, "err"), daemon=True)]
    for t in rt:
        t.start()
    sigint_at = None
    while p.poll() is None:
        now = time.monotonic()
        if died is None and not server.alive():
            died = now - t0
            log(f"{server.name}: server exited during the crawl (code {server.proc.returncode}); stopping wrk")
        if (died is not None or now - t0 > cap + 15) and not interrupted:
            p.send_signal(signal.SIGINT)  # wrk prints its summary (and our crawl line) and exits
            interrupted, sigint_at = True, now
        if interrupted and now - sigint_at > 10 and not killed:
            p.kill()
            killed = True
        time.sleep(0.02)
    p.wait()
    for t in rt:
        t.join(timeout=5)
    CURRENT_WRK.remove(p)
    out = "".join(bufs["out"]) + "".join(bufs["err"])
    w = B.parse_wrk(out)
    if killed:
        w.failed = "wrk did not exit after SIGINT; killed"
    elif p.returncode != 0 and not w.failed:
        w.failed = f"exit {p.returncode}: {''.join(bufs['err']).strip()[:200]}"
    res.update(wrk=w, crawl=parse_crawl_line(out), out=out, died_after_s=died,
               wall_s=time.monotonic() - t0)
    return res


# ---------------------------------------------------------------------- main


def main() -> int:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 20 dirs x 1,000 files, 1 run")
    ap.add_argument("--dirs", type=int, default=None, help="directories (200; quick 20; env CRAWL_DIRS)")
    ap.add_argument("--files-per-dir", type=int, default=int(env("CRAWL_FILES_PER_DIR", 1000)),
                    help="files per directory (1000)")
    ap.add_argument("--min-size", type=lambda s: B.parse_size(s), default=B.parse_size(env("CRAWL_MIN_SIZE", "100")),
                    help="smallest file (100)")
    ap.add_argument("--max-size", type=lambda s: B.parse_size(s), default=B.parse_size(env("CRAWL_MAX_SIZE", "4K")),
                    help="largest file (4K); sizes are log-uniform in between")
    ap.add_argument("--seed", type=int, default=int(env("CRAWL_SEED", 1)), help="site and crawl order (1)")
    ap.add_argument("--clients", default=env("CRAWL_CLIENTS", "1,64"),
                    help="comma list of wrk connection counts (1,64); each gets its own passes")
    ap.add_argument("--runs", type=int, default=None, help="passes per server x clients, median reported (3; quick 1)")
    ap.add_argument("--pass-timeout", type=int, default=int(env("CRAWL_PASS_TIMEOUT", 60)),
                    help="wrk -d: a pass not finished by then is cut off and reported incomplete (60 s)")
    ap.add_argument("--servers", default=env("BENCH_SERVERS", ",".join(ALL_SERVERS)),
                    help="comma list of " + ",".join(ALL_SERVERS))
    ap.add_argument("--helpers", type=int, default=int(env("BENCH_HELPERS")) if env("BENCH_HELPERS") else None,
                    help="pass --helpers N to flash AMPED (default: flash's own default)")
    ap.add_argument("--flash-args", default=env("BENCH_FLASH_ARGS", ""),
                    help="extra arguments for both flash servers")
    ap.add_argument("--server-cpu", default=env("BENCH_SERVER_CPU", "0"))
    ap.add_argument("--client-cpu", default=env("BENCH_CLIENT_CPU", "1"),
                    help="CPU for wrk, and for this script (its resource sampler)")
    ap.add_argument("--sample-interval", type=float, default=float(env("CRAWL_SAMPLE_INTERVAL", 0.1)),
                    help="seconds between resource samples (0.1), stretched to keep the sampler <= 25%% busy")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--build-timeout", type=int, default=int(env("BENCH_BUILD_TIMEOUT", 300)))
    ap.add_argument("--flash-bin-dir", default=env("FLASH_BIN_DIR", ""),
                    help="dir with flash-server/flash-helper (default: $CARGO_TARGET_DIR or target, /release)")
    ap.add_argument("--max-time", type=int, default=int(env("BENCH_MAX_TIME", 840)),
                    help="start no new pass after this many seconds (840); partial results are written")
    ap.add_argument("--out", default=env("CRAWL_OUT", os.path.join(BENCH_DIR, "out", "crawl")))
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (docroot, configs, logs)")
    a = ap.parse_args()
    if a.dirs is None:
        a.dirs = int(env("CRAWL_DIRS")) if env("CRAWL_DIRS") else (20 if a.quick else 200)
    if a.runs is None:
        a.runs = int(env("BENCH_RUNS")) if env("BENCH_RUNS") else (1 if a.quick else 3)
    clients = [int(c) for c in a.clients.split(",") if c.strip()]
    servers_wanted = [s.strip() for s in a.servers.split(",") if s.strip()]
    for s in servers_wanted:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}")
    if a.runs < 1 or a.dirs < 1 or a.files_per_dir < 1 or not clients or min(clients) < 1:
        ap.error("need --runs, --dirs, --files-per-dir, --clients >= 1")
    if not 1 <= a.min_size <= a.max_size:
        ap.error("need 1 <= --min-size <= --max-size")
    t_start = time.monotonic()

    for tool in ["wrk", "taskset", "curl"] + [s for s in ("nginx", "lighttpd") if s in servers_wanted]:
        if not shutil.which(tool):
            log(f"missing tool {tool!r} (bench/run installs it)")
            return 2
    if (os.cpu_count() or 1) < 2 or a.server_cpu == a.client_cpu:
        log("WARNING: server and client share a CPU; numbers will be distorted")
    try:  # this script (sampler, bookkeeping) stays off the server's CPU
        os.sched_setaffinity(0, {int(c) for c in a.client_cpu.split(",")})
    except (OSError, ValueError) as e:
        log(f"cannot pin this script to CPU {a.client_cpu}: {e}")

    os.makedirs(a.out, exist_ok=True)
    machine = B.machine_description()
    machine.append(f"IO pressure at start: {io_pressure()}")
    with open("/proc/sys/vm/max_map_count") as f:
        machine.append(f"vm.max_map_count: {f.read().strip()}")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    machine.append(f"RLIMIT_NOFILE (inherited by the servers): {soft} soft / {hard} hard")
    notes: list[str] = []

    # --- flash build
    bin_dir = a.flash_bin_dir or os.path.join(env("CARGO_TARGET_DIR") or os.path.join(B.REPO, "target"), "release")
    if any(s in FLASH for s in servers_wanted):
        if not a.no_build:
            why = B.build_flash(a.build_timeout)
            if why:
                exe = os.path.join(bin_dir, "flash-server")
                if os.access(exe, os.X_OK):
                    notes.append(f"flash build failed ({why}); measured the EXISTING binary {exe} "
                                 f"built {time.ctime(os.path.getmtime(exe))}")
                else:
                    notes.append(f"flash build failed: {why}")
                log(notes[-1])
        exe = os.path.join(bin_dir, "flash-server")
        if os.path.exists(exe):
            machine.append(f"flash-server: {exe} (built {time.ctime(os.path.getmtime(exe))})")
            try:
                rev = subprocess.run(["git", "-C", B.REPO, "log", "-1", "--format=%h %s"],
                                     capture_output=True, text=True, timeout=10).stdout.strip()
                dirty = subprocess.run(["git", "-C", B.REPO, "status", "--porcelain", "--", ".", ":!bench"],
                                       capture_output=True, text=True, timeout=10).stdout.strip()
                machine.append(f"source: {rev}{' (+ uncommitted changes)' if dirty else ''}")
            except (OSError, subprocess.TimeoutExpired):
                pass

    tmp = tempfile.mkdtemp(prefix="flash-crawl-")
    live: list[B.Server] = []

    def cleanup() -> None:
        for w in list(CURRENT_WRK):
            try:
                w.kill()
                w.wait(timeout=5)
            except Exception:
                pass
        for s in live:
            try:
                s.stop()
            except Exception as e:
                log(f"cleanup of {s.name}: {e}")
        if not a.keep_tmp:
            log("removing the temp dir")
            shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping")
        sys.exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    # --- the site
    docroot = os.path.join(tmp, "docroot")
    os.makedirs(docroot)
    nfiles = a.dirs * a.files_per_dir
    log(f"creating {nfiles:,} files ({a.dirs} dirs x {a.files_per_dir}) in {docroot}")
    t = time.monotonic()
    paths, total = make_site(docroot, a.dirs, a.files_per_dir, a.min_size, a.max_size, a.seed)
    os.sync()  # writeback now, not during the first passes
    paths_file = os.path.join(tmp, "paths.txt")
    with open(paths_file, "w") as f:
        f.write("\n".join(paths) + "\n")
    site_desc = (f"{nfiles:,} files in {a.dirs} dirs x {a.files_per_dir}, "
                 f"{size_desc(a.min_size)} - {size_desc(a.max_size)} log-uniform, "
                 f"{total / B.MiB:.0f} MiB in all (mean {total / nfiles:.0f} B)")
    log(f"site ready in {time.monotonic() - t:.0f}s: {site_desc}")

    def factory(name: str) -> B.Server:
        if name == "nginx":
            return B.make_nginx(tmp, docroot, a.server_cpu)
        if name == "lighttpd":
            return B.make_lighttpd(tmp, docroot, a.server_cpu)
        arch = "amped" if name == "flash-amped" else "sped"
        return B.make_flash(name, arch, tmp, docroot, a.server_cpu, bin_dir, a.helpers, shlex.split(a.flash_args))

    def start(name: str) -> B.Server:
        s = factory(name)
        live.append(s)
        if s.missing_reason is None:
            s.start()
        return s

    def stop(s: B.Server) -> None:
        s.stop()
        if s in live:
            live.remove(s)

    # --- configs + verification (a separate server instance per server)
    cfg_dir = os.path.join(a.out, "configs")
    shutil.rmtree(cfg_dir, ignore_errors=True)
    os.makedirs(cfg_dir)
    missing: dict[str, str] = {}
    rng = random.Random(a.seed + 1)
    sample = rng.sample(paths, min(20, len(paths)))
    for name in servers_wanted:
        s = start(name)
        for c in s.config_files:
            shutil.copy(c, os.path.join(cfg_dir, os.path.basename(c)))
        with open(os.path.join(cfg_dir, f"{name}.cmdline"), "w") as f:
            f.write(" ".join(s.cmd) + "\n")
        if s.missing_reason:
            missing[name] = s.missing_reason
            log(f"{name}: MISSING ({s.missing_reason})")
        else:
            for u in sample:
                err = B.verify(f"http://127.0.0.1:{s.port}{u}", docroot + u, tmp)
                if err:
                    missing[name] = f"verification of {u} failed: {err}"
                    log(f"{name}: {missing[name]}")
                    break
        stop(s)
        for n in s.notes:
            notes.append(f"{name} (verification instance): {n}")
    active = [s for s in servers_wanted if s not in missing]

    # --- passes: for each client count, run r of every server, then run r+1 ...
    rows: list[dict] = []
    raw_dir = os.path.join(a.out, "wrk")
    shutil.rmtree(raw_dir, ignore_errors=True)
    os.makedirs(raw_dir)
    out_of_time = False
    for conns in clients:
        for run in range(1, a.runs + 1):
            for name in active:
                if time.monotonic() - t_start > a.max_time:
                    out_of_time = True
                    break
                row = one_pass(name, start, stop, paths_file, nfiles, conns, run, a, raw_dir, notes)
                if row is None:
                    continue
                rows.append(row)
            if out_of_time:
                break
        if out_of_time:
            notes.append(f"stopped early: --max-time {a.max_time}s reached (partial results)")
            log(notes[-1])
            break

    with open("/proc/loadavg") as f:
        machine.append(f"load average at end (1/5/15 min): {' '.join(f.read().split()[:3])}")
    machine.append(f"IO pressure at end: {io_pressure()}")
    for name, why in missing.items():
        notes.append(f"{name}: MISSING -- {why}")

    write_csv(os.path.join(a.out, "crawl.csv"), rows)
    settings = (f"one pass over all {nfiles:,} files per run (each file requested once; a pass not done "
                f"in {a.pass_timeout} s is cut off), `wrk -t1 -cC -s bench/crawl.lua`, C = "
                f"{', '.join(map(str, clients))}; {a.runs} run(s) per server and C, median reported; "
                f"a fresh server for every pass; server on CPU {a.server_cpu}, wrk on CPU {a.client_cpu}")
    md = render_markdown(rows, servers_wanted, clients, missing, nfiles)
    with open(os.path.join(a.out, "crawl.md"), "w") as f:
        f.write("# Crawl: flash vs nginx vs lighttpd, every request a different file\n\n")
        f.write(f"Run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.\n\n")
        f.write(f"Site: {site_desc}.\n\nSettings: {settings}.\n\n")
        f.write("Machine:\n\n" + "".join(f"- {m}\n" for m in machine) + "\n")
        f.write(md + "\n")
        if notes:
            f.write("\nNotes:\n\n" + "".join(f"- {x}\n" for x in notes))
        f.write("\nConfigs: see `configs/` next to this file; raw wrk output in `wrk/`.\n")
    with open(os.path.join(a.out, "machine.txt"), "w") as f:
        f.write("\n".join(machine) + "\n")

    print()
    print("Machine:")
    for m in machine:
        print(f"  {m}")
    print(f"Site: {site_desc}")
    print(f"Settings: {settings}")
    print()
    print(md)
    if notes:
        print("\nNotes:")
        for x in notes:
            print(f"  - {x}")
    print(f"\nWrote {a.out}/crawl.csv, crawl.md (total {time.monotonic() - t_start:.0f}s)")
    return 0


def io_pressure() -> str:
    """'some' line of /proc/pressure/io: share of time a task waited on IO
    (other users of the disk show here; the passes themselves read from the
    page cache)."""
    try:
        with open("/proc/pressure/io") as f:
            return f.readline().strip()
    except OSError:
        return "not available"


def size_desc(n: int) -> str:
    return B.size_name(n)


def one_pass(name, start, stop, paths_file, nfiles, conns, run, a, raw_dir, notes) -> dict | None:
    s = start(name)
    if s.missing_reason:
        log(f"{name}: did not start for run {run}: {s.missing_reason}")
        notes.append(f"{name} C={conns} run {run}: did not start: {s.missing_reason}")
        stop(s)
        return None
    sampler = Sampler(s.proc.pid, interval=a.sample_interval)
    sampler.sample()  # the idle baseline is part of the peak anyway
    before = B.cpu_snapshot(s.proc.pid)
    sampler.start()
    r = run_crawl(s, paths_file, conns, a.pass_timeout, a.client_cpu)
    time.sleep(0.2)  # let the server finish closing the connections
    alive = s.alive()
    after = B.cpu_snapshot(s.proc.pid) if alive else {}
    sampler.finish()
    exit_code = None if alive else s.proc.returncode
    stderr_tail = s.stderr_tail(400)
    stop(s)
    w, c = r["wrk"], r["crawl"] or {}
    with open(os.path.join(raw_dir, f"{name}_c{conns}_run{run}.txt"), "w") as f:
        f.write(r["out"])
    cpu_ns, cpu_src = B.cpu_delta_ns(before, after) if alive else (None, "server died")
    requests = w.requests  # responses wrk completed (a few may come after the pass ended)
    ok = c.get("ok")
    sock = sum(w.sock.values())
    if r["died_after_s"] is not None or not alive:
        status = "died"
    elif w.failed and not c:
        status = "failed"
    elif c.get("complete") == 1:
        status = "complete" if not c.get("other") and not sock else "errors"
    else:
        status = "incomplete"
    elapsed = c.get("elapsed_s") or None
    req_s = (c["responses"] / elapsed) if (c and elapsed) else (w.req_s or None)
    row = dict(
        server=name, clients=conns, run=run, status=status,
        req_s=req_s, cpu_ns_per_req=(cpu_ns / requests if cpu_ns is not None and requests else None),
        responses=c.get("responses"), ok=ok, other_status=c.get("other"), socket_errors=sock,
        files=nfiles, elapsed_s=elapsed, wrk_requests=requests, wrk_req_s=w.req_s,
        cpu_ns_total=cpu_ns, cpu_source=cpu_src,
        peak_maps=sampler.main["maps"], peak_fds=sampler.main["fds"],
        peak_rss_kib=max(sampler.main["hwm"], sampler.main["rss"]),
        tree_peak_maps=sampler.tree["maps"], tree_peak_fds=sampler.tree["fds"],
        tree_peak_rss_kib=sampler.tree["rss"], tree_procs=sampler.tree["procs"],
        samples=sampler.samples, max_sample_gap_s=sampler.max_gap,
        p50_us=w.p50_us, p99_us=w.p99_us, exit_code=exit_code,
        detail="; ".join(x for x in [w.error_detail(),
                                      (f"server exited with code {exit_code}; stderr: {stderr_tail}"
                                       if status == "died" else "")] if x),
    )
    tag = {"complete": "", "died": f"  DIED at {ok} ok responses (exit {exit_code})",
           "incomplete": f"  INCOMPLETE: {c.get('responses')} of {nfiles} in {a.pass_timeout}s",
           "errors": f"  ERRORS: {c.get('other')} non-200, {sock} socket",
           "failed": f"  FAILED: {w.failed}"}[status]
    log(f"{name:12s} C={conns:<3d} run {run}: {req_s or 0:9.0f} req/s  "
        f"{(row['cpu_ns_per_req'] or 0) / 1000:7.2f} us CPU/req  maps {row['peak_maps']:6d}  "
        f"fds {row['peak_fds']:5d}  RSS {row['peak_rss_kib'] / 1024:7.1f} MiB{tag}")
    for n in s.notes:
        notes.append(f"{name} C={conns} run {run}: {n}")
    return row


CSV_COLS = ["server", "clients", "run", "status", "req_s", "cpu_ns_per_req", "responses", "ok",
            "other_status", "socket_errors", "files", "elapsed_s", "wrk_requests", "wrk_req_s",
            "cpu_ns_total", "cpu_source", "peak_maps", "peak_fds", "peak_rss_kib", "tree_peak_maps",
            "tree_peak_fds", "tree_peak_rss_kib", "tree_procs", "samples", "max_sample_gap_s",
            "p50_us", "p99_us", "exit_code", "detail"]


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLS)
        w.writeheader()
        for r in rows:
            r = dict(r)
            for k in ("req_s", "cpu_ns_per_req", "wrk_req_s", "p50_us", "p99_us"):
                if r[k] is not None:
                    r[k] = f"{r[k]:.1f}"
            for k in ("elapsed_s", "max_sample_gap_s"):
                if r[k] is not None:
                    r[k] = f"{r[k]:.3f}"
            w.writerow(r)


def summarize(rows, name, conns) -> dict | None:
    rs = [r for r in rows if r["server"] == name and r["clients"] == conns]
    if not rs:
        return None
    done = [r for r in rs if r["status"] == "complete"]
    errs = [r for r in rs if r["status"] == "errors"]
    died = [r for r in rs if r["status"] == "died"]
    inc = [r for r in rs if r["status"] == "incomplete"]
    basis = done or errs or rs  # figures from clean passes, else finished ones, else all
    return dict(
        runs=len(rs), done=len(done), died=len(died), errs=len(errs), incomplete=len(inc),
        failed=sum(r["status"] == "failed" for r in rs),
        died_at=B.median_or_none([r["ok"] for r in died]),
        died_range=(min((r["ok"] or 0) for r in died), max((r["ok"] or 0) for r in died)) if died else None,
        inc_responses=B.median_or_none([r["responses"] for r in inc]),
        err_non200=B.median_or_none([r["other_status"] for r in errs]), err_sock=B.median_or_none([r["socket_errors"] for r in errs]),
        req_s=B.median_or_none([r["req_s"] for r in basis]),
        cpu_us=(lambda m: m / 1000 if m is not None else None)(B.median_or_none([r["cpu_ns_per_req"] for r in basis])),
        maps=B.median_or_none([r["peak_maps"] for r in rs]), fds=B.median_or_none([r["peak_fds"] for r in rs]),
        rss_mib=B.median_or_none([r["peak_rss_kib"] / 1024 for r in rs]),
        tmaps=B.median_or_none([r["tree_peak_maps"] for r in rs]), tfds=B.median_or_none([r["tree_peak_fds"] for r in rs]),
        trss_mib=B.median_or_none([r["tree_peak_rss_kib"] / 1024 for r in rs]), procs=max(r["tree_procs"] for r in rs),
    )


def render_markdown(rows, servers, clients, missing, nfiles) -> str:
    lines = [
        "| clients | server | result | req/s | req/s vs best peer | server CPU µs/req "
        "| CPU/req vs best peer | peak mappings | peak fds | peak RSS MiB |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    tree_lines = [
        "| clients | server | processes | peak mappings (sum) | peak fds (sum) | peak RSS MiB (sum) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for conns in clients:
        stats = {s: summarize(rows, s, conns) for s in servers}
        peers = {p: st for p in PEERS if (st := stats.get(p)) and st["done"]}
        best_t = max(peers.items(), key=lambda kv: kv[1]["req_s"] or 0, default=None)
        best_c = min(((k, v) for k, v in peers.items() if v["cpu_us"]), key=lambda kv: kv[1]["cpu_us"], default=None)
        first = True
        for s in servers:
            st = stats[s]
            label = str(conns) if first else ""
            first = False
            if st is None:
                why = "missing: " + missing[s][:80] if s in missing else "not measured"
                lines.append(f"| {label} | {s} | {why} | — | | — | | — | — | — |")
                continue
            if st["done"] == st["runs"]:
                result = "complete"
            else:
                parts = []
                if st["done"]:
                    parts.append(f"complete {st['done']}/{st['runs']}")
                if st["errs"]:
                    e = f"{st['err_non200']:,.0f} non-200" + (f", {st['err_sock']:,.0f} socket errors"
                                                              if st["err_sock"] else "")
                    parts.append(f"⚠ finished with errors ({e}, median)" +
                                 (f" in {st['errs']}/{st['runs']} runs" if st["errs"] != st["runs"] else ""))
                if st["died"]:
                    lo, hi = st["died_range"]
                    rng = f"{st['died_at']:,.0f}" if lo == hi else f"{st['died_at']:,.0f} (median; {lo:,}–{hi:,})"
                    parts.append(f"**died at {rng} requests**" +
                                 (f" in {st['died']}/{st['runs']} runs" if st["died"] != st["runs"] else ""))
                if st["incomplete"]:
                    parts.append(f"**incomplete**: {st['inc_responses']:,.0f} of {nfiles:,} in time" +
                                 (f" in {st['incomplete']}/{st['runs']} runs" if st["incomplete"] != st["runs"] else ""))
                if st["failed"]:
                    parts.append(f"client failed in {st['failed']} run(s)")
                result = "; ".join(parts)
            mark = "" if st["done"] else " ⚠" if st["errs"] else " †"
            tput = f"{st['req_s']:,.0f}{mark}" if st["req_s"] is not None else "—"
            cpu = f"{st['cpu_us']:.2f}" if st["cpu_us"] is not None else "—"
            rt = rc = ""
            if s in FLASH and st["done"]:
                if best_t and best_t[1]["req_s"] and st["req_s"] is not None:
                    rt = f"**{st['req_s'] / best_t[1]['req_s']:.2f}×** ({best_t[0]})"
                if best_c and st["cpu_us"] is not None:
                    rc = f"**{st['cpu_us'] / best_c[1]['cpu_us']:.2f}×** ({best_c[0]})"
            lines.append(f"| {label} | {s} | {result} | {tput} | {rt} | {cpu} | {rc} "
                         f"| {st['maps']:,.0f} | {st['fds']:,.0f} | {st['rss_mib']:,.1f} |")
            tree_lines.append(f"| {label} | {s} | {st['procs']} | {st['tmaps']:,.0f} | {st['tfds']:,.0f} "
                              f"| {st['trss_mib']:,.1f} |")
    legend = (
        "\nreq/s: responses / wall time of the pass (first request to last response), median of the runs: "
        "of the clean passes if there are any (every response 200), else of the passes that finished with "
        "errors (⚠: non-200 responses count as responses), else of all († = the rate up to the death or "
        "the time limit). Server CPU per request: schedstat of the whole process tree (helpers included) "
        "over the pass / responses; not available for a run in which the server died. Ratios: flash vs "
        "the better of nginx/lighttpd among those with a clean pass (req/s: higher is better; CPU: lower "
        "is better). Peak mappings (`/proc/PID/maps` lines), fds (`/proc/PID/fd` entries) and RSS (VmHWM) "
        "are of the **main serving process** (flash: the main process, not its helpers; nginx and "
        "lighttpd run as one process here), the peak over the pass sampled every ~100 ms (less often "
        "when /proc/PID/maps is long; a server that died may have gone higher after the last sample), "
        "median over the runs. Sums over all processes of each server (RSS sums count shared pages once "
        "per process):\n\n"
    )
    return "\n".join(lines) + "\n" + legend + "\n".join(tree_lines)


if __name__ == "__main__":
    sys.exit(main())
