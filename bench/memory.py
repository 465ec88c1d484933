#!/usr/bin/env python3
"""The master's memory over many reloads (not a test: it reports, it does not assert).

A pool of test workers that take a while to stop (so drains overlap) gets reload requests back
to back for a while (they coalesce into one reload after another). The master's RSS is read
idle before, at its peak, and idle after everything has drained. Goal: after the burst, within
1 MiB of the idle figure.

Usage: python3 bench/memory.py [--requests 3000] [--interval-ms 20] [--workers 4]
                               [--stop-delay-ms 1000] [--batch 1] [--after-s 3]
                               [--out bench/results/memory.json]
The burst of issue #24: --workers 64 --stop-delay-ms 3000 --requests 40 --interval-ms 200
--batch 100% --after-s 20. Needs target/release/corral (cargo build --release), or CORRAL_BIN.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from compare import control, free_port, rss_bytes  # noqa: E402

CORRAL = os.environ.get("CORRAL_BIN", os.path.join(ROOT, "target/release/corral"))
WORKER = os.path.join(ROOT, "tests/worker.py")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--interval-ms", type=int, default=20)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--stop-delay-ms", type=int, default=1000)
    ap.add_argument("--batch", default="1")
    ap.add_argument("--after-s", type=float, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/memory.json"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="corral-bench-memory-")
    port = free_port()
    cfg = os.path.join(tmp, "pool.toml")
    with open(cfg, "w") as f:
        batch = f'"{args.batch}"' if args.batch.endswith("%") else args.batch
        f.write(f'command = ["python3", "{WORKER}", "--stop-delay", "{args.stop_delay_ms}"]\n'
                f'instances = {args.workers}\nlisten = ["127.0.0.1:{port}"]\n[stop]\ntimeout = "10s"\n'
                f'[reload]\nbatch = {batch}\n[ready]\ntimeout = "120s"\n')
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
                n = args.workers
                if st["ready"] == n and not st["reloading"] and len(st["workers"]) == n:
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
        watching = True

        def watch():  # the peak may come during the drains, after the last request
            nonlocal peak
            while watching:
                peak = max(peak, rss_bytes(master.pid))
                time.sleep(0.01)
        watcher = threading.Thread(target=watch)
        watcher.start()
        t0 = time.monotonic()
        for _ in range(args.requests):
            control(sock, {"cmd": "reload", "wait": False})
            time.sleep(args.interval_ms / 1000)
        st = settle()
        watching = False
        watcher.join()
        burst_s = time.monotonic() - t0
        time.sleep(args.after_s)
        after = rss_bytes(master.pid)
        result = {
            "workers": args.workers,
            "stop_delay_ms": args.stop_delay_ms,
            "batch": args.batch,
            "after_s": args.after_s,
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
