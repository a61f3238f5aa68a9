"""One HTTP/1.1 server connection as a sans-IO state machine on top of h11.

The transport's loop is the only caller, one call at a time:

    action = conn.next_action(now)      # Receive | Send | SendFile | Run | HalfClose | Close
    ... perform it, then report:
    conn.receive_data(data, now)        # after Receive (b"" for end of input)
    conn.timeout(now)                   # when the action's deadline passed first
    conn.connection_lost()              # when the socket failed (reset, broken pipe)
    conn.shutdown()                     # the server is stopping (any time)

Invariants (each pinned by tests in tests/protocol):
- No exception escapes to the transport, whatever bytes arrive or the app does; an app
  or exchange that raises, or a response h11 refuses, is answered 500 when no response
  has started, else the connection just closes.
- `next_action` always returns an action; once it returned `Close`, it returns `Close`.
  Bytes gathered for sending always leave (in a `Send`) before `HalfClose` or `Close`.
- At most one request is in progress; responses leave in request order, and bytes of
  pipelined responses are coalesced into one `Send` where nothing waits between them.
- Every response is framed by Content-Length (none for 204/304, no body after HEAD) and
  carries `Connection: close` when the connection ends after it.
- A closing response is followed by `Close` at once when all input was read, and by
  `HalfClose` then a bounded linger only when unread input may remain (closing with
  unread input would make the kernel reset the connection and destroy the response).
- An `Exchange` gets `start()` first, before any body byte (and before a
  `100 Continue`), then `receive()` and exactly one `respond()` or one `abort()`; a
  Response from `start()` ends it instead (no `abort()`); `abort()` also follows a call
  that raised. One dropped before `start()` (say, the client left first) gets no call.
- Every file handed over in a `FileBody` is closed, whatever happens to the connection.
- Nothing read after a request that ends the connection is processed.
- Empty lines (CR, LF) before a request line are skipped (RFC 9112 §2.2); on an idle
  connection they neither start a request nor extend the keep-alive deadline.
- Every `Receive`, `Send` and `SendFile` carries a deadline: no state waits forever, but
  for a `Session`'s task (a long poll may wait as long as the app likes): then `Wait`, or a
  `Receive` without deadline while its body is read ahead; `wake` ends either.
- A `Stream` is asked for its next piece only once the previous piece's `Send` completed,
  and closed exactly once; a `Session` task's piece counts as delivered only then.
- A `Session`'s `Channel` learns `gone` whenever the connection stops serving it before
  its response is complete (the client left, a limit or timeout, a cut), else `done`.
- Limits hold however the input is split into reads: the head's exactly; a chunk
  extension or trailer line within twice max_head_size (h11 is fed in slices).
- WebSockets (the WEBSOCKET phase, `protocol.websocket`): only a valid handshake answered
  by a `Session` becomes one; its task's messages count as delivered only once their
  `Send` completed; input is read only while the task's unread messages stay under the
  read-ahead; the connection closes only after the close handshake, a failure (then after
  a linger), a timeout or a cut; the task's `close_code` is set before its channel is
  `gone`.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Final, cast

import h11
from h11._headers import Headers as _H11Headers  # private, but h11 is pinned: see _send_head

from .actions import Action, Close, HalfClose, Receive, Run, Send, SendFile, Spawn, Wait
from .channel import Accept, Channel, Closing, Finish, Message, Outgoing, Piece, Start, Trailers
from .config import Config
from .messages import App, Exchange, FileBody, Headers, Request, Response, Session, Stream, cacheable
from .proxy import forwarded
from .redaction import headers_repr, redact_values

if TYPE_CHECKING:
    from . import websocket as _ws  # imported when first needed: wsproto only with Config.websocket
else:
    _ws = None  # set by the first request on a connection with Config.websocket (see _start_request)

access_log: Final = logging.getLogger("httpserver.access")
error_log: Final = logging.getLogger("httpserver.error")

# RFC 9110's reason phrases where Python 3.11's http.HTTPStatus still has older ones.
_REASONS: Final = {status.value: status.phrase.encode() for status in HTTPStatus} | {
    413: b"Content Too Large",
    414: b"URI Too Long",
    416: b"Range Not Satisfiable",
    422: b"Unprocessable Content",
}
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_LINE_ENDS: Final = frozenset((b"\r", b"\n"))
"""A set, not `x in b"\\r\\n"`: CPython's bytes `in` first tries its operand as an int, and
raises and clears a TypeError each time (~0.3 µs)."""
_HOST: Final = re.compile(rb"(?:\[[0-9A-Za-z:.]+\]|[-0-9A-Za-z._~!$&'()*+,;=%]*)(?::[0-9]*)?")
"""RFC 9112 §3.2's Host value: uri-host [":" port], uri-host an IP literal or a reg-name."""
_VALID_HOSTS: Final[set[bytes]] = set()
"""Host values already matched (clients repeat theirs; a set lookup is cheaper than the regex)."""
_VALID_HOSTS_MAX: Final = 256
_INTERNAL_ERROR_BODY: Final = b"500 Internal Server Error\n"
_INTERNAL_ERROR: Final = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_INTERNAL_ERROR_BODY), _INTERNAL_ERROR_BODY)
)
"""What a handler's invalid response is replaced with, once h11 refused it."""


class Phase(enum.Enum):
    """Where a connection stands; `ServerConnection.phase` tells a transport (e.g. IDLE)."""

    NEW = enum.auto()  # no byte of a first request yet (not IDLE: shutdown waits for that request)
    IDLE = enum.auto()  # between requests; no byte of the next one yet
    HEAD = enum.auto()  # part of a request head has arrived
    BODY = enum.auto()  # reading the request body into an exchange
    STEP = enum.auto()  # a blocking step is out with the transport
    RESPONDING = enum.auto()  # sending a file body piece by piece
    STREAM = enum.auto()  # sending a Stream body, piece by piece as its producer makes them
    APP = enum.auto()  # a Session's task runs: body in and response out through its Channel
    WEBSOCKET = enum.auto()  # a WebSocket handshake's task runs, then its frames (protocol.websocket)
    DRAIN = enum.auto()  # response sent; discarding the rest of the request body
    LINGER = enum.auto()  # output shut; discarding input until end or deadline
    CLOSED = enum.auto()


# The phases as module globals: Python 3.11's EnumType still has a __getattr__ hook,
# which makes each `Phase.IDLE` lookup ~10x slower than a global's, and the hot path
# tests the phase about ten times per request.
_IDLE: Final = Phase.IDLE
_HEAD: Final = Phase.HEAD
_BODY: Final = Phase.BODY
_STEP: Final = Phase.STEP
_RESPONDING: Final = Phase.RESPONDING
_STREAM: Final = Phase.STREAM
_APP: Final = Phase.APP
_WEBSOCKET: Final = Phase.WEBSOCKET
_DRAIN: Final = Phase.DRAIN
_LINGER: Final = Phase.LINGER
_CLOSED: Final = Phase.CLOSED


class _Placeholder:
    """Stands in for file bytes in h11's accounting; the transport sends the real ones."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


_NAME_VALUE: Final = itemgetter(1, 2)
"""(lower-case name, value) of one of h11's (raw name, lower-case name, value) header items."""
_NOT_RUN: Final = object()
_NO_PIECE: Final = object()
_READ_AHEAD: Final = 64 * 1024
"""Request body bytes read for a Session's task before it asks for them."""
_GATHER_MAX: Final = 64
"""Body pieces past which a step stops gathering slices of one read (`_read_body`, `_feed_session`)."""
_END_OF_MESSAGE: Final = h11.EndOfMessage()
_CONTINUE: Final = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
"""Events are immutable: one instance serves every response."""


class ServerConnection:
    """The server side of one connection. See the module docstring for the contract."""

    # Slots and a plain list for the queue (it rarely holds more than three actions)
    # keep an idle connection's core near 1 KiB: servers hold thousands of them.
    __slots__ = (
        "_absolute_form",
        "_app",
        "_body_expected",
        "_body_length",
        "_body_size",
        "_bodyless",
        "_client",
        "_close_after_response",
        "_config",
        "_deadline",
        "_draining",
        "_eof",
        "_exchange",
        "_file",
        "_file_remaining",
        "_first",
        "_fresh",
        "_h11",
        "_head",
        "_now",
        "_out",
        "_phase",
        "_piece",
        "_queue",
        "_request",
        "_scheme",
        "_server",
        "_session",
        "_slice",
        "_started",
        "_status",
        "_step_outcome",
        "_stopping",
        "_stream",
        "_stream_left",
        "_unfed",
        "_unstarted",
        "_waiting_on",
        "_wake",
        "_websocket",
    )

    def __init__(
        self,
        app: App,
        config: Config,
        *,
        now: float,
        client: tuple[str, int] | None = None,
        server: tuple[str, int | None] | None = None,
        tls: bool = False,
        wake: Callable[[], None] | None = None,
    ) -> None:
        """`client` and `server` are the socket's addresses (None when unknown), `tls` whether
        it speaks HTTPS. `wake`, callable from any thread at any time, makes the transport
        give up a `Receive` or `Wait` in progress (or the next one) and ask for the next
        action; without it, `Session` apps cannot be served (they get 500)."""
        self._app = app
        self._config = config
        self._client = client
        self._server = server
        self._scheme = "https" if tls else "http"
        self._wake = wake
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_head_size)
        self._phase = _IDLE
        # keep_alive_timeout 0 means no keep-alive (as in nginx): the first request gets the head timeout.
        self._deadline: float | None = now + (config.keep_alive_timeout or config.head_timeout)
        self._queue: list[Action] = []
        self._out: list[bytes] = []  # bytes to go out in the next Send
        self._waiting_on: Action | None = None  # the last action handed out
        self._request: Request | None = None
        # The last request that came in absolute form, and its target as sent (the access log's).
        self._absolute_form: tuple[Request, bytes] | None = None
        self._head = False  # the request is a HEAD: kept apart, as handlers get the Request
        self._started = now  # when the current request's first byte arrived
        self._exchange: Exchange | None = None
        self._unstarted = False  # the exchange's start() is still to be called
        self._step_outcome: object = None
        self._body_size = 0
        self._body_expected = False  # the request declared a non-empty body
        self._bodyless = False  # ... or none, nor an upgrade: h11 has its end at once
        self._file: FileBody | None = None
        self._file_remaining = 0
        self._stream: Stream | None = None
        self._stream_left = -1  # bytes the Stream's Content-Length still allows (-1: none given)
        self._piece: object = _NO_PIECE  # what the Stream's last step produced
        self._session: _SessionState | None = None
        self._websocket: _ws.WebSocket | None = None
        self._status = 0
        self._body_length = 0
        self._close_after_response = not config.keep_alive_timeout  # 0: every response closes
        self._first: bytes = b""  # the input a request head began with, until it parsed (for the log)
        self._fresh = True  # no request has started yet (see `phase`)
        self._draining = False  # stopping, but an idle connection waits for a last request
        self._stopping = False
        self._eof = False
        # Input not yet given to h11: it bounds only what it holds incomplete, so large
        # reads go in slices of at most max_head_size, for limits that do not depend on
        # how the bytes arrived (a long chunk extension or trailer gets 431 either way).
        self._unfed: memoryview | bytes = b""
        self._slice = config.max_head_size
        self._now = now  # the time of the call in progress, for deadlines

    # --- the transport's side -------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the connection stands. A new one is NEW, not IDLE, until its first request starts:
        a server that stops (or needs room) closes IDLE connections at once, whose clients know a
        kept-alive connection may close, but lets a new one send the request it was opened for."""
        if self._fresh and self._phase is _IDLE:
            return Phase.NEW
        return self._phase

    def next_action(self, now: float) -> Action:
        """What the transport should do next."""
        self._now = now
        queue = self._queue
        while not queue:
            self._advance(now)
        action = queue.pop(0)
        self._waiting_on = action
        return action

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes the peer sent after a `Receive`; b"" means it will send no more."""
        self._now = now
        phase = self._phase
        if phase is _IDLE and data and data[:1] not in _LINE_ENDS and len(data) <= self._slice:
            # The usual first: a request's first bytes (not b"", not an empty line), one slice.
            self._h11.receive_data(data)
            self._phase = _HEAD
            self._started = now
            self._first = data
            self._fresh = False
            self._deadline = now + self._config.head_timeout
            return
        if phase is _LINGER:
            if not data:
                self._phase = _CLOSED
            return
        if phase is _WEBSOCKET:
            self._websocket_input(data, now)
            return
        if phase is _IDLE and data[:1] in _LINE_ENDS:
            # RFC 9112 §2.2: ignore empty lines before a request line. Skipped bytes leave
            # the connection idle, on its keep-alive deadline: CRLFs forever still time out.
            data = data.lstrip(b"\r\n")
            if not data:
                return
        if not data:
            self._eof = True
        if len(data) > self._slice:
            view = memoryview(data)  # the rest stays uncopied; each slice goes in as bytes (parser.py)
            self._h11.receive_data(bytes(view[: self._slice]))
            self._unfed = view[self._slice :]
        else:
            self._h11.receive_data(data)
        if phase is _IDLE:
            if data:
                self._phase = _HEAD
                self._started = now
                self._first = data
                self._fresh = False
                self._deadline = now + self._config.head_timeout
        elif phase is _BODY or phase is _DRAIN:
            self._deadline = now + self._config.body_timeout
        elif phase is _HEAD and b"\n" not in self._first and len(self._first) < _LOGGED_LINE_MAX:
            self._first += data  # a head in pieces: its request line, for the log

    def timeout(self, now: float) -> None:
        """The deadline of the action handed out last passed before it completed."""
        self._now = now
        if isinstance(self._waiting_on, (Send, SendFile)):
            self.connection_lost()
            return
        phase = self._phase
        if phase is _WEBSOCKET:
            self._websocket_timeout(now)
        elif phase is _HEAD or phase is _BODY or phase is _APP:  # _APP: its task waited for the body
            self._fail(408, now)
        elif phase is _LINGER:
            self._phase = _CLOSED
        else:
            self._begin_close(now, linger=False)

    def connection_lost(self, now: float | None = None) -> None:
        """The socket failed: undo what is in progress and close without sending.

        Call it between actions, never while a `Run` step is running. `now` (default: the
        time of the last call) dates the access-log line of a request it cuts short.
        """
        if now is not None:
            self._now = now
        if self._request is not None:
            self._log_unfinished(self._now)
        self._eof = True
        # Only cleanup may still happen: queued aborts (say, behind a 413 that failed to
        # go out) must run; a queued body step no longer reaches its exchange (`_step`).
        self._queue = [action for action in self._queue if type(action) is Run]
        self._out.clear()
        self._unfed = b""
        outcome = self._step_outcome
        self._step_outcome = None
        if isinstance(outcome, Response):  # the step's respond() succeeded: nothing to abort
            self._exchange = None
            self._discard_body(outcome.body)
        self._drop_exchange()
        self._drop_file()
        self._drop_stream()
        self._drop_session()
        self._drop_websocket()
        self._phase = _CLOSED

    def shutdown(self, *, drain: bool = False) -> None:
        """Stop after the request in progress; an idle connection closes at once.

        A transport waiting on `Receive` for an idle connection (`Phase.IDLE`) abandons that
        wait and asks for the next action. A new connection (`Phase.NEW`) is not idle: its
        first request, which its client may be sending right now, is still answered (with
        `Connection: close`), if it comes before the usual deadline. So a server that stops
        while others go on serving on the same port (a reload) fails no client that just connected.

        `drain` treats an idle connection so too: asked again, the core waits on for its next
        request (answered with `Connection: close`) or its keep-alive deadline, so that no
        request crosses our close on the wire. Each call says whether to drain: a later one
        without `drain` closes an idle connection at once.
        """
        self._draining = drain
        self._stopping = True
        if self._session is not None:
            self._session.channel.mark_stopping()
        if self._websocket is not None and self._wake is not None:
            self._wake()  # a WebSocket waits for input with no end: it closes with 1001 now

    # --- the state machine -----------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Make progress until at least one action is queued."""
        phase = self._phase
        # The phases most requests pass through first: a head, then a session's steps
        # (twice per response) or an exchange's.
        if phase is _IDLE or phase is _HEAD:
            if self._stopping and phase is _IDLE and not self._fresh and not self._draining:
                self._begin_close(now, linger=False)
            else:
                self._read_head(now)
        elif phase is _APP:
            self._serve_session(now)
        elif phase is _STEP:
            self._after_step(now)
        elif phase is _BODY:
            self._read_body(now)
        elif phase is _WEBSOCKET:
            self._serve_websocket(now)
        elif phase is _STREAM:
            self._stream_next(now)
        elif phase is _RESPONDING:
            self._send_file_piece(now)
        elif phase is _DRAIN:
            self._drain(now)
        elif phase is _LINGER:
            self._emit(Receive(self._deadline))
        else:
            self._emit(Close())  # after any response still gathered in _out

    def _emit(self, action: Action) -> None:
        """Queue `action` after the bytes gathered so far."""
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._queue.append(Send(data, self._now + self._config.send_timeout, self._config.send_timeout))
        self._queue.append(action)

    def _feed_slice(self) -> bool:
        """Give h11 the next slice of input held back; False when there is none."""
        unfed = self._unfed
        if not unfed:
            return False
        self._h11.receive_data(bytes(unfed[: self._slice]))
        self._unfed = unfed[self._slice :]
        return True

    def _read_head(self, now: float) -> None:
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == 431:
                line_end = self._h11.trailing_data[0].find(b"\n")
                if not 0 <= line_end <= self._config.max_head_size:
                    status = 414  # the request line alone is over the limit, as in _check
            self._fail(status, now)
            return
        if event is h11.NEED_DATA:
            if not self._feed_slice():
                self._emit(Receive(self._deadline))
        elif type(event) is h11.Request:
            self._start_request(event, now)
        else:  # ConnectionClosed: the peer finished cleanly between requests
            self._begin_close(now, linger=False)

    def _start_request(self, event: h11.Request, now: float) -> None:
        # h11's Headers iterates in slow Python, item by item; its list of (raw name,
        # lower-case name, value) gives the core and the handlers a plain list at C speed.
        headers = list(map(_NAME_VALUE, event.headers._full_items))
        config = self._config
        client, scheme = self._client, self._scheme
        if config.proxy_headers:  # as a trusted proxy names them (see `proxy`)
            client, scheme = forwarded(headers, client, scheme, config.forwarded_allow_ips)
        method = event.method
        request = Request(method, event.target, headers, event.http_version, client, self._server, scheme)
        self._request = request
        self._first = b""
        self._head = method == b"HEAD"
        self._phase = _BODY
        self._deadline = now + config.body_timeout
        status = self._check(request)
        if status:
            self._fail(status, now)
            return
        websocket = False
        if config.websocket:
            if _ws is None:  # an import statement per request would cost ~1 µs even when loaded
                _load_websocket()
            websocket = _ws.wants_websocket(request)
        if websocket:
            refusal = _ws.refusal(request, self._body_expected)
            if refusal is not None:
                self._close_after_response = True
                self._respond(refusal, now)
                return
            request.websocket = True
        try:
            reply = self._app(request)
        except Exception:
            error_log.exception("handler failed for %r", request)
            self._fail(500, now)
            return
        h = self._h11
        # A request without a body (no upgrade, no Expect): h11 holds its EndOfMessage
        # already. Taken now, the client's side is DONE, so the response goes straight
        # on to the next cycle, an exchange gets its one step at once and a session's
        # task finds the (empty) body complete without asking the core.
        ended = self._bodyless and not websocket
        if ended:
            h.next_event()
        waiting = self._body_expected and h.they_are_waiting_for_100_continue
        if isinstance(reply, Response):
            if waiting:
                # The client holds its body back; answering without reading it means
                # its next bytes may be that body, so this connection cannot go on.
                self._close_after_response = True
            self._respond(reply, now)
            return
        if hasattr(reply, "respond"):
            exchange: Exchange = reply  # type: ignore[assignment] # not cast(): a call per request
            self._exchange = exchange
            self._unstarted = True
            if ended:
                self._run_step(exchange, b"", True, now)
            elif waiting and not (h.trailing_data[0] or self._unfed):
                # The client holds its body back for a 100 Continue: the exchange's start()
                # may refuse the request first, and then the body is never sent at all.
                self._run_step(exchange, b"", False, now)
            return
        if hasattr(reply, "run"):
            if websocket:
                self._start_websocket(reply, now)
            else:
                self._start_session(reply, now, ended)
            return
        # Say, None from a handler that forgot to return.
        error_log.error("handler returned %r for %r", reply, request)
        self._fail(500, now)

    def _check(self, request: Request) -> int:
        """The error status for a request head we refuse, or 0."""
        config = self._config
        version = request.http_version
        if version != b"1.1" and version[:2] != b"1.":
            return 505
        method, target = request.method, request.target
        if method == b"CONNECT":  # no tunnels; a 2xx would switch h11 to raw bytes
            return 501
        size = len(method) + len(target) + 12  # the request line
        # A request line over the head limit is 414 too, as in nginx, however it was read.
        if len(target) > config.max_target_length or size > config.max_head_size:
            return 414
        headers = request.headers
        if len(headers) > config.max_header_count:
            return 431
        # Each field line is name, ": ", value, CRLF: summed at C speed.
        size += 4 * len(headers) + sum(map(len, chain.from_iterable(headers)))
        if size > config.max_head_size:
            return 431
        # h11 lets at most one Content-Length, Transfer-Encoding and Host through (the
        # last would win here anyway), so a dict finds them at C speed.
        fields = dict(headers)
        length = fields.get(b"content-length")
        encoding = fields.get(b"transfer-encoding")
        # RFC 9112 §6.1: both is a smuggling vector; in HTTP/1.0 (which has no chunked) a
        # Transfer-Encoding is faulty framing, refused as nginx does.
        if encoding is not None and (length is not None or version == b"1.0"):
            return 400
        host = fields.get(b"host")
        if host is not None and host not in _VALID_HOSTS:  # RFC 9112 §3.2: a MUST (h11 checks presence)
            if _HOST.fullmatch(host) is None:
                return 400
            if len(_VALID_HOSTS) < _VALID_HOSTS_MAX:
                _VALID_HOSTS.add(host)
        # Not origin-form ("/..."): asterisk-form for OPTIONS alone (RFC 9112 §3.2.4),
        # absolute-form (made origin-form here), or refused.
        if target[0] != 0x2F:
            if target == b"*":
                if method != b"OPTIONS":
                    return 400
            elif not self._to_origin_form(request, host is not None):
                return 400
        declared = 0 if length is None else int(length)
        if declared > config.max_body_size:
            return 413
        self._body_expected = expected = declared > 0 or encoding is not None
        # No body, no protocol switch proposed (h11 pauses after an Upgrade request's end)
        # and no 100-continue awaited (h11 waits only when asked by an Expect field).
        self._bodyless = not expected and b"upgrade" not in fields and b"expect" not in fields
        return 0

    def _to_origin_form(self, request: Request, has_host: bool) -> bool:
        """Turn an absolute-form request (`http://host:port/path?query`) into origin-form with
        that Host, once for every handler: RFC 9112 §3.2.2 has an origin server ignore the
        Host field and use the target's authority. False for any other target: another
        scheme, no host, userinfo, a bad port (nginx answers those 400)."""
        target = request.target
        scheme, separator, rest = target.partition(b"://")
        if not separator or scheme.lower() not in (b"http", b"https"):
            return False
        end = len(rest)
        for delimiter in (b"/", b"?"):
            found = rest.find(delimiter)
            if 0 <= found < end:
                end = found
        authority = rest[:end]
        if authority[:1] in (b"", b":") or _HOST.fullmatch(authority) is None:
            return False
        path = rest[end:]
        request.target = path if path[:1] == b"/" else b"/" + path
        headers = request.headers
        if has_host:
            request.headers = [(name, authority if name == b"host" else value) for name, value in headers]
        else:  # HTTP/1.0
            request.headers = [*headers, (b"host", authority)]
        self._absolute_form = (request, target)
        return True

    def _read_body(self, now: float) -> None:
        chunks: list[bytes | bytearray] = []
        limit = self._config.max_body_size
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._fail(exc.error_status_hint, now)
                return
            if type(event) is not h11.Data:
                # Gather the whole read for one step, unless it was many pieces already (tiny
                # chunks): then the step comes now, so a flood of them holds the loop ~1 slice.
                if event is h11.NEED_DATA and len(chunks) < _GATHER_MAX and self._feed_slice():
                    continue
                break
            self._body_size += len(event.data)
            if self._body_size > limit:
                self._fail(413, now)
                return
            chunks.append(event.data)
        finished = type(event) is h11.EndOfMessage
        if finished and len(event.headers) > self._config.max_header_count:  # type: ignore[union-attr]
            self._fail(431, now)  # trailer fields count like header fields
            return
        if not finished and self._chunk_past_limit():
            self._fail(413, now)  # now, not once the client has sent up to the limit
            return
        if not chunks and not finished:
            if self._bare_lf_waiting():
                self._fail(400, now)
                return
            self._emit(Receive(self._deadline))
            return
        exchange = self._exchange
        assert exchange is not None
        self._run_step(exchange, b"".join(chunks), finished, now)

    def _run_step(self, exchange: Exchange, data: bytes, finished: bool, now: float) -> None:
        """Run one step of `exchange`: directly, or as a `Run` when it may block."""
        self._phase = _STEP
        if exchange.may_block:
            self._step_outcome = _NOT_RUN
            # A partial: no closure cells made on every call of this method (measured).
            self._emit(Run(partial(self._step, exchange, data, finished)))
            return
        self._step(exchange, data, finished)
        self._after_step(now)

    def _step(self, exchange: Exchange, data: bytes, finished: bool) -> None:
        """Start the exchange if due, feed it body bytes and, at the end, ask for the response.

        Runs where the transport runs `Run` steps, never while the core is called."""
        if exchange is not self._exchange:  # dropped since this step was queued
            return
        try:
            outcome = None
            if self._unstarted:
                self._unstarted = False  # from here on, an exchange that fails is aborted
                outcome = exchange.start()
            if outcome is None:
                if data:
                    outcome = exchange.receive(data)  # a Response ends the request early
                if finished and outcome is None:
                    outcome = exchange.respond()
                    if outcome is None:  # it would read as "more body to come"
                        raise TypeError("respond() returned None")
            if outcome is not None and not isinstance(outcome, Response):
                raise TypeError(f"{exchange!r} gave {outcome!r}, not a Response")
            self._step_outcome = outcome
        except Exception as exc:
            self._step_outcome = exc

    def _after_step(self, now: float) -> None:
        outcome = self._step_outcome
        if outcome is _NOT_RUN:
            raise RuntimeError("next_action called before the Run step was run")
        self._step_outcome = None
        h = self._h11
        if outcome is None:  # more body to come; time spent in the step is not the client's
            self._phase = _BODY
            self._deadline = now + self._config.body_timeout
            if h.they_are_waiting_for_100_continue:  # start() accepted the request
                self._out.append(h.send(_CONTINUE))
        elif isinstance(outcome, Response):
            self._exchange = None
            # (Only a declared body is waited for: see _start_request.)
            if self._body_expected and h.they_are_waiting_for_100_continue:  # start() refused it
                self._close_after_response = True
            self._respond(outcome, now)
        else:
            error_log.error("handler failed for %r", self._request, exc_info=cast(Exception, outcome))
            self._fail(500, now)

    def _respond(self, response: Response, now: float) -> None:
        """Send `response`'s head, and its body unless it is a file or a stream to send in pieces."""
        status = response.status
        body = response.body
        if type(body) is not bytes and isinstance(body, (bytearray, memoryview)):
            body = bytes(body)  # rare: one copy, then the usual path (h11 joins pieces anyway)
        if type(body) is bytes:  # the usual case first: the whole body at hand
            if not self._send_head(status, response.headers, len(body), now):
                return
            self._status = status
            h = self._h11
            out = self._out
            if body and not (self._head or status in _NO_BODY_STATUSES):
                self._body_length = len(body)
                out += h.send_with_data_passthrough(h11.Data(body))  # type: ignore[arg-type] # a list for Data
            else:
                self._body_length = 0
            out += h.send_with_data_passthrough(_END_OF_MESSAGE) or ()
            self._finish_response(now)
            return
        h = self._h11
        file: FileBody | None = None
        stream: Stream | None = None
        if isinstance(body, FileBody):
            file = body
            length: int | None = body.length
        else:  # a Stream: framed by the handler's own Content-Length, if any
            stream = cast(Stream, body)
            length = None
        if not self._send_head(status, response.headers, length, now):
            self._discard_body(body)
            return
        self._status = status
        out = self._out
        # No request (its head did not parse) means an error status without a body.
        silent = self._head or status in _NO_BODY_STATUSES
        if stream is not None:
            self._body_length = 0
            self._stream = stream
            if silent:  # nothing is asked of it, but it is closed
                self._drop_stream()
            else:
                # _stream_left: the handler's Content-Length, which _send_head looked up
                self._piece = _NO_PIECE
                self._phase = _STREAM
                return
        elif file is not None and length and not silent:
            self._body_length = length
            self._file = file
            self._file_remaining = length
            self._phase = _RESPONDING
            return
        else:
            self._body_length = 0
            if file is not None:
                file.file.close()
        out += h.send_with_data_passthrough(_END_OF_MESSAGE) or ()
        self._finish_response(now)

    def _send_head(self, status: int, headers: Headers, length: int | None, now: float) -> bool:
        """Gather a response head with the core's own fields (Content-Length unless `length`
        is None, Connection, Date, Server); False, after a 500 and a close, if h11 refused it."""
        if status == 204 and _has_field(headers, b"content-length"):
            # RFC 9110 §8.6: never in a 204, whatever the handler said (a 304 may keep its own)
            headers = tuple(field for field in headers if field[0].lower() != b"content-length")
        # h11 checks every header it is given with regexes, on every response: the costliest
        # part of sending one. Handlers mostly return the same constant tuples, so each
        # distinct tuple is validated once and its verdict kept (see `_validate`).
        verdict = None
        if type(headers) is tuple:
            try:
                verdict = _validated[headers]
            except KeyError:
                verdict = _validate(headers)
            except TypeError:  # a mutable value such as a bytearray: it could change after a check
                pass
        # The core's own fields, already in h11's normalised form (raw name, lower name, value).
        fields = []
        if length is not None and status not in _NO_BODY_STATUSES:
            fields.append(_LENGTH_FIELDS.get(length) or _length_field(length))
        if self._close_after_response or self._stopping:
            fields.append(_CONNECTION_CLOSE)
        config = self._config
        # Singletons (RFC 9110 §6.6.1, §10.2.4): an app's own Date or Server is kept, alone.
        if config.date_header and not _has_field(headers, b"date"):
            fields.append((b"Date", b"date", _http_date()))
        if config.server_header and not _has_field(headers, b"server"):  # validated by Config
            fields.append((b"Server", b"server", config.server_header))
        if length is None:  # the handler frames the body: by its Content-Length, if any
            self._stream_left = verdict[2] if verdict is not None else _declared_length(headers)
        try:
            # Trusted: already valid and normalised, and naming no framing field while
            # the core frames the body itself (then h11 must reconcile them, as usual).
            # h11 takes a Headers object as it is.
            if verdict is not None and (length is None or not verdict[1]):
                all_headers: list[tuple[bytes, bytes]] | _H11Headers = _H11Headers(verdict[0] + fields)
            else:  # h11 validates them, as it would any headers
                all_headers = [*headers, *((raw, value) for raw, _, value in fields)]
            head = h11.Response(status_code=status, headers=all_headers, reason=_REASONS.get(status, b""))
            # send_with_data_passthrough: h11's send() would join pieces that _emit joins anyway.
            pieces = self._h11.send_with_data_passthrough(head)
        except (h11.LocalProtocolError, TypeError, ValueError) as exc:
            # A handler bug (a bad header or status, or not bytes at all). h11 may be
            # unusable now: send fixed bytes. The message says what (its traceback would
            # point into h11), without a credential it may quote.
            error_log.error(
                "handler gave an invalid response (status %r, headers %s) for %r: %s",
                status,
                _brief(headers_repr(headers)),
                self._request,
                _brief(redact_values(str(exc), headers)),
            )
            self._drop_session()
            self._close_after_response = True
            self._out.append(_INTERNAL_ERROR)
            self._log_access(500, len(_INTERNAL_ERROR_BODY), now)
            self._request = None  # logged
            self._begin_close(now, linger=True)
            return False
        self._out += pieces  # type: ignore[arg-type] # a list for a Response
        return True

    def _discard_body(self, body: bytes | FileBody | Stream) -> None:
        """A response body that will not be sent: its file closed, its stream closed (in a step)."""
        if isinstance(body, FileBody):
            body.file.close()
        elif not isinstance(body, (bytes, bytearray, memoryview)):
            stream = body
            self._emit(Run(lambda: _close_stream(stream)))

    # --- Stream bodies: a blocking producer, one piece per step -----------------------

    def _stream_next(self, now: float) -> None:
        """Send the piece the last step produced, then ask for the next one (after it went out)."""
        piece = self._piece
        if piece is _NOT_RUN:
            raise RuntimeError("next_action called before the Run step was run")
        self._piece = _NO_PIECE
        h = self._h11
        if piece is None:  # the end
            if self._stream_left > 0:
                error_log.error(
                    "response body for %r ended %d bytes short of its Content-Length",
                    self._request,
                    self._stream_left,
                )
                self._cut(now)
                return
            self._out += h.send_with_data_passthrough(_END_OF_MESSAGE) or ()
            self._drop_stream()  # after the last chunk went out
            self._finish_response(now)
            return
        if isinstance(piece, BaseException):
            error_log.error("response body for %r failed", self._request, exc_info=piece)
            self._cut(now)
            return
        if piece is not _NO_PIECE:
            data = cast(bytes, piece)
            if not self._send_piece(data, now):
                return
        stream = self._stream
        assert stream is not None
        self._piece = _NOT_RUN
        # Queued after the Send of the piece just gathered: the next piece is made only
        # once this one is out (backpressure), while the socket is watched for the client.
        self._emit(Run(lambda: self._produce(stream), watch=True))

    def _send_piece(self, data: bytes, now: float) -> bool:
        """Gather a piece of a streamed body within its Content-Length; False if it cut the connection."""
        left = self._stream_left
        over = 0 <= left < len(data)
        if over:
            error_log.error("response body for %r is longer than its Content-Length", self._request)
            data = data[:left]
        if data:
            self._out += self._h11.send_with_data_passthrough(h11.Data(data)) or ()
            self._body_length += len(data)
            if left >= 0:
                self._stream_left = left - len(data)
        if over:
            self._cut(now)
            return False
        return True

    def _produce(self, stream: Stream) -> None:
        """A step: the stream's next piece (or None, or what it raised) into `_piece`."""
        if stream is not self._stream:  # dropped since this step was queued
            return
        piece: object
        try:
            piece = stream.next_piece()
            if piece is not None and type(piece) is not bytes:
                piece = bytes(piece)  # bytearray, memoryview; anything else raises
        except Exception as exc:
            piece = exc
        self._piece = piece

    def _cut(self, now: float) -> None:
        """End a response that has started, short: the client sees it incomplete (no last chunk)."""
        self._log_access(self._status, self._body_length, now)
        self._request = None  # logged
        self._begin_close(now, linger=False)

    def _drop_stream(self) -> None:
        stream = self._stream
        if stream is not None:
            self._stream = None
            self._piece = _NO_PIECE
            self._emit(Run(lambda: _close_stream(stream)))

    # --- Sessions: an app task that runs concurrently ---------------------------------

    def _start_session(self, session: Session, now: float, ended: bool) -> None:
        """Spawn `session`'s task; `ended`: the request had no body, and its end was read."""
        if self._wake is None:
            error_log.error("this transport cannot run %r (no wake)", session)
            self._fail(500, now)
            return
        channel = Channel(self._wake)
        if self._stopping:
            channel.stopping = True
        state = self._session = _SessionState(channel, session)
        if ended:  # before the task runs: it finds the body complete without asking
            channel.put_body(b"", True)
            state.body_done = True
        self._phase = _APP
        self._emit(Spawn(state.run_task))

    def _serve_session(self, now: float) -> None:
        """Take what the task posted, feed it the body it wants, send; else wait for it."""
        state = self._session
        assert state is not None
        channel = state.channel
        if state.sending:  # the Send handed out last has completed
            state.sending = False
            if state.complete:  # delivered with `done`, under one notify
                state.pieces += state.in_flight
                state.in_flight = 0
                self._finish_session(now)
                return
            if state.in_flight:
                channel.mark_delivered(state.in_flight)
                state.in_flight = 0
        while not state.complete and (message := channel.next_message()) is not None:
            if not self._take_message(state, message, now):
                return  # it ended the connection
        if self._file is not None:  # a file as the last piece: sent as any file body
            self._phase = _RESPONDING
            return
        reading = not state.body_done and (channel.wants_body or channel.buffered() < _READ_AHEAD)
        if reading and not self._feed_session(state, now):
            return
        if self._out:
            state.sending = True
            state.in_flight = state.pieces
            state.pieces = 0
            self._queue.append(
                Send(b"".join(self._out), now + self._config.send_timeout, self._config.send_timeout)
            )
            self._out.clear()
            return
        if state.pieces:  # pieces that send nothing (HEAD, 204, 304) have "left" at once
            channel.mark_delivered(state.pieces)
            state.pieces = 0
        if state.complete:
            self._finish_session(now)
            return
        if not channel.will_wait():
            return  # the task posted meanwhile: look again
        if self._unfed:  # input is at hand (see _feed_session): the task's next ask reads it
            self._emit(Wait(None))
        elif not state.body_done and (channel.wants_body or channel.buffered() < _READ_AHEAD):
            deadline = now + self._config.body_timeout if channel.wants_body else None
            self._emit(Receive(deadline))
        else:
            self._emit(Wait(None))

    def _take_message(self, state: _SessionState, message: Message, now: float) -> bool:
        """Act on one message of the task; False if that ended the connection."""
        h = self._h11
        kind = type(message)
        if kind is Piece:
            piece: Piece = message  # type: ignore[assignment] # not cast(): a call per message
            if not state.started:
                error_log.error("app sent a body before the response head for %r", self._request)
                self._fail(500, now)
                return False
            return self._take_piece(state, piece.data, piece.more, now)
        if kind is Start or kind is Response:  # a Response: a whole one (`Channel.send_response`)
            if kind is Start:
                start: Start = message  # type: ignore[assignment]
                response, trailers = start.response, start.trailers
            else:
                response, trailers = message, False  # type: ignore[assignment]
            if state.started:
                error_log.error("app started the response twice for %r", self._request)
                self._cut(now)
                return False
            # Its body would come as a next request (only while the body is unread).
            if not state.body_done and h.they_are_waiting_for_100_continue:
                self._close_after_response = True
            if not self._send_head(response.status, response.headers, None, now):
                return False
            state.started = True
            self._status = response.status
            self._body_length = 0
            state.silent = self._head or response.status in _NO_BODY_STATUSES
            if state.silent:  # else the app's Content-Length, which _send_head looked up
                self._stream_left = -1
            state.trailers = trailers
            if kind is Response:  # its body too, in this step
                return self._take_piece(state, response.body, False, now)  # type: ignore[arg-type] # bytes
            return True
        if kind is Trailers:
            if state.ended and state.trailers and not state.complete:
                request = self._request
                wanted = (
                    request is not None
                    and self._stream_left < 0
                    and not state.silent
                    and request.http_version == b"1.1"
                    and _asks_for_trailers(request.headers)
                )
                try:
                    fields = cast(Trailers, message).headers if wanted else []
                    end = h11.EndOfMessage(headers=list(fields))
                    self._out += h.send_with_data_passthrough(end) or ()
                except (h11.LocalProtocolError, TypeError, ValueError):
                    error_log.exception("app gave invalid trailers for %r", request)
                    self._cut(now)
                    return False
                state.complete = True
            return True
        # Finish: the task is over; the response must be complete by now. A task that raised an
        # Exception logged it with its traceback (Channel.finish): no second, untrue line.
        quiet = isinstance(cast(Finish, message).error, Exception)
        if not state.started:
            if not quiet:
                error_log.error("app returned without a response for %r", self._request)
            self._fail(500, now)
        else:
            if not quiet:
                error_log.error("app returned with its response for %r incomplete", self._request)
            self._cut(now)
        return False

    def _take_piece(self, state: _SessionState, data: bytes | FileBody, more: bool, now: float) -> bool:
        """Act on a piece of the task's response body, its head sent; False if that ended the connection."""
        if state.ended:
            return True  # after the last piece: ignored
        if isinstance(data, FileBody):
            if more or state.silent:
                data.file.close()
                if more:
                    error_log.error("app sent a file that is not its response's last piece")
                    self._cut(now)
                    return False
            elif self._stream_left >= 0 and data.length != self._stream_left:
                data.file.close()
                error_log.error("app sent a file that does not match its Content-Length")
                self._cut(now)
                return False
            else:
                state.ended = state.complete = True
                state.pieces += 1
                self._body_length += data.length
                self._file = data
                self._file_remaining = data.length
                return True
        elif not state.silent and not self._send_piece(data, now):
            return False
        state.pieces += 1
        if not more:
            state.ended = True
            if self._stream_left > 0 and not state.silent:
                error_log.error(
                    "response body for %r ended %d bytes short of its Content-Length",
                    self._request,
                    self._stream_left,
                )
                self._cut(now)
                return False
            if not state.trailers:
                self._out += self._h11.send_with_data_passthrough(_END_OF_MESSAGE) or ()
                state.complete = True
        return True

    def _feed_session(self, state: _SessionState, now: float) -> bool:
        """Read the request body into the channel while wanted; False if that ended the connection."""
        h = self._h11
        channel = state.channel
        if h.they_are_waiting_for_100_continue:
            if not channel.wants_body or state.started:
                return True  # the client holds its body back until asked
            self._out.append(h.send(_CONTINUE) or b"")
        limit = self._config.max_body_size
        fed = False
        pieces = 0
        while channel.wants_body or channel.buffered() < _READ_AHEAD:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                if self._eof:  # the client left mid-body
                    self._gone(now)
                else:
                    self._fail(exc.error_status_hint, now)
                return False
            if type(event) is h11.Data:
                data = event.data
                self._body_size += len(data)
                if self._body_size > limit:
                    self._fail(413, now)
                    return False
                channel.put_body(data, False)
                fed = True
                pieces += 1
            elif type(event) is h11.EndOfMessage:
                if len(event.headers) > self._config.max_header_count:
                    self._fail(431, now)
                    return False
                channel.put_body(b"", True)
                state.body_done = fed = True
                break
            else:  # NEED_DATA
                if pieces < _GATHER_MAX and self._feed_slice():
                    continue
                if self._unfed:  # many tiny pieces (chunks): the rest once the task took them
                    break
                if self._eof:
                    self._gone(now)
                    return False
                if self._chunk_past_limit():
                    self._fail(413, now)
                    return False
                if self._bare_lf_waiting():
                    self._fail(400, now)
                    return False
                break
        if fed:
            channel.notify()
        return True

    # --- WebSockets: a Session's task accepts, then messages both ways (protocol.websocket)

    def _start_websocket(self, session: Session, now: float) -> None:
        """A valid handshake answered by a Session: its task accepts, refuses or answers it."""
        if self._wake is None:
            error_log.error("this transport cannot run %r (no wake)", session)
            self._fail(500, now)
            return
        # The handshake has no body (`refusal` saw to it): its end lets h11 switch protocols.
        try:
            end = self._h11.next_event()
        except h11.RemoteProtocolError:
            end = None
        if type(end) is not h11.EndOfMessage:
            self._fail(400, now)
            return
        from . import websocket as _ws

        channel = Channel(self._wake)
        if self._stopping:
            channel.stopping = True
        self._websocket = _ws.WebSocket(channel, self._config)
        self._phase = _WEBSOCKET
        self._emit(Spawn(lambda: session.run(channel)))

    def _websocket_input(self, data: bytes, now: float) -> None:
        socket = self._websocket
        assert socket is not None
        if not data:
            self._eof = True
        socket.receive(data, now)

    def _websocket_timeout(self, now: float) -> None:
        socket = self._websocket
        assert socket is not None
        socket.timeout(self._out, now)

    def _serve_websocket(self, now: float) -> None:
        """Take what the task posted, read the peer's frames as far as the task keeps up,
        send; end the connection once the close handshake is over; else wait."""
        socket = self._websocket
        assert socket is not None
        channel = socket.channel
        out = self._out
        if socket.sending:  # the Send handed out last has completed
            socket.sending = False
            if socket.in_flight:
                channel.mark_sent(socket.in_flight)
                socket.in_flight = 0
        if socket.paused:
            socket.resume(now)
            channel.resume_reading()
        if socket.ws is None:  # the handshake: the task accepts, refuses, or answers in HTTP
            message = channel.next_message()
            if message is not None:
                self._websocket_handshake(socket, message, now)
                return
            if self._stopping:
                socket.stop(out, now)
            if channel.will_wait():
                self._emit(Wait(None))
            return
        if socket.ending is None:
            while (message := channel.next_message()) is not None:
                try:
                    error = socket.take(message, out, now)
                except Exception as exc:  # say, a message neither str nor bytes, a close code out of range
                    error = f"app sent an invalid WebSocket message: {exc!r}"
                    socket.take(Closing(1011, ""), out, now)
                if error is not None:
                    error_log.error("%s (%s)", error, _target(self._request))
            if self._stopping:
                socket.stop(out, now)
            socket.read(out, now)
        if out:
            socket.sending = True
            socket.in_flight = socket.pieces
            socket.pieces = 0
            self._queue.append(
                Send(b"".join(out), now + self._config.send_timeout, self._config.send_timeout)
            )
            out.clear()
            return
        if socket.pieces:  # messages dropped (the WebSocket is closing) have "left" at once
            channel.mark_sent(socket.pieces)
            socket.pieces = 0
        if socket.ending is not None:
            self._end_websocket(socket.lingers(), now)
        elif socket.yielding:  # a step's share of a flood of frames read: a turn for the others
            socket.yielding = False
            self._emit(Wait(now))  # due at once: the transport lets the loop run, then asks again
        elif socket.reading():
            if channel.will_wait():
                self._emit(Receive(socket.deadline()))
        elif socket.pause():  # the task's unread messages fill the read-ahead: wait until it takes some
            self._emit(Wait(socket.deadline()))

    def _websocket_handshake(self, socket: _ws.WebSocket, message: Message, now: float) -> None:
        """The task's first message: accept (101), refuse (403), or an HTTP response of its own."""
        channel = socket.channel
        request = self._request
        assert request is not None
        kind = type(message)
        if kind is Accept:
            from . import websocket as _ws

            try:
                fields, extension = _ws.accept_fields(request, cast(Accept, message), self._config)
                if self._config.date_header:
                    fields.append((b"Date", _http_date()))
                if self._config.server_header:
                    fields.append((b"Server", self._config.server_header))
                head = h11.InformationalResponse(
                    status_code=101, headers=fields, reason=b"Switching Protocols"
                )
                data = self._h11.send(head)
            except (h11.LocalProtocolError, TypeError, ValueError, UnicodeError):
                error_log.exception("app accepted a WebSocket with invalid fields (%s)", _target(request))
                self._drop_websocket()
                self._fail(500, now)
                return
            self._out.append(data or b"")
            self._status = 101
            self._log_access(101, 0, now)
            buffered, closed = self._h11.trailing_data
            if self._unfed:
                buffered += bytes(self._unfed)
                self._unfed = b""
            socket.open(buffered, closed or self._eof, extension, now)
            return
        if kind is Closing:  # refused before accepting: 403 (as uvicorn)
            closing = cast(Closing, message)
            channel.mark_closed(closing.code, closing.reason)
            self._drop_websocket()
            self._fail(403, now)
            return
        if kind is Outgoing or kind is Finish:
            if kind is Outgoing:
                error_log.error("app sent a WebSocket message before accepting (%s)", _target(request))
            elif cast(Finish, message).error is None:  # (a task that raised logged it)
                error_log.error("app returned without accepting the WebSocket (%s)", _target(request))
            self._drop_websocket()
            self._fail(500, now)
            return
        # An HTTP response instead (the ASGI websocket.http.response extension): served as any
        # Session's, on a connection that closes after it.
        self._websocket = None
        state = self._session = _SessionState(channel)
        state.body_done = True
        channel.put_body(b"", True)
        self._close_after_response = True
        self._phase = _APP
        self._take_message(state, message, now)

    def _end_websocket(self, linger: bool, now: float) -> None:
        self._drop_websocket()
        if linger and not self._eof:
            # A failure: the close frame must reach the peer before a reset could destroy it.
            self._emit(HalfClose())
            self._phase = _LINGER
            self._deadline = now + self._config.linger_timeout
        else:
            self._phase = _CLOSED

    def _drop_websocket(self) -> None:
        """The connection stops serving the WebSocket's task: it is closed for it (1006 unless
        it learnt a code before), and what it posted is dropped."""
        socket = self._websocket
        if socket is None:
            return
        self._websocket = None
        channel = socket.channel
        channel.mark_closed(1006)
        channel.mark_gone()
        for message in channel.drop_outbox():
            if type(message) is Piece and isinstance(message.data, FileBody):
                message.data.file.close()

    def _gone(self, now: float) -> None:
        """The client left while the task ran: it learns so from its channel; nothing more is sent."""
        if self._session is not None and self._session.started:
            self._log_access(self._status, self._body_length, now)
            self._request = None  # logged (else `_begin_close` logs a 499)
        self._begin_close(now, linger=False)

    def _finish_session(self, now: float) -> None:
        """The task's response is out: it may run on (say, a background job); the connection goes on."""
        state = self._session
        assert state is not None
        self._session = None
        channel = state.channel
        channel.delivered += state.pieces  # (mark_delivered without its notify: mark_done's does)
        channel.mark_done()
        self._finish_response(now)

    def _drop_session(self) -> None:
        """The connection stops serving the task: the client is gone for it, whatever it posted is dropped."""
        state = self._session
        if state is None:
            return
        self._session = None
        channel = state.channel
        channel.mark_gone()
        for message in channel.drop_outbox():
            if type(message) is Piece and isinstance(message.data, FileBody):
                message.data.file.close()

    def _send_file_piece(self, now: float) -> None:
        body = self._file
        assert body is not None
        remaining = self._file_remaining
        if not remaining:
            self._drop_file()
            self._out += self._h11.send_with_data_passthrough(_END_OF_MESSAGE) or ()
            if self._session is not None:
                self._finish_session(now)
            else:
                self._finish_response(now)
            return
        count = min(remaining, self._config.send_chunk_size)
        offset = body.offset + body.length - remaining
        self._file_remaining = remaining - count
        pieces = self._h11.send_with_data_passthrough(h11.Data(data=cast(bytes, _Placeholder(count))))
        for piece in pieces or ():
            if isinstance(piece, _Placeholder):
                self._emit(
                    SendFile(
                        body.file, offset, count, now + self._config.send_timeout, self._config.send_timeout
                    )
                )
            elif piece:
                self._out.append(piece)

    def _finish_response(self, now: float) -> None:
        """The response is complete: log it, then go on with the connection or end it."""
        if self._config.access_log:  # checked here too: saves a call per request when off
            self._log_access(self._status, self._body_length, now)
        self._request = None
        h = self._h11
        if h.our_state is h11.MUST_CLOSE:
            self._begin_close(now, linger=True)
        elif h.their_state is h11.DONE:
            self._next_cycle(now)
        else:  # usually just the request's EndOfMessage, already buffered
            self._phase = _DRAIN
            self._deadline = now + self._config.body_timeout
            self._drain(now)

    def _log_access(self, status: int, body_length: int, now: float) -> None:
        """One line per response: peer, request line, status, body bytes sent, duration.

        A request whose head did not parse shows what it began with (nginx's escapes)."""
        if self._config.access_log and access_log.isEnabledFor(logging.INFO):
            request = self._request
            if request is None:
                access_log.info(
                    '%s - "%s" %d %d %.1fms',
                    _format_client(self._client),
                    _first_line(self._first),
                    status,
                    body_length,
                    (now - self._started) * 1000,
                )
                return
            absolute = self._absolute_form
            sent = absolute[1] if absolute is not None and absolute[0] is request else request.target
            target = sent.decode("latin-1")
            if '"' in target or "\\" in target:  # h11 lets them through; nginx escapes them
                target = target.translate(_LOG_ESCAPES)
            access_log.info(
                '%s - "%s %s HTTP/%s" %d %d %.1fms',
                _format_client(request.client),
                request.method.decode("latin-1"),
                target,
                request.http_version.decode("latin-1"),
                status,
                body_length,
                (now - self._started) * 1000,
            )

    def _log_unfinished(self, now: float) -> None:
        """Log the request in progress, whose response will not complete, as nginx does: with the
        status of a response begun (a file body: what the client cut, or a shutdown) and the body
        bytes sent in actions that completed; with 499 (nginx's "client closed request") and 0
        when none had begun. An accepted WebSocket's line went out with its 101: none here."""
        if self._status == 101:
            self._request = None
            return
        status = 499
        sent = 0
        phase = self._phase
        if phase is _RESPONDING:
            status = self._status
            sent = self._body_length - self._file_remaining  # handed out in SendFile actions...
            sent -= sum(action.count for action in self._queue if type(action) is SendFile)  # ...not all
            waiting = self._waiting_on
            if type(waiting) is SendFile:  # the one under way when the connection failed
                sent -= waiting.count
        elif phase is _STREAM or (phase is _APP and self._session is not None and self._session.started):
            status = self._status
            sent = self._body_length  # the pieces handed to the transport (the last may not be out)
        self._log_access(status, sent, now)
        self._request = None

    def _drain(self, now: float) -> None:
        """Discard the rest of a request body after its response went out."""
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError:
            self._begin_close(now, linger=False)
            return
        if type(event) is h11.Data:
            self._body_size += len(event.data)
            if self._body_size > self._config.max_body_size:
                self._begin_close(now, linger=False)
        elif type(event) is h11.EndOfMessage:
            self._next_cycle(now)
        elif self._chunk_past_limit() or self._bare_lf_waiting():
            self._begin_close(now, linger=False)
        elif not self._feed_slice():
            self._emit(Receive(self._deadline))

    def _chunk_past_limit(self) -> bool:
        """Whether the chunk being read was announced to end past max_body_size.

        h11 keeps the bytes left of the current chunk private (`_bytes_in_chunk`; h11 is
        pinned and tests cover it); 0 outside chunked bodies."""
        left: int = getattr(self._h11._reader, "_bytes_in_chunk", 0)
        return self._body_size + left > self._config.max_body_size

    def _bare_lf_waiting(self) -> bool:
        """Whether h11 waits on a chunk line ended by a bare LF, for ever: it reads heads with
        bare LFs but chunk lines only with CRLF. RFC 9112 §2.2 lets a server refuse them.

        Called only when h11 needs more body: what it holds then is at most a part of a
        chunk-size line or of the trailers, so this is cheap."""
        buffered = self._h11.trailing_data[0]
        return buffered.count(b"\n") != buffered.count(b"\r\n")

    def _next_cycle(self, now: float) -> None:
        h = self._h11
        h.start_next_cycle()
        self._body_size = 0
        buffered, closed = h.trailing_data
        if buffered[:1] in _LINE_ENDS:
            buffered = self._skip_empty_lines(buffered, closed)
        if buffered or self._unfed:
            self._phase = _HEAD
            self._started = now
            self._first = buffered or bytes(self._unfed[: self._slice])
            self._deadline = now + self._config.head_timeout
        else:
            self._phase = _IDLE
            self._deadline = now + self._config.keep_alive_timeout
            if not self._stopping and not self._eof:
                self._emit(Receive(self._deadline))  # nothing buffered: h11 has nothing to say

    def _skip_empty_lines(self, buffered: bytes, closed: bool) -> bytes:
        """Drop empty lines before the next request line that h11 already holds; the rest.

        RFC 9112 §2.2, as in `receive_data`, for CR/LF read together with the previous
        request (say, an old client's CRLF after a POST body). h11 refuses them and cannot
        discard buffered bytes, so a fresh h11 connection, the same as this one at the start
        of a cycle, takes over what follows them.
        """
        buffered = buffered.lstrip(b"\r\n")
        if not buffered and self._unfed:
            self._unfed = bytes(self._unfed).lstrip(b"\r\n")
        h = self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self._config.max_head_size)
        if buffered:
            h.receive_data(buffered)
        if closed:
            h.receive_data(b"")  # end of input
        return buffered

    # --- errors and endings ----------------------------------------------------------

    def _fail(self, status: int, now: float) -> None:
        """Answer `status` and close if no response has started; else just close."""
        if self._eof or self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self._begin_close(now, linger=False)
            return
        self._close_after_response = True
        if self._request is None:
            # The head did not parse, so its method is unknown: a body would be one
            # too many after a HEAD. The status line says it all.
            self._respond(Response(status), now)
            return
        message = b"%d %s\n" % (status, _reason(status))
        self._respond(Response(status, ((b"Content-Type", b"text/plain"),), message), now)

    def _begin_close(self, now: float, *, linger: bool) -> None:
        if self._request is not None:  # a request ended without a complete response
            self._log_unfinished(now)
        self._drop_exchange()
        self._drop_file()
        self._drop_stream()
        self._drop_session()
        self._drop_websocket()
        if linger and not self._eof and self._unread_input():
            # Closing with unread input makes the kernel send RST, which can destroy
            # the response before the client reads it: shut output, drain, then close.
            self._emit(HalfClose())
            self._phase = _LINGER
            self._deadline = now + self._config.linger_timeout
        else:
            self._phase = _CLOSED

    def _unread_input(self) -> bool:
        """Whether the peer sent, or may still send, bytes we will not read.

        First reads what is already buffered of the current request: a GET's end of
        message usually is, so a plain `Connection: close` request closes at once.
        """
        h = self._h11
        try:
            while h.their_state is h11.SEND_BODY:
                if h.next_event() is h11.NEED_DATA:
                    return True
        except h11.RemoteProtocolError:
            return True
        if self._unfed or h.trailing_data[0]:
            return True
        return h.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)

    def _drop_exchange(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        self._exchange = None
        if self._unstarted:  # never started (a queued first step will find it dropped): nothing to undo
            self._unstarted = False
            return
        if exchange.may_block:
            self._emit(Run(lambda: _abort(exchange)))
        else:
            _abort(exchange)

    def _drop_file(self) -> None:
        if self._file is not None:
            self._file.file.close()
            self._file = None


class _SessionState:
    """Where a Session's response stands (the connection's side of its Channel)."""

    __slots__ = (
        "body_done",
        "channel",
        "complete",
        "ended",
        "in_flight",
        "pieces",
        "sending",
        "session",
        "silent",
        "started",
        "trailers",
    )

    def __init__(self, channel: Channel, session: Session | None = None) -> None:
        self.channel = channel
        self.session = session  # whose task `run_task` starts (None: no task, a WebSocket's answer)
        self.started = False  # the head is out
        self.silent = False  # no body goes out (HEAD, 204, 304): pieces are only counted
        self.trailers = False  # trailer fields were promised: they end the response
        self.ended = False  # the last piece came
        self.complete = False  # the response is complete (gathered or sending)
        self.body_done = False  # the whole request body is in the channel
        self.pieces = 0  # pieces gathered, not yet counted as delivered
        self.in_flight = 0  # pieces in the Send handed out
        self.sending = False  # a Send of the task's is out with the transport

    def run_task(self) -> Awaitable[None]:
        """The session's task, as `Spawn` starts it. A bound method is one object to make
        per request where a closure over session and channel is four (function, cells
        and their tuple), all tracked by the garbage collector: an event loop that parses
        a batch of requests before their tasks run holds them all at once."""
        assert self.session is not None
        return self.session.run(self.channel)


def _close_stream(stream: Stream) -> None:
    try:
        stream.close()
    except Exception:
        error_log.exception("closing %r failed", stream)


def _has_field(headers: Headers, name: bytes) -> bool:
    """Whether `headers` has a field `name` (lower-case), in any case; False for headers
    that are not pairs with a bytes or str name (h11 refuses them later: a 500)."""
    size = len(name)
    try:
        for key, _ in headers:
            if type(key) is not bytes:
                key = str(key).encode("latin-1", "replace")
            if len(key) == size and key.lower() == name:
                return True
    except (TypeError, ValueError):
        pass
    return False


def _declared_length(headers: Headers) -> int:
    """A handler's Content-Length, or -1: none, or one that is no number (h11 then refuses
    it before the head goes out: a 500, never an exception out of the core)."""
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            try:
                try:
                    return int(value.split(b",")[0])
                except TypeError:  # a str, which h11 takes too
                    return int(str(value).split(",")[0])
            except ValueError:
                return -1
    return -1


def _asks_for_trailers(headers: Headers) -> bool:
    """Whether the request's TE field lists `trailers` (RFC 9110 §10.1.4)."""
    for name, value in headers:
        if name == b"te" and any(item.strip().lower() == b"trailers" for item in value.split(b",")):
            return True
    return False


def _target(request: Request | None) -> str:
    """The request line's method and path, for error logs."""
    if request is None:
        return "-"
    return f"{request.method.decode('latin-1')} {request.target.partition(b'?')[0].decode('latin-1')}"


def _format_client(address: tuple[str, int] | None) -> str:
    """host:port ([host]:port for IPv6) for the access log; the host alone when the port is
    unknown (0: a client a proxy named without one), as nginx's `$remote_addr`; "-" when
    there is no address (a Unix socket's peer)."""
    if address is None:
        return "-"
    host, port = address
    if not port:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _abort(exchange: Exchange) -> None:
    try:
        exchange.abort()
    except Exception:
        error_log.exception("aborting %r failed", exchange)


_CONNECTION_CLOSE: Final = (b"Connection", b"connection", b"close")
_FRAMING_FIELDS: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_VALIDATED_MAX: Final = 256
_Fields = list[tuple[bytes, bytes, bytes]]
_Verdict = tuple[_Fields, bool, int]
"""h11's normalised fields, whether they name a framing field, the Content-Length (-1: none)."""
_validated: dict[Headers, _Verdict | None] = {}
_LENGTH_FIELDS: dict[int, tuple[bytes, bytes, bytes]] = {}
"""Content-Length fields by length (bodies repeat their sizes; formatting costs more than a lookup)."""


def _length_field(length: int) -> tuple[bytes, bytes, bytes]:
    field = (b"Content-Length", b"content-length", b"%d" % length)
    if len(_LENGTH_FIELDS) >= _VALIDATED_MAX:
        _LENGTH_FIELDS.clear()
    _LENGTH_FIELDS[length] = field
    return field


def _validate(headers: Headers) -> _Verdict | None:
    """`headers` (a tuple) checked by h11 and remembered (see `_Verdict`), or None when h11
    refuses them (or they are not hashable pairs), so that they go through h11's own
    validation as usual.

    Bounded: a full table starts afresh, so constant tuples come back at once and one-off
    ones go; large tuples are not kept (`cacheable`). With a framing field, the verdict is
    trusted only when the handler frames the body (a Stream or a Session's response: the
    core adds no Content-Length)."""
    verdict: _Verdict | None
    try:
        fields = h11.Response(status_code=200, headers=list(headers)).headers._full_items
        lengths = [int(value) for _, name, value in fields if name == b"content-length"]  # one at most
        framing = any(name in _FRAMING_FIELDS for _, name, _ in fields)
        verdict = (fields, framing, lengths[0] if lengths else -1)
    except Exception:  # whatever h11 refuses, it refuses again when sending: a 500
        verdict = None
    try:
        keep = cacheable(headers)
    except TypeError:
        keep = False
    if keep:
        if len(_validated) >= _VALIDATED_MAX:
            _validated.clear()
        _validated[headers] = verdict  # hashable: the lookup above said so
    return verdict


_LOG_ESCAPES: Final = {i: f"\\x{i:02X}" for i in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}
_LOGGED_LINE_MAX: Final = 1024


def _first_line(data: bytes) -> str:
    """The first line of `data` for the access log: at most _LOGGED_LINE_MAX bytes, control
    characters, quotes and backslashes escaped as nginx does (\\xHH); "-" when empty."""
    line = data[:_LOGGED_LINE_MAX].split(b"\n", 1)[0].removesuffix(b"\r")
    return line.decode("latin-1").translate(_LOG_ESCAPES) or "-"


_BRIEF_MAX: Final = 1000


def _brief(text: str) -> str:
    """`text` for a log line, cut to about _BRIEF_MAX characters (a handler's megabyte
    header, or ten thousand of them, makes no megabyte line per request)."""
    if len(text) <= _BRIEF_MAX:
        return text
    return f"{text[:_BRIEF_MAX]}... ({len(text)} characters)"


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The Date header's value, formatted once per second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, usegmt=True).encode())
    return _date_cache[1]


def _load_websocket() -> None:
    global _ws
    from . import websocket

    _ws = websocket
