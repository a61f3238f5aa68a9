"""The trio transport on a virtual clock: the core's deadlines are `trio.current_time()`,
so timeouts of a minute are checked in milliseconds (pytest-trio's autojump_clock)."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing

from handlers import build_app
from protocol import Config
from transports import trio_server
from transports.options import ServerOptions


async def _start(nursery: trio.Nursery, config: Config) -> trio_server.TrioServer:
    serve = functools.partial(trio_server.serve, build_app(None), config, ServerOptions(port=0))
    server: trio_server.TrioServer = await nursery.start(serve)
    return server


async def _until_close(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def test_idle_keep_alive_closes_after_its_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        server = await _start(nursery, Config(keep_alive_timeout=60))
        stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        await stream.send_all(b"GET /echo/a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await stream.receive_some()).endswith(b"\r\n\r\na")
        started = trio.current_time()
        assert await _until_close(stream) == b""
        assert trio.current_time() - started == pytest.approx(60, abs=0.5)
        await stream.aclose()
        server.shutdown()


async def test_slow_request_head_gets_408_at_its_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        server = await _start(nursery, Config(head_timeout=20, keep_alive_timeout=60))
        stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        started = trio.current_time()
        for byte in b"GET /echo/slow HTTP/1.1\r\nHost: x\r\n":  # one byte a second: slowloris
            if trio.current_time() - started > 19.5:
                break  # the server answers at 20 and closes; stop before writing into that
            await stream.send_all(bytes([byte]))
            await trio.sleep(1)
        response = await _until_close(stream)
        assert response.startswith(b"HTTP/1.1 408 ")
        assert trio.current_time() - started == pytest.approx(20, abs=1.5)
        await stream.aclose()
        server.shutdown()
