"""`ServerOptions.lifespan` on every transport: entered on the app loop before the first
connection is served, a failure stops serve before it serves, exited once drained."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator

import pytest
import trio

from handlers import build_app
from protocol import Request, Response
from transports.options import ServerOptions, hooks

from .harness import TRANSPORTS, read_until_close, running

pytestmark = pytest.mark.parametrize("transport", TRANSPORTS)


def _runtime() -> str:
    try:
        trio.lowlevel.current_trio_token()
        return "trio"
    except RuntimeError:
        asyncio.get_running_loop()
        return "asyncio"


async def _sleep(seconds: float) -> None:
    if _runtime() == "trio":
        await trio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_startup_runs_on_the_app_loop_before_the_first_request(transport: str) -> None:
    events: list[str] = []
    port = _free_port()
    answered: list[bytes] = []

    def early_client() -> None:  # connects while the startup hook runs: waits in the backlog
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /echo/early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answered.append(read_until_close(sock))
            events.append("answered")

    client = threading.Thread(target=early_client)

    async def startup() -> None:
        events.append(f"startup on {_runtime()} in {threading.current_thread().name}")
        client.start()
        await _sleep(0.5)
        events.append("startup done")

    options = ServerOptions(port=port, lifespan=hooks(startup))
    with running(transport, build_app(None), options=options):
        client.join(10)
    expected_thread = "http-app-loop" if transport == "threads" else "Thread-"
    assert events[0].startswith(f"startup on {'asyncio' if transport != 'trio' else 'trio'}")
    assert expected_thread in events[0], events
    assert events[1:] == ["startup done", "answered"]
    assert answered[0].endswith(b"early")


def test_a_failing_startup_makes_serve_raise_and_serves_nothing(transport: str) -> None:
    port = _free_port()

    async def startup() -> None:
        raise RuntimeError("no database")

    options = ServerOptions(port=port, lifespan=hooks(startup))
    serving = running(transport, build_app(None), options=options)
    with pytest.raises(RuntimeError, match="no database"), serving:
        pass
    with pytest.raises(ConnectionRefusedError):  # the socket is closed again
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not [thread for thread in threading.enumerate() if thread.name == "http-app-loop"]


class _SlowStep:
    may_block = True

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def start(self) -> None:
        return None

    def receive(self, data: bytes) -> None:
        pass

    def respond(self) -> Response:
        time.sleep(0.5)
        self.events.append("responded")
        return Response(200, (), b"slow")

    def abort(self) -> None:
        self.events.append("aborted")


def test_shutdown_hook_runs_once_requests_in_flight_are_done(transport: str) -> None:
    events: list[str] = []

    async def shutdown() -> None:
        events.append(f"shutdown hook on {_runtime()}")

    def app(request: Request) -> _SlowStep:
        events.append("request")
        return _SlowStep(events)

    options = ServerOptions(port=0, lifespan=hooks(None, shutdown), shutdown_grace=5)
    with running(transport, app, options=options) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 5
        while not events and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stop()
        assert read_until_close(sock).endswith(b"slow")
    runtime = "trio" if transport == "trio" else "asyncio"
    assert events == ["request", "responded", f"shutdown hook on {runtime}"]


def test_a_lifespan_keeps_tasks_running_between_startup_and_shutdown(transport: str) -> None:
    """What the context manager is for: an app's background work spans the server's life
    (on trio, a nursery opened on entering and closed on exiting)."""
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await _sleep(0.05)

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        if _runtime() == "trio":
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tick)
                yield
                nursery.cancel_scope.cancel()
        else:
            task = asyncio.get_running_loop().create_task(tick())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    with running(transport, build_app(None), options=ServerOptions(port=0, lifespan=lifespan)) as server:
        time.sleep(0.3)
        with server.connect() as sock:
            sock.sendall(b"GET /echo/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_close(sock).endswith(b"x")
    count = len(ticks)
    assert count >= 3
    time.sleep(0.2)
    assert len(ticks) == count, "the task ended with the server"
