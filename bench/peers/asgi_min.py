"""The ASGI benchmark's app, served alike by our transports, uvicorn and hypercorn.

Any path: the 3-byte body `abc` with Content-Length, as a plain ASGI 3 app sends it (two
messages). The lifespan scope is answered (startup and shutdown complete), so every server
runs it the same way whatever its default.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"3")],
}
BODY = {"type": "http.response.body", "body": b"abc"}


async def app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send(START)
    await send(BODY)
