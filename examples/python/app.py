#!/usr/bin/env python3
"""Minimal corral worker in Python, standard library only.

It takes the listening socket corral (or systemd) hands over at fd 3, tells the master it is
ready with READY=1 on NOTIFY_SOCKET, and stops gracefully on SIGTERM: it stops accepting,
finishes what it is serving, and exits.

    GET /health        -> {"status": "ok", "pid": ...}
    GET /api/v1/hello  -> Hello from worker <pid>
"""

import http.server
import json
import os
import signal
import socket
import socketserver
import threading


def sd_notify(message: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.send(message.encode())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024

    def setup(self):
        self.request.setblocking(True)
        super().setup()

    def do_GET(self):
        if self.path == "/health":
            body, kind = json.dumps({"status": "ok", "pid": os.getpid()}).encode(), "application/json"
        elif self.path == "/api/v1/hello":
            body, kind = f"Hello from worker {os.getpid()}\n".encode(), "text/plain"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main() -> None:
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        raise SystemExit("no listening socket: run me under corral or a systemd .socket unit")
    sock = socket.socket(fileno=3)
    sock.setblocking(False)  # shared with the other workers: accept() must not block
    server = Server(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    slot = os.environ.get("CORRAL_WORKER", "?")
    print(f"worker {slot} (pid {os.getpid()}) serving", flush=True)
    sd_notify(f"READY=1\nSTATUS=serving as worker {slot}")
    stop.wait()
    sd_notify("STOPPING=1")
    server.shutdown()
    print(f"worker {slot} (pid {os.getpid()}) stopped", flush=True)


if __name__ == "__main__":
    main()
