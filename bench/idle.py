#!/usr/bin/env python3
"""Idle CPU of the master at N workers with `[limits]` sampling every 5 s, two binaries
alternated in the same run (not a test: it reports). Used to show the GroupSampler change
(bench/results/idle.json): same pool, same machine, same minute, before and after.

    python3 bench/idle.py --before /tmp/corral-before [--after target/release/corral]
                          [--n 1024] [--seconds 60] [--rounds 2] [--out bench/results/idle.json]

CPU is read from /proc/PID/stat in clock ticks (10 ms): over 60 s, 0.1 % of a core is 6 ticks.
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


def run(binary, n, seconds, tmp, tag):
    scale.CORRAL = binary
    pool = scale.Pool(tmp, tag, n, "spawn", metrics=False)
    try:
        pool.wait_ready()
        time.sleep(11)  # two [limits] samples in: the kept-open files exist
        cpu, wake = scale.idle([pool.p.pid], seconds)
        return {"idle_cpu_percent": round(cpu, 3), "wakeups_per_minute": round(wake, 1),
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
        for r in range(a.rounds):
            for kind, binary in ([("before", a.before), ("after", a.after)] if r % 2 == 0
                                 else [("after", a.after), ("before", a.before)]):
                row = dict(run(binary, a.n, a.seconds, tmp, f"i{r}{kind}"), which=kind, round=r, workers=a.n)
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {k: round(sum(x["idle_cpu_percent"] for x in rows if x["which"] == k) / a.rounds, 3)
               for k in ("before", "after")}
    print(f"idle CPU at N={a.n}, sampling every 5s: before {summary['before']} %, after {summary['after']} %")
    with open(a.out, "w") as f:
        json.dump({"workers": a.n, "seconds": a.seconds, "rows": rows, "mean": summary}, f, indent=1)


if __name__ == "__main__":
    main()
