#!/usr/bin/env python3
"""The physical limit of corral's design: N processes accepting on one shared listening socket,
started by a launcher that does nothing else (no supervision, no restarts, no logs).

    bare.py N PORT -- command args...
"""
import os
import signal
import socket
import sys

n, port = int(sys.argv[1]), int(sys.argv[2])
cmd = sys.argv[sys.argv.index("--") + 1:]
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
sock.listen(4096)
children = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        if sock.fileno() == 3:
            os.set_inheritable(3, True)  # dup2 onto itself would keep it close-on-exec
        else:
            os.dup2(sock.fileno(), 3)
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
        os.environ.pop("NOTIFY_SOCKET", None)
        os.execvp(cmd[0], cmd)
    children.append(pid)
sock.close()


def stop(*_):
    for c in children:
        try:
            os.kill(c, signal.SIGTERM)
        except ProcessLookupError:
            pass


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
for _ in children:
    try:
        os.wait()
    except ChildProcessError:
        break
