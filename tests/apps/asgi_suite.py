"""A raw ASGI 3 app with one route per rule of tests/behaviour/test_asgi.py: `asgi_suite:app`.

It uses anyio for sleeping and task groups, so it runs on trio and on asyncio alike (as
Starlette does). Routes that must be observed after the client left record what happened
under a `track` id, read back with `GET /tracked?track=ID`. Lifespan events and the end of
`/slow` go to stderr, where the tests read the order of events.

Other entry points: `failing_startup` (lifespan.startup.failed), `raising_lifespan` (no
lifespan support: raises on the lifespan scope), `slow_startup` (startup takes 0.5 s),
`hanging_startup` (startup never completes; says when it is cancelled).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import anyio
import sniffio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TRACKED: dict[str, dict[str, Any]] = {}
"""What tracked routes recorded, by track id."""


def log(text: str) -> None:
    print(f"asgi_suite: {text}", file=sys.stderr, flush=True)


async def respond(send: Send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, data: object, status: int = 200) -> None:
    await respond(send, status, json.dumps(data).encode(), b"application/json")


async def read_body(receive: Receive) -> tuple[bytes, list[int]]:
    """The whole body, and the size of each http.request message."""
    body, sizes = [], []
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        body.append(message.get("body", b""))
        sizes.append(len(body[-1]))
        if not message.get("more_body", False):
            return b"".join(body), sizes


async def lifespan(
    scope: Scope, receive: Receive, send: Send, *, fail: bool = False, delay: float = 0
) -> None:
    message = await receive()
    assert message["type"] == "lifespan.startup"
    log(f"lifespan startup on {sniffio.current_async_library()}")
    if delay:
        await anyio.sleep(delay)
    if fail:
        await send({"type": "lifespan.startup.failed", "message": "the database is not there (expected)"})
        return
    scope["state"]["ready"] = True
    scope["state"]["counter"] = [0]
    scope["state"]["pid"] = os.getpid()
    await send({"type": "lifespan.startup.complete"})
    message = await receive()
    assert message["type"] == "lifespan.shutdown"
    log("lifespan shutdown")
    await send({"type": "lifespan.shutdown.complete"})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    assert scope["type"] == "http"
    path: str = scope["path"]
    query = {key: values[-1] for key, values in parse_qs(scope["query_string"].decode()).items()}
    route = ROUTES.get(path.removeprefix(scope["root_path"]).split("/")[1] if "/" in path else "")
    if route is None:
        await respond(send, 404, b"no such route\n")
        return
    await route(scope, receive, send, query)


Query = dict[str, str]


async def scope_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """The scope as JSON (bytes as latin-1 strings)."""
    data = {
        key: value
        for key, value in scope.items()
        if key not in ("headers", "raw_path", "query_string", "state", "extensions")
    }
    data["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
    data["raw_path"] = scope["raw_path"].decode("latin-1")
    data["query_string"] = scope["query_string"].decode("latin-1")
    data["state"] = sorted(scope.get("state", {}))
    data["extensions"] = sorted(scope.get("extensions", {}))
    data["runtime"] = sniffio.current_async_library()
    if data["runtime"] == "asyncio":
        import asyncio

        data["loop"] = type(asyncio.get_running_loop()).__module__
    await respond_json(send, data)


async def state_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """The state copy: a key set by a request does not reach the next; a shared value does."""
    state = scope["state"]
    leaked = "mine" in state
    state["mine"] = True
    state["counter"][0] += 1
    await respond_json(send, {"ready": state.get("ready"), "leaked": leaked, "counter": state["counter"][0]})


async def body_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """Reads the body (after `delay` seconds), answers its length, digest and messages."""
    if "delay" in query:
        await anyio.sleep(float(query["delay"]))
    body, sizes = await read_body(receive)
    await respond_json(
        send, {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(), "messages": sizes}
    )


async def no_read_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """Answers without reading the body."""
    await respond(send, 200, b"not read\n")


async def slow_upload_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """Consumes the body slowly: `pause` seconds per message."""
    pause = float(query.get("pause", "0.001"))
    total = messages = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        total += len(message.get("body", b""))
        messages += 1
        await anyio.sleep(pause)
        if not message.get("more_body"):
            break
    await respond_json(send, {"length": total, "messages": messages})


async def stream_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """`count` pieces of `size` bytes, `delay` seconds apart, with more_body."""
    count, size, delay = (
        int(query.get("count", "3")),
        int(query.get("size", "10")),
        float(query.get("delay", "0")),
    )
    headers = [(b"content-type", b"application/octet-stream")]
    if "length" in query:
        headers.append((b"content-length", query["length"].encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for index in range(count):
        if index and delay:
            await anyio.sleep(delay)
        await send({"type": "http.response.body", "body": bytes([65 + index % 26]) * size, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def endless_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """Pieces of `size` bytes for ever; records how many were sent before the client left."""
    track = TRACKED.setdefault(query.get("track", "-"), {})
    size = int(query.get("size", "65536"))
    piece = b"x" * size
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-bytes")]}
    )
    track["sent"] = 0
    try:
        while True:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            track["sent"] += 1
    except OSError as exc:
        track["ended"] = type(exc).__name__
        track["at"] = time.monotonic()
        raise


async def events_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """An endless event stream, one event every `every` seconds, sent only (Starlette's way
    since ASGI 2.4: the end is noticed as an OSError from send)."""
    track = TRACKED.setdefault(query.get("track", "-"), {})
    every = float(query.get("every", "0.05"))
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    count = 0
    try:
        while True:
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % count, "more_body": True})
            count += 1
            track["count"] = count
            await anyio.sleep(every)
    except OSError as exc:
        track["ended"] = type(exc).__name__
        track["at"] = time.monotonic()
        raise


async def listening_events_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """An endless event stream that also listens for http.disconnect (sse-starlette's way)."""
    track = TRACKED.setdefault(query.get("track", "-"), {})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})

    async def produce() -> None:
        count = 0
        while True:
            await send({"type": "http.response.body", "body": b"tick %d\n" % count, "more_body": True})
            count += 1
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as group:
        group.start_soon(produce)
        while (await receive())["type"] != "http.disconnect":
            pass
        track["ended"] = "http.disconnect"
        track["at"] = time.monotonic()
        group.cancel_scope.cancel()


async def long_poll_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """Waits for http.disconnect without sending anything (a long poll), then records it."""
    track = TRACKED.setdefault(query.get("track", "-"), {})
    track["waiting"] = True
    message = await receive()
    assert message["type"] == "http.request"
    message = await receive()
    track["ended"] = message["type"]
    track["at"] = time.monotonic()


async def tracked_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    track = TRACKED.get(query["track"], {})
    await respond_json(send, {**track, "now": time.monotonic()})


async def disconnect_after_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """Responds, then waits for http.disconnect (sent at once once the response is complete)."""
    await respond(send, 200, b"done\n")
    started = time.monotonic()
    message = await receive()
    track = TRACKED.setdefault(query.get("track", "-"), {})
    track["ended"] = message["type"]
    track["waited"] = time.monotonic() - started


async def error_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    where = query.get("where", "before")
    if where == "head":  # after http.response.start, before any body: still a clean 500
        await send({"type": "http.response.start", "status": 200, "headers": []})
    elif where == "after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError(f"an app error {where} the response started (expected by the test)")


async def incomplete_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    if query.get("started"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})


async def pathsend_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    path = query["path"]
    size = os.path.getsize(path)
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % size)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.pathsend", "path": path})


async def trailers_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    wanted = "http.response.trailers" in scope["extensions"]
    headers = [(b"content-type", b"text/plain"), (b"trailer", b"x-checksum")]
    await send({"type": "http.response.start", "status": 200, "headers": headers, "trailers": True})
    await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
    await send({"type": "http.response.body", "body": b"trailers", "more_body": False})
    await send(
        {"type": "http.response.trailers", "headers": [(b"x-checksum", b"42")], "more_trailers": False}
    )
    log(f"trailers route: extension {'offered' if wanted else 'absent'}")


async def slow_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """Answers after `delay` seconds; logs its end (for lifespan shutdown order)."""
    await anyio.sleep(float(query.get("delay", "1")))
    await respond(send, 200, b"slow done\n")
    log("slow request finished")


async def head_route(scope: Scope, receive: Receive, send: Send, query: Query) -> None:
    """Sends a body whatever the method: the server sends none after HEAD."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": b"hello world"})


ROUTES: dict[str, Callable[[Scope, Receive, Send, Query], Awaitable[None]]] = {
    "scope": scope_route,
    "state": state_route,
    "body": body_route,
    "no-read": no_read_route,
    "slow-upload": slow_upload_route,
    "stream": stream_route,
    "endless": endless_route,
    "events": events_route,
    "listening-events": listening_events_route,
    "long-poll": long_poll_route,
    "tracked": tracked_route,
    "disconnect-after": disconnect_after_route,
    "error": error_route,
    "incomplete": incomplete_route,
    "pathsend": pathsend_route,
    "trailers": trailers_route,
    "slow": slow_route,
    "head": head_route,
}


async def failing_startup(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send, fail=True)
        return
    await respond(send, 200, b"should not be served\n")


async def raising_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        raise ValueError(f"unsupported scope type {scope['type']!r}")
    await app(scope, receive, send)


async def slow_startup(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send, delay=0.5)
        return
    await app(scope, receive, send)


async def hanging_startup(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        log("lifespan startup hangs")
        try:
            await anyio.sleep(3600)
        finally:
            log("lifespan startup cancelled")
    await app(scope, receive, send)
