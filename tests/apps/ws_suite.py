"""A raw ASGI 3 app with one WebSocket route per rule of tests/behaviour/test_websocket.py: `ws_suite:app`.

It uses anyio for sleeping, so it runs on trio and on asyncio alike. What a route must
report after its client left (the disconnect code, whether a send raised) is recorded
under the `track` query parameter and read back with `GET /tracked?track=ID` (HTTP).
tests/apps/ws_frameworks.py has endpoints written with FastAPI and Starlette.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TRACKED: dict[str, dict[str, Any]] = {}


def _query(scope: Scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


def _record(scope: Scope, **values: Any) -> None:
    key = _query(scope).get("track")
    if key:
        TRACKED.setdefault(key, {}).update(values)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await http(scope, receive, send)
        return
    assert scope["type"] == "websocket"
    path = scope["path"]
    route = ROUTES.get(path)
    if route is None:
        await receive()
        await send({"type": "websocket.close", "code": 4404})
        return
    await route(scope, receive, send)


async def http(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/tracked":
        body = json.dumps(TRACKED.get(_query(scope).get("track", ""), {})).encode()
    else:
        body = b"plain http"
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes every message as it came (text or bytes) until the peer closes."""
    assert (await receive())["type"] == "websocket.connect"
    offered = scope["subprotocols"]
    await send({"type": "websocket.accept", "subprotocol": offered[-1] if offered else None})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _record(scope, code=message["code"], reason=message.get("reason", ""), at=time.monotonic())
            return
        if message.get("text") == "close-me":
            await send({"type": "websocket.close", "code": 4000, "reason": "as asked"})
            _record(scope, closed=True)
            return
        await send({"type": "websocket.send", **{k: message[k] for k in ("text", "bytes") if k in message}})


async def scope_route(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.accept", "headers": [(b"x-scope", b"yes")]})
    shown = {
        key: (value.decode("latin-1") if isinstance(value, bytes) else value)
        for key, value in scope.items()
        if key not in ("headers", "state")
    }
    shown["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
    await send({"type": "websocket.send", "text": json.dumps(shown)})
    await send({"type": "websocket.close"})


async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.close"})


async def deny(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": b"who ", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"are you?"})


async def fail_before(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    raise RuntimeError("failing before accept, expected by the test")


async def fail_after(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    raise RuntimeError("failing after accept, expected by the test")


async def flood(scope: Scope, receive: Receive, send: Send) -> None:
    """Sends `count` binary messages of `size` bytes as fast as send() lets it, then closes."""
    query = _query(scope)
    count, size = int(query["count"]), int(query["size"])
    await receive()
    await send({"type": "websocket.accept"})
    payload = b"f" * size
    try:
        for _ in range(count):
            await send({"type": "websocket.send", "bytes": payload})
    except OSError as exc:
        _record(scope, raised=type(exc).__name__)
        return
    await send({"type": "websocket.close"})
    _record(scope, done=True)


async def sleepy(scope: Scope, receive: Receive, send: Send) -> None:
    """Accepts, then reads nothing for `seconds`; then counts what it receives until the close."""
    await receive()
    await send({"type": "websocket.accept"})
    await anyio.sleep(float(_query(scope)["seconds"]))
    count = 0
    while (await receive())["type"] == "websocket.receive":
        count += 1
    _record(scope, received=count)


async def talk_until_closed(scope: Scope, receive: Receive, send: Send) -> None:
    """Sends a tick every 50 ms until send raises (the peer left): tracks the exception and the code."""
    await receive()
    await send({"type": "websocket.accept"})
    try:
        while True:
            await send({"type": "websocket.send", "text": "tick"})
            await anyio.sleep(0.05)
    except OSError as exc:
        _record(scope, raised=type(exc).__name__, at=time.monotonic())
    message = await receive()
    _record(scope, code=message.get("code"))


ROUTES: dict[str, Callable[[Scope, Receive, Send], Awaitable[None]]] = {
    "/echo": echo,
    "/scope/caf\u00e9": scope_route,
    "/refuse": refuse,
    "/deny": deny,
    "/fail-before": fail_before,
    "/fail-after": fail_after,
    "/flood": flood,
    "/sleepy": sleepy,
    "/talk": talk_until_closed,
}
