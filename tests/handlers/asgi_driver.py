"""Drive one ASGI session by hand: a fake core on the channel's other side.

`Driver.run(app, request)` starts the session's task on trio or asyncio and plays the
core: it takes what the task posts, counts pieces as delivered (or holds them, to test
backpressure), hands over the request body when asked, and can mark the client gone,
the response done or the server stopping. With `core_thread`, the core side runs on its
own thread, as under the threads transport (notify then comes from off the loop).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from handlers.asgi import ASGI3App, ASGIApp
from protocol import Channel, FileBody, Request, Response, Session
from protocol.channel import Finish, Message, Piece, Start, Trailers

RUNTIMES = ["trio", "asyncio", "asyncio-thread"]
"""Where the task runs; asyncio-thread: the core calls notify from another thread."""


def request(
    method: bytes = b"GET",
    target: bytes = b"/",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    *,
    version: bytes = b"1.1",
    scheme: str = "http",
) -> Request:
    return Request(
        method,
        target,
        [(b"host", b"example"), *headers],
        version,
        client=("127.0.0.1", 50000),
        server=("127.0.0.1", 8000),
        scheme=scheme,
    )


@dataclass
class Outcome:
    messages: list[Message] = field(default_factory=list)
    finished: bool = False
    error: BaseException | None = None
    finish_count: int = 0
    whole: bool = False
    """The head came with its last piece (`Channel.send_response`): recorded as a Start then a Piece."""

    @property
    def start(self) -> Start:
        starts = [m for m in self.messages if isinstance(m, Start)]
        assert len(starts) == 1, self.messages
        return starts[0]

    @property
    def body(self) -> bytes:
        out = b""
        for m in self.messages:
            if isinstance(m, Piece):
                if isinstance(m.data, FileBody):
                    m.data.file.seek(m.data.offset)
                    out += m.data.file.read(m.data.length)
                    m.data.file.close()
                else:
                    out += m.data
        return out

    @property
    def pieces(self) -> list[Piece]:
        return [m for m in self.messages if isinstance(m, Piece)]

    @property
    def trailers(self) -> list[Trailers]:
        return [m for m in self.messages if isinstance(m, Trailers)]

    @property
    def complete(self) -> bool:
        pieces = self.pieces
        return bool(pieces) and not pieces[-1].more


Hook = Callable[["Driver"], None]


class Driver:
    """The fake core. `script(driver)` is called on every round, on the core's side."""

    def __init__(
        self,
        body: list[bytes] | None = None,
        *,
        deliver: bool = True,
        script: Hook | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.channel = Channel(self._wake)
        self.body = list(body) if body is not None else [b""]
        self.deliver = deliver
        self.script = script
        self.timeout = timeout
        self.outcome = Outcome()
        self.asked_for_body = 0
        self.rounds = 0
        self.wakes = 0
        self.undelivered = 0
        self.started = time.monotonic()

    def _wake(self) -> None:
        self.wakes += 1

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def pump(self) -> None:
        """One round of the core's side."""
        self.rounds += 1
        channel = self.channel
        while (message := channel.next_message()) is not None:
            if isinstance(message, Response):
                self.outcome.whole = True
                assert isinstance(message.body, bytes)
                self.outcome.messages.append(Start(message, False))
                message = Piece(message.body, False)
            self.outcome.messages.append(message)
            if isinstance(message, Piece):
                self.undelivered += 1
            if isinstance(message, Finish):
                self.outcome.finish_count += 1
                self.outcome.finished = True
                self.outcome.error = message.error
        if self.script is not None:
            self.script(self)
        if self.deliver and self.undelivered:
            count, self.undelivered = self.undelivered, 0
            channel.mark_delivered(count)
        if channel.wants_body and self.body and not channel.gone:
            self.asked_for_body += 1
            piece = self.body.pop(0)
            channel.put_body(piece, not self.body)
            channel.notify()  # the core's part: put_body itself does not

    def release(self, count: int = 1) -> None:
        """Let `count` held pieces be delivered (deliver=False)."""
        count = min(count, self.undelivered)
        self.undelivered -= count
        self.channel.mark_delivered(count)

    def run(self, app: ASGI3App | ASGIApp, req: Request | None = None, runtime: str = "trio") -> Outcome:
        wrapper = app if isinstance(app, ASGIApp) else ASGIApp(app)
        session = wrapper(req or request())
        if runtime == "trio":
            trio.run(self._trio, session)
        elif runtime == "asyncio":
            asyncio.run(self._asyncio(session))
        else:
            self._threaded(session)
        return self.outcome

    def _done(self) -> bool:
        if self.elapsed() > self.timeout:
            raise AssertionError(f"the session did not finish within {self.timeout}s: {self.outcome}")
        return self.outcome.finished

    async def _trio(self, session: Session) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run, self.channel)
            while not self._done():
                self.pump()
                await trio.sleep(0.001)
            self.pump()

    async def _asyncio(self, session: Session) -> None:
        task = asyncio.ensure_future(session.run(self.channel))
        while not self._done():
            self.pump()
            await asyncio.sleep(0.001)
        self.pump()
        await task

    def _threaded(self, session: Session) -> None:
        stop = threading.Event()
        failure: list[BaseException] = []

        def core() -> None:
            try:
                while not stop.is_set() and not self._done():
                    self.pump()
                    time.sleep(0.001)
                self.pump()
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=core)

        async def main() -> None:
            thread.start()
            try:
                await session.run(self.channel)
            finally:
                await asyncio.get_running_loop().run_in_executor(None, thread.join, self.timeout + 1)

        try:
            asyncio.run(main())
        finally:
            stop.set()
            thread.join()
        if failure:
            raise failure[0]
