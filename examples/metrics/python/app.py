"""A Python app whose own metrics corral merges with every other worker's (docs/metrics.md).

Debian's python3-prometheus-client; the standard library serves both the app (the socket
corral hands over at fd 3) and the registry (at CORRAL_METRICS_SOCKET).
"""

import os
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

REQUESTS = Counter("http_requests", "Requests served.", ["code"])  # exposed as http_requests_total


class App(BaseHTTPRequestHandler):
    def do_GET(self):
        REQUESTS.labels(code="200").inc()
        body = f"slot {os.environ.get('CORRAL_WORKER')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Metrics(App):
    def do_GET(self):
        body = generate_latest()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


# corral asks each worker for its registry here when Prometheus scrapes corral's /metrics.
if os.environ.get("CORRAL_METRICS_SOCKET"):
    metrics = UnixServer(os.environ["CORRAL_METRICS_SOCKET"], Metrics)
    threading.Thread(target=metrics.serve_forever, daemon=True).start()

app = ThreadingHTTPServer(("", 0), App, bind_and_activate=False)
app.socket = socket.socket(fileno=3)
app.serve_forever()
