"""ASGI 3 apps over the core: HTTP (spec 2.5) per request, as a `Session` talking to a `Channel`.

`ASGIApp(app)` is an `App`: for each request it returns a session whose task, started by
the transport on its event loop, builds the scope and calls `app(scope, receive, send)`.
The same code runs on trio, asyncio and the threads transport's asyncio loop; the only
runtime-specific part is waking the task (`notify`).

The rules, each with the reason where it is a choice (docs/asgi.md has the long form):

- scope: `path` percent-decoded then UTF-8 (invalid bytes become U+FFFD, as uvicorn and
  hypercorn do: `unquote`'s default); `raw_path` the target as received, without the
  query (an absolute-form target comes as origin-form from the core, its authority the
  `host` header: RFC 9112 §3.2.2); `root_path`
  from --root-path, and `path` always starts with it (ASGI 2.5: "PATH_INFO can be
  derived by stripping root_path from path"): a request whose path
  already starts with it (a proxy that passes the prefix on, as WSGI's SCRIPT_NAME
  expects) keeps its path; one that does not (a proxy that stripped it, as behind
  uvicorn) gets it prepended. `state` is a shallow copy of the lifespan state.
  `extensions`: `http.response.pathsend` always, `http.response.trailers` only when the
  client sent `TE: trailers` (trailers would be dropped otherwise, so an app can tell).
- receive(): the body as the core hands it over (it reads on only as fast as the app
  asks; the first ask sends `100 Continue`), then `http.disconnect` once the response is
  complete (at once, even if the body was never read, as the spec and uvicorn say), the
  client left, or the server is shutting down. A body cut short by the client ends with
  `http.disconnect`, never with `more_body: False`.
- send(): `http.response.start` is held until the first body message (an error before
  then is still a clean 500). Body pieces go to the channel; send returns at once while
  less than `HIGH_WATER` bytes (and `HIGH_WATER_PIECES` pieces) wait to leave, else once
  enough left: a slow client costs the app's task one wait per piece, and memory stays
  bounded.
- After the client left, send raises `ClientDisconnected` (an `OSError`), ASGI 2.4's
  behaviour: Starlette >= 0.38 relies on it to stop a streaming response (it no longer
  listens for `http.disconnect` when the server says 2.4 or newer). It is not logged as an
  error. When the server shuts down, an event stream (`text/event-stream`) is ended
  cleanly at its next send (terminating chunk, then the same exception), so clients
  reconnect elsewhere; other responses get the grace period to finish.
- Errors: an exception before the first body message → 500; after → the connection is
  cut; returning without completing the response → the same. Logged with a traceback in
  which the request's credentials (Authorization, Proxy-Authorization, Cookie values) are
  replaced by `<redacted>`. `channel.finish()` is called exactly once, last.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from protocol import Channel, FileBody, Request, Response, cacheable
from protocol.redaction import brief_repr, redact_values

from .notify import Notifier, notifier

if TYPE_CHECKING:
    from .asgi_ws import WebSocketCycle

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGI3App = Callable[[Scope, Receive, Send], Awaitable[None]]

error_log: Final = logging.getLogger("httpserver.error")

SPEC_VERSION: Final = "2.5"
HIGH_WATER: Final = 64 * 1024
"""Response bytes posted but not yet handed to the transport before send() waits."""
HIGH_WATER_PIECES: Final = 256
"""... or pieces (tiny pieces sent in a tight loop cost their bookkeeping, not their bytes)."""

_METHODS: Final = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS")}
_VERSIONS: Final = {b"1.1": "1.1", b"1.0": "1.0"}
_DISCONNECT: Final = {"type": "http.disconnect"}
_NAME: Final = itemgetter(0)
_C_OR_T: Final = frozenset((b"c", b"C", b"t", b"T"))
"""A set: bytes `in` bytes first tries its operand as an int, raising and clearing a TypeError."""

# The states of a response, as the app's messages move it on.
_INITIAL: Final = 0  # nothing sent
_HEAD: Final = 1  # http.response.start received, held
_BODY: Final = 2  # the head went to the channel with the first body piece
_TRAILERS: Final = 3  # the body is complete; trailers are due
_COMPLETE: Final = 4


class ClientDisconnected(OSError):
    """send() after the client left (or, for an event stream, once the server is stopping)."""


class ASGIApp:
    """An `App` serving an ASGI 3 application (HTTP scopes; lifespan is `handlers.lifespan`)."""

    __slots__ = ("app", "root_path", "state")

    def __init__(self, app: ASGI3App, *, root_path: str = "", state: dict[str, Any] | None = None) -> None:
        self.app = app
        self.root_path = root_path.rstrip("/")
        self.state: dict[str, Any] = {} if state is None else state
        """The lifespan state; each request's scope gets a shallow copy."""

    def __call__(self, request: Request) -> _Cycle | WebSocketCycle:
        if request.websocket:  # a valid handshake (the core checked it): handlers/asgi_ws.py
            from .asgi_ws import WebSocketCycle

            return WebSocketCycle(self, request)
        return _Cycle(self, request)


class _Cycle:
    """One request's session: the scope, receive() and send() over its channel."""

    __slots__ = (
        "_body_over",
        "_channel",
        "_end_stream",
        "_ended",
        "_head",
        "_notifier",
        "_owner",
        "_pending",
        "_pending_bytes",
        "_request",
        "_sent_trailers",
        "_state",
        "_trailers",
        "_wants_trailers",
    )

    def __init__(self, owner: ASGIApp, request: Request) -> None:
        self._owner = owner
        self._request = request
        self._state = _INITIAL
        self._body_over = False
        self._notifier: Notifier | None = None
        self._pending: deque[tuple[int, int]] | None = None
        self._pending_bytes = 0
        self._trailers = False  # the client takes trailers (TE: trailers)
        self._wants_trailers = False  # the app said it sends trailers
        self._sent_trailers: list[tuple[bytes, bytes]] | None = None  # made when trailers come
        self._end_stream = False  # an event stream, to end when the server stops
        self._ended = False  # ... and it was

    # --- the task ----------------------------------------------------------------------

    async def run(self, channel: Channel) -> None:
        self._channel = channel
        try:
            scope = self._scope()
            await self._owner.app(scope, self.receive, self.send)
        except BaseException as exc:
            self._finish(exc)
            if not isinstance(exc, Exception):
                raise  # cancellation, KeyboardInterrupt, SystemExit: the runtime's business
            return
        self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        channel = self._channel
        state = self._state
        if error is None:
            if state == _COMPLETE or channel.gone:
                channel.finish(None)
                return
            what = "starting" if state < _BODY else "completing"
            error = RuntimeError(f"the ASGI app returned without {what} its response")
            self._log(str(error), None)
        elif channel.gone and _ours(error):
            error_log.debug("%s: the client left while the app was sending", self._what())
            error = None if state == _COMPLETE else error
        elif self._end_stream and _ours(error):
            error = None  # the event stream was ended at shutdown, cleanly
        elif isinstance(error, Exception):
            self._log(f"ASGI app failed on {self._what()}", error)
        if channel.gone or state == _COMPLETE:
            # The core reads no more: a Finish holding the exception would keep its traceback,
            # and every frame in it (a framework's response and its generator), alive in a
            # reference cycle through this channel, delaying the app's cleanup until a GC.
            error = None
        channel.finish(error)

    def _what(self) -> str:
        request = self._request
        return f"{request.method.decode('latin-1')} {request.target.partition(b'?')[0].decode('latin-1')}"

    def _log(self, message: str, error: BaseException | None) -> None:
        log_failure(message, error, self._request, self._what())

    def _scope(self) -> Scope:
        request = self._request
        owner = self._owner
        root_path = owner.root_path
        path, raw_path, query = scope_path(request, root_path)
        headers = request.headers
        extensions: dict[str, dict[str, object]] = {"http.response.pathsend": {}}
        if b"te" in map(_NAME, headers):  # rare: looked at in C, then read in Python
            for name, value in headers:
                if name == b"te" and b"trailers" in value.lower():
                    self._trailers = True
                    extensions["http.response.trailers"] = {}
                    break
        method = request.method
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": SPEC_VERSION},
            "http_version": _VERSIONS.get(request.http_version) or request.http_version.decode("ascii"),
            "method": _METHODS.get(method) or method.decode("ascii"),
            "scheme": request.scheme,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": root_path,
            "headers": headers,
            "client": request.client,
            "server": request.server,
            "state": owner.state.copy(),
            "extensions": extensions,
        }

    # --- waiting for the core ------------------------------------------------------------

    def _waiter(self) -> Notifier:
        """The notifier, installed on first use: before it, nothing waited, so nothing was missed."""
        waiter = self._notifier
        if waiter is None:
            waiter = self._notifier = notifier()
            self._channel.notify = waiter.set
        return waiter

    # --- receive -------------------------------------------------------------------------

    async def receive(self) -> Message:
        channel = self._channel
        if self._state == _COMPLETE:  # the response is out: disconnect, read or not (ASGI, uvicorn)
            self._body_over = True
        if not self._body_over:
            got = channel.receive()
            if got is None:
                waiter = self._waiter()
                while True:
                    since = waiter.generation
                    got = channel.receive()
                    if got is not None:
                        break
                    await waiter.wait(since)
            data, more = got
            if channel.gone:
                self._body_over = True
                if not data:
                    return _DISCONNECT.copy()
                more = True  # what came is the app's, but the body did not end: disconnect next
            elif not more:
                self._body_over = True
            return {"type": "http.request", "body": data, "more_body": more}
        if not (channel.done or channel.gone or channel.stopping):
            waiter = self._waiter()
            while True:
                since = waiter.generation
                if channel.done or channel.gone or channel.stopping:
                    break
                await waiter.wait(since)
        return _DISCONNECT.copy()

    # --- send ----------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        channel = self._channel
        kind = message["type"]
        if channel.gone or self._ended:
            raise ClientDisconnected(f"the client left; {kind!r} not sent")
        state = self._state
        if kind == "http.response.body":
            if state == _HEAD:
                body = message.get("body", b"")
                more = bool(message.get("more_body", False))
                self._start(body, more)
            elif state == _BODY:
                body = message.get("body", b"")
                more = bool(message.get("more_body", False))
                if self._end_stream and channel.stopping:
                    self._end()
                    raise ClientDisconnected("the server is shutting down; the event stream was ended")
                self._piece(body, more)
            else:
                raise RuntimeError(_unexpected(kind, state))
            if more:
                await self._drain()
        elif kind == "http.response.start":
            if state != _INITIAL:
                raise RuntimeError(_unexpected(kind, state))
            self._head = _head(message)
            self._wants_trailers = bool(message.get("trailers", False))
            self._state = _HEAD
        elif kind == "http.response.pathsend":
            if state != _HEAD and state != _BODY:
                raise RuntimeError(_unexpected(kind, state))
            path = message["path"]
            if not isinstance(path, str):
                raise TypeError(f"http.response.pathsend's path must be a str, not {type(path).__name__}")
            file = _open(path)
            if state == _HEAD:
                self._start(file, False)
            else:
                self._piece(file, False)
        elif kind == "http.response.trailers":
            if state != _TRAILERS:
                raise RuntimeError(_unexpected(kind, state))
            self._sent_trailers = (self._sent_trailers or []) + _headers(message.get("headers", ()))
            if not message.get("more_trailers", False):
                if self._trailers:
                    channel.send_trailers(self._sent_trailers)
                self._state = _COMPLETE
        else:
            raise RuntimeError(_unexpected(kind, state))

    def _start(self, body: bytes | FileBody, more: bool) -> None:
        if type(body) is not bytes and not isinstance(body, FileBody):
            body = _as_bytes(body)  # before the head goes out: a wrong type is still a 500
        status, headers, stream = self._head
        self._end_stream = stream
        if not more and type(body) is bytes and not self._wants_trailers:
            # The usual response, one body message: head and body posted together, and
            # taken by the core in one step.
            self._channel.send_response(Response(status, headers, body))
            self._state = _COMPLETE
            return
        self._channel.start(Response(status, headers), trailers=self._wants_trailers and self._trailers)
        self._state = _BODY
        self._piece(body, more)

    def _piece(self, body: bytes | FileBody, more: bool) -> None:
        if type(body) is not bytes and not isinstance(body, FileBody):
            body = _as_bytes(body)
        ticket = self._channel.send(body, more=more)
        if more:
            if type(body) is bytes and body:
                pending = self._pending
                if pending is None:
                    pending = self._pending = deque()
                else:  # forget what left already: a long stream of small pieces stays a short deque
                    delivered = self._channel.delivered
                    while pending and pending[0][0] <= delivered:
                        self._pending_bytes -= pending.popleft()[1]
                pending.append((ticket, len(body)))
                self._pending_bytes += len(body)
        elif self._wants_trailers:
            self._state = _TRAILERS
        else:
            self._state = _COMPLETE

    def _end(self) -> None:
        """End the response at once: its last (empty) piece, and the trailers it promised."""
        self._ended = True
        self._piece(b"", False)
        if self._state == _TRAILERS:
            if self._trailers:
                self._channel.send_trailers(())
            self._state = _COMPLETE

    async def _drain(self) -> None:
        """Return once the bytes (pieces) waiting to leave are at most HIGH_WATER
        (HIGH_WATER_PIECES), or the client left."""
        if self._pending_bytes <= HIGH_WATER and (
            self._pending is None or len(self._pending) <= HIGH_WATER_PIECES
        ):
            return
        channel = self._channel
        pending = self._pending
        assert pending is not None
        waiter = self._waiter()
        while True:
            since = waiter.generation
            delivered = channel.delivered
            while pending and pending[0][0] <= delivered:
                self._pending_bytes -= pending.popleft()[1]
            if (self._pending_bytes <= HIGH_WATER and len(pending) <= HIGH_WATER_PIECES) or channel.gone:
                return
            await waiter.wait(since)


def _head(message: Message) -> tuple[int, tuple[tuple[bytes, bytes], ...], bool]:
    """(status, headers, is an event stream) from http.response.start, checked in one pass."""
    status = message["status"]
    if type(status) is not int or not 200 <= status <= 599:
        raise ValueError(
            f"http.response.start's status must be an int from 200 to 599, not {brief_repr(status)}"
        )
    items = tuple(message.get("headers", ()))
    # Apps send the same few header lists again and again: each distinct one is checked
    # once. A hit stands for the check only when every pair is a tuple of two bytes
    # objects, as the pairs it was made from were (equal is not enough: a memoryview
    # equals bytes), both tested at C speed.
    try:
        known = _HEADS.get(items)
    except TypeError:  # say, lists as pairs: checked one by one
        known = None
    if known is not None and _plain(items):
        return status, known[0], known[1]
    headers, stream = _check_headers(items)
    return status, headers, stream


_HEADS: dict[tuple[Any, ...], tuple[tuple[tuple[bytes, bytes], ...], bool]] = {}
"""Header lists of http.response.start already checked: (the headers to send, is an event stream)."""
_HEADS_MAX: Final = 256
_TUPLE_ONLY: Final = frozenset({tuple})
_BYTES_ONLY: Final = frozenset({bytes})


def _plain(items: tuple[Any, ...]) -> bool:
    """Every item is a tuple of bytes objects (exactly those types)."""
    return _TUPLE_ONLY.issuperset(map(type, items)) and _BYTES_ONLY.issuperset(
        map(type, chain.from_iterable(items))
    )


def _check_headers(items: tuple[Any, ...]) -> tuple[tuple[tuple[bytes, bytes], ...], bool]:
    headers = []
    stream = framing = False
    try:
        for name, value in items:
            if not (isinstance(name, bytes) and isinstance(value, bytes)):
                raise TypeError(
                    f"header names and values must be bytes, not {brief_repr(name)}: {brief_repr(value)}"
                )
            headers.append((name, value))
            if name[:1] in _C_OR_T:  # the two names looked at, in any case, cheaply
                lower = name.lower()
                if lower == b"content-type":
                    stream = value.lower().startswith(b"text/event-stream")
                elif lower == b"transfer-encoding":
                    framing = True
    except ValueError:
        raise TypeError("headers must be an iterable of [name, value] pairs") from None
    if framing:  # ASGI: the server must ignore it (the core frames the body)
        headers = [item for item in headers if item[0].lower() != b"transfer-encoding"]
    # A tuple: the core validates each distinct tuple of headers once (apps repeat theirs).
    result = tuple(headers), stream
    if _plain(items) and cacheable(items):
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[items] = result  # hashable: tuples of bytes
    return result


def _as_bytes(body: object) -> bytes:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"http.response.body's body must be bytes, not {type(body).__name__}")
    return bytes(body)


def _headers(items: Iterable[Any]) -> list[tuple[bytes, bytes]]:
    try:
        headers = [(name, value) for name, value in items]
    except (TypeError, ValueError):
        raise TypeError("headers must be an iterable of [name, value] pairs") from None
    for name, value in headers:
        if not (isinstance(name, bytes) and isinstance(value, bytes)):
            raise TypeError(
                f"header names and values must be bytes, not {brief_repr(name)}: {brief_repr(value)}"
            )
    return headers


def _open(path: str) -> FileBody:
    """The file for http.response.pathsend. Opened on the event loop: a local open and fstat
    take microseconds, and Starlette stat'ed the file already (docs/asgi.md)."""
    if not os.path.isabs(path):
        raise ValueError(f"http.response.pathsend's path must be absolute, not {path!r}")
    file = open(path, "rb")  # noqa: SIM115 - the core closes it once sent
    try:
        size = os.fstat(file.fileno()).st_size
    except BaseException:
        file.close()
        raise
    return FileBody(file, 0, size)


def _under(path: str, root_path: str) -> bool:
    """`path` is `root_path` or below it (at a segment boundary)."""
    return path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] in ("/", "")


def _unexpected(kind: str, state: int) -> str:
    where = (
        "before http.response.start",
        "after http.response.start",
        "during the body",
        "after the body (trailers due)",
        "after the response completed",
    )[state]
    return f"unexpected ASGI message {kind!r} {where}"


def _ours(error: BaseException) -> bool:
    """`error` is, or was caused by, our ClientDisconnected (Starlette wraps it)."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        exc = stack.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, ClientDisconnected):
            return True
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        for linked in (exc.__cause__, exc.__context__):
            if linked is not None:
                stack.append(linked)
    return False


def scope_path(request: Request, root_path: str) -> tuple[str, bytes, bytes]:
    """(path, raw_path, query_string) of a scope: the path percent-decoded and under `root_path`."""
    raw_path, _, query = request.target.partition(b"?")  # origin-form or `*`: the core made it so
    path = raw_path.decode("ascii")  # h11 lets only visible ASCII through
    if "%" in path:
        path = unquote(path)
    if root_path and not _under(path, root_path):
        path = root_path + path  # the proxy stripped it
    return path, raw_path, query


def log_failure(message: str, error: BaseException | None, request: Request, what: str) -> None:
    """Log an app's failure: `message` with `what` (the request), or with `error`'s traceback,
    the request's credentials replaced wherever they appear in it."""
    if error is None:
        error_log.error("%s (%s)", message, what)
        return
    text = "".join(traceback.format_exception(error)).rstrip()
    error_log.error("%s\n%s", message, redact_values(text, request.headers))
