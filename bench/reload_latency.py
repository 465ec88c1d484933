#!/usr/bin/env python3
"""What a rolling reload costs the requests in flight: corral vs PM2 cluster mode vs Node's
`cluster` (rolling reload on SIGHUP, bench/launchers/node-cluster.js), in one run.

Each manager runs 2 workers of the same plain Node `http` app (examples/node/app.js). For each
client behaviour (a new connection per request, and keep-alive), wrk -t1 -c64 runs three phases
of the same length on each manager, the managers interleaved round by round:
  steady      no reload
  periodic    a rolling reload every 3 s
  continuous  reloads back to back
and reports throughput, p50/p99/max latency and errors, with each phase as a ratio of the same
manager's steady phase. Then, per manager, a Node client that records every request
(bench/launchers/latency-client.js) runs 7 s with one reload at 3 s: the latency time series
around a single rolling reload, plotted to docs/bench-reload-latency.png.

    python3 bench/reload_latency.py            # 15 s phases, 2 rounds (~13 min on 2 cores)
    python3 bench/reload_latency.py --quick    # 5 s phases, 1 round (~4 min)
Writes bench/results/reload-latency.json; prints the tables for docs/benchmarks.md.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the managers' set-up, wrk and PM2 installation are shared)

ROOT = compare.ROOT
CLIENT = os.path.join(ROOT, "bench/launchers/latency-client.js")
# corral-plain: reload.start_nice = 0, new workers at full priority (corral before #26).
KINDS = ["corral", "corral-plain", "pm2", "cluster"]
WRK_MAX = re.compile(r"Latency\s+[\d.]+\w+\s+[\d.]+\w+\s+([\d.]+)(us|ms|s)")


class Manager(compare.Setup):
    """compare.Setup with Node cluster's rolling reload (SIGHUP to the primary), waited for."""

    def __init__(self, kind, n, port, tmp):
        base = {"cluster": "cluster-none", "corral-plain": "corral"}.get(kind, kind)
        super().__init__(base, n, port, tmp)
        self.name = kind
        self.done_file = os.path.join(tmp, f"{kind}-reload-done")
        self.env["BENCH_RELOAD_DONE"] = self.done_file

    def start(self):
        if self.kind != "corral":
            return super().start()
        # compare.Setup's corral, with reload.start_nice as this configuration wants.
        cfg = os.path.join(self.tmp, f"{self.name}.toml")
        nice = "\n[reload]\nstart_nice = 0\n" if self.name == "corral-plain" else ""
        with open(cfg, "w") as f:
            f.write(f'name = "{self.name}"\ncommand = ["node", "{compare.APP}"]\ninstances = {self.n}\n')
            f.write(f'listen = ["127.0.0.1:{self.port}"]\n[ready]\nmode = "notify"\n[logs]\ntarget = "stderr"\n{nice}')
        self.env["CORRAL_RUNTIME_ROOT"] = os.path.join(self.tmp, "run")
        self.env["CORRAL_LOG"] = "warn"
        log = open(os.path.join(self.tmp, f"{self.name}.log"), "a")
        self.proc = subprocess.Popen([compare.CORRAL, "run", "-c", cfg], env=self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, cwd=ROOT)

    def reload(self):
        if self.kind == "corral":
            subprocess.run([compare.CORRAL, "reload", self.name], env=self.env, check=True, stdout=subprocess.DEVNULL)
            return
        if self.name != "cluster":
            return super().reload()
        before = os.path.getmtime(self.done_file) if os.path.exists(self.done_file) else 0
        self.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if os.path.exists(self.done_file) and os.path.getmtime(self.done_file) > before:
                return
            time.sleep(0.005)


def wrk(port, seconds, close, during=None):
    """wrk -t1 -c64 for `seconds`; `during(stop)` runs alongside (the reloads) until wrk ends."""
    cmd = ["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    proc = subprocess.Popen(cmd + [f"http://127.0.0.1:{port}{compare.URL_PATH}"], stdout=subprocess.PIPE, text=True)
    stop = threading.Event()
    reloads = []
    t = None
    if during:
        t = threading.Thread(target=during, args=(stop, reloads))
        t.start()
    out = proc.communicate(timeout=seconds + 60)[0]
    stop.set()
    if t:
        t.join()
    r = {"rps": 0.0, "p50_ms": None, "p99_ms": None, "max_ms": None, "errors": 0, "requests": 0}
    if "Requests/sec" in out:
        r["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    unit = {"us": 0.001, "ms": 1, "s": 1000}
    for pct, v, u in compare.WRK_LAT.findall(out):
        r[f"p{pct}_ms"] = float(v) * unit[u]
    m = WRK_MAX.search(out)
    if m:
        r["max_ms"] = float(m.group(1)) * unit[m.group(2)]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["errors"] += int(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m:
        r["requests"] = int(m.group(1))
    r["reloads"] = len(reloads)
    r["reload_s"] = statistics.median(reloads) if reloads else None
    return r


def reloader(mgr, every):
    """Reload every `every` seconds (0: back to back) until stopped; record each reload's time."""

    def run(stop, took):
        # Let wrk connect first.
        if stop.wait(1.0):
            return
        while not stop.is_set():
            t = time.monotonic()
            mgr.reload()
            took.append(time.monotonic() - t)
            if every and stop.wait(max(0.0, every - (time.monotonic() - t))):
                return

    return run


def time_series(mgr, port, close, tmp):
    """Every request's latency over 7 s with one reload at 3 s (the first second, the client's
    own warm-up, is left out of the plot)."""
    out = os.path.join(tmp, f"series-{mgr.name}-{int(close)}.jsonl")
    client = subprocess.Popen(["node", CLIENT, str(port), "7", "32", "1" if close else "0", out])
    time.sleep(3.0)
    t = time.monotonic()
    mgr.reload()
    took = time.monotonic() - t
    client.wait(timeout=60)
    rows = [json.loads(line) for line in open(out) if line.strip()]
    return {"reload_at_ms": 3000.0, "reload_s": took, "rows": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/reload-latency.json"))
    args = ap.parse_args()
    seconds = args.seconds or (5 if args.quick else 15)
    rounds = args.rounds or (1 if args.quick else 2)
    compare.install()
    results = {"seconds": seconds, "rounds": rounds, "workers": 2, "client": "wrk -t1 -c64", "phases": {}, "series": {}}
    with tempfile.TemporaryDirectory(prefix="corral-reload-latency-") as tmp:
        managers = {}
        try:
            for kind in KINDS:
                port = compare.free_port()
                m = Manager(kind, 2, port, tmp)
                m.start()
                if not m.wait_ready():
                    raise SystemExit(f"{kind} did not start")
                managers[kind] = (m, port)
            time.sleep(1.0)
            for close in (True, False):
                mode = "close" if close else "keepalive"
                for rnd in range(rounds):
                    order = KINDS if rnd % 2 == 0 else list(reversed(KINDS))
                    for kind in order:
                        m, port = managers[kind]
                        for phase, during in (
                            ("steady", None),
                            ("periodic", reloader(m, 3.0)),
                            ("continuous", reloader(m, 0.0)),
                        ):
                            r = wrk(port, seconds, close, during)
                            results["phases"].setdefault(mode, {}).setdefault(kind, {}).setdefault(phase, []).append(r)
                            print(
                                f"{mode:9} {kind:7} {phase:10} {r['rps']:9.0f} rps  p50 {r['p50_ms']} ms  "
                                f"p99 {r['p99_ms']} ms  max {r['max_ms']} ms  errors {r['errors']}  "
                                f"reloads {r['reloads']} ({r['reload_s']})",
                                flush=True,
                            )
                for kind in KINDS:
                    m, port = managers[kind]
                    results["series"].setdefault(mode, {})[kind] = time_series(m, port, close, tmp)
        finally:
            for m, _ in managers.values():
                m.stop()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f)
    report(results)


def med(runs, key):
    xs = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def report(results):
    """The tables (markdown) and the plot."""
    for mode, kinds in results["phases"].items():
        print(f"\n{mode}: median of {results['rounds']} rounds, {results['seconds']} s each, {results['client']}\n")
        print("| | steady rps | p50 | p99 | max | reload every 3 s: rps | p99 | back to back: rps | p99 | errors | s per reload |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for kind, phases in kinds.items():
            s, p, c = phases["steady"], phases["periodic"], phases["continuous"]
            rps, p99 = med(s, "rps"), med(s, "p99_ms")
            ratio = lambda runs, key, base: f"×{med(runs, key) / base:.2f}" if base and med(runs, key) else "-"
            errors = sum(r["errors"] for r in s + p + c)
            per = med(c, "reload_s")
            per = f"{per:.2f}" if per is not None else "-"
            print(
                f"| {kind} | {rps:.0f} | {med(s, 'p50_ms'):.2f} ms | {p99:.2f} ms | {med(s, 'max_ms'):.1f} ms | "
                f"{ratio(p, 'rps', rps)} | {ratio(p, 'p99_ms', p99)} | {ratio(c, 'rps', rps)} | {ratio(c, 'p99_ms', p99)} | "
                f"{errors} | {per} |"
            )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    modes = list(results["series"])
    fig, axes = plt.subplots(len(modes), 1, figsize=(10, 4 * len(modes)), squeeze=False)
    colors = {"corral": "tab:blue", "corral-plain": "tab:purple", "pm2": "tab:orange", "cluster": "tab:green"}
    for ax, mode in zip(axes[:, 0], modes):
        for kind, s in results["series"][mode].items():
            rows = s["rows"]
            # p99 per 100 ms window.
            windows = {}
            for start, lat, _ok in rows:
                windows.setdefault(int(start // 100), []).append(lat)
            xs = sorted(x for x in windows if x >= 10)
            ys = [sorted(windows[x])[max(0, int(len(windows[x]) * 0.99) - 1)] for x in xs]
            ax.plot([x / 10 for x in xs], ys, label=f"{kind} (reload {s['reload_s']:.2f} s)", color=colors.get(kind))
            ax.axvspan(s["reload_at_ms"] / 1000, s["reload_at_ms"] / 1000 + s["reload_s"], color=colors.get(kind), alpha=0.08)
        ax.set_title(f"p99 latency per 100 ms around one rolling reload at 3 s ({mode}, 2 workers, 32 clients)")
        ax.set_xlabel("seconds")
        ax.set_ylabel("p99 ms")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    path = os.path.join(ROOT, "docs/bench-reload-latency.png")
    fig.savefig(path, dpi=90)
    print(f"plot: {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--report":
        report(json.load(open(os.path.join(ROOT, "bench/results/reload-latency.json"))))
    else:
        main()
