"""The messages handlers see: a request head in, a response out.

These are the core's own types; h11 stays private to `protocol`. A `Request`'s headers
are a list of (lower-case name, value) bytes in arrival order, repeated fields kept,
already validated by h11. A handler that wants the request body, or whose work may
block, returns an `Exchange` instead of a `Response`, and the core feeds it the body and
asks it for the response. A `Response`'s headers are validated when sent: an invalid
one (say, a value with CR LF) is replaced by a 500, never sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, BinaryIO, Final, Protocol

if TYPE_CHECKING:
    from .channel import Channel

from .redaction import headers_repr

Headers = Sequence[tuple[bytes, bytes]]

_BODY_SHOWN = 64
"""Bytes of a body a Response's repr shows (a log line is no place for a whole file)."""
CACHED_HEADERS_MAX: Final = 16 * 1024
"""Names and values (bytes or characters) of a header list kept in a cache of checked ones."""


def cacheable(headers: Iterable[tuple[Sized, Sized]]) -> bool:
    """Whether a checked header list is small enough to be remembered. The caches that spare
    apps' repeated lists a second check are bounded by count, so without this an app whose
    every response carries a distinct large header (a megabyte) would fill them with hundreds
    of megabytes. Raises TypeError for what is not a list of pairs of sized things."""
    return sum(map(len, chain.from_iterable(headers))) <= CACHED_HEADERS_MAX


@dataclass(slots=True, repr=False)
class Request:
    """A request head. The body, if any, goes to the `Exchange` a handler returns.

    Read-only by contract, but not frozen: the core builds one per request, and a frozen
    dataclass costs twice as much to build. The core never reads it back for a decision.
    Its repr, which error logs print, redacts credentials (Authorization, Cookie...).
    """

    method: bytes
    target: bytes
    """Origin-form (`/path?query`) or `*`: an absolute-form target (`http://host/path?query`)
    comes as origin-form, its authority the Host header (RFC 9112 §3.2.2); others are 400."""
    headers: Headers
    http_version: bytes = b"1.1"
    client: tuple[str, int] | None = None
    """The client's address (behind a trusted proxy, the one it reports); None: unknown or a Unix socket."""
    server: tuple[str, int | None] | None = None
    """The address the request came to: (host, port), or (path, None) on a Unix socket."""
    scheme: str = "http"
    """"https" under TLS (or when a trusted proxy says so)."""
    websocket: bool = False
    """A valid WebSocket handshake (with `Config.websocket` only): a `Session` answering it
    may accept it through its Channel; any other answer is an ordinary HTTP response."""

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:  # credentials stay out of logs (see `redaction`)
        return (
            f"Request(method={self.method!r}, target={self.target!r}, "
            f"headers={headers_repr(self.headers)}, http_version={self.http_version!r}, "
            f"client={self.client!r}, server={self.server!r}, scheme={self.scheme!r})"
        )


@dataclass(frozen=True, slots=True)
class FileBody:
    """`length` bytes of an open file from `offset`. The core closes the file when done."""

    file: BinaryIO
    offset: int
    length: int


class Stream(Protocol):
    """A response body produced piece by piece by a producer that may block (a WSGI iterable).

    The core calls both methods in `Run` steps (where blocking is allowed), one piece at a
    time: the next piece is asked for only once the previous one went out, so a slow
    client costs a piece of memory, not the whole body. `close` is called exactly once,
    whether the body ended, failed or the client left.

    Framing: the response's own Content-Length when it has one (never more is sent; a
    body that ends short cuts the connection), else chunked (HTTP/1.1) or delimited by
    closing the connection (HTTP/1.0). Nothing is asked for after HEAD, 204 or 304.
    """

    def next_piece(self) -> bytes | None:
        """The next piece of the body (b"" allowed), or None at its end."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Response:
    """A final response. The core adds the framing headers (Content-Length, Connection).

    With a `Stream` body the handler's Content-Length, if any, frames it (see `Stream`).
    Read-only by contract, but not frozen (as `Request`): handlers build one per request,
    and a frozen dataclass costs twice as much to build.
    """

    status: int
    headers: Headers = ()
    body: bytes | FileBody | Stream = b""

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


class Session(Protocol):
    """A request served by a task that runs concurrently with its connection (an async app).

    The core hands `run(channel)` to the transport to start on its event loop (a `Spawn`
    action); from then on the task and the connection meet only in the `Channel`: the
    task asks for the body, sends the response, and learns there that the client left.
    """

    def run(self, channel: Channel) -> Awaitable[None]: ...


App = Callable[[Request], "Response | Exchange | Session"]
"""Maps a request head to a response, an exchange or a session. Must be quick and never block."""
