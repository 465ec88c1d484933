#!/usr/bin/env python3
"""Crash → replacement serving: corral, PM2 (cluster mode) and Node's cluster module on the
same app (examples/node/app.js), in the same run, against the app's own start time.

Each round kills one worker with SIGKILL and times until a new worker listens (every worker
writes its count file the moment it listens: bench/compare.py's Setup). Rounds are 6 s apart, so
every crash is a first crash after more than `min_uptime` (5 s): the one corral restarts at once.
The app's own start time is `node app.js` from spawn to listening, measured the same way.

    python3 bench/crash.py [--rounds 10] [--out bench/results/crash.json]

Writes the figures into docs/benchmarks.md between its markers. Not a test: it reports.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import compare  # noqa: E402

BEGIN = "<!-- crash:begin (bench/crash.py) -->"
END = "<!-- crash:end -->"


def own_start(tmp, rounds):
    """`node app.js`, spawn → listening."""
    times = []
    for _ in range(rounds):
        s = compare.Setup("single", 1, compare.free_port(), tmp)
        t = time.monotonic()
        s.start()
        if s.wait_ready(timeout=30):
            times.append(time.monotonic() - t)
        s.stop()
        time.sleep(0.3)
    return times


def crashes(kind, tmp, rounds):
    s = compare.Setup(kind, 2, compare.free_port(), tmp)
    s.start()
    times = []
    try:
        if not s.wait_ready(timeout=60):
            raise SystemExit(f"{kind}: workers did not come up")
        time.sleep(6)
        for _ in range(rounds):
            live = [p for p in compare.counts(s.count_dir) if compare.alive(p)]
            victim = live[0]
            t = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            if s.wait_ready(timeout=30, exclude=(victim,)):
                times.append(time.monotonic() - t)
            time.sleep(6)
    finally:
        s.stop()
    return times


def ms(xs):
    return {"median_ms": round(statistics.median(xs) * 1000, 1), "min_ms": round(min(xs) * 1000, 1),
            "max_ms": round(max(xs) * 1000, 1), "n": len(xs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/crash.json"))
    ap.add_argument("--no-install", action="store_true")
    a = ap.parse_args()
    if not a.no_install:
        compare.install()
    res = {"machine": {"cpus": os.cpu_count(), "node": subprocess.run(["node", "--version"], capture_output=True,
                                                                       text=True).stdout.strip()},
           "rounds": a.rounds}
    with tempfile.TemporaryDirectory(prefix="corral-crash-") as tmp:
        res["own_start"] = ms(own_start(tmp, a.rounds))
        print(f"node app.js, spawn → listening: {res['own_start']}", flush=True)
        for kind in ("corral", "pm2", "cluster-rr"):
            res[kind] = ms(crashes(kind, tmp, a.rounds))
            print(f"{kind:10} crash → replacement listening: {res[kind]}", flush=True)
    own = res["own_start"]["median_ms"]
    res["corral_minus_own_start_ms"] = round(res["corral"]["median_ms"] - own, 1)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    rows = [("the app alone: `node app.js` spawn → listening", res["own_start"])] + [
        (name, res[k]) for k, name in (("corral", "corral"), ("pm2", "PM2 cluster mode"),
                                       ("cluster-rr", "Node `cluster` (round-robin)"))]
    table = ["| | median | min | max |", "|---|---|---|---|"]
    table += [f"| {n} | {r['median_ms']} ms | {r['min_ms']} ms | {r['max_ms']} ms |" for n, r in rows]
    text = (f"\n### Crash → replacement serving (bench/crash.py)\n\nSIGKILL of one of 2 workers of examples/node/app.js, "
            f"{a.rounds} rounds 6 s apart (each a first crash after `min_uptime`), until a new worker listens; "
            f"same run, same machine ({res['machine']['cpus']} cores, Node {res['machine']['node']}).\n\n"
            + "\n".join(table) +
            f"\n\ncorral's replacement listens {res['corral_minus_own_start_ms']} ms (median) after the app alone "
            "would: the first crash is restarted at once, the delay and its backoff apply to crashes in a row.\n")
    p = os.path.join(ROOT, "docs/benchmarks.md")
    doc = open(p).read()
    if BEGIN in doc:
        i, j = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        doc = doc[:i] + text + doc[j:]
    else:
        doc = doc.rstrip("\n") + "\n\n" + BEGIN + text + END + "\n"
    open(p, "w").write(doc)
    print(text)


if __name__ == "__main__":
    main()
