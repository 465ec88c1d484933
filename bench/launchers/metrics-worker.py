#!/usr/bin/env python3
"""A worker for bench/metrics_scrape.py: READY=1 at once, then serves about SERIES series at
CORRAL_METRICS_SOCKET (a histogram and counters with labels, values changing per request), the
way an app's registry would. With SILENT=1 it accepts the connection and never answers."""

import os
import socket
import threading
import time

SERIES = int(os.environ.get("SERIES", "200"))
SILENT = os.environ.get("SILENT") == "1" and os.environ.get("CORRAL_WORKER") == "0"


def body(n):
    out = ["# HELP app_requests_total Requests.", "# TYPE app_requests_total counter"]
    routes = SERIES // 20
    for r in range(routes):
        for code in ("200", "404", "500"):
            out.append(f'app_requests_total{{route="/api/r{r}",code="{code}"}} {n * (r + 1)}')
    out += ["# HELP app_latency_seconds Latency.", "# TYPE app_latency_seconds histogram"]
    for r in range(routes):
        for le in ("0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "+Inf"):
            out.append(f'app_latency_seconds_bucket{{route="/api/r{r}",le="{le}"}} {n}')
        out.append(f'app_latency_seconds_sum{{route="/api/r{r}"}} {n * 0.01:.3f}')
        out.append(f'app_latency_seconds_count{{route="/api/r{r}"}} {n}')
    out += ["# HELP app_heap_bytes Heap.", "# TYPE app_heap_bytes gauge"]
    for i in range(SERIES - routes * 13):
        out.append(f'app_heap_bytes{{space="s{i}"}} {1000000 + n}')
    return ("\n".join(out) + "\n").encode()


def serve(conn, n):
    with conn:
        conn.recv(4096)
        if SILENT:
            time.sleep(3600)
        b = body(n)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: "
                     + str(len(b)).encode() + b"\r\nConnection: close\r\n\r\n" + b)


def main():
    path = os.environ.get("CORRAL_METRICS_SOCKET")
    if path:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(64)
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(notify)
            s.send(b"READY=1")
    if not path:
        while True:
            time.sleep(3600)
    n = 0
    while True:
        conn, _ = srv.accept()
        n += 1
        threading.Thread(target=serve, args=(conn, n), daemon=True).start()


main()
