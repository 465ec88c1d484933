#!/usr/bin/env python3
"""A/B check: alternate corral and bare shared-socket processes (same app, same N) many times,
to tell a real throughput difference from noise on a small shared machine. With --strace, also
count the master's system calls during one corral run (it should make none per request).

    python3 bench/ab.py [--rounds 5] [--n 2] [--conc 16] [--seconds 4] [--keepalive|--close] [--strace]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--close", action="store_true")
    ap.add_argument("--strace", action="store_true")
    a = ap.parse_args()
    got = {"corral": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="corral-ab-") as tmp:
        for r in range(a.rounds):
            for kind in (["corral", "bare"] if r % 2 == 0 else ["bare", "corral"]):
                port = compare.free_port()
                s = compare.Setup(kind, a.n, port, tmp)
                s.start()
                s.wait_ready()
                time.sleep(0.5)
                tracer = None
                if a.strace and kind == "corral" and r == 0:
                    out = os.path.join(tmp, "strace.txt")
                    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(s.manager())],
                                              stderr=subprocess.DEVNULL)
                    time.sleep(0.3)
                res = compare.wrk(port, a.conc, a.seconds, a.close)
                if tracer:
                    tracer.terminate()
                    tracer.wait()
                    print(f"master syscalls during {a.seconds}s of load ({res['requests']} requests):")
                    print(open(out).read())
                s.stop()
                got[kind].append(res["rps"])
                print(f"round {r} {kind:6} {res['rps']:9.0f} req/s", flush=True)
    for k, v in got.items():
        print(f"{k:6} median {statistics.median(v):9.0f}  min {min(v):9.0f}  max {max(v):9.0f}")
    print(f"corral / bare (medians): {statistics.median(got['corral']) / statistics.median(got['bare']):.3f}")


if __name__ == "__main__":
    main()
