#!/usr/bin/env python3
"""Benchmarks of the corral master itself (not a test: it reports, it does not assert).

Measured in one run, each against a baseline from the same run, so figures are comparable on a
noisy shared machine:

  time to first ready   corral starting N workers until READY=1, vs. the same N workers started
                        directly (bare processes on one shared socket) until each sent READY=1
  crash -> ready        SIGKILL a worker until its replacement is ready (STATUS back to N/N),
                        vs. one bare worker's start-to-READY time
  master RSS            VmRSS of the master with N workers (goal <= 4 MiB)
  master CPU under load CPU seconds of the master while wrk drives the workers, as a share of
                        the workers' own CPU seconds (goal ~ 0: the master never sees a request)
  kill -9 master        time until every worker is gone (PR_SET_PDEATHSIG)

Usage: python3 bench/core.py [--workers N] [--load-seconds S] [--out bench/results/core.json]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from compare import alive, cpu_seconds, descendants, free_port, rss_bytes  # noqa: E402
CORRAL = os.path.join(ROOT, "target/release/corral")
RUST_WORKER = os.path.join(ROOT, "target/release/examples/rust")
NODE_APP = os.path.join(ROOT, "examples/node/app.js")


def rss_kib(pid):
    return rss_bytes(pid) // 1024


def children(pid):
    return [p for p in descendants(pid) if alive(p)]


class FakeSystemd:
    """The master's NOTIFY_SOCKET: records (time, message)."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.01)
        self.messages = []

    def wait(self, pred, timeout=60):
        end = time.monotonic() + timeout
        for t, m in self.messages:
            if pred(m):
                return t
        while time.monotonic() < end:
            try:
                m = self.sock.recv(8192).decode()
            except (TimeoutError, socket.timeout):
                continue
            t = time.monotonic()
            self.messages.append((t, m))
            if pred(m):
                return t
        raise TimeoutError("no matching notification")


def start_corral(tmp, command, n, port, ready="notify"):
    cfg = os.path.join(tmp, "bench.toml")
    with open(cfg, "w") as f:
        f.write(f'name = "bench"\ncommand = {json.dumps(command)}\ninstances = {n}\n')
        f.write(f'listen = ["127.0.0.1:{port}"]\n[ready]\nmode = "{ready}"\ntimeout = "20s"\n')
        # The default restart.delay: a worker that was ready for min_uptime (short here, so the
        # bench need not wait 5s) restarts at once after a crash.
        f.write('[restart]\nmin_uptime = "300ms"\n[stop]\ntimeout = "5s"\n')
    sd_path = os.path.join(tmp, f"sd-{time.monotonic_ns()}.sock")
    sd = FakeSystemd(sd_path)
    env = dict(os.environ, NOTIFY_SOCKET=sd_path, RUNTIME_DIRECTORY=os.path.join(tmp, "run"), CORRAL_LOG="warn")
    t0 = time.monotonic()
    p = subprocess.Popen([CORRAL, "run", "-c", cfg], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(tmp, "master.log"), "a"))
    return p, sd, t0


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def bare_ready_times(tmp, n, command):
    """Start n workers directly on one shared socket (what a minimal launcher does) and time
    each one's READY=1. Returns seconds from first spawn until all n are ready."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    path = os.path.join(tmp, f"bare-{time.monotonic_ns()}.sock")
    sd = FakeSystemd(path)
    sd.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    procs = []
    t0 = time.monotonic()
    for i in range(n):
        env = dict(os.environ, LISTEN_FDS="1", NOTIFY_SOCKET=path)
        # The shell moves the socket to fd 3; `exec` keeps its pid, so LISTEN_PID=$$ is the
        # worker's own pid.
        fd = listener.fileno()
        move = "" if fd == 3 else f"exec 3<&{fd} {fd}<&-; "
        script = move + 'LISTEN_PID=$$ exec "$@"'
        procs.append(subprocess.Popen(["sh", "-c", script, "sh", *command], env=env, pass_fds=[fd],
                                      stdout=subprocess.DEVNULL))
    ready = 0
    t_last = t0
    while ready < n:
        t_last = sd.wait(lambda m: "READY=1" in m)
        ready += 1
        sd.messages.clear()
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
    listener.close()
    return t_last - t0


def bench_start_and_crash(tmp, n, rounds):
    command = [RUST_WORKER]
    starts, bare_starts, crashes, bare_one, rss, kill9 = [], [], [], [], [], []
    for _ in range(rounds):
        bare_starts.append(bare_ready_times(tmp, n, command))
        bare_one.append(bare_ready_times(tmp, 1, command))
        port = free_port()
        p, sd, t0 = start_corral(tmp, command, n, port)
        t_ready = sd.wait(lambda m: "READY=1" in m)
        starts.append(t_ready - t0)
        time.sleep(0.4)  # past min_uptime: a healthy worker
        rss.append(rss_kib(p.pid))
        # crash -> replacement ready
        victim = children(p.pid)[0]
        sd.messages.clear()
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        sd.wait(lambda m: f"STATUS={n - 1}/{n}" in m and "1 restart" in m)
        t_back = sd.wait(lambda m: f"STATUS={n}/{n}" in m and "1 restart" in m)
        crashes.append(t_back - t_kill)
        # kill -9 the master: how long until every worker is gone
        workers = children(p.pid)
        t_kill = time.monotonic()
        p.kill()
        p.wait()
        while any(alive(w) for w in workers):
            time.sleep(0.001)
        kill9.append(time.monotonic() - t_kill)
    return {
        "time_to_first_ready_s": summary(starts),
        "bare_time_to_all_ready_s": summary(bare_starts),
        "time_to_first_ready_ratio": statistics.median(starts) / statistics.median(bare_starts),
        "crash_to_ready_s": summary(crashes),
        "bare_one_worker_start_s": summary(bare_one),
        "crash_to_ready_ratio": statistics.median(crashes) / statistics.median(bare_one),
        "master_rss_kib": summary(rss),
        "kill9_master_to_workers_gone_s": summary(kill9),
    }


def bench_load(tmp, n, seconds):
    if not shutil.which("wrk"):
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    if not shutil.which("node"):
        return {"skipped": "node not installed"}
    port = free_port()
    ready = "notify" if shutil.which("systemd-notify") else "delay"
    p, sd, _ = start_corral(tmp, ["node", NODE_APP], n, port, ready=ready)
    sd.wait(lambda m: "READY=1" in m)
    workers = children(p.pid)
    m0, w0 = cpu_seconds(p.pid), sum(cpu_seconds(w) for w in workers)
    t0 = time.monotonic()
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", f"http://127.0.0.1:{port}/api/v1/hello"],
                         capture_output=True, text=True).stdout
    wall = time.monotonic() - t0
    m1, w1 = cpu_seconds(p.pid), sum(cpu_seconds(w) for w in workers)
    rss = rss_kib(p.pid)
    stop(p)
    rps = next((float(l.split()[1]) for l in out.splitlines() if l.startswith("Requests/sec:")), 0.0)
    return {
        "wrk_requests_per_s": rps,
        "load_seconds": wall,
        "master_cpu_s": m1 - m0,
        "workers_cpu_s": w1 - w0,
        "master_cpu_share_of_workers": (m1 - m0) / max(w1 - w0, 1e-9),
        "master_cpu_percent_of_a_core": 100 * (m1 - m0) / wall,
        "master_rss_kib_after_load": rss,
    }


def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--load-seconds", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/core.json"))
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "corral", "--example", "rust"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        result = {"workers": a.workers, "cpus": os.cpu_count(), "kernel": os.uname().release}
        result.update(bench_start_and_crash(tmp, a.workers, a.rounds))
        result["load"] = bench_load(tmp, a.workers, a.load_seconds)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
