"""Where an app task running concurrently (an async app) and its connection meet.

A `Session` gets one `Channel` per request, and uses it from its own task, on whatever
thread the transport runs app tasks. The core uses the other side, on the thread that
drives the connection. Neither side ever waits for the other inside a call:

- the task posts what it has (`start`, `send`, `send_trailers`, `finish`) or asks for
  the body (`receive`), and the channel calls the transport's `wake` so the core looks;
- the core hands over body bytes and counts pieces out (`delivered`), sets `gone`,
  `done` or `stopping`, and calls `notify`, which the task's side sets to wake itself.

Each direction has one writer, and what crosses is a `deque` (append and popleft are
atomic) or a plain attribute, so no lock is needed. A wake-up is never lost: the core
says it will wait (`_core_waiting`) before it looks at the outbox for the last time, and
the task looks at that flag after it posted.

Backpressure: `send` returns a ticket; the piece has left (is in the transport's hands)
once `delivered` reaches it. A task that waits for that between pieces holds one piece
of memory however slow the client. The body arrives as fast as `receive` asks for it,
plus a bounded read-ahead.

WebSockets (a request with `Request.websocket` set, served by a Session): the task first
either accepts (`accept`), refuses (`close`: 403), or answers with an ordinary HTTP
response (`start`, `send`: a denial). Once accepted, it sends messages with
`send_message` (tickets as for pieces) and ends with `close`; the core hands it whole
messages (`receive_message`), reads ahead a bounded amount only, and sets `close_code`
once the WebSocket is closed for the task (the peer's close code, 1006 when it vanished,
1001 when the server shuts down, the code the core closed with after a protocol error).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from .messages import FileBody, Headers, Response


def _nothing() -> None:
    pass


class Start:
    """The response head (the Response's body is ignored); `trailers`: trailer fields follow."""

    __slots__ = ("response", "trailers")

    def __init__(self, response: Response, trailers: bool) -> None:
        self.response = response
        self.trailers = trailers


class Piece:
    """A piece of the response body; `more` False: the last one."""

    __slots__ = ("data", "more")

    def __init__(self, data: bytes | FileBody, more: bool) -> None:
        self.data = data
        self.more = more


class Trailers:
    __slots__ = ("headers",)

    def __init__(self, headers: Headers) -> None:
        self.headers = headers


class Finish:
    """The task returned (`error` None) or raised."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Accept:
    """Accept a WebSocket: the 101 response with the chosen subprotocol and extra headers."""

    __slots__ = ("headers", "subprotocol")

    def __init__(self, subprotocol: str | None, headers: Headers) -> None:
        self.subprotocol = subprotocol
        self.headers = headers


class Outgoing:
    """A WebSocket message to send: text (str) or binary (bytes)."""

    __slots__ = ("data",)

    def __init__(self, data: str | bytes) -> None:
        self.data = data


class Closing:
    """The task closes the WebSocket (before `accept`: refuses it with 403)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


Message = Start | Piece | Trailers | Finish | Accept | Outgoing | Closing | Response
"""A Response itself is a whole response: head and `bytes` body (`Channel.send_response`)."""

_FINISHED: Final = Finish(None)
"""What every task that returned posts (messages are only read): one instance serves them all."""

MESSAGE_OVERHEAD = 64
"""What a received WebSocket message counts for beyond its length, in the read-ahead bound
(a queue of tiny messages costs more than their bytes)."""


class Channel:
    """One request's meeting point between its app task and the core. See the module docstring."""

    __slots__ = (
        "_body",
        "_body_complete",
        "_body_in",
        "_body_out",
        "_core_waiting",
        "_messages",
        "_messages_in",
        "_messages_out",
        "_outbox",
        "_posted",
        "_read_paused",
        "_wake",
        "_wants_body",
        "close_code",
        "close_reason",
        "delivered",
        "delivery_wanted",
        "done",
        "gone",
        "notify",
        "stopping",
    )

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        # Made when the task posts its first message (only the task's side sets it): one
        # object fewer, tracked by the garbage collector, while an event loop holds a batch of
        # requests parsed and their tasks not yet run.
        self._outbox: deque[Message] | None = None
        # Made by the core with the first bytes (a deque costs more to make than all else
        # here, and most requests have no body).
        self._body: deque[bytes] | None = None
        self._body_complete = False
        # Body bytes put (by the core) and taken (by the task): one writer each, so their
        # difference, what is read ahead, needs no lock and no sum over the pieces.
        self._body_in = 0
        self._body_out = 0
        self._wants_body = False
        self._core_waiting = False
        self._posted = 0
        self.delivered = 0
        """Pieces handed to the transport so far (see `send`)."""
        self.gone = False
        """The client left or the connection was cut: pieces are dropped, the body ends."""
        self.done = False
        """The response is complete and the connection went on: the core no longer listens."""
        self.stopping = False
        """The server is shutting down: long polls and event streams should end."""
        self.notify: Callable[[], None] = _nothing
        """Set by the task's side; the core calls it whenever the attributes above or the
        body change, on the connection's thread."""
        # WebSockets: messages received, and their sizes counted in (core) and out (task).
        self._messages: deque[str | bytes] | None = None  # made by the core with the first one
        self._messages_in = 0
        self._messages_out = 0
        self._read_paused = 0  # the core stopped reading until this many are buffered or fewer
        self.delivery_wanted = False
        """WebSockets: set by the task while it waits for `delivered` (else a message that left
        does not call `notify`: an echo's task, waiting for the next message, is not woken)."""
        self.close_code: int | None = None
        """WebSockets: set once the WebSocket is closed for the task (see the module docstring);
        then `receive_message` returns the messages that came before, and sends are dropped."""
        self.close_reason = ""

    # --- the task's side ---------------------------------------------------------------

    def receive(self) -> tuple[bytes, bool] | None:
        """Body bytes that arrived and whether more will follow; None: none yet (the core
        reads on, then calls `notify`). (b"", False) once the body is over or gone."""
        body = self._body
        if body:
            data = body.popleft() if len(body) == 1 else b"".join([body.popleft() for _ in range(len(body))])
            self._body_out += len(data)
            return data, not (self._body_complete and not body)
        if self._body_complete or self.gone:
            if self._body:  # the last bytes came with the end, since the look above
                return self.receive()
            return b"", False
        if not self._wants_body:  # asked once, until the core hands over some
            self._wants_body = True
            self._post_wake()
        if self._body or self._body_complete:  # arrived meanwhile
            return self.receive()
        return None

    def start(self, response: Response, *, trailers: bool = False) -> None:
        """Post the response head. It leaves with the first piece of the body when that is
        posted before the core looks (the usual case), else on its own."""
        self._put(Start(response, trailers))
        if self._core_waiting:  # _post_wake, inline: the posts of every response
            self._core_waiting = False
            self._wake()

    def send_response(self, response: Response) -> int:
        """Post a whole response at once: its head and its `bytes` body as the last piece (the
        usual case, one body message), taken by the core in one step. The same as `start`
        then `send(response.body, more=False)`, and a ticket as from `send`."""
        self._posted = posted = self._posted + 1
        outbox = self._outbox
        if outbox is None:  # `_put`, inline: the usual response is the first message
            outbox = self._outbox = deque()
        outbox.append(response)
        if self._core_waiting:
            self._core_waiting = False
            self._wake()
        return posted

    def send(self, data: bytes | FileBody, *, more: bool) -> int:
        """Post a piece of the body; returns a ticket: it has left once `delivered` >= ticket."""
        self._posted = posted = self._posted + 1
        self._put(Piece(data, more))
        if self._core_waiting:
            self._core_waiting = False
            self._wake()
        return posted

    def send_trailers(self, headers: Headers) -> None:
        """Post the trailer fields promised by `start(trailers=True)`, after the last piece."""
        self._post(Trailers(headers))

    def finish(self, error: BaseException | None = None) -> None:
        """The task is over (it raised `error`). Call it exactly once, last. An `Exception`
        passed here is the task's to log (with its traceback): the core adds no line of its own."""
        outbox = self._outbox
        if outbox is None:  # `_put`, inline: every task ends here
            outbox = self._outbox = deque()
        outbox.append(_FINISHED if error is None else Finish(error))
        if self._core_waiting:
            self._core_waiting = False
            self._wake()

    # WebSockets (the task's side)

    def accept(self, subprotocol: str | None = None, headers: Headers = ()) -> None:
        """Accept the WebSocket (101 Switching Protocols)."""
        self._post(Accept(subprotocol, headers))

    def send_message(self, data: str | bytes) -> int:
        """Post a text (str) or binary (bytes) message; a ticket, as from `send`."""
        self._posted += 1
        self._post(Outgoing(data))
        return self._posted

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket with `code` (before `accept`: refuse it with 403)."""
        self._post(Closing(code, reason))

    def receive_message(self) -> str | bytes | None:
        """The next message received, or None: none yet (the core reads on, then calls
        `notify`). Look at `close_code` before calling: if it was set then, None means
        none will ever come."""
        messages = self._messages
        if not messages:
            return None
        data = messages.popleft()
        self._messages_out += len(data) + MESSAGE_OVERHEAD
        paused = self._read_paused
        if paused and self._messages_in - self._messages_out <= paused:
            self._post_wake()  # the core stopped reading for us: it may go on
        return data

    def _post(self, message: Message) -> None:
        self._put(message)
        self._post_wake()

    def _put(self, message: Message) -> None:
        outbox = self._outbox
        if outbox is None:  # the core takes None as an empty outbox
            outbox = self._outbox = deque()
        outbox.append(message)

    def _post_wake(self) -> None:
        if self._core_waiting:
            self._core_waiting = False
            self._wake()

    # --- the core's side ---------------------------------------------------------------

    def will_wait(self) -> bool:
        """The core is about to wait for the task: False if the task posted meanwhile (look
        again). Else every later post, or ask for the body, wakes the core: it reads
        `wants_body` after this call, so it cannot miss one."""
        self._core_waiting = True
        if self._outbox:
            self._core_waiting = False
            return False
        return True

    def next_message(self) -> Message | None:
        outbox = self._outbox
        return outbox.popleft() if outbox else None

    @property
    def wants_body(self) -> bool:
        """The task waits in `receive` with nothing to read."""
        return self._wants_body and not self._body

    def put_body(self, data: bytes, complete: bool) -> None:
        if data:
            body = self._body
            if body is None:
                body = self._body = deque()
            body.append(data)
            self._body_in += len(data)
        if complete:
            self._body_complete = True
        self._wants_body = False

    def buffered(self) -> int:
        """Body bytes read ahead that the task has not taken yet."""
        return self._body_in - self._body_out

    def mark_delivered(self, count: int) -> None:
        self.delivered += count
        self.notify()

    def mark_gone(self) -> None:
        if not self.gone:
            self.gone = True
            self._body_complete = True
            self.notify()

    def mark_done(self) -> None:
        self.done = True
        self.notify()

    def mark_stopping(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.notify()

    # WebSockets (the core's side)

    def put_message(self, data: str | bytes) -> None:
        messages = self._messages
        if messages is None:
            messages = self._messages = deque()
        messages.append(data)
        self._messages_in += len(data) + MESSAGE_OVERHEAD

    def messages_buffered(self) -> int:
        """What the messages received and not yet taken by the task count for."""
        return self._messages_in - self._messages_out

    def pause_reading(self, resume_at: int) -> bool:
        """The core is about to wait with `messages_buffered()` over its limit: False if the
        task took enough meanwhile (read on). Else the task's `receive_message` wakes the
        core once at most `resume_at` remain (with `will_wait`, as for posts)."""
        self._read_paused = resume_at
        if not self.will_wait():
            self._read_paused = 0
            return False
        if self._messages_in - self._messages_out <= resume_at:
            self._read_paused = 0
            return False
        return True

    def resume_reading(self) -> None:
        self._read_paused = 0

    def mark_sent(self, count: int) -> None:
        """WebSockets: `count` more messages left; `notify` only if the task waits for that."""
        self.delivered += count
        if self.delivery_wanted:
            self.notify()

    def mark_closed(self, code: int, reason: str = "") -> None:
        """The WebSocket is closed for the task (first call only)."""
        if self.close_code is None:
            self.close_reason = reason
            self.close_code = int(code)  # not wsproto's CloseReason enum: ASGI's code is an int
            self.notify()

    def drop_outbox(self) -> list[Message]:
        """What the task posted that will never be read (files in it must be closed)."""
        outbox = self._outbox
        if outbox is None:
            return []
        messages = list(outbox)
        outbox.clear()
        return messages
