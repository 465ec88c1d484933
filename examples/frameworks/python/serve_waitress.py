"""Waitress under corral, with a server-side drain. Socket: fd 3 (`create_server(app,
sockets=[socket.socket(fileno=3)])`). Ready: mode = "listen".

Waitress installs no SIGTERM handler (SHUTDOWN=stock): the signal kills the process, cutting off
what it was answering and resetting idle keep-alive connections. The drain cannot be done by the
app: a WSGI app may not send `Connection: close` (a hop-by-hop header; Waitress refuses it). So
it is done in the server: on SIGTERM, stop accepting, have every response from then on close its
connection (Waitress' own `set_close_on_finish`), close connections left idle GRACE_SECONDS
(default 1) later, and exit once none is left.
"""

import os
import signal
import socket
import sys
import threading
import time

import waitress
import waitress.task

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from app import wsgi_app  # noqa: E402

GRACE = float(os.environ.get("GRACE_SECONDS", "1"))
closing = False
server = waitress.create_server(wsgi_app, sockets=[socket.socket(fileno=3)], clear_untrusted_proxy_headers=True)

if os.environ.get("SHUTDOWN") != "stock":
    build_response_header = waitress.task.Task.build_response_header

    def build_closing_response_header(task):
        if closing:
            task.set_close_on_finish()
        return build_response_header(task)

    waitress.task.Task.build_response_header = build_closing_response_header

    def finish():
        time.sleep(GRACE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            channels = list(server.active_channels.values())
            busy = [c for c in channels if c.requests or c.total_outbufs_len]
            for c in channels:
                if c not in busy:
                    c.will_close = True
            if not channels:
                break
            server.trigger.pull_trigger()  # wake the loop so it closes them
            time.sleep(0.05)
        os._exit(0)

    def on_sigterm(signum, frame):
        global closing
        if closing:
            return
        closing = True
        server.accepting = False  # the other workers take new connections
        threading.Thread(target=finish, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)

server.run()
