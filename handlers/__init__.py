"""Request -> Response: the server's routes, on the core's message types (`protocol`).

    GET /               200, empty body
    GET /echo/{s}       200 text/plain, body s (percent-decoded, without the query)
    GET /user-agent     200 text/plain, body the User-Agent value (empty when absent)
    GET /files/{name}   the file, nginx-like (ETag, ranges, 304, 412...; see `files`)
    POST /files/{name}  201 once the body is durably stored as DIR/name (412: a precondition)
    PUT /files/{name}   the same, but 204 when it replaced a file
    HEAD                wherever GET is allowed

Routing statuses (400, 404, 405 with `Allow`, 501) are in `routing`; gzip of text bodies in `coding`.

A handler runs on the event loop and must never block. Echo and user-agent answer a `Response`
at once; file routes answer an `Exchange` with `may_block` set, so the core runs its disk work
where blocking is allowed. Adding a route of your own::

    from handlers import Route, build_app, text_response

    app = build_app(None)
    app.add(Route(b"/hello", lambda request, rest: text_response(request, b"Hello!")))
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import unquote_to_bytes

from protocol import Request, Response

from .coding import accepts_gzip, text_response
from .files import Files
from .routing import Handler, Route, Router, text

__all__ = ["Files", "Handler", "Route", "Router", "accepts_gzip", "build_app", "text", "text_response"]

_OK: Final = Response(200)


def root(request: Request, rest: bytes) -> Response:
    """`GET /`: 200 with an empty body."""
    return _OK


def echo(request: Request, rest: bytes) -> Response:
    """`GET /echo/{s}`: s, percent-decoded."""
    # find, not `in`: CPython's bytes `in` raises and clears a TypeError first (~0.3 µs)
    return text_response(request, unquote_to_bytes(rest) if rest.find(b"%") >= 0 else rest)


def user_agent(request: Request, rest: bytes) -> Response:
    """`GET /user-agent`: the User-Agent header's value."""
    return text_response(request, request.header(b"user-agent") or b"")


def build_app(directory: Path | None, *, mime_types: bool = False) -> Router:
    """The server's app: the routes above, with `/files/` serving `directory` (None: none).

    `mime_types`: downloads get the Content-Type their name suggests, not application/octet-stream.
    The result is a `Router`, so more routes can be added before serving.
    """
    files = Files(directory, mime_types=mime_types)
    return Router(
        (
            Route(b"/", root),
            Route(b"/echo/", echo, prefix=True),
            Route(b"/user-agent", user_agent),
            Route(b"/files/", files, frozenset({b"GET", b"HEAD", b"POST", b"PUT"}), prefix=True),
        )
    )
