#!/usr/bin/env python3
"""Every framework recipe of docs/frameworks.md, run under corral through rolling reloads.

For each framework it installs pinned versions from the registries into a cache directory
(Node 22 and the npm packages, a Python virtualenv, the Go and Rust builds; Puma is Debian's), starts a pool of 2
workers under corral with the recipe's ready mode, and drives two request streams at once
through RELOADS rolling reloads: one opening a new connection per request, one keep-alive
client that never retries. Any error or non-200 answer is a failed request. The same run with
the framework's stock shutdown code is reported next to it.

    python3 tests/frameworks/run.py [--only express,go] [--reloads 5] [--json FILE] [--docs]

--docs rewrites the table in docs/frameworks.md. Exit status 1 if a recipe lost a request, a
reload failed, or a setup step failed. Run by tests/frameworks.rs (and so by the README's test
command); needs npm, python3-venv, golang-go and puma (scripts/test.sh installs them).
"""

import argparse
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EX = os.path.join(ROOT, "examples", "frameworks")
NODE_VERSION = "22.23.3"
TABLE_BEGIN = "<!-- frameworks-table:begin (tests/frameworks/run.py --docs) -->"
TABLE_END = "<!-- frameworks-table:end -->"


def log(msg):
    print(msg, flush=True)


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stamp(path, *inputs):
    """Whether `path` records exactly `inputs` (what was installed there last time)."""
    h = hashlib.sha256("\0".join(inputs).encode()).hexdigest()
    mark = os.path.join(path, ".corral-stamp")
    ok = os.path.exists(mark) and open(mark).read() == h
    return ok, lambda: open(mark, "w").write(h)


class Setup:
    def __init__(self, cache, corral):
        self.cache = cache
        self.corral = corral
        os.makedirs(cache, exist_ok=True)

    def node(self):
        arch = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        pkg = os.path.join(EX, "node", "package.json")
        d = os.path.join(self.cache, "node")
        ok, done = stamp(d, NODE_VERSION, arch, open(pkg).read())
        if not ok:
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            # Node itself from the npm registry (the node-linux-* packages carry the official
            # binaries): Debian 12's Node 18 is older than Express 5 and Fastify 5 support.
            npm = ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"]
            run(npm + [os.path.join(d, "runtime"), f"node-linux-{arch}@{NODE_VERSION}"], stdout=subprocess.DEVNULL)
            os.makedirs(os.path.join(d, "apps"))
            shutil.copy(pkg, os.path.join(d, "apps"))
            run(npm + [os.path.join(d, "apps")], stdout=subprocess.DEVNULL)
        self.node_bin = os.path.join(d, "runtime", "node_modules", f"node-linux-{arch}", "bin", "node")
        self.node_path = os.path.join(d, "apps", "node_modules")
        out = subprocess.run([self.node_bin, "--version"], capture_output=True, text=True, check=True).stdout
        log(f"node {out.strip()}")
        done()

    def python(self):
        req = os.path.join(EX, "python", "requirements.txt")
        d = os.path.join(self.cache, "venv")
        ok, done = stamp(d, open(req).read(), sys.version)
        if not ok:
            shutil.rmtree(d, ignore_errors=True)
            run([sys.executable, "-m", "venv", d])
            run([os.path.join(d, "bin", "pip"), "install", "-q", "--disable-pip-version-check", "-r", req])
            run([os.path.join(d, "bin", "python"), "-c",
                 "import fastapi, uvicorn, gunicorn, hypercorn, tornado, aiohttp, flask, django, waitress"])
            done()
        self.venv = d

    def go(self):
        src = os.path.join(EX, "go", "main.go")
        d = os.path.join(self.cache, "go")
        os.makedirs(d, exist_ok=True)
        self.go_bin = os.path.join(d, "server")
        env = dict(os.environ, GOCACHE=os.path.join(d, "build-cache"), GOPATH=os.path.join(d, "gopath"),
                   GO111MODULE="off", GOFLAGS="")
        run(["go", "build", "-o", self.go_bin, src], env=env)

    def puma(self):
        # Debian's puma (scripts/test.sh installs it), as an operator would run it.
        self.puma_bin = shutil.which("puma") or "/nonexistent/puma"
        out = subprocess.run([self.puma_bin, "--version"], capture_output=True, text=True, check=True).stdout
        log(out.strip())

    def axum(self):
        run(["cargo", "build", "--quiet", "--locked", "--example", "fw-axum"], cwd=ROOT)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        self.axum_bin = os.path.join(target, "debug", "examples", "fw-axum")


def frameworks(s):
    """(name, how it takes the socket, ready mode, recipe command, stock command, env, workdir)."""
    node = lambda f: [s.node_bin, os.path.join(EX, "node", f)]  # noqa: E731
    py = os.path.join(EX, "python")
    v = lambda b: os.path.join(s.venv, "bin", b)  # noqa: E731
    stock = {"SHUTDOWN": "stock"}
    return [
        dict(name="node-http", label="Node `http`", socket="`server.listen({fd: 3})`", mode="listen",
             recipe=(node("http.js"), {}), stock=(node("http.js"), stock), env={"NODE_PATH": s.node_path}),
        dict(name="express", label="Express 5.3", socket="`app.listen({fd: 3})`", mode="listen",
             recipe=(node("express.js"), {}), stock=(node("express.js"), stock), env={"NODE_PATH": s.node_path}),
        dict(name="express4", label="Express 4.22", socket="`app.listen({fd: 3})`", mode="listen",
             recipe=(node("express.js"), {}), stock=(node("express.js"), stock),
             env={"NODE_PATH": s.node_path, "EXPRESS": "express4"}),
        dict(name="fastify", label="Fastify 5.12", socket="`app.listen({fd: 3})`", mode="listen",
             recipe=(node("fastify.js"), {}), stock=(node("fastify.js"), stock), env={"NODE_PATH": s.node_path}),
        dict(name="hono", label="Hono 4.13 (`@hono/node-server`)",
             socket="`createAdaptorServer()` → `listen({fd: 3})`", mode="listen",
             recipe=(node("hono.js"), {}), stock=(node("hono.js"), stock), env={"NODE_PATH": s.node_path}),
        dict(name="uvicorn", label="uvicorn 0.54 (FastAPI)", socket="`socket.socket(fileno=3)` → `serve(sockets=)`",
             mode="listen", recipe=([v("python"), os.path.join(py, "serve_uvicorn.py")], {}),
             stock=([v("uvicorn"), "--fd", "3", "--log-level", "warning", "app:app"], {}), workdir=py),
        dict(name="gunicorn-uvicorn", label="gunicorn 27 + uvicorn workers",
             socket="gunicorn reads `LISTEN_FDS`", mode="listen",
             recipe=([v("gunicorn"), "--no-control-socket", "-w", "1", "-k", "drain.DrainingUvicornWorker",
                      "app:app"], {}),
             stock=([v("gunicorn"), "--no-control-socket", "-w", "1", "-k", "uvicorn.workers.UvicornWorker",
                     "app:app"], {}), workdir=py, stop_mode="main"),
        dict(name="gunicorn-sync", label="gunicorn 27 sync workers", socket="gunicorn reads `LISTEN_FDS`",
             mode="listen", recipe=([v("gunicorn"), "--no-control-socket", "-w", "1", "app:wsgi_app"], {}),
             stock=([v("gunicorn"), "--no-control-socket", "-w", "1", "app:wsgi_app"], {}), workdir=py,
             stop_mode="main"),
        dict(name="hypercorn", label="hypercorn 0.18 (FastAPI)", socket="`--bind fd://3`", mode="listen",
             recipe=([v("python"), os.path.join(py, "serve_hypercorn.py")], {}),
             stock=([v("hypercorn"), "--bind", "fd://3", "app:app"], {}), workdir=py),
        dict(name="tornado", label="Tornado 6.6", socket="`socket.socket(fileno=3)`, `setblocking(False)`, "
             "`add_sockets`", mode="listen", recipe=([v("python"), os.path.join(py, "serve_tornado.py")], {}),
             stock=([v("python"), os.path.join(py, "serve_tornado.py")], stock), workdir=py),
        dict(name="aiohttp", label="aiohttp 3.14", socket="`loop.create_server(runner.server, sock=…)`",
             mode="listen", recipe=([v("python"), os.path.join(py, "serve_aiohttp.py")], {}),
             stock=([v("python"), os.path.join(py, "serve_aiohttp.py")], stock), workdir=py),
        dict(name="flask-gunicorn", label="Flask 3.1 on gunicorn 27 gthread", socket="gunicorn reads `LISTEN_FDS`",
             mode="listen", recipe=([v("gunicorn"), "--no-control-socket", "-w", "1", "-k", "gthread", "--threads",
                                     "4", "wsgi_apps:flask_app"], {}),
             stock=([v("gunicorn"), "--no-control-socket", "-w", "1", "-k", "gthread", "--threads", "4",
                     "wsgi_apps:flask_app"], {}), workdir=py, stop_mode="main"),
        dict(name="django-gunicorn", label="Django 5.2 on gunicorn 27 gthread", socket="gunicorn reads `LISTEN_FDS`",
             mode="listen", recipe=([v("gunicorn"), "--no-control-socket", "-w", "1", "-k", "gthread", "--threads",
                                     "4", "wsgi_apps:django_app"], {}),
             stock=([v("gunicorn"), "--no-control-socket", "-w", "1", "-k", "gthread", "--threads", "4",
                     "wsgi_apps:django_app"], {}), workdir=py, stop_mode="main"),
        dict(name="waitress", label="Waitress 3.0", socket="`create_server(app, sockets=[socket.socket(fileno=3)])`",
             mode="listen", recipe=([v("python"), os.path.join(py, "serve_waitress.py")], {}),
             stock=([v("python"), os.path.join(py, "serve_waitress.py")], stock), workdir=py),
        dict(name="puma", label="Puma 5.6 (Debian)", socket="`bind_to_activated_sockets \"only\"`", mode="listen",
             recipe=([s.puma_bin, "-C", "puma.rb", "config.ru"], {}),
             stock=([s.puma_bin, "--bind-to-activated-sockets", "only", "-t", "4:4", "-e", "production",
                     "config.ru"], {}), workdir=os.path.join(EX, "ruby")),
        dict(name="go", label="Go net/http", socket="`net.FileListener(os.NewFile(3, …))`", mode="listen",
             recipe=([s.go_bin], {}), stock=([s.go_bin], stock)),
        dict(name="axum", label="Rust axum 0.8", socket="`listenfd` → `TcpListener::from_std`", mode="listen",
             recipe=([s.axum_bin], {}), stock=([s.axum_bin], stock)),
    ]


class Client(threading.Thread):
    """Requests in a loop until stopped: a new connection each time, or one keep-alive
    connection reused until the server says `Connection: close` (then a new one). A request
    that fails is counted and never retried."""

    def __init__(self, port, keepalive, stop):
        super().__init__(daemon=True)
        self.port, self.keepalive, self.stop = port, keepalive, stop
        self.ok = self.failed = 0
        self.errors = {}

    def fail(self, what):
        self.failed += 1
        self.errors[what] = self.errors.get(what, 0) + 1

    def run(self):
        conn = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/", headers={} if self.keepalive else {"Connection": "close"})
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    self.ok += 1
                else:
                    self.fail(f"HTTP {r.status}")
                if not self.keepalive or r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                self.fail(type(e).__name__)
                conn.close()
                conn = None


def corral_cli(env, *args, timeout=120):
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)


def measure(s, fw, variant, reloads, tmp):
    cmd, extra_env = fw[variant]
    port = free_port()
    d = tempfile.mkdtemp(prefix=f"{fw['name']}-{variant}-", dir=tmp)
    env_vars = dict(fw.get("env", {}), **extra_env)
    cfg = os.path.join(d, "fw.toml")
    with open(cfg, "w") as f:
        f.write(f"command = {json.dumps(cmd)}\ninstances = 2\nlisten = [\"127.0.0.1:{port}\"]\n")
        if fw.get("workdir"):
            f.write(f"workdir = {json.dumps(fw['workdir'])}\n")
        if env_vars:
            f.write("env = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env_vars.items()) + " }\n")
        f.write(f"[ready]\nmode = \"{fw['mode']}\"\ntimeout = \"60s\"\n")
        f.write(f"[stop]\ntimeout = \"15s\"\nmode = \"{fw.get('stop_mode', 'group')}\"\n")
        f.write("[reload]\nbatch = 1\n[restart]\nmax_restarts = 3\n")
    env = dict(os.environ, CORRAL_RUNTIME_ROOT=os.path.join(d, "run"), NO_COLOR="1")
    env.pop("NOTIFY_SOCKET", None)
    logf = open(os.path.join(d, "master.log"), "w")
    master = subprocess.Popen([s.corral, "run", "-c", cfg], env=env, stdout=logf, stderr=logf,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    row = {"framework": fw["name"], "variant": variant, "reloads_ok": 0, "reloads": reloads}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            st = corral_cli(env, s.corral, "status", "fw", "--json", timeout=30)
            if st.returncode == 0 and json.loads(st.stdout).get("ready") == 2:
                break
            if master.poll() is not None:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("the pool was not ready within 90 s")
        if master.poll() is not None:
            raise RuntimeError(f"corral exited with {master.returncode}")
        stop = threading.Event()
        clients = {"close": Client(port, False, stop), "keepalive": Client(port, True, stop)}
        for c in clients.values():
            c.start()
        time.sleep(0.5)
        t = time.monotonic()
        for _ in range(reloads):
            r = corral_cli(env, s.corral, "reload", "fw")
            if r.returncode == 0:
                row["reloads_ok"] += 1
            else:
                log(f"  reload failed: {r.stdout}{r.stderr}".rstrip())
        row["seconds_per_reload"] = round((time.monotonic() - t) / reloads, 2)
        time.sleep(0.5)
        stop.set()
        for c in clients.values():
            c.join(timeout=30)
        for mode, c in clients.items():
            row[mode] = {"requests": c.ok + c.failed, "failed": c.failed, "errors": c.errors}
    except Exception as e:  # a setup failure is a failed row, not a crash of the whole run
        row["error"] = str(e)
    finally:
        if master.poll() is None:
            os.killpg(master.pid, signal.SIGTERM)
            try:
                master.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(master.pid, signal.SIGKILL)
                master.wait()
        logf.close()
    row["log"] = os.path.join(d, "master.log")
    return row


def cell(row, mode):
    if "error" in row:
        return "error"
    m = row.get(mode)
    return f"{m['failed']} of {m['requests']}" if m else "–"


def table(fws, rows):
    by = {(r["framework"], r["variant"]): r for r in rows}
    out = ["| framework | socket | ready mode | new connection per request: recipe | stock | "
           "keep-alive, no retry: recipe | stock |",
           "|---|---|---|---|---|---|---|"]
    for fw in fws:
        rec, st = by.get((fw["name"], "recipe")), by.get((fw["name"], "stock"))
        if rec is None:
            continue
        out.append(f"| {fw['label']} | {fw['socket']} | `{fw['mode']}` | {cell(rec, 'close')} | "
                   f"{cell(st, 'close') if st else '–'} | {cell(rec, 'keepalive')} | "
                   f"{cell(st, 'keepalive') if st else '–'} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="comma-separated framework names")
    ap.add_argument("--reloads", type=int, default=5)
    ap.add_argument("--cache", default=os.environ.get("CORRAL_FRAMEWORKS_CACHE",
                                                       os.path.join(ROOT, "target", "frameworks-cache")))
    ap.add_argument("--corral", default=os.path.join(ROOT, "target", "debug", "corral"))
    ap.add_argument("--json")
    ap.add_argument("--docs", action="store_true")
    ap.add_argument("--no-stock", action="store_true", help="run only the recipes")
    a = ap.parse_args()
    if a.docs and (a.only or a.no_stock):
        ap.error("--docs rewrites the whole table: run every framework, recipe and stock")
    only = set(a.only.split(",")) if a.only else None
    s = Setup(a.cache, a.corral)
    wanted = lambda *names: only is None or any(n in only for n in names)  # noqa: E731
    s.node_bin = s.node_path = s.venv = s.go_bin = s.axum_bin = s.puma_bin = "/nonexistent"
    if wanted("node-http", "express", "fastify", "express4", "hono"):
        s.node()
    if wanted("uvicorn", "gunicorn-uvicorn", "gunicorn-sync", "hypercorn", "tornado", "aiohttp", "flask-gunicorn",
              "django-gunicorn", "waitress"):
        s.python()
    if wanted("puma"):
        s.puma()
    if wanted("go"):
        s.go()
    if wanted("axum"):
        s.axum()
    fws = [f for f in frameworks(s) if wanted(f["name"])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="corral-frameworks-") as tmp:
        for fw in fws:
            for variant in ("recipe",) if a.no_stock else ("recipe", "stock"):
                row = measure(s, fw, variant, a.reloads, tmp)
                if "error" in row or row["reloads_ok"] < row["reloads"]:
                    print(f"---- {row['log']} ----\n" + open(row["log"]).read()[-3000:], file=sys.stderr)
                row.pop("log")
                rows.append(row)
                log(f"{fw['name']:17} {variant:6} reloads {row['reloads_ok']}/{row['reloads']} "
                    f"new-connection {cell(row, 'close'):>14}  keep-alive {cell(row, 'keepalive'):>14}"
                    + (f"  {row['close']['errors'] or ''} {row['keepalive']['errors'] or ''}"
                       if "error" not in row else f"  {row['error']}"))
    text = table(fws, rows)
    print(text)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"reloads": a.reloads, "rows": rows}, f, indent=1)
    if a.docs:
        p = os.path.join(ROOT, "docs", "frameworks.md")
        doc = open(p).read()
        i, j = doc.index(TABLE_BEGIN) + len(TABLE_BEGIN), doc.index(TABLE_END)
        note = (f"_{a.reloads} rolling reloads per run, 2 workers, batch 1; measured "
                f"{time.strftime('%Y-%m-%d')} on a {os.cpu_count()}-core machine._")
        open(p, "w").write(f"{doc[:i]}\n{text}\n\n{note}\n{doc[j:]}")
    bad = [r for r in rows if r["variant"] == "recipe" and
           ("error" in r or r["reloads_ok"] < r["reloads"] or r["close"]["failed"] or r["keepalive"]["failed"])]
    bad += [r for r in rows if r["variant"] == "stock" and "error" in r]
    for r in bad:
        log(f"FAILED: {r['framework']} {r['variant']}: {r.get('error') or 'lost requests or a failed reload'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
