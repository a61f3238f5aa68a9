"""examples/blocking_loop.py: the core driven by a blocking socket loop."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from examples.blocking_loop import serve_connection
from handlers import build_app
from protocol import Config
from tests.behaviour.client import RawClient, request

from .program import running


def test_keep_alive_pipelining_files_and_close(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with running("blocking_loop", tmp_path, "--directory", str(served)) as program:
        with program.client() as client:  # one connection, several requests
            client.send(request("GET", "/echo/abc"))
            response = client.read_response()
            assert (response.status, response.body) == (200, b"abc")
            client.send(request("GET", "/user-agent", [("User-Agent", "blocking/1.0")]))
            assert client.read_response().body == b"blocking/1.0"
            client.send(request("POST", "/files/note.txt", body=b"x" * 100_000))  # Run steps (disk)
            assert client.read_response().status == 201
            client.send(request("GET", "/files/note.txt") + request("GET", "/nowhere"))  # pipelined
            download = client.read_response()
            assert (download.status, download.body) == (200, b"x" * 100_000)  # SendFile
            assert client.read_response().status == 404
        with program.client() as client:  # the next connection is served once the first ended
            client.send(request("GET", "/", [("Connection", "close")]))
            assert client.read_response().status_line == b"HTTP/1.1 200 OK"
            client.assert_closed(within=1.0)
        program.stop()


def test_deadlines_become_socket_timeouts() -> None:
    """A request head that stalls past head_timeout gets 408 and the connection closes."""
    server_side, client_side = socket.socketpair()
    client_side.settimeout(5.0)
    config = Config(head_timeout=0.2, access_log=False)
    thread = threading.Thread(target=serve_connection, args=(server_side, build_app(None), config))
    thread.start()
    try:
        client_side.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        received = b""
        while chunk := client_side.recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 408 ")
    finally:
        client_side.close()
        thread.join(5.0)
    assert not thread.is_alive()
    assert server_side.fileno() == -1  # the loop closed its socket


def test_a_client_that_vanishes_ends_only_its_connection() -> None:
    server_side, client_side = socket.socketpair()
    thread = threading.Thread(target=serve_connection, args=(server_side, build_app(None), Config()))
    thread.start()
    client_side.sendall(b"GET /echo/a HTTP/1.1\r\nHost: x\r\n\r\n")
    client_side.close()  # before reading the answer
    thread.join(5.0)
    assert not thread.is_alive()


def test_serve_connection_returns_after_a_closing_response_over_tcp() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5.0)
        port = listener.getsockname()[1]
        with RawClient("127.0.0.1", port) as client:
            sock, _ = listener.accept()
            thread = threading.Thread(target=serve_connection, args=(sock, build_app(None), Config()))
            thread.start()
            client.send(request("GET", "/echo/tcp", [("Connection", "close")]))
            assert client.read_response().body == b"tcp"
            thread.join(5.0)
            assert not thread.is_alive()
