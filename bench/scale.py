#!/usr/bin/env python3
"""How the master's cost grows with the pool (not a test: it reports, it does not assert).

For N = 1, 16, 64, 256, 1024 workers of a tiny worker (`sleep`, ready at exec; and a `notify`
worker that sends READY=1 through `systemd-notify`), with `[limits]` sampling every 5 s and
`/metrics` on, on this machine:

  master RSS, and its growth per worker
  master CPU while idle (over --idle-seconds) and its wakeups (context switches) per minute
  start → all ready; rolling reload with batch = 1 and "25%"
  `status` and `/metrics` latency and size; kill -9 of a worker → its replacement forked

and 100 pools of 4 workers on one host: the masters' total RSS and idle CPU.

Usage: python3 bench/scale.py [--sizes 1,16,64,256,1024] [--idle-seconds 20] [--pools 100]
       [--out bench/results/scale.json]
Needs target/release/corral (cargo build --release) and systemd-notify.
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
from compare import control, free_port, rss_bytes  # noqa: E402
from core import FakeSystemd  # noqa: E402

CORRAL = os.environ.get("CORRAL_BIN", os.path.join(ROOT, "target/release/corral"))


def http_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    return data


def cpu_ns(pid):
    """Time on CPU in nanoseconds (all threads; /proc/PID/schedstat is the main thread only)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass  # a thread that exited (its time is not lost: it is the process's still)
    return total


def ctx_switches(pid):
    n = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                n += int(line.split()[1])
    return n


def children(pid):
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def timed(fn, reps=5):
    times, size = [], 0
    for _ in range(reps):
        t = time.monotonic()
        size = len(fn())
        times.append(time.monotonic() - t)
    return statistics.median(times), size


class Pool:
    def __init__(self, tmp, name, n, kind, metrics=True, interval="5s"):
        self.tmp, self.n = tmp, n
        self.port, self.mport = free_port(), free_port()
        self.cfg = os.path.join(tmp, f"{name}.toml")
        command = (["sleep", "100000"] if kind == "spawn"
                   else ["sh", "-c", "systemd-notify --ready; exec sleep 100000"])
        mode = "spawn" if kind == "spawn" else "notify"
        self.text = (f'name = "{name}"\ncommand = {json.dumps(command)}\ninstances = {n}\n'
                     f'listen = ["127.0.0.1:{self.port}"]\n[ready]\nmode = "{mode}"\ntimeout = "60s"\n'
                     f'[limits]\nmemory = "1GiB"\ninterval = "{interval}"\n[stop]\ntimeout = "10s"\n'
                     '[reload]\nbatch = 1\n')
        if metrics:
            self.text += f'[metrics]\nlisten = "127.0.0.1:{self.mport}"\n'
        with open(self.cfg, "w") as f:
            f.write(self.text)
        self.sd = FakeSystemd(os.path.join(tmp, f"sd-{name}.sock"))
        env = dict(os.environ, NOTIFY_SOCKET=self.sd.path, CORRAL_RUNTIME_ROOT=os.path.join(tmp, "run"),
                   CORRAL_LOG="warn")
        self.t0 = time.monotonic()
        self.p = subprocess.Popen([CORRAL, "run", "-c", self.cfg], env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"{name}.log"), "a"))
        self.control = os.path.join(tmp, "run", name, "control.sock")

    def wait_ready(self, timeout=300):
        return self.sd.wait(lambda m: "READY=1" in m, timeout) - self.t0

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def idle(pids, seconds):
    t0 = {p: (cpu_ns(p), ctx_switches(p)) for p in pids}
    time.sleep(seconds)
    cpu = sum(cpu_ns(p) - t0[p][0] for p in pids) / 1e9
    wake = sum(ctx_switches(p) - t0[p][1] for p in pids)
    return 100.0 * cpu / seconds, wake * 60.0 / seconds


def reload_time(pool, batch):
    with open(pool.cfg, "w") as f:
        f.write(pool.text.replace("batch = 1", f"batch = {batch}"))
    t = time.monotonic()
    reply = json.loads(control(pool.control, {"cmd": "reload", "wait": True}, timeout=600))
    if not reply.get("ok"):
        raise SystemExit(f"reload failed: {reply}")
    return time.monotonic() - t


def measure(tmp, n, kind, idle_seconds):
    pool = Pool(tmp, f"s{n}{kind}", n, kind)
    r = {"workers": n, "kind": kind}
    try:
        r["start_to_ready_s"] = pool.wait_ready()
        time.sleep(6)  # past the first [limits] sample
        r["rss_kib"] = rss_bytes(pool.p.pid) // 1024
        r["idle_cpu_percent"], r["wakeups_per_minute"] = idle([pool.p.pid], idle_seconds)
        r["status_s"], r["status_bytes"] = timed(lambda: control(pool.control, {"cmd": "status"}))
        r["metrics_s"], r["metrics_bytes"] = timed(lambda: http_get(pool.mport, "/metrics"))
        victim = children(pool.p.pid)[0]
        t = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while True:
            kids = children(pool.p.pid)
            if victim not in kids and len(kids) >= n:
                break
            if time.monotonic() - t > 30:
                break
            time.sleep(0.0005)
        r["kill_to_new_child_s"] = time.monotonic() - t
        r["reload_batch_1_s"] = reload_time(pool, "1")
        r["reload_batch_25pct_s"] = reload_time(pool, '"25%"')
    finally:
        pool.stop()
    print(json.dumps(r), flush=True)
    return r


def many_pools(tmp, count, idle_seconds):
    pools = [Pool(tmp, f"p{i}", 4, "spawn", metrics=False) for i in range(count)]
    try:
        for p in pools:
            p.wait_ready()
        time.sleep(6)
        pids = [p.p.pid for p in pools]
        rss = sum(rss_bytes(p) for p in pids)
        cpu, wake = idle(pids, idle_seconds)
        r = {"pools": count, "workers_each": 4, "total_master_rss_kib": rss // 1024,
             "master_rss_kib_each": rss // 1024 // count, "total_idle_cpu_percent": cpu,
             "wakeups_per_minute": wake}
    finally:
        for p in pools:
            p.stop()
    print(json.dumps(r), flush=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,16,64,256,1024")
    ap.add_argument("--idle-seconds", type=int, default=20)
    ap.add_argument("--pools", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/scale.json"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="corral-bench-scale-")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        results = {"sizes": [measure(tmp, n, "spawn", args.idle_seconds) for n in sizes]}
        results["notify"] = [measure(tmp, n, "notify", args.idle_seconds) for n in sizes]
        if args.pools:
            results["pools"] = many_pools(tmp, args.pools, args.idle_seconds)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
