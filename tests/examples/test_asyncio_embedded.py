"""examples/asyncio_embedded.py: the server and the application's own task share one loop.

The clients are blocking (tests/behaviour/client.py), so they run in a worker thread: the loop
they talk to is the test's own.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from examples.asyncio_embedded import Application
from tests.behaviour.client import RawClient, request
from transports.options import ServerOptions

from .program import running

BOUND = 10.0
"""No step of these tests waits longer than this."""


def get_ticks(client: RawClient) -> int:
    client.send(request("GET", "/ticks"))
    response = client.read_response()
    assert response.status == 200
    return int(response.body)


def test_server_and_heartbeat_run_side_by_side_and_stop_cleanly() -> None:
    async def scenario() -> None:
        application = Application(interval=0.01)
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        options = ServerOptions(host="127.0.0.1", port=0, shutdown_grace=5.0)
        running_app = asyncio.create_task(application.run(options, ready.set_result))
        port = await asyncio.wait_for(ready, BOUND)
        client = RawClient("127.0.0.1", port)
        try:
            first = await asyncio.to_thread(get_ticks, client)
            await asyncio.sleep(0.1)  # the heartbeat keeps ticking while the server serves
            second = await asyncio.to_thread(get_ticks, client)
            assert second > first
            # The keep-alive connection is idle now; stopping must not wait for it.
            started = time.monotonic()
            application.stop.set()
            await asyncio.wait_for(running_app, BOUND)
            assert time.monotonic() - started < 2.0
            await asyncio.to_thread(client.assert_closed, 1.0)  # the server closed it
        finally:
            client.close()
        ticks = application.ticks
        await asyncio.sleep(0.05)
        assert application.ticks == ticks  # the heartbeat stopped too
        with pytest.raises(ConnectionRefusedError):  # and nothing listens any more
            socket.create_connection(("127.0.0.1", port), timeout=BOUND).close()

    asyncio.run(scenario())


def test_a_request_in_flight_finishes_before_the_server_stops() -> None:
    async def scenario() -> None:
        application = Application(interval=0.01)
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        options = ServerOptions(host="127.0.0.1", port=0, shutdown_grace=5.0)
        running_app = asyncio.create_task(application.run(options, ready.set_result))
        port = await asyncio.wait_for(ready, BOUND)
        with RawClient("127.0.0.1", port) as client:
            head = request("POST", "/echo/x", [("Content-Length", "5")])  # 405 only once it is read
            await asyncio.to_thread(client.send, head[:-10])  # half a request head
            await asyncio.sleep(0.05)
            application.stop.set()
            await asyncio.sleep(0.05)
            assert not running_app.done()  # waiting for the request in progress
            await asyncio.to_thread(client.send, head[-10:] + b"hello")
            response = await asyncio.to_thread(client.read_response, "POST")
            assert response.status == 405
            assert response.header("connection") == b"close"
            await asyncio.wait_for(running_app, BOUND)

    asyncio.run(scenario())


def test_runs_as_a_program_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    with running("asyncio_embedded", tmp_path, "--interval", "0.01") as program:
        with program.client() as client:
            assert get_ticks(client) >= 0
        program.stop()
        assert "Stopped after" in program.stdout()
        assert '"GET /ticks HTTP/1.1" 200' in program.stderr()  # the access log, through `logging`
