"""Tornado under corral, with the drain. Ready: mode = "listen".

Socket: fd 3, made non-blocking first. systemd (and corral) hand the socket over blocking, and
Tornado's `add_sockets` does not change that: its accept loop then blocks the IOLoop in
accept() after the first connection, and the worker hangs on its first request.

The drain (SHUTDOWN=stock: Tornado installs no SIGTERM handler, so the signal kills the
process, cutting off what it was answering and resetting idle keep-alive connections):
on SIGTERM, stop accepting, answer with `Connection: close`, and close the connections left
idle only GRACE_SECONDS (default 1) later.
"""

import asyncio
import os
import signal
import socket

import tornado.httpserver
import tornado.web

GRACE = float(os.environ.get("GRACE_SECONDS", "1"))
closing = False


class Hello(tornado.web.RequestHandler):
    def set_default_headers(self):
        if closing:
            self.set_header("Connection", "close")

    def get(self):
        self.set_header("Content-Type", "text/plain")
        self.write(f"hello from {os.getpid()}\n")


async def main():
    sock = socket.socket(fileno=3)
    sock.setblocking(False)
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/", Hello)]))
    server.add_sockets([sock])
    if os.environ.get("SHUTDOWN") == "stock":
        await asyncio.Event().wait()
    done = asyncio.Event()

    async def drain():
        global closing
        closing = True
        server.stop()  # stop accepting: the other workers take new connections
        await asyncio.sleep(GRACE)
        await server.close_all_connections()
        done.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(drain()))
    await done.wait()


asyncio.run(main())
