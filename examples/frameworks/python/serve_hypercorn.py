"""hypercorn (FastAPI) under corral, with the drain. Socket: `fd://3`. Ready: mode = "listen".
(The stock way is `hypercorn --bind fd://3 app:app`, which shuts down at once on SIGTERM.)"""

import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hypercorn.asyncio import serve  # noqa: E402
from hypercorn.config import Config  # noqa: E402

from app import app  # noqa: E402
from drain import GRACE, Drain  # noqa: E402

config = Config()
config.bind = ["fd://3"]
config.graceful_timeout = 10
config.loglevel = "WARNING"
drain = Drain(app)


async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # hypercorn stops accepting only when the shutdown trigger returns, and then closes the
    # connections it just accepted whose request has not arrived yet: keep its listening
    # servers, to stop accepting as soon as the drain starts.
    servers = []
    create_server = loop.create_server

    async def keep_server(*args, **kwargs):
        server = await create_server(*args, **kwargs)
        servers.append(server)
        return server

    loop.create_server = keep_server

    async def shutdown_trigger():
        await stop.wait()
        drain.closing = True
        # Stop accepting by taking the listening sockets out of the loop, not with
        # Server.close(): a connection accepted in the same turn is still being set up, and a
        # closed server refuses to adopt it (the client gets a reset). hypercorn closes the
        # servers itself once this returns.
        for server in servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        await asyncio.sleep(GRACE)

    await serve(drain, config, shutdown_trigger=shutdown_trigger)


asyncio.run(main())
