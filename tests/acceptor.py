#!/usr/bin/env python3
"""A worker for the `ready.mode = "listen"` tests: it never sends READY=1, and waits for
connections on the socket at fd 3 in the way it is told, after an optional warm-up.

  --wait accept|select|poll|epoll|child
         accept: a blocking accept(); select/poll/epoll: that wait, then accept;
         child: the process forks, and only the child accepts (blocking), as gunicorn's
         workers do for their arbiter
  --after MS   warm up this long first (holding the socket, not waiting on it)
  --never      hold the socket and never wait on it
  --marker DIR write DIR/<pid> just before the wait starts
  --notify     send READY=1 at start (which "listen" mode must not take for readiness)

Each connection gets a one-line HTTP answer with the pid that accepted it.
"""

import argparse
import os
import select
import signal
import socket
import sys
import time


def answer(conn):
    try:
        conn.settimeout(5)
        conn.recv(4096)
        body = f"{os.getpid()}\n".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except OSError:
        pass
    finally:
        conn.close()


def serve(sock, how, marker):
    if marker:
        with open(os.path.join(marker, str(os.getpid())), "w") as f:
            f.write(how)
    if how in ("accept", "child"):
        sock.setblocking(True)
        while True:
            conn, _ = sock.accept()
            answer(conn)
    sock.setblocking(False)
    ep = None
    if how == "epoll":
        ep = select.epoll()
        ep.register(sock.fileno(), select.EPOLLIN)
    pl = select.poll() if how == "poll" else None
    if pl:
        pl.register(sock.fileno(), select.POLLIN)
    while True:
        if how == "select":
            ready, _, _ = select.select([sock], [], [], 60)
        elif how == "poll":
            ready = pl.poll(60_000)
        else:
            ready = ep.poll(60)
        if ready:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                continue
            conn.setblocking(True)
            answer(conn)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--wait", default="accept", choices=["accept", "select", "poll", "epoll", "child"])
    p.add_argument("--after", type=int, default=0)
    p.add_argument("--never", action="store_true")
    p.add_argument("--marker")
    p.add_argument("--notify", action="store_true")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if a.notify and os.environ.get("NOTIFY_SOCKET"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
            n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
    sock = socket.socket(fileno=3)
    if a.after:
        time.sleep(a.after / 1000)
    if a.never:
        while True:
            time.sleep(3600)
    if a.wait == "child":
        pid = os.fork()
        if pid == 0:
            serve(sock, "child", a.marker)
            os._exit(0)
        # The parent holds the socket too but only waits for its child (gunicorn's arbiter).
        os.waitpid(pid, 0)
        sys.exit(1)
    serve(sock, a.wait, a.marker)


if __name__ == "__main__":
    main()
