"""The messages handlers see: a request head in, a response out.

These are the core's own types; h11 stays private to `protocol`. A `Request`'s headers
are a list of (lower-case name, value) bytes in arrival order, repeated fields kept,
already validated by h11. A handler that wants the request body, or whose work may
block, returns an `Exchange` instead of a `Response`, and the core feeds it the body and
asks it for the response. A `Response`'s headers are validated when sent: an invalid
one (say, a value with CR LF) is replaced by a 500, never sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from .redaction import headers_repr

Headers = Sequence[tuple[bytes, bytes]]

_BODY_SHOWN = 64
"""Bytes of a body a Response's repr shows (a log line is no place for a whole file)."""


@dataclass(slots=True)
class Request:
    """A request head. The body, if any, goes to the `Exchange` a handler returns.

    Read-only by contract, but not frozen: the core builds one per request, and a frozen
    dataclass costs twice as much to build. The core never reads it back for a decision.
    """

    method: bytes
    target: bytes
    headers: Headers
    http_version: bytes = b"1.1"

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:  # credentials stay out of logs (see `redaction`)
        return (
            f"Request(method={self.method!r}, target={self.target!r}, "
            f"headers={headers_repr(self.headers)}, http_version={self.http_version!r})"
        )


@dataclass(frozen=True, slots=True)
class FileBody:
    """`length` bytes of an open file from `offset`. The core closes the file when done."""

    file: BinaryIO
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Response:
    """A final response. The core adds the framing headers (Content-Length, Connection)."""

    status: int
    headers: Headers = ()
    body: bytes | FileBody = b""

    def __repr__(self) -> str:  # credentials (Set-Cookie) stay out of logs (see `redaction`)
        body = self.body
        shown = (
            f"{body[:_BODY_SHOWN]!r}... ({len(body)} bytes)"
            if isinstance(body, bytes) and len(body) > _BODY_SHOWN
            else repr(body)
        )
        return f"Response(status={self.status!r}, headers={headers_repr(self.headers)}, body={shown})"


class Exchange(Protocol):
    """A handler's side of one request whose body it reads, or whose work may block.

    The core calls `start` once, before any body byte and before it answers `100
    Continue`: a Response from it refuses the request early (a client that waits for
    100 Continue then never sends the body; the core discards what does come), None
    goes on. Then `receive` zero or more times with body bytes, and `respond` once the body
    is complete; or `abort` instead, once, if the request fails or the client goes away
    after `start` (then no response is wanted and anything half-done must be undone). A
    Response from `receive` ends the request there (say, the disk is full): the rest of
    the body is discarded and no `abort` follows, so undo what needs undoing first. One
    dropped before `start` gets no call at all: set things up in `start`, not when the app
    creates the exchange.
    When `may_block` is true, the core hands these calls to the transport to run where
    blocking is allowed; otherwise it calls them directly.
    """

    @property
    def may_block(self) -> bool: ...

    def start(self) -> Response | None: ...

    def receive(self, data: bytes) -> Response | None: ...

    def respond(self) -> Response: ...

    def abort(self) -> None: ...


App = Callable[[Request], "Response | Exchange"]
"""Maps a request head to a response, or to an exchange. Must be quick and never block."""
