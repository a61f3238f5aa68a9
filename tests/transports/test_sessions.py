"""Apps served by the real core on every transport, written against the `Channel` directly
(no ASGI): streamed pieces under backpressure, a long poll that notices the client
leaving, tasks reaped, shutdown with an endless stream, and a blocking `Stream` producer
whose client leaves."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable

import pytest
import trio
import trustme

from protocol import Channel, Request, Response, Session
from transports.options import ServerOptions

from .harness import TRANSPORTS, read_until_close, running

pytestmark = pytest.mark.parametrize("transport", TRANSPORTS)


class Waker:
    """The task's side of `channel.notify`: the core calls it on the connection's thread
    (another thread than the task's on the threads transport); the task waits here."""

    def __init__(self, channel: Channel) -> None:
        self.thread = threading.get_ident()
        try:
            self.token: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
            self.trio_event = trio.Event()
        except RuntimeError:
            self.token = None
            self.loop = asyncio.get_running_loop()
            self.asyncio_event = asyncio.Event()
        channel.notify = self.notify

    def notify(self) -> None:
        if self.token is not None:
            if threading.get_ident() == self.thread:
                self.trio_event.set()
            else:
                self.token.run_sync_soon(self.trio_event.set)
        elif threading.get_ident() == self.thread:
            self.asyncio_event.set()
        else:
            self.loop.call_soon_threadsafe(self.asyncio_event.set)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Until `condition()` holds; it is checked again at every notify."""
        while True:
            if self.token is not None:
                self.trio_event = trio.Event()
            else:
                self.asyncio_event.clear()
            if condition():
                return
            if self.token is not None:
                await self.trio_event.wait()
            else:
                await self.asyncio_event.wait()

    async def sleep(self, seconds: float) -> None:
        if self.token is not None:
            await trio.sleep(seconds)
        else:
            await asyncio.sleep(seconds)


class Streamer:
    """Sends `count` pieces of `size` bytes, each only once the previous one has left."""

    def __init__(self, count: int, size: int, log: list[tuple[str, object]]) -> None:
        self.count = count
        self.size = size
        self.log = log
        self.thread = ""

    async def run(self, channel: Channel) -> None:
        waker = Waker(channel)
        self.thread = threading.current_thread().name
        try:
            channel.start(Response(200, [(b"content-type", b"application/octet-stream")]))
            for index in range(self.count):
                ticket = channel.send(bytes([index % 256]) * self.size, more=index < self.count - 1)
                self.log.append(("posted", index))
                await waker.until(lambda ticket=ticket: channel.delivered >= ticket or channel.gone)
                if channel.gone:
                    self.log.append(("gone", index))
                    break
            channel.finish()
        except BaseException as exc:
            channel.finish(exc)
            raise


def _chunked_body(response: bytes) -> bytes:
    head, _, rest = response.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    pieces: list[bytes] = []
    at = 0  # an offset, not slices of what is left (quadratic): 48 MiB bodies are read here
    while True:
        line_end = rest.index(b"\r\n", at)
        size = int(rest[at:line_end], 16)
        if not size:
            assert rest[line_end + 2 :] == b"\r\n", "the last chunk and an empty trailer"
            return b"".join(pieces)
        pieces.append(rest[line_end + 2 : line_end + 2 + size])
        at = line_end + 2 + size + 2


def test_a_streamed_response_waits_for_a_slow_reader(transport: str) -> None:
    """Backpressure: with the client not reading, only a few pieces are ever out."""
    log: list[tuple[str, object]] = []
    size, count = 1 << 20, 48
    streamer = Streamer(count, size, log)
    with running(transport, lambda request: streamer) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        with sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            time.sleep(1.0)  # not reading
            posted = len(log)
            assert 1 <= posted <= 12, f"{posted} MiB posted for a client that reads nothing"
            response = read_until_close(sock)
    body = _chunked_body(response)
    assert len(body) == size * count
    assert all(body[index * size] == index % 256 for index in range(count))
    if transport == "threads":
        assert streamer.thread == "http-app-loop"


class LongPoll:
    """Answers nothing until the client leaves (or the server stops)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    async def run(self, channel: Channel) -> None:
        waker = Waker(channel)
        await waker.until(lambda: channel.gone or channel.stopping)
        self.seen.append(("gone" if channel.gone else "stopping", time.monotonic()))
        if not channel.gone:
            channel.start(Response(204))
            channel.send(b"", more=False)
        channel.finish()


def test_a_long_poll_notices_the_client_leaving(transport: str) -> None:
    poll = LongPoll()
    with running(transport, lambda request: poll) as server:
        with server.connect() as sock:
            sock.sendall(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
        left = time.monotonic()
        deadline = left + 3
        while not poll.seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert poll.seen and poll.seen[0][0] == "gone"
    assert poll.seen[0][1] - left < 1.0


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def test_a_long_poll_under_tls_notices_the_client_leaving(
    transport: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    poll = LongPoll()
    options = ServerOptions(port=0, ssl_context=tls[0])
    with running(transport, lambda request: poll, options=options) as server:
        with server.connect(tls[1]) as sock:
            sock.sendall(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
        left = time.monotonic()  # closed without close_notify, as most clients do
        deadline = left + 3
        while not poll.seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert poll.seen and poll.seen[0][0] == "gone"
    assert poll.seen[0][1] - left < 1.0


def test_spawned_tasks_are_reaped(transport: str) -> None:
    sessions: weakref.WeakSet[object] = weakref.WeakSet()

    class Hello:
        async def run(self, channel: Channel) -> None:
            channel.start(Response(200, [(b"content-length", b"5")]))
            channel.send(b"hello", more=False)
            channel.finish()

    def app(request: Request) -> Session:
        session = Hello()
        sessions.add(session)
        return session

    with running(transport, app) as server, server.connect() as sock:
        for _ in range(20):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while not received.endswith(b"hello"):
                received += sock.recv(65536)
        deadline = time.monotonic() + 3
        while True:
            gc.collect()
            if not sessions or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(sessions) == 0, "tasks (or their sessions) are still held"


def test_a_response_leaves_while_its_task_still_waits(transport: str) -> None:
    # The task posts its whole response, then waits before it ends: the response must not
    # wait for the task's end (the asyncio transport acts on a task's wakes when its step ends).
    ended = threading.Event()

    class Lingering:
        async def run(self, channel: Channel) -> None:
            channel.start(Response(200, [(b"content-length", b"5")]))
            channel.send(b"hello", more=False)
            await Waker(channel).sleep(1.0)
            channel.finish()
            ended.set()

    with running(transport, lambda request: Lingering()) as server, server.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_until(sock, b"hello").startswith(b"HTTP/1.1 200 ")
        assert time.monotonic() - started < 0.7 and not ended.is_set()
        assert ended.wait(5)


_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


def test_an_app_tasks_context_does_not_reach_the_next_requests_task(transport: str) -> None:
    # Two pipelined requests: the second one's task starts where the first one's ended
    # (the transport acts on the first task's wake), but must not inherit its context.
    seen: list[str] = []

    class Marking:
        async def run(self, channel: Channel) -> None:
            seen.append(_SEEN.get())
            _SEEN.set("set by an earlier request's task")
            channel.start(Response(200, [(b"content-length", b"2")]))
            channel.send(b"ok", more=False)
            channel.finish()

    with running(transport, lambda request: Marking()) as server, server.connect() as sock:
        sock.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        received = b""
        while received.count(b"ok") < 2:
            received += _read_until(sock, b"ok")
    assert seen == ["", ""]


class Endless:
    """An event stream: a piece every 50 ms until `stopping`, then a last one (if polite)."""

    def __init__(self, polite: bool) -> None:
        self.polite = polite
        self.events: list[str] = []

    async def run(self, channel: Channel) -> None:
        waker = Waker(channel)
        try:
            channel.start(Response(200, [(b"content-type", b"text/event-stream")]))
            while not (channel.stopping and self.polite) and not channel.gone:
                ticket = channel.send(b"data: tick\n\n", more=True)
                await waker.until(lambda ticket=ticket: channel.delivered >= ticket or channel.gone)
                await waker.sleep(0.05)
            self.events.append("stopping seen")
            channel.send(b"data: bye\n\n", more=False)
            channel.finish()
        except BaseException as exc:
            self.events.append(f"ended by {type(exc).__name__}")
            channel.finish(exc)
            raise


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    sock.settimeout(5)
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return received


def test_shutdown_tells_an_endless_stream_which_then_finishes(transport: str) -> None:
    stream = Endless(polite=True)
    options = ServerOptions(port=0, shutdown_grace=5)
    with running(transport, lambda request: stream, options=options) as server, server.connect() as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        _read_until(sock, b"data: tick")
        started = time.monotonic()
        server.stop(within=4)
        assert time.monotonic() - started < 2
        response = read_until_close(sock)
    assert stream.events == ["stopping seen"]
    assert response.endswith(b"data: bye\n\n\r\n0\r\n\r\n")


def test_shutdown_cancels_a_stream_that_ignores_it_after_the_grace(transport: str) -> None:
    stream = Endless(polite=False)
    options = ServerOptions(port=0, shutdown_grace=0.5)
    with running(transport, lambda request: stream, options=options) as server, server.connect() as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        _read_until(sock, b"data: tick")
        started = time.monotonic()
        server.stop(within=5)
        assert 0.4 < time.monotonic() - started < 3
        response = read_until_close(sock)
    assert not response.endswith(b"0\r\n\r\n"), "cut, not ended"
    assert len(stream.events) == 1
    assert stream.events[0] in ("stopping seen", "ended by CancelledError", "ended by Cancelled")


class Producer:
    """A blocking producer (a WSGI iterable's shape): a piece every 20 ms, forever."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.pieces = 0

    def next_piece(self) -> bytes | None:
        time.sleep(0.02)
        self.pieces += 1
        return b"x" * 1024

    def close(self) -> None:
        self.closed.set()


def test_a_blocking_producer_is_closed_when_its_client_leaves(transport: str) -> None:
    producer = Producer()
    with running(transport, lambda request: Response(200, (), producer)) as server:
        with server.connect() as sock:
            sock.sendall(b"GET /produce HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert producer.closed.wait(2), "close() not called after the client left"
        pieces = producer.pieces
        time.sleep(0.2)
        assert producer.pieces == pieces, "pieces produced for nobody"
