"""The same tiny app for every Python server in docs/frameworks.md: FastAPI (ASGI) for uvicorn,
hypercorn and gunicorn's uvicorn workers, and a plain WSGI function for gunicorn's sync workers."""

import os

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def hello():
    return f"hello from {os.getpid()}\n"


def wsgi_app(environ, start_response):
    body = f"hello from {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
