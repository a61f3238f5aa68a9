"""Async views, served under ASGI only: a streamed response and an endless event stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse

STREAMS: dict[str, str] = {}
"""How each /events stream ended, by track id."""


async def stream(request: HttpRequest) -> StreamingHttpResponse:
    count = int(request.GET.get("count", "3"))
    delay = float(request.GET.get("delay", "0"))

    async def lines() -> AsyncIterator[bytes]:
        for index in range(count):
            if index and delay:
                await asyncio.sleep(delay)
            yield b"line %d\n" % index

    return StreamingHttpResponse(lines(), content_type="text/plain")


async def events(request: HttpRequest) -> StreamingHttpResponse:
    track = request.GET.get("track", "-")

    async def messages() -> AsyncIterator[bytes]:
        count = 0
        STREAMS[track] = "running"
        try:
            while True:
                yield b"data: %d\n\n" % count
                count += 1
                await asyncio.sleep(0.05)
        finally:
            STREAMS[track] = f"ended after {count} events"

    return StreamingHttpResponse(messages(), content_type="text/event-stream")


async def event_status(request: HttpRequest, track: str) -> JsonResponse:
    return JsonResponse({"status": STREAMS.get(track)})
