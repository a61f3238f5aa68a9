"""The trio transport's two pools: `_StepPool` (blocking steps on a bounded set of worker
threads, in place of `trio.to_thread`) and its `_AppRunner`s (spawned app tasks run on
pooled trio tasks, each in a context of its own)."""

from __future__ import annotations

import contextvars
import functools
import threading
import time
import types
from collections.abc import Callable, Iterable

import pytest
import trio

from handlers.asgi import ASGIApp
from handlers.wsgi import WSGIApp
from protocol import Config
from transports import trio_server
from transports.options import ServerOptions

from .harness import GET, StepCounter, read_response_body, running

# --- _StepPool ----------------------------------------------------------------------


async def test_steps_run_on_at_most_size_threads_and_raise_what_they_raise() -> None:
    pool = trio_server._StepPool(2, trio.lowlevel.current_trio_token())
    counter = StepCounter()

    def fails() -> None:
        raise ValueError("from the step")

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(pool.run, counter.step)
        assert counter.peak <= 2 and 1 <= len(counter.threads) <= 2
        assert all(name.startswith("trio-step-worker") for name in counter.threads)
        with pytest.raises(ValueError, match="from the step"):
            await pool.run(fails)
    finally:
        pool.close()


async def test_a_blocking_step_holds_up_no_other_while_a_thread_is_free() -> None:
    pool = trio_server._StepPool(2, trio.lowlevel.current_trio_token())
    release = threading.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, lambda: release.wait(10))
            await trio.sleep(0.05)  # taken by a worker, which then blocks
            with trio.fail_after(5):
                await pool.run(lambda: None)  # the second thread takes it
            release.set()
    finally:
        pool.close()


async def test_a_step_cancelled_while_queued_never_runs_and_a_running_one_is_waited_for() -> None:
    pool = trio_server._StepPool(1, trio.lowlevel.current_trio_token())
    release = threading.Event()
    ran: list[str] = []

    def blocking() -> None:
        release.wait(10)
        ran.append("blocking")

    try:
        with trio.CancelScope() as outer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.run, blocking)
                await trio.sleep(0.05)  # the only thread runs it
                nursery.start_soon(pool.run, lambda: ran.append("queued"))
                await trio.sleep(0.05)
                threading.Timer(0.2, release.set).start()
                outer.cancel()  # the queued step is dropped; the running one is waited for
        assert ran == ["blocking"]
        await pool.run(lambda: ran.append("after"))
        assert ran == ["blocking", "after"]
    finally:
        pool.close()


async def test_a_step_runs_in_a_copy_of_the_pools_context_without_sniffio_set() -> None:
    import sniffio

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")
    var.set("server")
    pool = trio_server._StepPool(1, trio.lowlevel.current_trio_token())
    seen: list[object] = []

    def step() -> None:
        seen.append(var.get())
        var.set("changed by a step")
        try:
            seen.append(sniffio.current_async_library())
        except sniffio.AsyncLibraryNotFoundError:
            seen.append(None)

    try:
        await pool.run(step)
        await pool.run(step)
    finally:
        pool.close()
    assert seen == ["server", None, "server", None]
    assert var.get() == "server"


# --- _AppRunner ---------------------------------------------------------------------

_request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var")


def test_each_asgi_request_runs_in_a_context_of_its_own() -> None:
    """Runner tasks are reused; what an app sets in a context variable is not seen by the
    next request, on the same connection or another."""
    seen: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: Callable[..., object]) -> None:
        seen.append(_request_var.get("unset"))
        _request_var.set(str(scope["path"]))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})  # type: ignore[misc]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[misc]

    with running("trio", ASGIApp(app)) as server, server.connect() as one, server.connect() as two:
        for path in (b"/a", b"/b", b"/c"):
            for sock in (one, two):
                sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_response_body(sock) == b"ok"
    assert seen == ["unset"] * 6


def test_parked_runners_are_not_more_than_the_connections() -> None:
    servers: list[trio_server.TrioServer] = []
    original = trio_server.TrioServer.__init__

    def record(self: trio_server.TrioServer, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        servers.append(self)

    async def app(scope: dict[str, object], receive: object, send: Callable[..., object]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})  # type: ignore[misc]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[misc]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trio_server.TrioServer, "__init__", record)
        with running("trio", ASGIApp(app)) as server:
            socks = [server.connect() for _ in range(5)]
            for sock in socks:
                sock.sendall(GET)
                assert read_response_body(sock) == b"ok"
            time.sleep(0.1)
            assert 1 <= len(servers[0]._runners) <= 5
            for sock in socks:
                sock.close()
            deadline = time.monotonic() + 5
            while servers[0]._runners and time.monotonic() < deadline:
                time.sleep(0.02)
            assert servers[0]._runners == []


def _answer(body: bytes) -> Callable[..., object]:
    async def app(scope: dict[str, object], receive: object, send: Callable[..., object]) -> None:
        if scope["path"] == "/later":
            await trio.sleep(0.05)  # the first step ends without an answer
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[misc]
        await send({"type": "http.response.body", "body": body})  # type: ignore[misc]

    return app


def test_a_response_larger_than_the_socket_takes_is_sent_whole_then_the_next() -> None:
    """An app task that answers at once has its response sent by its runner; what the socket
    does not take at once is left to the connection's task, which sends the rest."""
    body = bytes(range(256)) * 40_000  # 10 MB: more than any socket buffer
    with running("trio", ASGIApp(_answer(body))) as server, server.connect() as sock:
        for _ in range(2):
            sock.sendall(GET)
            time.sleep(0.2)  # the runner's send fills the buffer before the client reads
            assert read_response_body(sock) == body


def test_app_tasks_that_answer_at_once_or_later_pipelined_or_not_are_answered_in_order() -> None:
    with running("trio", ASGIApp(_answer(b"ok"))) as server, server.connect() as sock:
        for path in (b"/", b"/later", b"/", b"/later"):
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response_body(sock) == b"ok"
        # pipelined: the runner of the first finds the second request's task next, not a send
        sock.sendall((GET + b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n" + GET) * 2)
        data = b""
        while data.count(b"\r\n\r\nok") < 6:
            chunk = sock.recv(65536)
            assert chunk, "closed before six responses"
            data += chunk
        assert data.count(b"HTTP/1.1 200 ") == 6


def test_a_wsgi_response_larger_than_the_socket_takes_is_sent_whole_then_the_next() -> None:
    """The response of a WSGI app's step is sent as the step is delivered; what the socket
    does not take at once is left to the connection's task."""
    body = bytes(range(256)) * 40_000

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    with running("trio", WSGIApp(app)) as server, server.connect() as sock:
        for _ in range(2):
            sock.sendall(GET)
            time.sleep(0.2)
            assert read_response_body(sock) == body


async def test_responses_go_out_at_the_end_of_a_batch_through_a_hook_that_serve_removes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An app task that answers in its first step has its response sent by the server's
    `_Flush` instrument once the scheduler's batch is over; the hook is there while the
    server runs only (an embedder's trio run is left as it was)."""
    helped: list[bool] = []  # per help: whether it ran in the server's hook
    in_hook = False
    original = trio_server._Connection.help

    def help(self: trio_server._Connection, now: float) -> None:
        helped.append(in_hook)
        original(self, now)

    class Around(trio.abc.Instrument):  # sees each batch's end before the server's hook
        def before_io_wait(self, timeout: float) -> None:
            nonlocal in_hook
            in_hook = True

        def after_io_wait(self, timeout: float) -> None:
            nonlocal in_hook
            in_hook = False

    monkeypatch.setattr(trio_server._Connection, "help", help)
    trio.lowlevel.add_instrument(Around())
    serve = functools.partial(trio_server.serve, ASGIApp(_answer(b"ok")), Config(), ServerOptions(port=0))
    async with trio.open_nursery() as nursery:
        server: trio_server.TrioServer = await nursery.start(serve)
        stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        for _ in range(3):
            await stream.send_all(GET)
            data = b""
            while not data.endswith(b"\r\n\r\nok"):
                data += await stream.receive_some()
        await stream.aclose()
        server.shutdown()
    assert helped == [True] * 3  # each response, sent by the hook
    with pytest.raises(KeyError):  # not there any more: serve removed it
        trio.lowlevel.remove_instrument(server._flush)


async def test_the_hook_sends_from_both_ends_of_its_list_inward() -> None:
    """The connections' tasks resume in the order they were rescheduled in or its reverse
    (trio's pick): the first responses out are those of the first to resume either way."""
    order: list[int] = []

    class Fake:
        def __init__(self, number: int) -> None:
            self.number = number
            self.task = types.SimpleNamespace(context=contextvars.copy_context())

        def help(self, now: float) -> None:
            order.append(self.number)

    for count, expected in ((0, []), (1, [0]), (4, [0, 3, 1, 2]), (5, [0, 4, 1, 3, 2])):
        helps: list[trio_server._Connection] = [Fake(n) for n in range(count)]  # type: ignore[misc]
        order.clear()
        trio_server._Flush(helps).before_io_wait(0)
        assert order == expected
        assert helps == []
