"""ASGI 3 WebSockets (the `websocket` scope, spec 2.4) as a `Session` over the core's Channel.

`ASGIApp` hands a request the core flagged `Request.websocket` (a valid handshake, with
`Config.websocket` on) to `WebSocketCycle`. The core does the protocol (handshake checks,
frames, pings, the close handshake, permessage-deflate); this is the ASGI side:

- scope: `type` "websocket", `scheme` "ws" or "wss", `path`, `raw_path`, `query_string`,
  `root_path` (as for HTTP), `headers`, `client`, `server`, `subprotocols` (from
  Sec-WebSocket-Protocol, in the client's order), `state` (a shallow copy of the lifespan
  state), `extensions` {"websocket.http.response": {}}.
- receive(): `websocket.connect` first; then `websocket.receive` with `text` or `bytes`
  (one key, as uvicorn) for each whole message; once the WebSocket is closed for the app,
  `websocket.disconnect` with the `code` and `reason` (the peer's close code, 1006 when it
  vanished, 1001 at shutdown, 1002/1007/1009/1011 when the server failed the connection;
  after a denial response, 1000), again on every later call.
- send(): `websocket.accept` (`subprotocol` one the client offered, `headers` without
  sec-websocket-protocol, as the spec says), `websocket.send` (exactly one of `bytes` and
  `text`), `websocket.close` (`code`, default 1000, and `reason`; before accept it refuses
  with 403), `websocket.http.response.start` / `.body` before accept (a denial response of
  the app's own, streamed with `more_body`). send returns at once while less than
  `HIGH_WATER` bytes wait to leave, else once enough left: a fast sender to a slow reader
  holds bounded memory.
- After the WebSocket closed (the peer closed or left, the server failed it or shuts down),
  `websocket.send` and `websocket.accept` raise `ClientDisconnected` (an `OSError`), as
  uvicorn does and ASGI 2.4 allows; Starlette turns it into `WebSocketDisconnect`. A
  `websocket.close` then is ignored: closing twice is a common cleanup pattern.
- Errors: an exception before accept → 500; after → close 1011; returning without
  accepting, closing or denying → 500; returning while open → close 1000. Logged with a
  traceback, credentials redacted (as for HTTP).

`accelerate()` (called by the command line at start-up) lets the core unmask large
messages with the `websockets` package's compiled code when it is installed.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Final

from protocol import Channel, Request, Response
from protocol.websocket import use_mask_function

from .asgi import (
    HIGH_WATER,
    ClientDisconnected,
    Message,
    Scope,
    _head,
    _headers,
    _ours,
    log_failure,
    scope_path,
)
from .notify import Notifier, notifier

if TYPE_CHECKING:
    from .asgi import ASGIApp

error_log: Final = logging.getLogger("httpserver.error")

SPEC_VERSION: Final = "2.4"
"""The WebSocket part of ASGI's HTTP & WebSocket spec implemented here (uvicorn 0.54 says the same)."""

_CONNECT: Final = {"type": "websocket.connect"}

# The states of the app's side, as its messages move it on.
_CONNECTING: Final = 0  # neither accepted nor refused yet
_OPEN: Final = 1  # accepted
_CLOSED: Final = 2  # the app closed (or refused) it
_DENIAL_HEAD: Final = 3  # websocket.http.response.start received, held
_DENIAL_BODY: Final = 4  # the denial's head went out with its first body piece
_DENIED: Final = 5  # the denial response is complete


class WebSocketCycle:
    """One WebSocket's session: the scope, receive() and send() over its channel."""

    __slots__ = (
        "_channel",
        "_connected",
        "_head",
        "_notifier",
        "_owner",
        "_pending",
        "_pending_bytes",
        "_request",
        "_state",
        "_subprotocols",
    )

    def __init__(self, owner: ASGIApp, request: Request) -> None:
        self._owner = owner
        self._request = request
        self._state = _CONNECTING
        self._connected = False  # websocket.connect was received
        self._notifier: Notifier | None = None
        self._pending: deque[tuple[int, int]] = deque()  # (ticket, size) of messages not yet out
        self._pending_bytes = 0
        self._subprotocols: list[str] = []
        self._head: tuple[int, tuple[tuple[bytes, bytes], ...]] = (0, ())

    # --- the task ------------------------------------------------------------------------

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
        closed = channel.gone or channel.close_code is not None
        if error is None:
            if state == _CONNECTING and not closed:
                self._log("the ASGI app returned without accepting or closing the WebSocket", None)
                error = RuntimeError("no websocket.accept or websocket.close")
            elif state in (_DENIAL_HEAD, _DENIAL_BODY) and not closed:
                self._log("the ASGI app returned without completing its denial response", None)
                error = RuntimeError("incomplete websocket.http.response")
        elif closed and _ours(error):
            error_log.debug("%s: the WebSocket closed while the app was sending", self._what())
            error = None
        elif isinstance(error, Exception):
            self._log(f"ASGI app failed on WebSocket {self._what()}", error)
        if closed:
            error = None  # the core reads no more: see asgi._Cycle._finish (a reference cycle)
        channel.finish(error)

    def _what(self) -> str:
        return self._request.target.partition(b"?")[0].decode("latin-1")

    def _log(self, message: str, error: BaseException | None) -> None:
        log_failure(message, error, self._request, self._what())

    def _scope(self) -> Scope:
        request = self._request
        owner = self._owner
        root_path = owner.root_path
        path, raw_path, query = scope_path(request, root_path)
        subprotocols = self._subprotocols
        for name, value in request.headers:
            if name == b"sec-websocket-protocol":
                subprotocols += [item.strip() for item in value.decode("latin-1").split(",") if item.strip()]
        return {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": SPEC_VERSION},
            "http_version": "1.1",
            "scheme": "wss" if request.scheme == "https" else "ws",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": root_path,
            "headers": request.headers,
            "client": request.client,
            "server": request.server,
            "subprotocols": list(subprotocols),
            "state": owner.state.copy(),
            "extensions": {"websocket.http.response": {}},
        }

    def _waiter(self) -> Notifier:
        waiter = self._notifier
        if waiter is None:
            waiter = self._notifier = notifier()
            self._channel.notify = waiter.set
        return waiter

    # --- receive ---------------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self._connected:
            self._connected = True
            return _CONNECT.copy()
        channel = self._channel
        # Closed is read before the message: a message put before the close is never missed.
        closed = channel.close_code is not None or channel.gone or channel.done
        data = channel.receive_message()
        if data is None and not closed:
            waiter = self._waiter()
            while True:
                since = waiter.generation
                closed = channel.close_code is not None or channel.gone or channel.done
                data = channel.receive_message()
                if data is not None or closed:
                    break
                await waiter.wait(since)
        if data is None:
            code = channel.close_code
            if code is None:
                code = 1000 if channel.done else 1006  # after a denial response; else gone
            return {"type": "websocket.disconnect", "code": code, "reason": channel.close_reason}
        if type(data) is str:
            return {"type": "websocket.receive", "text": data}
        return {"type": "websocket.receive", "bytes": data}

    # --- send --------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        channel = self._channel
        kind = message["type"]
        state = self._state
        if kind == "websocket.send":
            if state != _OPEN:
                if state == _CLOSED:
                    raise ClientDisconnected("websocket.send after websocket.close")
                raise RuntimeError(_unexpected(kind, state))
            if channel.close_code is not None or channel.gone:
                raise ClientDisconnected(f"the WebSocket closed ({channel.close_code}); message not sent")
            text = message.get("text")
            data = message.get("bytes")
            if text is not None:
                if data is not None:
                    raise ValueError("websocket.send has both bytes and text")
                if type(text) is not str:
                    raise TypeError(f"websocket.send's text must be a str, not {type(text).__name__}")
                payload: str | bytes = text
                size = len(text)
            elif data is not None:
                if type(data) is not bytes:
                    if not isinstance(data, bytearray | memoryview):
                        raise TypeError(f"websocket.send's bytes must be bytes, not {type(data).__name__}")
                    data = bytes(data)
                payload = data
                size = len(data)
            else:
                raise ValueError("websocket.send has neither bytes nor text")
            ticket = channel.send_message(payload)
            self._pending.append((ticket, size))
            self._pending_bytes += size
            if self._pending_bytes > HIGH_WATER:
                await self._drain()
        elif kind == "websocket.accept":
            if state != _CONNECTING:
                raise RuntimeError(_unexpected(kind, state))
            subprotocol = message.get("subprotocol")
            if subprotocol is not None:
                if type(subprotocol) is not str:
                    raise TypeError(f"websocket.accept's subprotocol must be a str, not {subprotocol!r}")
                if subprotocol not in self._subprotocols:
                    raise ValueError(f"websocket.accept: the client did not offer {subprotocol!r}")
            headers = _headers(message.get("headers") or ())
            if any(name.lower() == b"sec-websocket-protocol" for name, _ in headers):
                raise ValueError("websocket.accept: set the subprotocol, not a sec-websocket-protocol header")
            if channel.close_code is not None or channel.gone:
                raise ClientDisconnected("the client left before the WebSocket was accepted")
            channel.accept(subprotocol, headers)
            self._state = _OPEN
        elif kind == "websocket.close":
            code = message.get("code")
            code = 1000 if code is None else code
            reason = message.get("reason") or ""
            if type(code) is not int or not _valid_close_code(code):
                raise ValueError(f"websocket.close: {code!r} is not a code to send (RFC 6455 §7.4)")
            if type(reason) is not str:
                reason = str(reason)  # FastAPI's validation handler sends a list (it is cut to 123 bytes)
            if state in (_OPEN, _CONNECTING):
                if channel.close_code is None and not channel.gone:
                    channel.close(code, reason)
                self._state = _CLOSED
            elif state != _CLOSED:
                raise RuntimeError(_unexpected(kind, state))
        elif kind == "websocket.http.response.start":
            if state != _CONNECTING:
                raise RuntimeError(_unexpected(kind, state))
            status, head_headers, _ = _head(message)
            self._head = (status, head_headers)
            self._state = _DENIAL_HEAD
        elif kind == "websocket.http.response.body":
            if state != _DENIAL_HEAD and state != _DENIAL_BODY:
                raise RuntimeError(_unexpected(kind, state))
            if channel.gone:
                raise ClientDisconnected("the client left; websocket.http.response.body not sent")
            body = message.get("body", b"")
            if type(body) is not bytes:
                if not isinstance(body, bytearray | memoryview):
                    raise TypeError(f"websocket.http.response.body: a {type(body).__name__}, not bytes")
                body = bytes(body)
            more = bool(message.get("more_body", False))
            if state == _DENIAL_HEAD:
                channel.start(Response(*self._head))
                self._state = _DENIAL_BODY
            ticket = channel.send(body, more=more)
            if not more:
                self._state = _DENIED
            elif body:
                self._pending.append((ticket, len(body)))
                self._pending_bytes += len(body)
                if self._pending_bytes > HIGH_WATER:
                    await self._drain()
        else:
            raise RuntimeError(_unexpected(kind, state))

    async def _drain(self) -> None:
        """Return once the bytes waiting to leave are at most HIGH_WATER (or the WebSocket closed)."""
        channel = self._channel
        pending = self._pending
        waiter = self._waiter()
        channel.delivery_wanted = True  # before looking: see Channel.mark_sent
        try:
            while True:
                since = waiter.generation
                delivered = channel.delivered
                while pending and pending[0][0] <= delivered:
                    self._pending_bytes -= pending.popleft()[1]
                if self._pending_bytes <= HIGH_WATER or channel.gone:
                    return
                await waiter.wait(since)
        finally:
            channel.delivery_wanted = False


def accelerate() -> bool:
    """Let the core unmask large WebSocket messages with the `websockets` package's compiled
    `apply_mask`, when that package is installed (uvicorn's `standard` extra brings it):
    ~40 times faster than pure Python on a 1 MiB message. Whether it is in use. Called once
    at start-up (the import takes ~50 ms), never on a request."""
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        return False
    use_mask_function(apply_mask)
    return True


def _valid_close_code(code: int) -> bool:
    """RFC 6455 §7.4: 1000-1003, 1007-1014 (IANA's registry), 3000-4999; not 1004-1006 or 1015."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _unexpected(kind: str, state: int) -> str:
    where = (
        "before websocket.accept",
        "after websocket.accept",
        "after websocket.close",
        "after websocket.http.response.start",
        "during the denial response's body",
        "after the denial response",
    )[state]
    return f"unexpected ASGI message {kind!r} {where}"
