"""examples/custom_route.py: new routes next to the built-in ones, on every transport."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from examples.custom_route import MAX_BODY, Reverse, make_app
from protocol import Request, Response
from tests.behaviour.client import request

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
