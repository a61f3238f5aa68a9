"""A WSGI app that blocks holds up only its own connection, on every transport: its call
runs on one of `--threads` threads (a step pool's on trio and asyncio, a worker on threads)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import pytest

from handlers.wsgi import WSGIApp
from transports.options import ServerOptions

from .harness import GET, TRANSPORTS, read_response_body, running


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_wsgi_app_that_blocks_stalls_no_other_connection(transport: str) -> None:
    if transport == "asyncio-uvloop":
        pytest.importorskip("uvloop")
    release = threading.Event()

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/slow":
            release.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    options = ServerOptions(port=0, threads=2)
    with running(transport, WSGIApp(app), options=options) as server, server.connect() as slow:
        slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        with server.connect() as fast:
            for _ in range(3):
                fast.sendall(GET)
                assert read_response_body(fast) == b"ok"
        release.set()
        assert read_response_body(slow) == b"ok"
