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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

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


Message = Start | Piece | Trailers | Finish


class Channel:
    """One request's meeting point between its app task and the core. See the module docstring."""

    __slots__ = (
        "_body",
        "_body_complete",
        "_core_waiting",
        "_outbox",
        "_posted",
        "_wake",
        "_wants_body",
        "delivered",
        "done",
        "gone",
        "notify",
        "stopping",
    )

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._outbox: deque[Message] = deque()
        self._body: deque[bytes] = deque()
        self._body_complete = False
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

    # --- the task's side ---------------------------------------------------------------

    def receive(self) -> tuple[bytes, bool] | None:
        """Body bytes that arrived and whether more will follow; None: none yet (the core
        reads on, then calls `notify`). (b"", False) once the body is over or gone."""
        body = self._body
        if body:
            data = body.popleft() if len(body) == 1 else b"".join([body.popleft() for _ in range(len(body))])
            return data, not (self._body_complete and not body)
        if self._body_complete or self.gone:
            return b"", False
        if not self._wants_body:  # asked once, until the core hands over some
            self._wants_body = True
            self._post_wake()
        if body or self._body_complete:  # arrived meanwhile
            return self.receive()
        return None

    def start(self, response: Response, *, trailers: bool = False) -> None:
        """Post the response head. It leaves with the first piece of the body when that is
        posted before the core looks (the usual case), else on its own."""
        self._post(Start(response, trailers))

    def send(self, data: bytes | FileBody, *, more: bool) -> int:
        """Post a piece of the body; returns a ticket: it has left once `delivered` >= ticket."""
        self._posted += 1
        self._post(Piece(data, more))
        return self._posted

    def send_trailers(self, headers: Headers) -> None:
        """Post the trailer fields promised by `start(trailers=True)`, after the last piece."""
        self._post(Trailers(headers))

    def finish(self, error: BaseException | None = None) -> None:
        """The task is over (it raised `error`). Call it exactly once, last."""
        self._post(Finish(error))

    def _post(self, message: Message) -> None:
        self._outbox.append(message)
        self._post_wake()

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
            self._body.append(data)
        if complete:
            self._body_complete = True
        self._wants_body = False

    def buffered(self) -> int:
        """Body bytes read ahead that the task has not taken yet."""
        return sum(len(piece) for piece in self._body)

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

    def drop_outbox(self) -> list[Message]:
        """What the task posted that will never be read (files in it must be closed)."""
        messages = list(self._outbox)
        self._outbox.clear()
        return messages
