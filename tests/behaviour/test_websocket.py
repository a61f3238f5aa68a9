"""WebSockets over loopback, on every transport: the `websockets` library as a real client,
raw sockets for what a well-behaved client never does.

Apps: tests/apps/ws_suite.py (raw ASGI; shared server per transport) and
tests/apps/ws_frameworks.py (FastAPI and Starlette endpoints). Tests that need their own
options (limits, pings) or stop the server start their own.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage

from .client import RawClient, request
from .conftest import Server, SharedApps, StartServer, app_args, stop

SUITE = "ws_suite:app"
FRAMEWORKS = "ws_frameworks:api"


@pytest.fixture
def app(shared_apps: SharedApps) -> Iterator[Server]:
    server = shared_apps.get(*app_args(SUITE))
    before = len(server.stderr())
    yield server
    assert server.process.poll() is None, server.stderr()
    assert "Traceback" not in server.stderr()[before:] or "expected by the test" in server.stderr()[before:]


@pytest.fixture
def frameworks(shared_apps: SharedApps) -> Iterator[Server]:
    server = shared_apps.get(*app_args(FRAMEWORKS))
    before = len(server.stderr())
    yield server
    assert server.process.poll() is None, server.stderr()
    assert "Traceback" not in server.stderr()[before:], server.stderr()[before:]


def url(server: Server, path: str) -> str:
    return f"ws://{server.host}:{server.port}{path}"


def ws(server: Server, path: str, **options: Any) -> ClientConnection:
    options.setdefault("open_timeout", 5)
    options.setdefault("close_timeout", 5)
    return connect(url(server, path), **options)


def tracked(server: Server, key: str, field: str, timeout: float = 5.0, path: str = "/tracked?track=") -> Any:
    """The record the app made under `key` once it has `field` (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        response = server.get(path + key)
        assert response.status == 200, response.raw
        record = json.loads(response.body)
        if field in record:
            return record
        assert time.monotonic() < deadline, f"no {field!r} in {record!r}"
        time.sleep(0.02)


def key() -> str:
    return uuid.uuid4().hex[:12]


class RawWS:
    """A WebSocket client on a raw socket: its own handshake, frames read with wsproto."""

    def __init__(self, server: Server, path: str = "/echo", *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect((server.host, server.port))
        nonce = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET %s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), nonce)
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.sock.recv(4096)
            assert data, head
            head += data
        head, rest = head.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 "), head
        self.conn = Connection(ConnectionType.CLIENT)
        self.conn.receive_data(rest)
        self.eof = False

    def send(self, *events: Event) -> None:
        self.sock.sendall(b"".join(self.conn.send(event) for event in events))

    def events(self, until: type, timeout: float = 5.0) -> list[Event]:
        """Events until one of type `until` (or end of input)."""
        found: list[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            for event in self.conn.events():
                found.append(event)
                if isinstance(event, until):
                    return found
            if self.eof:
                return found
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no {until.__name__} within {timeout}s; got {found!r}") from None
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                self.conn.receive_data(None)
            else:
                self.conn.receive_data(data)

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Whether the server closes TCP within `timeout` (reads and drops what comes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
        return False

    def close(self) -> None:
        self.sock.close()


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame, as written."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# --- messages -------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["deflate", None])
def test_echo_of_text_and_bytes(app: Server, compression: str | None) -> None:
    with ws(app, "/echo", compression=compression) as client:
        extensions = client.response.headers.get("Sec-WebSocket-Extensions")
        assert (extensions is not None) == (compression is not None)
        for message in ["hello", "wörld ☃", b"\x00\xff" * 10, "x" * 100_000, b"y" * 1_000_000, ""]:
            client.send(message)
            assert client.recv(timeout=5) == message


def test_fragmented_messages_and_pings_between(app: Server) -> None:
    with ws(app, "/echo", compression=None) as client:
        client.send(iter(["frag", "ment", "ed"]))
        assert client.recv(timeout=5) == "fragmented"
        assert client.ping(b"are you there").wait(5)
        client.send(iter([b"a", b"b"]))
        assert client.recv(timeout=5) == b"ab"


def test_subprotocols(app: Server) -> None:
    with ws(app, "/echo", subprotocols=["chat", "superchat"]) as client:
        assert client.subprotocol == "superchat"  # the app takes the client's last
    with ws(app, "/echo") as client:
        assert client.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in client.response.headers


def test_scope(app: Server) -> None:
    with ws(app, "/scope/caf%C3%A9?x=%20", subprotocols=["one", "two"], compression=None) as client:
        assert client.response.headers["x-scope"] == "yes"
        scope = json.loads(client.recv(timeout=5))
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert (scope["http_version"], scope["scheme"]) == ("1.1", "ws")
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == (
        "/scope/café",
        "/scope/caf%C3%A9",
        "x=%20",
    )
    assert scope["root_path"] == ""
    assert scope["subprotocols"] == ["one", "two"]
    assert scope["client"][0] == "127.0.0.1" and scope["server"] == ["127.0.0.1", app.port]
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert ["upgrade", "websocket"] in scope["headers"]


# --- closing ---------------------------------------------------------------------------------


def test_the_clients_close_code_reaches_the_app(app: Server) -> None:
    track = key()
    with ws(app, f"/echo?track={track}") as client:
        client.send("hi")
        client.recv(timeout=5)
        client.close(4001, "bye")
    assert tracked(app, track, "code") | {"at": 0} == {"code": 4001, "reason": "bye", "at": 0}


def test_the_apps_close_code_reaches_the_client(app: Server) -> None:
    with ws(app, "/echo") as client:
        client.send("close-me")
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "as asked")


def test_the_server_closes_tcp_first_after_the_close_handshake(app: Server) -> None:
    client = RawWS(app)
    client.send(CloseConnection(1000, "done"))
    events = client.events(CloseConnection)
    assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000
    assert client.closed_by_server(timeout=2)
    client.close()


def test_a_client_that_vanishes_is_noticed(app: Server) -> None:
    """Without a close frame: the app's send raises, and its receive says 1006, at once."""
    track = key()
    client = RawWS(app, f"/talk?track={track}")
    client.events(TextMessage)
    left = time.monotonic()
    client.close()
    record = tracked(app, track, "code")
    assert record["raised"] == "ClientDisconnected" and record["code"] == 1006
    assert record["at"] - left < 2.0


def test_a_peer_that_resets_is_1006_for_the_app(app: Server) -> None:
    track = key()
    client = RawWS(app, f"/echo?track={track}")
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    assert tracked(app, track, "code")["code"] == 1006


# --- refusals and errors -----------------------------------------------------------------------


def test_a_close_before_accept_is_403(app: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws(app, "/refuse")
    assert refused.value.response.status_code == 403


def test_a_denial_response_of_the_apps_own(app: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws(app, "/deny")
    response = refused.value.response
    assert response.status_code == 401 and response.body == b"who are you?"


def test_an_app_failing_before_accept_is_500_and_after_is_1011(app: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws(app, "/fail-before")
    assert refused.value.response.status_code == 500
    with ws(app, "/fail-after") as client, pytest.raises(ConnectionClosed) as closed:
        client.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        ([("Sec-WebSocket-Version", "13")], 400),
        ([("Sec-WebSocket-Key", "c2hvcnQ="), ("Sec-WebSocket-Version", "13")], 400),
        ([("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "8")], 426),
    ],
)
def test_a_bad_handshake_is_refused(app: Server, lines: list[tuple[str, str]], status: int) -> None:
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), *lines]
    response = app.fetch(request("GET", "/echo", headers))
    assert response.status == status
    if status == 426:
        assert response.header("sec-websocket-version") == b"13"


def test_the_builtin_routes_treat_an_upgrade_as_an_ordinary_request(server: Server) -> None:
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13")]
    response = server.fetch(request("GET", "/echo/abc", headers))
    assert (response.status, response.body) == (200, b"abc")


def test_ws_none_serves_upgrades_as_http(start_server: StartServer) -> None:
    server = start_server(*app_args(SUITE, "--ws", "none"), directory=False)
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13")]
    response = server.fetch(
        request("GET", "/echo", [*headers, ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
    )
    assert (response.status, response.body) == (200, b"plain http")


# --- protocol errors (Autobahn's groups, over a real socket) ------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(frame(0x1, b"x", rsv=2), 1002, id="reserved bit (3)"),
        pytest.param(frame(0x3, b"x"), 1002, id="reserved opcode (4)"),
        pytest.param(frame(0x0, b"x"), 1002, id="nothing to continue (5)"),
        pytest.param(frame(0x1, b"\xce\xba\xff"), 1007, id="invalid UTF-8 (6)"),
        pytest.param(frame(0x8, b"\x03\xe7"), 1002, id="close code 999 (7)"),
    ],
)
def test_protocol_errors_close_with_their_code(app: Server, data: bytes, code: int) -> None:
    client = RawWS(app)
    client.sock.sendall(frame(0x1, b"fine"))
    assert [e.data for e in client.events(TextMessage) if isinstance(e, TextMessage)] == ["fine"]
    client.sock.sendall(data)
    events = client.events(CloseConnection)
    assert isinstance(events[-1], CloseConnection) and events[-1].code == code
    assert client.closed_by_server(timeout=5)
    client.close()


def test_a_message_over_ws_max_size_closes_with_1009(start_server: StartServer) -> None:
    server = start_server(*app_args(SUITE, "--ws-max-size", "1000"), directory=False)
    with ws(server, "/echo", max_size=None) as client:
        client.send(b"x" * 1000)
        assert client.recv(timeout=5) == b"x" * 1000
        client.send(b"x" * 1001)
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


# --- keepalive ------------------------------------------------------------------------------------


def test_pings_keep_an_answering_peer_and_close_a_silent_one(start_server: StartServer) -> None:
    server = start_server(
        *app_args(SUITE, "--ws-ping-interval", "0.2", "--ws-ping-timeout", "0.3"), directory=False
    )
    # The websockets client answers pings by itself: it stays connected.
    with ws(server, "/echo", ping_interval=None) as client:
        time.sleep(1.0)
        client.send("still here")
        assert client.recv(timeout=5) == "still here"
    # A raw client that never reads (so never answers) is pinged, then closed with 1011.
    silent = RawWS(server)
    started = time.monotonic()
    events = silent.events(CloseConnection, timeout=5)
    assert any(isinstance(e, Ping) for e in events)
    assert isinstance(events[-1], CloseConnection) and events[-1].code == 1011
    assert 0.4 < time.monotonic() - started < 3.0
    assert silent.closed_by_server(timeout=2)
    silent.close()


# --- flow control -------------------------------------------------------------------------------


def test_a_fast_sender_to_a_slow_reader_holds_bounded_memory(app: Server) -> None:
    """The app sends 128 MiB as fast as send() returns; the client reads nothing for a while:
    the server's memory grows by a few MiB at most (send() waits), then all arrives."""
    track = key()
    before = app.status("VmRSS")
    client = RawWS(app, f"/flood?track={track}&count=512&size=262144", rcvbuf=65536)
    time.sleep(1.0)
    grown = app.status("VmRSS") - before
    received = 0
    client.sock.settimeout(10)
    while True:
        data = client.sock.recv(1 << 20)
        assert data
        received += len(data)
        if received >= 512 * 262144:
            break
    assert tracked(app, track, "done")["done"] is True
    client.close()
    assert grown < 32 * 1024, f"the server grew by {grown} KiB while the client did not read"


def test_a_fast_sender_to_a_slow_app_is_read_only_a_bounded_amount_ahead(app: Server) -> None:
    """The client sends 64 MiB; the app reads nothing for 1.5 s: the server stops reading
    (TCP pushes back on the client), then the app gets every message."""
    track = key()
    before = app.status("VmRSS")
    client = RawWS(app, f"/sleepy?track={track}&seconds=1.5")
    payload = client.conn.send(BytesMessage(b"s" * 65536))  # one message, masked once, sent 1024 times
    sent = 0
    client.sock.settimeout(0.3)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            client.sock.sendall(payload)
            sent += 1
        except TimeoutError:
            break
    grown = app.status("VmRSS") - before
    assert sent < 1024, "the server read everything at once"
    client.sock.settimeout(10)
    for _ in range(sent, 1024):
        client.sock.sendall(payload)
    client.send(CloseConnection(1000))
    assert tracked(app, track, "received")["received"] == 1024
    client.close()
    assert grown < 32 * 1024, f"the server grew by {grown} KiB while the app did not read"


def test_a_flood_of_tiny_frames_does_not_hold_up_other_clients(app: Server) -> None:
    """One client sends 30,000 empty fragments of a message (6 bytes each, ~10,000 a read:
    ~0.4 s of the server's CPU); HTTP requests on other connections meanwhile are answered
    at once (the core reads a bounded number of frames per step, then lets the others run),
    not after a whole read's frames each time (~0.2 s a read)."""
    client = RawWS(app)
    client.sock.sendall(frame(0x2, b"", fin=False))
    flood = frame(0x0, b"", fin=False) * 10_000
    sender = threading.Thread(target=lambda: [client.sock.sendall(flood) for _ in range(3)])
    sender.start()
    took = []
    for _ in range(5):
        started = time.monotonic()
        assert app.get("/plain").status == 200
        took.append(time.monotonic() - started)
    sender.join()
    client.send(BytesMessage(b"", message_finished=True), CloseConnection(1000))
    assert isinstance(client.events(CloseConnection, timeout=10)[-1], CloseConnection)
    client.close()
    assert max(took) < 0.2, f"requests took {took} beside the flood"


# --- shutdown ------------------------------------------------------------------------------------


def test_shutdown_closes_open_websockets_with_1001(start_server: StartServer) -> None:
    server = start_server(*app_args(SUITE), directory=False)
    outcome: dict[str, Any] = {}
    with ws(server, "/echo") as client:
        client.send("hi")
        assert client.recv(timeout=5) == "hi"

        def read() -> None:
            try:
                client.recv(timeout=10)
            except ConnectionClosed as exc:
                outcome["code"] = exc.rcvd.code if exc.rcvd else None

        reader = threading.Thread(target=read)
        reader.start()
        took = stop(server)
        reader.join(5)
    assert outcome == {"code": 1001}
    assert took < 3.0


# --- frameworks -------------------------------------------------------------------------------------


def test_fastapi_json_chat(frameworks: Server) -> None:
    room = key()
    with ws(frameworks, f"/chat/{room}?name=ann&limit=3") as client:
        assert json.loads(client.recv(timeout=5)) == {"room": room, "name": "ann", "limit": 3}
        client.send(json.dumps({"n": 1}))
        assert json.loads(client.recv(timeout=5)) == {"echo": {"n": 1}, "from": "ann"}
    record = tracked(frameworks, f"chat-{room}", "code", path="/tracked/")
    assert record == {"code": 1000}


def test_fastapi_refuses_a_handshake_that_fails_validation(frameworks: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws(frameworks, "/chat/r?limit=notanumber")
    assert refused.value.response.status_code == 403


def test_fastapi_bytes_subprotocol_and_close_code(frameworks: Server) -> None:
    with ws(frameworks, "/bytes", subprotocols=["binary"]) as client:
        assert client.subprotocol == "binary"
        client.send(b"abc")
        assert client.recv(timeout=5) == b"cba"
    with ws(frameworks, "/closing") as client, pytest.raises(ConnectionClosed) as closed:
        client.recv(timeout=5)
    assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        1008,
        "policy",
    )


def test_starlette_endpoint_class(frameworks: Server) -> None:
    with ws(frameworks, "/count") as client:
        for i in range(1, 4):
            client.send(f"m{i}")
            assert client.recv(timeout=5) == f"{i}: m{i}"


def test_starlette_learns_that_the_client_left_from_send(frameworks: Server) -> None:
    ticker = key()
    client = RawWS(frameworks, f"/ticker/{ticker}")
    client.events(TextMessage)
    client.close()
    assert tracked(frameworks, f"ticker-{ticker}", "code", path="/tracked/") == {"code": 1006}


# --- TLS ---------------------------------------------------------------------------------------------


def test_wss(
    start_server: StartServer, tmp_path: Path, transport: str, request: pytest.FixtureRequest
) -> None:
    if transport == "threads":
        # In about 0.4% of the `websockets` sync client's TLS 1.3 connections to the threads
        # transport the request never leaves the client: its recv thread (SSL_read, taking
        # in our session tickets) and its main thread (SSL_write of the request) use one
        # SSLSocket at once, which OpenSSL does not allow. No write(2) of the request is
        # made (strace); the server's socket stays empty and pending() 0 until its
        # keep-alive timeout. The threads transport presumably lands its tickets in the
        # client's race window more often (timing; not measured). Without session tickets
        # (num_tickets = 0) or with a TLS 1.2 client: 0 in 960 and 1200 connections.
        # Not a server bug: non-strict.
        request.applymarker(
            pytest.mark.xfail(
                strict=False, reason="websockets' sync client races SSL_read/SSL_write (TLS 1.3 tickets)"
            )
        )
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    server = start_server(
        *app_args(SUITE, "--certfile", str(certfile), "--keyfile", str(keyfile)), directory=False
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    uri = f"wss://localhost:{server.port}/scope/caf%C3%A9"
    with connect(uri, ssl=context, open_timeout=10, close_timeout=5) as client:
        scope = json.loads(client.recv(timeout=5))
    assert scope["scheme"] == "wss"
    with connect(f"wss://localhost:{server.port}/echo", ssl=context, open_timeout=10) as client:
        client.send(b"z" * 300_000)
        assert client.recv(timeout=5) == b"z" * 300_000
    # Plain HTTP still works beside it.
    with RawClient(server.host, server.port, tls=context) as http:
        http.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert http.read_response().body == b"plain http"


def test_http_requests_still_work_beside_websockets(app: Server) -> None:
    with urllib.request.urlopen(f"http://{app.host}:{app.port}/", timeout=5) as response:
        assert response.read() == b"plain http"


def test_the_chat_example(start_server: StartServer) -> None:
    server = start_server("examples.websocket_chat:app", directory=False)
    with ws(server, "/rooms/lobby?name=ann") as ann:
        assert ann.recv(timeout=5) == "ann joined"
        with ws(server, "/rooms/lobby?name=bob") as bob:
            assert bob.recv(timeout=5) == "bob joined"
            assert ann.recv(timeout=5) == "bob joined"
            bob.send("hello")
            assert ann.recv(timeout=5) == "bob: hello"
            assert bob.recv(timeout=5) == "bob: hello"
        assert ann.recv(timeout=5) == "bob left"
    assert b"<title>chat</title>" in server.get("/").body
