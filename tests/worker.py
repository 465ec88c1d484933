#!/usr/bin/env python3
"""Test worker for corral's integration tests.

It knows only the systemd protocols: sockets at fd 3.. (LISTEN_FDS/LISTEN_PID) and
NOTIFY_SOCKET. It serves HTTP on its first socket ("GET /" answers with its pid, slot and
generation) and can be told to misbehave through its arguments:

  --report FILE      write what it received (fds, env, ids, cwd) as JSON, then go on
  --ready-after MS   send READY=1 after MS milliseconds (default 0)
  --never-ready      never send READY=1
  --exit CODE        exit with CODE right after start (before ready)
  --crash-after MS   exit 3 MS milliseconds after becoming ready
  --ignore-term      ignore SIGTERM (only SIGKILL stops it)
  --fail-if-env VAR  exit 4 before ready if VAR is set (a "broken release")
  --spawn-child      start a child process (sleep) that stays in the process group
  --say TEXT         print TEXT on stdout, TEXT-err on stderr and "<4>TEXT-warn" on stdout at start
  --long N           print one line of N "x" characters at start
  --leak-mib N       allocate (and touch) N MiB, --leak-after MS after becoming ready
  --leak-in-child    ... in a child forked then (same process group), not in the worker itself
  --watchdog         send WATCHDOG=1 every WATCHDOG_USEC/4; --stop-pinging-after MS stops it
  --metrics MODES    serve metrics at CORRAL_METRICS_SOCKET: MODE, or SLOT=MODE,... per slot;
                     text | openmetrics (requests served, as test_requests_total) | garbage |
                     slow (answers after 60 s) | huge (100 MB) | http500 | none
"""

import argparse
import http.server
import json
import resource
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time


def notify(msg: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.send(msg.encode())


def open_fds():
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the fd listdir itself used
        out.append((fd, target))
    return out


def report(path: str, initial_fds) -> None:
    info = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "fds": [fd for fd, _ in initial_fds],
        "fd_targets": {str(fd): t for fd, t in initial_fds},
        "env": dict(os.environ),
        "sigpipe_default": signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL,
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.rename(tmp, path)


CONNS = {}  # handler -> True while it waits for the next request on a keep-alive connection
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # headers and body leave in one write

    def setup(self):
        self.request.setblocking(True)
        # TCP_NODELAY exists for TCP only (a unix socket refuses it).
        self.disable_nagle_algorithm = self.request.family != socket.AF_UNIX
        super().setup()

    def handle(self):
        try:
            # A connection this worker accepted gets its request answered, even while stopping;
            # only an idle keep-alive connection is closed when the worker stops.
            self.handle_one_request()
            while not self.close_connection:
                with LOCK:
                    if STOPPING.is_set():
                        break
                    CONNS[self] = True
                self.handle_one_request()
        finally:
            with LOCK:
                CONNS.pop(self, None)

    def do_GET(self):
        global SERVED
        with LOCK:
            CONNS[self] = False
            SERVED += 1
        body = (
            f"worker {os.getpid()} slot {os.environ.get('CORRAL_WORKER')} "
            f"generation {os.environ.get('CORRAL_GENERATION')} release {RELEASE}\n"
        ).encode()
        code = 200
        if self.path.startswith("/credential/"):
            # A systemd credential, read as an app reads one: $CREDENTIALS_DIRECTORY/NAME.
            name = os.path.basename(self.path[len("/credential/"):])
            try:
                with open(os.path.join(os.environ["CREDENTIALS_DIRECTORY"], name), "rb") as f:
                    body = f.read()
            except (KeyError, OSError) as e:
                body, code = f"cannot read credential {name}: {e!r}\n".encode(), 500
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if STOPPING.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = False
    block_on_close = True


STOPPING = threading.Event()
SERVED = 0


class MetricsHandler(http.server.BaseHTTPRequestHandler):
    """Worker metrics as an app would serve them, or misbehaving (--metrics)."""

    def do_GET(self):
        mode = self.server.mode
        if mode == "slow":
            time.sleep(60)
        if mode == "http500":
            self.send_error(500)
            return
        if mode == "garbage":
            body = bytes(range(256)) * 64
            ctype = "text/plain"
        elif mode == "huge":
            line = b"test_filler{n=\"%d\"} 1\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(100 << 20))
            self.end_headers()
            chunk = b"".join(line % i for i in range(4096))
            sent = 0
            try:
                while sent < 100 << 20:
                    self.wfile.write(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # corral hung up, as it should
            return
        else:
            with LOCK:
                n = SERVED
            slot = os.environ.get("CORRAL_WORKER")
            if mode == "openmetrics":
                ctype = "application/openmetrics-text; version=1.0.0; charset=utf-8"
                body = (f"# TYPE test_requests counter\n# HELP test_requests Requests served.\n"
                        f"test_requests_total {n}\ntest_requests_created 1.7e9\n"
                        f"# TYPE test_build info\ntest_build_info{{slot=\"{slot}\"}} 1\n# EOF\n").encode()
            else:
                ctype = "text/plain; version=0.0.4; charset=utf-8"
                body = (f"# HELP test_requests_total Requests served.\n# TYPE test_requests_total counter\n"
                        f"test_requests_total {n}\n# TYPE test_build_info gauge\n"
                        f"test_build_info{{slot=\"{slot}\"}} 1\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class MetricsServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        conn, _ = self.socket.accept()
        return conn, ("corral", 0)


def serve_metrics(modes: str) -> None:
    mode = modes
    if "=" in modes:
        per_slot = dict(m.split("=", 1) for m in modes.split(","))
        mode = per_slot.get(os.environ.get("CORRAL_WORKER", ""), "none")
    path = os.environ.get("CORRAL_METRICS_SOCKET")
    if mode == "none" or not path:
        return
    server = MetricsServer(path, MetricsHandler)
    server.mode = mode
    threading.Thread(target=server.serve_forever, daemon=True).start()


def release() -> str:
    """The RELEASE variable, else the RELEASE file of the working directory (a deployed release)."""
    if os.environ.get("RELEASE"):
        return os.environ["RELEASE"]
    try:
        with open("RELEASE") as f:
            return f.read().strip()
    except OSError:
        return ""


RELEASE = release()


def main() -> int:
    initial_fds = open_fds()
    p = argparse.ArgumentParser()
    p.add_argument("--report")
    p.add_argument("--ready-after", type=int, default=0)
    p.add_argument("--never-ready", action="store_true")
    p.add_argument("--exit", type=int)
    p.add_argument("--crash-after", type=int)
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--fail-if-env")
    p.add_argument("--spawn-child", action="store_true")
    p.add_argument("--say")
    p.add_argument("--long", type=int)
    p.add_argument("--leak-mib", type=int)
    p.add_argument("--leak-after", type=int, default=0)
    p.add_argument("--leak-in-child", action="store_true")
    p.add_argument("--watchdog", action="store_true")
    p.add_argument("--stop-pinging-after", type=int)
    p.add_argument("--status", help="STATUS= text sent with READY=1")
    p.add_argument("--stop-delay", type=int, default=0, help="ms to take to stop after SIGTERM")
    p.add_argument("--any-listen-pid", action="store_true", help="take fd 3 whatever LISTEN_PID says (as Node does)")
    p.add_argument("--metrics")
    a = p.parse_args()

    if a.report:
        report(a.report.replace("{slot}", os.environ.get("CORRAL_WORKER", "x")).replace("{pid}", str(os.getpid())), initial_fds)
    if a.long:
        print("x" * a.long, flush=True)
    if a.say:
        print(a.say, flush=True)
        print(a.say + "-err", file=sys.stderr, flush=True)
        print(f"<4>{a.say}-warn", flush=True)
    if a.exit is not None:
        return a.exit
    if a.fail_if_env and os.environ.get(a.fail_if_env):
        print(f"broken release: {a.fail_if_env} is set", file=sys.stderr, flush=True)
        return 4
    if a.spawn_child:
        subprocess.Popen(["sleep", "300"])

    server = None
    ours = a.any_listen_pid or os.environ.get("LISTEN_PID") == str(os.getpid())
    if int(os.environ.get("LISTEN_FDS", "0")) >= 1 and ours:
        sock = socket.socket(fileno=3)
        # The socket is shared with the other workers: a wakeup does not mean this worker gets
        # the connection, so accept() must not block.
        sock.setblocking(False)
        server = Server(sock.getsockname() if sock.family != socket.AF_UNIX else "", Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    if a.metrics:
        serve_metrics(a.metrics)

    def on_term(signum, frame):
        if a.ignore_term:
            return
        STOPPING.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    if a.ready_after:
        time.sleep(a.ready_after / 1000)
    if not a.never_ready:
        notify(f"READY=1\nSTATUS={a.status if a.status is not None else f'serving as pid {os.getpid()}'}")
    ready_at = time.monotonic()
    leaked = None
    ping_every = int(os.environ.get("WATCHDOG_USEC", "0")) / 4e6
    last_ping = 0.0
    while not STOPPING.is_set():
        now = time.monotonic()
        if a.leak_mib and leaked is None and now - ready_at >= a.leak_after / 1000:
            if a.leak_in_child and os.fork() != 0:
                leaked = True  # the child holds the memory
            else:
                leaked = bytearray(a.leak_mib * 1024 * 1024)
                for i in range(0, len(leaked), 4096):
                    leaked[i] = 1
                while a.leak_in_child:
                    # The child holds it until its group is stopped.
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    time.sleep(60)
        pinging = a.stop_pinging_after is None or now - ready_at < a.stop_pinging_after / 1000
        if a.watchdog and ping_every and pinging and now - last_ping >= ping_every:
            notify("WATCHDOG=1")
            last_ping = now
        if a.crash_after is not None and time.monotonic() - ready_at > a.crash_after / 1000:
            print("crashing on purpose", file=sys.stderr, flush=True)
            os._exit(3)
        STOPPING.wait(min(0.05, ping_every) if ping_every else 0.05)
    notify("STOPPING=1")
    if a.stop_delay:
        time.sleep(a.stop_delay / 1000)
    with LOCK:
        for handler, idle in CONNS.items():
            if idle:  # close idle keep-alive connections; busy ones close after their response
                try:
                    handler.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
    if server is not None:
        server.shutdown()  # stop accepting; the shared socket stays open for the other workers
        server.server_close()  # waits for in-flight connections (block_on_close)
    print("stopped gracefully", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
