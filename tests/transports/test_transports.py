"""Transport-level behaviour, in-process on all three transports: the `serve` API, TLS
(sendfile's fallback paths), graceful shutdown and its grace period, and a broken body."""

from __future__ import annotations

import http.client
import io
import os
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme

from handlers import build_app
from protocol import Config, FileBody, Request, Response
from transports.options import ServerOptions

from .harness import TRANSPORTS, read_until_close, running

pytestmark = pytest.mark.parametrize("transport", TRANSPORTS)


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context and a client context that trusts it."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def test_serves_on_the_reported_port(transport: str) -> None:
    with running(transport, build_app(None)) as server, server.connect() as sock:
        sock.sendall(b"GET /echo/abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = read_until_close(sock)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\nabc")


def test_tls_download_and_upload(
    transport: str, tmp_path: Path, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls
    content = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "big").write_bytes(content)
    options = ServerOptions(port=0, ssl_context=server_context)
    with running(transport, build_app(tmp_path), options=options) as server:
        https = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=client_context)
        try:
            https.request("GET", "/files/big")
            response = https.getresponse()
            assert (response.status, response.read() == content) == (200, True)
            https.request("POST", "/files/copy", body=content)
            response = https.getresponse()
            assert (response.status, response.read()) == (201, b"")
            https.request("GET", "/echo/after")
            assert https.getresponse().read() == b"after"
        finally:
            https.close()
    assert (tmp_path / "copy").read_bytes() == content


def test_shutdown_closes_idle_connections_at_once(transport: str) -> None:
    options = ServerOptions(port=0, shutdown_grace=30)
    config = Config(keep_alive_timeout=60)
    with running(transport, build_app(None), config, options) as server, server.connect() as sock:
        sock.sendall(b"GET /echo/idle HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).endswith(b"idle")
        started = time.monotonic()
        server.stop(within=5)
        assert time.monotonic() - started < 2
        assert read_until_close(sock) == b""


def test_shutdown_lets_a_request_in_flight_finish(transport: str, tmp_path: Path) -> None:
    options = ServerOptions(port=0, shutdown_grace=30)
    with running(transport, build_app(tmp_path), options=options) as server, server.connect() as sock:
        sock.sendall(b"POST /files/up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        _wait_for(lambda: len(os.listdir(tmp_path)) == 1)  # the upload's temporary file
        server.shutdown()
        time.sleep(0.1)
        sock.sendall(b"67890")
        response = read_until_close(sock)
        server.thread.join(5)
        assert not server.thread.is_alive()
    assert response.startswith(b"HTTP/1.1 201 Created\r\n")
    assert b"\r\nConnection: close\r\n" in response
    assert os.listdir(tmp_path) == ["up"]
    assert (tmp_path / "up").read_bytes() == b"1234567890"


def test_grace_period_cuts_a_stalled_upload_and_leaves_nothing(transport: str, tmp_path: Path) -> None:
    options = ServerOptions(port=0, shutdown_grace=0.3)
    with running(transport, build_app(tmp_path), options=options) as server, server.connect() as sock:
        sock.sendall(b"POST /files/up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n12345")
        _wait_for(lambda: len(os.listdir(tmp_path)) == 1)
        started = time.monotonic()
        server.stop(within=5)
        assert 0.25 < time.monotonic() - started < 3
        assert not read_until_close(sock).startswith(b"HTTP/1.1 201")
    assert os.listdir(tmp_path) == []


def test_a_file_shorter_than_announced_drops_only_its_connection(transport: str, tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"x" * 1000)

    def app(request: Request) -> Response:
        if request.target == b"/short":  # claims more bytes than the file holds
            return Response(200, (), FileBody(open(tmp_path / "short", "rb"), 0, 5000))
        return Response(200, (), b"fine")

    with running(transport, app) as server:
        with server.connect() as sock:
            sock.sendall(b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
            data = read_until_close(sock)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert len(data.split(b"\r\n\r\n", 1)[1]) < 5000
        with server.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_close(sock).endswith(b"fine")


def test_a_large_file_to_a_slow_reader_arrives_whole_and_in_order(transport: str, tmp_path: Path) -> None:
    """The socket fills up mid-file (on uvloop: os.sendfile takes turns with writes
    through the transport), then a pipelined request's response follows it."""
    content = os.urandom(12 * 2**20 + 12345)
    (tmp_path / "big").write_bytes(content)

    def app(request: Request) -> Response:
        if request.target == b"/big":
            return Response(200, (), FileBody(open(tmp_path / "big", "rb"), 100, len(content) - 100))
        return Response(200, (), b"after")

    with running(transport, app, Config(send_chunk_size=2**20)) as server, server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.sendall(
            b"GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        time.sleep(0.3)  # not reading yet: the socket buffers fill up
        data = bytearray()  # appending stays linear for the 12 MiB
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest[: len(content) - 100] == content[100:]
    assert rest[len(content) - 100 :].endswith(b"\r\n\r\nafter")


def _read_tls_to_the_end(sock: ssl.SSLSocket) -> tuple[bytes, bool]:
    """All the bytes, and whether the stream ended with close_notify (not a bare cut)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ssl.SSLEOFError, ConnectionResetError):
        return data, False
    return data, True


def test_tls_ends_whole_responses_with_close_notify_and_cut_ones_without(
    transport: str, tmp_path: Path, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """A client that trusts close_notify (RFC 8446 §6.1) must see a cut response as cut."""
    server_context, client_context = tls
    (tmp_path / "short").write_bytes(b"x" * 1000)

    def app(request: Request) -> Response:
        if request.target == b"/short":  # claims more bytes than the file holds
            return Response(200, (), FileBody(open(tmp_path / "short", "rb"), 0, 5000))
        return Response(200, (), b"whole")

    with running(transport, app, options=ServerOptions(port=0, ssl_context=server_context)) as server:
        for target, ends_cleanly in ((b"/whole", True), (b"/short", False)):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            with client_context.wrap_socket(
                raw, server_hostname="localhost", suppress_ragged_eofs=False
            ) as sock:
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
                data, clean = _read_tls_to_the_end(sock)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert clean is ends_cleanly, (target, len(data))


def test_a_tls_request_sent_with_the_clients_finished_is_read(
    transport: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """TLS 1.3: the request leaves in the same write as the client's Finished, before the
    server's session tickets come back. The server must read it without waiting for more
    input (bytes the TLS layer holds decrypted are invisible to select())."""
    server_context, client_context = tls
    with running(
        transport, build_app(None), options=ServerOptions(port=0, ssl_context=server_context)
    ) as server:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        with raw:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls_client = client_context.wrap_bio(incoming, outgoing, server_hostname="localhost")
            while True:
                try:
                    tls_client.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))
            assert tls_client.version() == "TLSv1.3"
            tls_client.write(b"GET /echo/early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw.sendall(outgoing.read())  # Finished and the request, in one segment
            response = b""
            while not response.endswith(b"\r\n\r\nearly"):
                try:
                    response += tls_client.read(65536)
                except ssl.SSLWantReadError:
                    data = raw.recv(65536)  # times out (a failure) if the server waits
                    assert data, response
                    incoming.write(data)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_file_body_without_a_descriptor_is_sent_whole(transport: str) -> None:
    content = os.urandom(1024 * 1024 + 17)  # several pieces, more than a socket buffer holds

    def app(request: Request) -> Response:
        return Response(200, (), FileBody(io.BytesIO(content), 0, len(content)))

    with running(transport, app) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = read_until_close(sock)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.split(b"\r\n\r\n", 1)[1] == content


def test_an_idle_keep_alive_connection_closes_after_its_timeout(transport: str) -> None:
    config = Config(keep_alive_timeout=0.3)
    with running(transport, build_app(None), config) as server, server.connect() as sock:
        sock.sendall(b"GET /echo/idle HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).endswith(b"idle")
        started = time.monotonic()
        assert read_until_close(sock) == b""
        assert 0.2 < time.monotonic() - started < 3


def test_max_connections_leaves_the_rest_in_the_backlog(transport: str) -> None:
    options = ServerOptions(port=0, max_connections=1)
    with running(transport, build_app(None), options=options) as server:
        first = server.connect()
        first.sendall(b"GET /echo/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert first.recv(65536).endswith(b"1")
        first.sendall(b"GET /echo/1 HTTP/1.1\r\n")  # busy: a request has begun
        time.sleep(0.5)  # and the server has read its start: it is not idle
        second = server.connect()  # completes in the kernel's backlog
        second.sendall(b"GET /echo/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        second.settimeout(0.3)
        with pytest.raises(TimeoutError):
            second.recv(65536)
        first.close()
        second.settimeout(5)
        assert second.recv(65536).endswith(b"2")
        second.close()


def test_at_max_connections_a_new_client_takes_an_idle_connections_slot(transport: str) -> None:
    """As nginx: a connection that waits for a request is closed to make room."""
    options = ServerOptions(port=0, max_connections=1)
    with running(transport, build_app(None), options=options) as server:
        idle = server.connect()
        idle.sendall(b"GET /echo/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).endswith(b"1")  # now idle, within its keep-alive timeout (5 s)
        with server.connect() as second:
            second.settimeout(3)
            started = time.monotonic()
            second.sendall(b"GET /echo/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_close(second).endswith(b"2")
            assert time.monotonic() - started < 2, "did not wait for the keep-alive timeout"
        idle.settimeout(3)
        assert idle.recv(65536) == b"", "closed, with nothing sent"
        idle.close()


def _wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class _SlowUpload:
    """An exchange whose disk work is slow; records what the core asked of it."""

    may_block = True

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def start(self) -> None:
        self.calls.append("start")

    def receive(self, data: bytes) -> None:
        self.calls.append("receive")
        time.sleep(0.5)

    def respond(self) -> Response:
        self.calls.append("respond")
        return Response(201)

    def abort(self) -> None:
        self.calls.append("abort")


def test_cut_during_a_blocking_step_still_aborts_the_exchange(transport: str) -> None:
    calls: list[str] = []
    options = ServerOptions(port=0, shutdown_grace=0.1)
    with running(transport, lambda request: _SlowUpload(calls), options=options) as server:
        sock = server.connect()
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n12345")
        _wait_for(lambda: calls == ["start", "receive"])
        server.stop(within=5)  # the grace period ends while receive() still runs
        sock.close()
    assert calls == ["start", "receive", "abort"]


def test_requests_before_the_client_shuts_its_side_are_all_answered(transport: str) -> None:
    with running(transport, build_app(None)) as server, server.connect() as sock:
        sock.sendall(b"GET /echo/one HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/two HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        response = read_until_close(sock)
    assert response.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert response.endswith(b"\r\n\r\ntwo")


def test_a_second_shutdown_cuts_at_once(transport: str, tmp_path: Path) -> None:
    options = ServerOptions(port=0, shutdown_grace=60)
    with running(transport, build_app(tmp_path), options=options) as server, server.connect() as sock:
        sock.sendall(b"POST /files/up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n12345")
        _wait_for(lambda: len(os.listdir(tmp_path)) == 1)
        server.shutdown()
        time.sleep(0.2)
        assert server.thread.is_alive()  # waiting for the upload, up to a minute
        started = time.monotonic()
        server.stop(within=5)  # the second call: a second Ctrl-C
        assert time.monotonic() - started < 3
    assert os.listdir(tmp_path) == []
