"""What the transports tell the core about a connection: client, server and scheme."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trustme

from protocol import Request, Response
from transports.common import address_pair, addresses
from transports.options import ServerOptions

from .harness import TRANSPORTS, read_until_close, running


def test_tcp_addresses_are_host_and_port() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        accepted, _ = listener.accept()
        with accepted:
            assert addresses(accepted) == (client.getsockname(), listener.getsockname())


def test_ipv6_addresses_drop_flow_and_scope() -> None:
    assert address_pair(socket.AF_INET6, ("::1", 5000, 0, 0), ("::1", 80, 0, 0)) == (
        ("::1", 5000),
        ("::1", 80),
    )


def test_a_unix_socket_has_no_client_and_its_path_as_server(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            accepted, _ = listener.accept()
            with accepted:
                assert addresses(accepted) == (None, (path, None))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
def test_the_request_carries_client_server_and_scheme(transport: str, secure: bool) -> None:
    def app(request: Request) -> Response:
        return Response(200, (), repr((request.client, request.server, request.scheme)).encode())

    context = client_context = None
    if secure:
        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
    options = ServerOptions(port=0, ssl_context=context)
    with running(transport, app, options=options) as server, server.connect(client_context) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = read_until_close(sock).split(b"\r\n\r\n", 1)[1]
        expected = (sock.getsockname()[:2], ("127.0.0.1", server.port), "https" if secure else "http")
    assert body == repr(expected).encode()
