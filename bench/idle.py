#!/usr/bin/env python3
"""Idle CPU of the master at N workers with `[limits]` sampling every 5 s, two binaries
alternated in the same run (not a test: it reports). Used to show the GroupSampler changes
(bench/results/idle.json): same pool, same machine, same minutes, before and after; and the
"after" binary with `limits.interval = "1h"` (no sample in the window: what the master costs
besides sampling).

    python3 bench/idle.py --before /tmp/corral-before [--after target/release/corral]
                          [--n 1024] [--seconds 60] [--rounds 2] [--out bench/results/idle.json]

CPU is the master's time on CPU from /proc/PID/task/*/schedstat, in nanoseconds.
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import scale  # noqa: E402


def run(binary, n, seconds, tmp, tag, interval):
    scale.CORRAL = binary
    pool = scale.Pool(tmp, tag, n, "spawn", metrics=False, interval=interval)
    try:
        pool.wait_ready()
        time.sleep(11)  # two [limits] samples in: the kept-open files exist
        cpu, wake = scale.idle([pool.p.pid], seconds)
        return {"idle_cpu_percent": round(cpu, 4), "wakeups_per_minute": round(wake, 1),
                "rss_kib": scale.rss_bytes(pool.p.pid) // 1024}
    finally:
        pool.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=os.path.join(ROOT, "target/release/corral"))
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/idle.json"))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="corral-idle-") as tmp:
        variants = [("before", a.before, "5s"), ("after", a.after, "5s"), ("after, interval 1h", a.after, "1h")]
        for r in range(a.rounds):
            for kind, binary, interval in (variants if r % 2 == 0 else variants[::-1]):
                row = dict(run(binary, a.n, a.seconds, tmp, f"i{r}{kind[:5]}{interval}", interval),
                           which=kind, round=r, workers=a.n)
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {k: round(sum(x["idle_cpu_percent"] for x in rows if x["which"] == k) / a.rounds, 4)
               for k, _, _ in variants}
    print(f"idle CPU at N={a.n}: {summary}")
    with open(a.out, "w") as f:
        json.dump({"workers": a.n, "seconds": a.seconds, "rows": rows, "mean": summary}, f, indent=1)


if __name__ == "__main__":
    main()
