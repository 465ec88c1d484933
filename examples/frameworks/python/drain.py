"""Graceful drain for ASGI servers under corral: loses no request, keep-alive included.

On SIGTERM (sent once the worker's replacement is ready):
  1. every response from now on carries `Connection: close`, so each keep-alive client moves to
     another worker after its answer instead of reusing this connection;
  2. after GRACE_SECONDS (default 1; keep it well below corral's `stop.timeout`), the server's own
     graceful shutdown runs: it stops accepting, closes the connections that stayed idle, and
     waits for requests in flight.
The servers' stock shutdown does step 2 at once: a request a client already sent on an idle
keep-alive connection meets a closed socket.

- `Drain`: the ASGI middleware behind step 1 (any ASGI server);
- `DrainingServer`: uvicorn's `Server` with both steps;
- `DrainingUvicornWorker`: gunicorn's worker class for uvicorn, with both steps
  (`gunicorn -k drain.DrainingUvicornWorker`).
"""

import asyncio
import os
import threading

GRACE = float(os.environ.get("GRACE_SECONDS", "1"))


class Drain:
    """ASGI middleware: once `closing`, every HTTP response says `Connection: close`."""

    def __init__(self, app):
        self.app = app
        self.closing = False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_maybe_close(message):
            if self.closing and message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": headers + [(b"connection", b"close")]}
            await send(message)

        return await self.app(scope, receive, send_maybe_close)


try:
    import uvicorn
    from uvicorn.workers import UvicornWorker
except ImportError:  # hypercorn alone needs only Drain
    uvicorn = None

if uvicorn is not None:

    class DrainingServer(uvicorn.Server):
        """uvicorn's server: the first SIGTERM/SIGINT drains (Connection: close, stop accepting
        new connections), and the usual shutdown follows GRACE seconds later."""

        def __init__(self, config, drain):
            super().__init__(config)
            self.drain = drain
            self.loop = None

        async def serve(self, sockets=None):
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets=sockets)

        def handle_exit(self, sig, frame):
            if self.drain.closing:
                return super().handle_exit(sig, frame)
            self.drain.closing = True
            if self.loop is not None:
                # Stop accepting: other workers take new connections from the shared socket.
                self.loop.call_soon_threadsafe(lambda: [s.close() for s in getattr(self, "servers", [])])
            timer = threading.Timer(GRACE, super().handle_exit, (sig, frame))
            timer.daemon = True
            timer.start()

    class DrainingUvicornWorker(UvicornWorker):
        """gunicorn -k drain.DrainingUvicornWorker: uvicorn workers that drain."""

        async def _serve(self):
            drain = Drain(self.wsgi)
            self.config.app = drain
            server = DrainingServer(config=self.config, drain=drain)
            self._install_sigquit_handler()
            await server.serve(sockets=self.sockets)
