"""A raw ASGI 3 app, no framework: what the server hands an app and what it expects back.

    ./your_program.sh examples.asgi_app:app --transport asyncio --port 8080   # from the repo root

    GET  /            "Hello, ASGI" and the scope's main keys
    POST /echo        the request body, read piece by piece as it arrives
    GET  /clock       an event stream: the time every second, until the client leaves
    GET  /visits      a counter kept in the lifespan state

It runs on every transport: it waits with `sniffio` + the runtime's own sleep, as a
library that supports both trio and asyncio does (anyio, used by Starlette, does this for you).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import sniffio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
    elif scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
        keys = {
            key: scope[key] for key in ("http_version", "method", "scheme", "path", "root_path", "client")
        }
        await reply(send, 200, b"Hello, ASGI\n" + json.dumps(keys).encode() + b"\n")
    elif scope["path"] == "/echo" and scope["method"] == "POST":
        await echo(receive, send)
    elif scope["path"] == "/clock":
        await clock(send)
    elif scope["path"] == "/visits":
        visits = scope["state"]["visits"]  # a shallow copy of the lifespan state: the list is shared
        visits.append(time.time())
        await reply(send, 200, b"%d visits\n" % len(visits))
    else:
        await reply(send, 404, b"Not found\n")


async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["visits"] = []  # open connections, load models... here
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def reply(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def echo(receive: Receive, send: Send) -> None:
    """Streams the body back as it comes (chunked: no Content-Length is known up front)."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        await send({"type": "http.response.body", "body": message.get("body", b""), "more_body": True})
        if not message.get("more_body"):
            break
    await send({"type": "http.response.body", "body": b""})


async def clock(send: Send) -> None:
    """Endless: send() raises OSError once the client has left (ASGI 2.4), which ends it."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    while True:
        await send({"type": "http.response.body", "body": b"data: %.3f\n\n" % time.time(), "more_body": True})
        await sleep(1.0)


async def sleep(seconds: float) -> None:
    if sniffio.current_async_library() == "trio":
        import trio

        await trio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)
