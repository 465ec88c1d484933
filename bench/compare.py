#!/usr/bin/env python3
"""corral against PM2 cluster mode and Node's cluster module, on the same app, in one run.

Configurations (all run examples/node/app.js, a plain Node `http` app):
  single        one Node process (reference)
  cluster-rr    Node `cluster`, default scheduling (round-robin: the primary accepts, passes fds)
  cluster-none  Node `cluster` with NODE_CLUSTER_SCHED_POLICY=none (workers share the socket)
  pm2           PM2 cluster mode, `pm2 start -i N`
  corral        corral, N workers on one shared listening socket
  bare          N bare Node processes on one shared socket, started by a launcher that does
                nothing else: the physical limit of corral's design

For N = 1, 2 and the core count, two concurrency levels, and two client behaviours (keep-alive,
and a new connection per request), wrk runs >= 3 times; figures are medians with min/max. All
configurations of one N run side by side and their wrk runs are interleaved (order alternating
per round), so the machine's drift over minutes does not read as a difference between tools. Also:
share of requests served by the busiest worker, manager RSS and CPU seconds during load, total
RSS, start -> all workers answering, crash -> replacement serving, failed requests per rolling
reload under load (pm2 reload vs corral reload).

    python3 bench/compare.py            # full run (~15 min on 2 cores)
    python3 bench/compare.py --quick    # fewer, shorter runs
Writes bench/results/compare.json, docs/benchmarks.md and docs/bench-*.png.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "examples/node/app.js")
DEPS = os.path.join(ROOT, "bench/.deps")
PM2 = os.path.join(DEPS, "node_modules/.bin/pm2")
CORRAL = os.path.join(ROOT, "target/release/corral")
URL_PATH = "/api/v1/hello"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def install():
    if not shutil.which("wrk"):
        sh("apt-get", "install", "-y", "-q", "wrk")
    if not os.path.exists(PM2):
        os.makedirs(DEPS, exist_ok=True)
        sh("npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", DEPS, "pm2@latest")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        # Debian's package (no pip into Debian's Python: PEP 668); run the benchmarks with it.
        sh("apt-get", "install", "-y", "-q", "python3-matplotlib")
    sh("cargo", "build", "--release", "--quiet", "--bin", "corral", cwd=ROOT)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def control(path, request, timeout=10.0):
    """One request to a corral master's control socket; the raw reply (empty if the connection
    closed without one, as an upgrade's exec does)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(json.dumps(request).encode())
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(1 << 20):
        data += chunk
    s.close()
    return data


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid):
    try:
        f = proc_stat(pid)
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid):
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                kids.setdefault(int(proc_stat(int(p))[1]), []).append(int(p))
            except (OSError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def counts(count_dir):
    out = {}
    for name in os.listdir(count_dir):
        try:
            with open(os.path.join(count_dir, name)) as f:
                out[int(name)] = int(f.read() or 0)
        except (OSError, ValueError):
            pass
    return out


def alive(pid):
    try:
        return proc_stat(pid)[0] != "Z"
    except OSError:
        return False


class Setup:
    """One configuration running: its manager process, its workers, how to stop and reload it."""

    def __init__(self, kind, n, port, tmp):
        self.kind, self.n, self.port, self.tmp = kind, n, port, tmp
        self.count_dir = tempfile.mkdtemp(dir=tmp, prefix=f"{kind}-{n}-")
        self.env = dict(os.environ, PORT=str(port), BENCH_COUNT_DIR=self.count_dir, NODE_ENV="production")
        self.env.pop("NOTIFY_SOCKET", None)
        self.proc = None
        self.pm2_home = os.path.join(tmp, "pm2")

    def start(self):
        log = open(os.path.join(self.tmp, f"{self.kind}.log"), "a")
        kw = dict(env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT)
        if self.kind == "single":
            self.proc = subprocess.Popen(["node", APP], **kw)
        elif self.kind.startswith("cluster"):
            if self.kind == "cluster-none":
                self.env["NODE_CLUSTER_SCHED_POLICY"] = "none"
            self.proc = subprocess.Popen(["node", os.path.join(ROOT, "bench/launchers/node-cluster.js"), str(self.n)], **kw)
        elif self.kind == "bare":
            cmd = [sys.executable, os.path.join(ROOT, "bench/launchers/bare.py"), str(self.n), str(self.port), "--", "node", APP]
            self.proc = subprocess.Popen(cmd, **kw)
        elif self.kind == "pm2":
            self.env["PM2_HOME"] = self.pm2_home
            sh(PM2, "start", APP, "-i", str(self.n), "--name", "bench", **kw)
        elif self.kind == "corral":
            cfg = os.path.join(self.tmp, f"corral-{self.n}.toml")
            ready = 'mode = "notify"' if shutil.which("systemd-notify") else 'mode = "delay"\ndelay = "500ms"'
            with open(cfg, "w") as f:
                f.write(f'name = "bench"\ncommand = ["node", "{APP}"]\ninstances = {self.n}\n')
                f.write(f'listen = ["127.0.0.1:{self.port}"]\n[ready]\n{ready}\n[logs]\ntarget = "stderr"\n')
            self.env["CORRAL_RUNTIME_ROOT"] = os.path.join(self.tmp, "run")
            self.env["CORRAL_LOG"] = "warn"
            self.proc = subprocess.Popen([CORRAL, "run", "-c", cfg], **kw)

    def manager(self):
        """The process that manages the workers (None for a single process)."""
        if self.kind == "single":
            return None
        if self.kind == "pm2":
            try:
                with open(os.path.join(self.pm2_home, "pm2.pid")) as f:
                    return int(f.read())
            except (OSError, ValueError):
                return None
        return self.proc.pid

    def workers(self):
        if self.kind == "single":
            return [self.proc.pid]
        m = self.manager()
        return descendants(m) if m else []

    def wait_ready(self, timeout=60, exclude=()):
        """Until n workers listen (each writes its count file when it does)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            live = [p for p in counts(self.count_dir) if p not in exclude and alive(p)]
            if len(live) >= self.n:
                return True
            time.sleep(0.002)
        return False

    def reload(self):
        if self.kind == "pm2":
            sh(PM2, "reload", "bench", env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif self.kind == "corral":
            sh(CORRAL, "reload", "bench", env=self.env, stdout=subprocess.DEVNULL)

    def stop(self):
        if self.kind == "pm2":
            subprocess.run([PM2, "kill"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Nothing may outlive the configuration: the next one needs the cores.
        for p in self.workers() if self.kind != "pm2" else []:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


WRK_LAT = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(port, conc, seconds, close):
    cmd = ["wrk", f"-t2", f"-c{conc}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{URL_PATH}"], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) if "Requests/sec" in out else 0.0
    lat = {}
    for pct, v, unit in WRK_LAT.findall(out):
        lat[pct] = float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1)) if "requests in" in out else 0
    return {"rps": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"), "errors": errors, "requests": total}


def summary(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def measure_all(kinds, n, args, tmp, results):
    """Run every configuration for this N side by side (idle ones cost nothing) and interleave
    their wrk runs, alternating the order each round: the machine's throughput drifts over
    minutes, and a sequential pass would turn that drift into differences between tools."""
    setups, rows = {}, {}
    for kind in kinds:
        s = Setup(kind, n, free_port(), tmp)
        t0 = time.monotonic()
        s.start()
        if not s.wait_ready():
            print(f"  {kind} N={n}: workers did not come up", flush=True)
            s.stop()
            continue
        setups[kind] = s
        rows[kind] = {"config": kind, "n": n, "start_to_all_ready_s": time.monotonic() - t0, "runs": {},
                      "manager_cpu_s": 0.0, "load_s": 0.0}
    time.sleep(1)
    for close in (False, True):
        for conc in args.concurrency:
            key = f"{'close' if close else 'keepalive'}-c{conc}"
            runs = {k: [] for k in setups}
            for r in range(args.runs):
                order = list(setups) if r % 2 == 0 else list(reversed(setups))
                for kind in order:
                    s = setups[kind]
                    mgr = s.manager()
                    cpu0 = cpu_seconds(mgr) if mgr else 0.0
                    before = counts(s.count_dir)
                    res = wrk(s.port, conc, args.seconds, close)
                    rows[kind]["manager_cpu_s"] += (cpu_seconds(mgr) - cpu0) if mgr else 0.0
                    rows[kind]["load_s"] += args.seconds
                    time.sleep(0.25)  # count files are written every 100 ms
                    after = counts(s.count_dir)
                    served = {p: after[p] - before.get(p, 0) for p in after if after[p] - before.get(p, 0) > 0}
                    tot = sum(served.values())
                    res["busiest_share_vs_fair"] = (max(served.values()) / tot) * n if tot else None
                    runs[kind].append(res)
            for kind, rs in runs.items():
                rows[kind]["runs"][key] = {
                    "rps": summary([x["rps"] for x in rs]),
                    "p50_ms": summary([x["p50_ms"] for x in rs]),
                    "p99_ms": summary([x["p99_ms"] for x in rs]),
                    "errors": sum(x["errors"] for x in rs),
                    "busiest_share_vs_fair": summary([x["busiest_share_vs_fair"] for x in rs]),
                }
                x = rows[kind]["runs"][key]
                print(f"  {kind:13} N={n} {key:15} {x['rps']['median']:9.0f} req/s  "
                      f"busiest {x['busiest_share_vs_fair']['median'] or 0:.2f}x fair", flush=True)
    for kind, s in setups.items():
        row = rows[kind]
        mgr = s.manager()
        if mgr:
            row["manager_cpu_share_of_load_time"] = row["manager_cpu_s"] / row["load_s"]
            row["manager_rss_bytes"] = rss_bytes(mgr)
        else:
            del row["manager_cpu_s"]
        workers = s.workers()
        row["total_rss_bytes"] = (rss_bytes(mgr) if mgr else 0) + sum(rss_bytes(w) for w in workers if w != mgr)
        # Crash -> replacement serving (not for configurations that do not replace workers).
        if kind not in ("single", "bare"):
            victims = [p for p in counts(s.count_dir) if alive(p)]
            if victims:
                t = time.monotonic()
                os.kill(victims[0], signal.SIGKILL)
                if s.wait_ready(timeout=30, exclude=(victims[0],)):
                    row["crash_to_serving_s"] = time.monotonic() - t
        s.stop()
        results["configs"].append(row)


def reload_failures(kind, n, args, tmp, results):
    """Failed requests per rolling reload, with a new connection per request under load."""
    port = free_port()
    s = Setup(kind, n, port, tmp)
    s.start()
    if not s.wait_ready():
        s.stop()
        return
    time.sleep(0.5)
    out = {}
    for close in (True, False):
        cmd = ["wrk", "-t2", "-c16", "-d120s", "--timeout", "5s"] + (["-H", "Connection: close"] if close else [])
        w = subprocess.Popen(cmd + [f"http://127.0.0.1:{port}{URL_PATH}"], stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        t = time.monotonic()
        for _ in range(args.reloads):
            s.reload()
        took = time.monotonic() - t
        w.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
        text = w.communicate(timeout=30)[0]
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        errs = sum(int(x) for x in m.groups()) if m else 0
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        errs += int(m.group(1)) if m else 0
        total = int(re.search(r"(\d+) requests in", text).group(1)) if "requests in" in text else 0
        mode = "close" if close else "keepalive"
        out[mode] = {"reloads": args.reloads, "failed": errs, "failed_per_reload": errs / args.reloads,
                     "requests": total, "seconds_per_reload": took / args.reloads}
        print(f"  reload {kind:7} {mode:9}: {errs} failed of {total} over {args.reloads} reloads", flush=True)
    s.stop()
    results["reloads"][kind] = out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/compare.json"))
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--only-reloads", action="store_true", help="measure reloads only; keep the other figures of --out")
    args = ap.parse_args()
    args.runs = 3 if args.quick else 5
    args.seconds = 2 if args.quick else 4
    args.concurrency = [32] if args.quick else [16, 128]
    args.reloads = 10
    if not args.no_install:
        install()
    cores = os.cpu_count() or 2
    ns = sorted({1, 2, cores})
    results = {
        "machine": {"cpus": cores, "kernel": os.uname().release,
                    "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
                    "pm2": subprocess.run([PM2, "--version"], capture_output=True, text=True,
                                          env=dict(os.environ, PM2_HOME=tempfile.mkdtemp())).stdout.strip().splitlines()[-1:],
                    "note": "load generator (wrk -t2) and servers share the same cores"},
        "settings": {"runs": args.runs, "seconds": args.seconds, "concurrency": args.concurrency},
        "configs": [], "reloads": {},
    }
    if args.only_reloads and os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)
        results["reloads"] = {}
        ns = []
    with tempfile.TemporaryDirectory(prefix="corral-compare-") as tmp:
        for n in ns:
            kinds = (["single"] if n == 1 else []) + ["cluster-rr", "cluster-none", "pm2", "corral", "bare"]
            measure_all(kinds, n, args, tmp, results)
        for kind in ["pm2", "corral"]:
            reload_failures(kind, 2, args, tmp, results)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    subprocess.run([sys.executable, os.path.join(ROOT, "bench/report.py"), args.out], check=True)


if __name__ == "__main__":
    main()
