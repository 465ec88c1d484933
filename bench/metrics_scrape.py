#!/usr/bin/env python3
"""What `/metrics` costs with `[metrics] workers = true` (not a test: it reports, it does not
assert). In one run, each against a baseline from the same run:

  own only        64 workers, workers = false: corral's own series (the baseline)
  64 workers      64 workers each serving ~200 series at CORRAL_METRICS_SOCKET
  one silent      the same, with worker 0 accepting and never answering (worker_timeout 1s)

For each: scrape latency p50/p99/max over sequential scrapes, the master's CPU per scrape, its
RSS idle before, at its peak during the scrapes, and 10 s after. Goals (issue #23): a scrape of
64 workers in <= 100 ms; master RSS back within 1 MiB of idle after the scrapes.

Usage: python3 bench/metrics_scrape.py [--workers 64] [--scrapes 200] [--out bench/results/metrics-scrape.json]
Needs target/release/corral (cargo build --release).
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from compare import cpu_seconds, free_port, rss_bytes  # noqa: E402

CORRAL = os.path.join(ROOT, "target/release/corral")
WORKER = os.path.join(ROOT, "bench/launchers/metrics-worker.py")


def wait(pred, what, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def scrape(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def run(tmp, name, workers, scrapes, workers_on, silent):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    mport = free_port()
    cfg = os.path.join(d, "pool.toml")
    with open(cfg, "w") as f:
        f.write(f'command = ["/usr/bin/python3", "{WORKER}"]\ninstances = {workers}\n'
                f'listen = ["127.0.0.1:{free_port()}"]\n[ready]\ntimeout = "120s"\n'
                f'[metrics]\nlisten = "127.0.0.1:{mport}"\nworkers = {"true" if workers_on else "false"}\n'
                f'worker_timeout = "1s"\n[limits]\ninterval = "1h"\n')
    env = dict(os.environ, CORRAL_RUNTIME_ROOT=os.path.join(d, "run"), CORRAL_LOG="warn", SERIES="200",
               SILENT="1" if silent else "0")
    env.pop("NOTIFY_SOCKET", None)
    log = open(os.path.join(d, "master.log"), "w")
    p = subprocess.Popen([CORRAL, "run", "-c", cfg], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        def ready():  # /health, not /metrics: the idle figure is before any scrape
            try:
                c = http.client.HTTPConnection("127.0.0.1", mport, timeout=30)
                c.request("GET", "/health")
                return json.loads(c.getresponse().read()).get("ready") == workers
            except (OSError, ValueError):
                return False
        wait(ready, f"{workers} ready workers")
        time.sleep(2)
        idle = rss_bytes(p.pid)
        peak = idle
        stop = threading.Event()

        def watch():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_bytes(p.pid))
                time.sleep(0.005)
        t = threading.Thread(target=watch)
        t.start()
        cpu0 = cpu_seconds(p.pid)
        lat = []
        size = 0
        for _ in range(scrapes):
            t0 = time.perf_counter()
            st, body = scrape(mport)
            lat.append((time.perf_counter() - t0) * 1000)
            assert st == 200, st
            size = len(body)
        cpu = cpu_seconds(p.pid) - cpu0
        stop.set()
        t.join()
        time.sleep(10)
        after = rss_bytes(p.pid)
        lat.sort()
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        return {
            "name": name, "workers": workers, "scrapes": scrapes, "series": series, "bytes": size,
            "p50_ms": round(statistics.median(lat), 2), "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
            "max_ms": round(lat[-1], 2), "cpu_ms_per_scrape": round(cpu * 1000 / scrapes, 2),
            "rss_idle_kib": idle // 1024, "rss_peak_kib": peak // 1024, "rss_after_kib": after // 1024,
        }
    finally:
        p.terminate()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/metrics-scrape.json"))
    a = ap.parse_args()
    if not os.path.exists(CORRAL):
        raise SystemExit("build it first: cargo build --release")
    tmp = tempfile.mkdtemp(prefix="corral-bench-metrics-")
    try:
        rows = [
            run(tmp, "own only", a.workers, a.scrapes, False, False),
            run(tmp, f"{a.workers} workers", a.workers, a.scrapes, True, False),
            run(tmp, "one silent", a.workers, max(a.scrapes // 10, 5), True, True),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0]
    print(f"{'':14} {'series':>7} {'KiB':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'cpu ms':>7} "
          f"{'RSS idle':>9} {'peak':>7} {'after':>7}  p50 vs own")
    for r in rows:
        print(f"{r['name']:14} {r['series']:7} {r['bytes'] // 1024:6} {r['p50_ms']:7} {r['p99_ms']:7} {r['max_ms']:7} "
              f"{r['cpu_ms_per_scrape']:7} {r['rss_idle_kib']:8}K {r['rss_peak_kib']:6}K {r['rss_after_kib']:6}K  "
              f"x{r['p50_ms'] / base['p50_ms']:.1f}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"rows": rows, "cpus": os.cpu_count()}, f, indent=2)
    print(f"wrote {a.out}")


main()
