"""A minimal ASGI app with the benchmark's routes, served by hypercorn and uvicorn.

Routes: `GET /echo/{s}` (gzip-compressed when the client accepts gzip, at the same level
as our handlers) and `GET /files/{name}` from the directory in `$BENCH_DIRECTORY`, read
in chunks as a plain ASGI app would. It uses no event-loop API, so it runs under both
hypercorn workers (asyncio and trio) and uvicorn.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

GZIP_LEVEL = 6
CHUNK = 64 * 1024
DIRECTORY = os.environ.get("BENCH_DIRECTORY", ".")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path: str = scope["path"]
    if path.startswith("/echo/"):
        await _echo(scope, send, path[6:].encode())
    elif path.startswith("/files/"):
        await _file(send, path[7:])
    else:
        await _respond(send, 404, [], b"")


async def _echo(scope: Scope, send: Send, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain")]
    accept = b", ".join(value for name, value in scope["headers"] if name == b"accept-encoding")
    if body and b"gzip" in accept:
        body = gzip.compress(body, GZIP_LEVEL)
        headers += [(b"content-encoding", b"gzip"), (b"vary", b"accept-encoding")]
    await _respond(send, 200, headers, body)


async def _file(send: Send, name: str) -> None:
    path = os.path.join(DIRECTORY, os.path.basename(name))
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below, across awaits
    except OSError:
        await _respond(send, 404, [], b"")
        return
    with file:
        size = os.fstat(file.fileno()).st_size
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % size)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while chunk := file.read(CHUNK):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
