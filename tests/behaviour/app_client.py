"""Client helpers shared by the WSGI and ASGI suites (test_wsgi.py, test_asgi.py)."""

from __future__ import annotations

import json
import socket
from typing import Any

import h11

from .client import Response, request
from .conftest import Server


def get_json(server: Server, target: str, headers: list[tuple[str, str]] | None = None) -> Any:
    response = server.get(target, headers)
    assert response.status == 200, response.raw[:2000]
    return json.loads(response.body)


def post(server: Server, target: str, body: bytes, headers: list[tuple[str, str]] | None = None) -> Response:
    return server.fetch(request("POST", target, headers, body), "POST")


class Reader:
    """A response read event by event, as it arrives (h11 client)."""

    def __init__(
        self,
        server: Server,
        target: str,
        method: str = "GET",
        timeout: float = 10.0,
        rcvbuf: int | None = None,
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # set before connecting, so that the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((server.host, server.port))
        self.sock.sendall(request(method, target))
        self.conn = h11.Connection(h11.CLIENT)
        self.conn.send(h11.Request(method=method, target=target, headers=[("Host", "localhost")]))
        self.conn.send(h11.EndOfMessage())

    def next_event(self) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:  # the server cut the body short
                return exc
            if event is not h11.NEED_DATA:
                return event
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            self.conn.receive_data(data)

    def head(self) -> h11.Response:
        event = self.next_event()
        assert isinstance(event, h11.Response), event
        return event

    def close(self) -> None:
        self.sock.close()
