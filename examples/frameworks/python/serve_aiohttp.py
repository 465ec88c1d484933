"""aiohttp under corral, with the drain. Socket: fd 3 (`socket.socket(fileno=3)` served with
`loop.create_server(runner.server, sock=…)`). Ready: mode = "listen".

The drain: on SIGTERM, stop accepting, answer with `Connection: close`, and shut down (closing
idle connections, waiting for requests in flight) only GRACE_SECONDS (default 1) later.
`Connection: close` must come from a middleware (`response.force_close()`): aiohttp decides the
header before `on_response_prepare` handlers run.
SHUTDOWN=stock: `web.run_app(app, sock=…)`, whose SIGTERM handling closes idle keep-alive
connections at once.
"""

import asyncio
import os
import signal
import socket

from aiohttp import web

GRACE = float(os.environ.get("GRACE_SECONDS", "1"))
closing = False


@web.middleware
async def drain_middleware(request, handler):
    response = await handler(request)
    if closing:
        response.force_close()
    return response


async def hello(request):
    return web.Response(text=f"hello from {os.getpid()}\n")


def make_app(middlewares=()):
    app = web.Application(middlewares=list(middlewares))
    app.router.add_get("/", hello)
    return app


async def main():
    runner = web.AppRunner(make_app([drain_middleware]), handle_signals=False, access_log=None)
    await runner.setup()
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=3)
    server = await loop.create_server(runner.server, sock=sock)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    global closing
    closing = True
    # Stop accepting (the other workers take new connections) by removing the accept handler,
    # not with server.close(): on Python 3.11 a connection accepted in the same turn of the loop
    # as close() is then dropped (reset) by an assertion in Server._attach.
    loop.remove_reader(sock.fileno())
    await asyncio.sleep(GRACE)
    await runner.cleanup()
    server.close()


if os.environ.get("SHUTDOWN") == "stock":
    web.run_app(make_app(), sock=socket.socket(fileno=3), print=None, access_log=None)
else:
    asyncio.run(main())
