"""The WSGI benchmark's app, served alike by our transports, waitress, gunicorn and hypercorn.

`GET /stream?size=N`: N bytes (Content-Length) in pieces of 1 MiB, the same bytes object each
time (the app holds one piece); any other path: the 3-byte body `abc` with Content-Length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

PIECE = b"s" * (1024 * 1024)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] != "/stream":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"abc"]
    size = int(environ["QUERY_STRING"].partition("size=")[2] or len(PIECE))
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    return _pieces(size)


def _pieces(size: int) -> Iterator[bytes]:
    while size >= len(PIECE):
        yield PIECE
        size -= len(PIECE)
    if size:
        yield PIECE[:size]
