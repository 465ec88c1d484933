#!/usr/bin/env python3
"""`corral upgrade` measured (not a test: it reports, it does not assert).

A pool of the Node example app (4 workers) runs from a copy of the release binary. A client
sends requests back to back (a new connection each) and records when each one completed. Then:

  baseline    the same client for the same time with no upgrade: the longest gap between two
              completed requests, which is what the machine's own noise gives
  upgrades    N upgrades in a row (each: the binary at the master's path replaced by the other
              of two files, then {"cmd":"upgrade"}): for each, the time from the request to the
              new image answering a status request, and the longest gap between completed
              requests while it happened; failed requests are counted

Usage: python3 bench/upgrade.py [--upgrades 20] [--out bench/results/upgrade.json]
Needs target/release/corral (cargo build --release) and node.
"""

import argparse
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
from compare import control as request, free_port  # noqa: E402


def ask(path, req, timeout=5.0):
    data = request(path, req, timeout)
    return json.loads(data) if data else None

CORRAL = os.path.join(ROOT, "target/release/corral")
NODE_APP = os.path.join(ROOT, "examples/node/app.js")


class Client(threading.Thread):
    """Requests back to back, a new connection each; completion times and failures."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop, self.done, self.failed = port, threading.Event(), [], 0

    def run(self):
        req = b"GET /api/v1/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline and len(self.done) < 2_000_000:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(req)
                    data = b""
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                if data.startswith(b"HTTP/1.1 200"):
                    self.done.append(time.monotonic())
                else:
                    self.failed += 1
            except OSError:
                self.failed += 1


def max_gap(times, start, end):
    inside = [t for t in times if start <= t <= end]
    points = [start] + inside + [end]
    return max(b - a for a, b in zip(points, points[1:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upgrades", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/upgrade.json"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="corral-bench-upgrade-")
    exe = os.path.join(tmp, "corral")
    a = open(CORRAL, "rb").read()
    b = a + b"\n-- build B --\n"
    port = free_port()
    with open(os.path.join(tmp, "pool.toml"), "w") as f:
        f.write(f'command = ["node", "{NODE_APP}"]\ninstances = 4\nlisten = ["127.0.0.1:{port}"]\n'
                '[ready]\nmode = "delay"\ndelay = "500ms"\n')
    shutil.copy(CORRAL, exe)
    env = dict(os.environ, CORRAL_RUNTIME_ROOT=os.path.join(tmp, "run"))
    master = subprocess.Popen([exe, "run", "-c", os.path.join(tmp, "pool.toml")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    control = os.path.join(tmp, "run/pool/control.sock")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                st = ask(control, {"cmd": "status"})["status"]
                if st["ready"] == 4:
                    break
            except (OSError, TypeError, ValueError):
                pass
            time.sleep(0.05)
        client = Client(port)
        client.start()
        time.sleep(1.0)
        # Baseline: the same client, no upgrade, as long as the upgrades will take (about).
        b0 = time.monotonic()
        time.sleep(0.25 * args.upgrades)
        b1 = time.monotonic()
        baseline_gap = max_gap(client.done, b0, b1)
        takeovers, gaps = [], []
        workers_before = sorted(w["pid"] for w in ask(control, {"cmd": "status"})["status"]["workers"])
        for i in range(args.upgrades):
            tmpfile = exe + ".new"
            with open(tmpfile, "wb") as f:
                f.write(b if i % 2 == 0 else a)
            os.chmod(tmpfile, 0o755)
            os.rename(tmpfile, exe)
            before = ask(control, {"cmd": "status"})["status"]["upgrades"]
            t0 = time.monotonic()
            try:
                reply = ask(control, {"cmd": "upgrade"}, timeout=30)
                if reply is not None and not reply.get("ok"):
                    raise SystemExit(f"upgrade refused: {reply}")
            except OSError:
                pass
            while True:
                try:
                    st = ask(control, {"cmd": "status"}, timeout=2)["status"]
                    if st["upgrades"] > before:
                        break
                except (OSError, TypeError, ValueError):
                    pass
            t1 = time.monotonic()
            takeovers.append(t1 - t0)
            time.sleep(0.2)
            gaps.append(max_gap(client.done, t0, time.monotonic()))
        client.stop.set()
        client.join()
        workers_after = sorted(w["pid"] for w in ask(control, {"cmd": "status"})["status"]["workers"])
        result = {
            "upgrades": args.upgrades,
            "requests": len(client.done),
            "failed": client.failed,
            "workers_kept": workers_before == workers_after,
            "takeover_ms": {"median": statistics.median(takeovers) * 1000, "max": max(takeovers) * 1000},
            "longest_gap_during_upgrade_ms": max(gaps) * 1000,
            "median_gap_during_upgrade_ms": statistics.median(gaps) * 1000,
            "longest_gap_baseline_ms": baseline_gap * 1000,
            "gap_ratio_vs_baseline": max(gaps) / baseline_gap if baseline_gap else None,
        }
        print(json.dumps(result, indent=2))
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    finally:
        master.terminate()
        try:
            master.wait(timeout=30)
        except subprocess.TimeoutExpired:
            master.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
