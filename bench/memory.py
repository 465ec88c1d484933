#!/usr/bin/env python3
"""The master's memory over many reloads (not a test: it reports, it does not assert).

A pool of 4 test workers that take a second to stop (so drains overlap) gets reload requests
back to back for a while (they coalesce into one reload after another). The master's RSS is
read idle before, at its peak, and idle after everything has drained. Goal: after the burst,
within 1 MiB of the idle figure.

Usage: python3 bench/memory.py [--requests 3000] [--interval-ms 20] [--out bench/results/memory.json]
Needs target/release/corral (cargo build --release).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from compare import control, free_port, rss_bytes  # noqa: E402

CORRAL = os.path.join(ROOT, "target/release/corral")
WORKER = os.path.join(ROOT, "tests/worker.py")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--interval-ms", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/memory.json"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="corral-bench-memory-")
    port = free_port()
    cfg = os.path.join(tmp, "pool.toml")
    with open(cfg, "w") as f:
        f.write(f'command = ["python3", "{WORKER}", "--stop-delay", "1000"]\ninstances = 4\n'
                f'listen = ["127.0.0.1:{port}"]\n[stop]\ntimeout = "10s"\n')
    env = dict(os.environ, CORRAL_RUNTIME_ROOT=os.path.join(tmp, "run"))
    master = subprocess.Popen([CORRAL, "run", "-c", cfg], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    sock = os.path.join(tmp, "run/pool/control.sock")

    def status():
        return json.loads(control(sock, {"cmd": "status"}))["status"]

    def settle(timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                st = status()
                if st["ready"] == 4 and not st["reloading"] and len(st["workers"]) == 4:
                    return st
            except (OSError, ValueError, TypeError, KeyError):
                pass
            time.sleep(0.1)
        raise SystemExit("the pool did not settle")

    try:
        settle()
        time.sleep(2)
        idle = rss_bytes(master.pid)
        peak = idle
        t0 = time.monotonic()
        for _ in range(args.requests):
            control(sock, {"cmd": "reload", "wait": False})
            peak = max(peak, rss_bytes(master.pid))
            time.sleep(args.interval_ms / 1000)
        st = settle()
        burst_s = time.monotonic() - t0
        time.sleep(3)
        after = rss_bytes(master.pid)
        result = {
            "reload_requests": args.requests,
            "reloads_done": st["reloads_succeeded"],
            "seconds": round(burst_s, 1),
            "idle_rss_kib": idle // 1024,
            "peak_rss_kib": peak // 1024,
            "after_rss_kib": after // 1024,
            "after_minus_idle_kib": (after - idle) // 1024,
        }
        print(json.dumps(result, indent=2))
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    finally:
        master.terminate()
        try:
            master.wait(timeout=60)
        except subprocess.TimeoutExpired:
            master.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
