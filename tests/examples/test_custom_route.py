"""examples/custom_route.py: new routes next to the built-in ones, on every transport."""

from __future__ import annotations

import asyncio
import functools
import queue
import signal
import threading
from pathlib import Path

import pytest
import trio

from examples.custom_route import MAX_BODY, Reverse, make_app
from protocol import Config, Request, Response
from tests.behaviour.client import RawClient, request
from transports import asyncio_server, thread_server, trio_server
from transports.options import ServerOptions

from .program import running

TRANSPORTS = ["trio", "asyncio", "threads"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_custom_routes_on_each_transport(transport: str, tmp_path: Path) -> None:
    with running("custom_route", tmp_path, "--transport", transport) as program:
        with program.client() as client:  # all on one keep-alive connection
            client.send(request("GET", "/hello/world"))
            hello = client.read_response()
            assert (hello.status, hello.body) == (200, b"Hello, world!")
            assert hello.header("content-type") == b"text/plain"
            client.send(request("POST", "/reverse", body=b"stressed"))
            assert client.read_response("POST").body == b"desserts"
            chunked = request("POST", "/reverse", [("Transfer-Encoding", "chunked")])
            client.send(chunked + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            assert client.read_response("POST").body == b"edcba"
            client.send(request("GET", "/reverse"))
            not_allowed = client.read_response()
            assert (not_allowed.status, not_allowed.header("allow")) == (405, b"POST")
            client.send(request("GET", "/echo/built-in"))  # the built-in routes are still there
            assert client.read_response().body == b"built-in"
        with program.client() as client:
            client.send(request("POST", "/reverse", body=b"x" * (MAX_BODY + 1)))
            assert client.read_response("POST").status == 413
        program.stop(signal.SIGTERM)


def test_reverse_is_an_exchange_that_collects_the_body() -> None:
    exchange = Reverse(Request(b"POST", b"/reverse", ()))
    assert exchange.may_block is False
    exchange.receive(b"ab")
    exchange.receive(b"cd")
    assert exchange.respond().body == b"dcba"


def test_the_route_table_answers_without_a_server() -> None:
    app = make_app()
    response = app(Request(b"GET", b"/hello/%C3%A9", ()))
    assert isinstance(response, Response)
    assert response.body == b"Hello, %C3%A9!"  # the handler gets the path as sent
    assert isinstance(app(Request(b"POST", b"/reverse", ())), Reverse)


def get_hello(port: int) -> bytes:
    with RawClient("127.0.0.1", port) as client:
        client.send(request("GET", "/hello/embedded"))
        return client.read_response().body


# The same routes, started and stopped programmatically by each transport's `serve`.
OPTIONS = ServerOptions(host="127.0.0.1", port=0, shutdown_grace=2.0)
BOUND = 10.0


def test_threads_serve_in_a_background_thread_until_shutdown() -> None:
    servers: queue.Queue[thread_server.ThreadServer] = queue.Queue()
    serve = functools.partial(thread_server.serve, make_app(), Config(), OPTIONS, started=servers.put)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    server = servers.get(timeout=BOUND)
    try:
        assert get_hello(server.ports[0]) == b"Hello, embedded!"
    finally:
        server.shutdown()  # from any thread; serve returns once connections are done
        thread.join(BOUND)
    assert not thread.is_alive()


def test_asyncio_serve_as_a_task_until_shutdown() -> None:
    async def scenario() -> None:
        listening: asyncio.Future[asyncio_server.AsyncioServer] = asyncio.get_running_loop().create_future()
        serving = asyncio.create_task(
            asyncio_server.serve(make_app(), Config(), OPTIONS, started=listening.set_result)
        )
        server = await asyncio.wait_for(listening, BOUND)
        assert await asyncio.to_thread(get_hello, server.ports[0]) == b"Hello, embedded!"
        server.shutdown()  # on the loop's thread
        await asyncio.wait_for(serving, BOUND)

    asyncio.run(scenario())


async def test_trio_serve_in_a_nursery_until_shutdown() -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_server.serve, make_app(), Config(), OPTIONS)
            assert await trio.to_thread.run_sync(get_hello, server.ports[0]) == b"Hello, embedded!"
            server.shutdown()  # the nursery then waits for serve to return
