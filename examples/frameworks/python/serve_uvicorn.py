"""uvicorn (FastAPI) under corral, with the drain. Socket: fd 3 as a socket object whose family
is read from the descriptor (uvicorn's own `--fd 3` wraps it as AF_UNIX, so TCP_NODELAY is never
set on a TCP socket). Ready: mode = "listen"."""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import uvicorn  # noqa: E402

from app import app  # noqa: E402
from drain import Drain, DrainingServer  # noqa: E402

sock = socket.socket(fileno=3)
drain = Drain(app)
config = uvicorn.Config(drain, log_level="warning", lifespan="off")
DrainingServer(config, drain).run(sockets=[sock])
