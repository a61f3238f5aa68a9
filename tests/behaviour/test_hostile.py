"""Issue 3, black-box: hostile framing, limits, slow and vanishing clients, soak, shutdown.

Every bad request is followed by a check that the server still serves a normal one, and
uploads that must not happen are checked on disk (no file, no temporary file).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from .client import RawClient, chunked, request
from .conftest import Server, StartServer, running_server, stop, unique

MAX_BODY = 1000
LIMITED = (
    "--max-body-size",
    str(MAX_BODY),
    "--head-timeout",
    "1",
    "--keep-alive-timeout",
    "0.5",
    "--body-timeout",
    "1",
    "--max-head-size",
    "4096",
    "--max-header-count",
    "20",
    "--max-target-length",
    "200",
)


@pytest.fixture(scope="module")
def limited(transport: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with small limits and short timeouts, shared by this module's tests."""
    with running_server(transport, tmp_path_factory.mktemp(f"limited-{transport}"), *LIMITED) as server:
        yield server


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def refused_and_closed(server: Server, data: bytes, statuses: tuple[int, ...]) -> None:
    """`data` gets one of `statuses` with Connection: close, then the socket closes at once."""
    with server.client() as client:
        client.send(data)
        response = client.read_response()
        assert response.status in statuses, response.raw
        assert response.header("connection") == b"close", response.raw
        client.assert_closed(within=1.0)
    server.assert_serving()


# --- framing -----------------------------------------------------------------------------


def test_content_length_with_transfer_encoding_is_400_and_close(server: Server) -> None:
    name = unique()
    data = (
        f"POST /files/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n0\r\n\r\n"
    ).encode() + request("GET", "/echo/smuggled")
    refused_and_closed(server, data, (400,))
    assert not (server.directory / name).exists()


def test_transfer_encoding_in_http_1_0_is_400_and_close(server: Server) -> None:
    """RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (a 1.0
    proxy in front would not have read it as chunked): refused, as nginx does, not stored."""
    name = unique()
    data = f"POST /files/{name} HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    refused_and_closed(server, data.encode() + chunked(b"hello"), (400,))
    assert not (server.directory / name).exists()


@pytest.mark.parametrize(
    "lengths",
    [["abc"], ["-1"], ["+5"], ["0x5"], ["5.0"], ["5 5"], ["5, 6"], ["5", "6"], ["", "5"], ["9" * 30]],
    ids=[
        "alpha",
        "negative",
        "plus",
        "hex",
        "decimal",
        "space",
        "list-differing",
        "dup-differing",
        "empty",
        "overflow",
    ],
)
def test_bad_content_length_is_400_and_close(server: Server, lengths: list[str]) -> None:
    name = unique()
    head = f"POST /files/{name} HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"Content-Length: {n}\r\n" for n in lengths
    )
    refused_and_closed(server, (head + "\r\nhello").encode(), (400,))
    assert not (server.directory / name).exists()


def test_duplicate_equal_content_length_is_accepted(server: Server) -> None:
    name = unique()
    data = f"POST /files/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    response = server.fetch(data.encode())
    assert response.status in (201, 400), response.raw
    if response.status == 201:
        assert (server.directory / name).read_bytes() == b"hello"


@pytest.mark.parametrize(
    "coding", ["gzip", "gzip, chunked", "chunked, gzip", "identity", "deflate", "chunked;x=1"]
)
def test_unsupported_transfer_encoding(server: Server, coding: str) -> None:
    name = unique()
    head = f"POST /files/{name} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n"
    data = head + "5\r\nhello\r\n0\r\n\r\n"
    refused_and_closed(server, data.encode(), (400, 501))
    assert not (server.directory / name).exists()


def test_chunked_upload_is_stored_byte_exact(server: Server) -> None:
    name = unique()
    pieces = [b"\x00\r\n0\r\n\r\n", bytes(range(256)), b"x" * 7, b"\r\n", b"y" * 70000, b"end"]
    body = chunked(*pieces)
    with server.client() as client:
        data = request("POST", f"/files/{name}", [("Transfer-Encoding", "chunked")]) + body
        for i in range(0, len(data), 997):  # odd fragments
            client.send(data[i : i + 997])
        response = client.read_response()
        assert response.status == 201, response.raw
        client.send(request("GET", f"/files/{name}"))
        assert client.read_response().body == b"".join(pieces)
    assert (server.directory / name).read_bytes() == b"".join(pieces)


def test_chunked_with_extensions_uppercase_and_trailers(server: Server) -> None:
    name = unique()
    body = b"A;name=value\r\n0123456789\r\n3;x\r\nabc\r\n0\r\nX-Trailer: yes\r\n\r\n"
    response = server.fetch(request("POST", f"/files/{name}", [("Transfer-Encoding", "chunked")]) + body)
    assert response.status == 201, response.raw
    assert (server.directory / name).read_bytes() == b"0123456789abc"


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5 5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["bad-size", "bad-terminator", "negative", "space-in-size"],
)
def test_malformed_chunks_are_400_and_nothing_after(server: Server, body: bytes) -> None:
    name, after = unique(), unique("after")
    before = server.directory_entries()
    data = request("POST", f"/files/{name}", [("Transfer-Encoding", "chunked")]) + body
    data += request("POST", f"/files/{after}", body=b"must not be processed")
    refused_and_closed(server, data, (400,))
    assert wait_for(lambda: server.directory_entries() == before), server.directory_entries() - before


def test_gzip_upload_is_stored_as_sent(server: Server) -> None:
    name = unique()
    body = gzip.compress(b"compressed upload " * 50)
    response = server.fetch(request("POST", f"/files/{name}", [("Content-Encoding", "gzip")], body))
    assert response.status == 201
    assert (server.directory / name).read_bytes() == body


# --- request line and header fields ------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "Get", "post"])
def test_methods_are_case_sensitive(server: Server, method: str) -> None:
    response = server.fetch(request(method, "/echo/abc"))
    assert response.status in (405, 501), response.raw
    if response.status == 405:
        assert response.has("allow")
    server.assert_serving()


@pytest.mark.parametrize("method", ["FOO", "PROPFIND", "TRACE"])
def test_unknown_methods(server: Server, method: str) -> None:
    response = server.fetch(request(method, "/echo/abc"))
    assert response.status in (405, 501), response.raw
    if response.status == 405:
        assert response.has("allow")
    assert response.status != 200
    server.assert_serving()


def test_connect_is_refused(server: Server) -> None:
    response = server.fetch(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert 400 <= response.status < 600, response.raw
    server.assert_serving()


@pytest.mark.parametrize(
    "head",
    [
        b"GET /echo/a HTTP/1.1\r\n\r\n",
        b"GET /echo/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /echo/a HTTP/1.1\r\nHost: a\r\nX-Nul: a\x00b\r\n\r\n",
        b"GET /echo/a HTTP/1.1\r\nHost: a\r\nX-Cr: a\rb\r\n\r\n",
        b"GET /echo/a HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET /echo/a HTTP/1.1\r\nHost: a\r\nX-Space : b\r\n\r\n",
        b"GET /echo/a HTTP/1.1\r\nHost: a\r\nNo-Colon\r\n\r\n",
        b"GET /echo/a HTTP/1.1\r\nHost: a\r\nX\tTab: b\r\n\r\n",
        b"GET /echo/a HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET /echo/a HTTP/1.1\r\nHost: x:80:80\r\n\r\n",
    ],
    ids=[
        "no-host",
        "two-hosts",
        "nul",
        "cr",
        "space-before-colon",
        "space-before-colon-2",
        "no-colon",
        "bad-name",
        "host-with-slash",
        "host-with-two-ports",
    ],
)
def test_bad_header_fields_are_400(server: Server, head: bytes) -> None:
    refused_and_closed(server, head, (400,))


# --- limits ------------------------------------------------------------------------------


def test_expect_100_continue_then_201(limited: Server) -> None:
    name = unique()
    with limited.client() as client:
        client.send(request("POST", f"/files/{name}", [("Content-Length", "10"), ("Expect", "100-continue")]))
        interim = client.read_informational()
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        client.send(b"0123456789")
        response = client.read_response("POST")
        assert response.status_line == b"HTTP/1.1 201 Created"
    assert (limited.directory / name).read_bytes() == b"0123456789"


def test_expect_100_over_limit_is_413_without_100(limited: Server) -> None:
    name = unique()
    with limited.client() as client:
        client.send(
            request(
                "POST", f"/files/{name}", [("Content-Length", str(MAX_BODY + 1)), ("Expect", "100-continue")]
            )
        )
        response = client.read_response("POST")
        assert response.informational == [], response.raw
        assert response.status == 413, response.raw
        client.assert_closed(within=1.0)
    assert not (limited.directory / name).exists()
    limited.assert_serving()


def test_body_over_limit_is_413(limited: Server) -> None:
    name = unique()
    before = limited.directory_entries()
    with limited.client() as client:
        client.send(request("POST", f"/files/{name}", body=b"x" * (MAX_BODY + 1)))
        response = client.read_response("POST")
        assert response.status == 413, response.raw
        client.read_until_close(timeout=3.0)
    assert wait_for(lambda: limited.directory_entries() == before)
    limited.assert_serving()


@pytest.mark.parametrize("size_line", [b"%x" % (MAX_BODY + 1), b"ffffffffffffffffffff"])
def test_a_chunk_announced_over_the_limit_is_413_at_once(limited: Server, size_line: bytes) -> None:
    """Refused on its size line, as nginx does, not after the body timeout (1 s here)."""
    name = unique()
    before = limited.directory_entries()
    with limited.client() as client:
        head = request("POST", f"/files/{name}", [("Transfer-Encoding", "chunked")])
        client.send(head + size_line + b"\r\nabc")
        response = client.read_response("POST")
        assert response.status == 413, response.raw  # was 408, at the body timeout
    assert wait_for(lambda: limited.directory_entries() == before)
    limited.assert_serving()


def test_bare_lf_chunk_lines_are_400_at_once(limited: Server) -> None:
    """Was: no answer until the body timeout, then 408."""
    name = unique()
    with limited.client() as client:
        head = request("POST", f"/files/{name}", [("Transfer-Encoding", "chunked"), ("Connection", "close")])
        client.send(head + b"3\nabc\n0\n\n")
        response = client.read_response("POST")
        assert response.status == 400, response.raw
    assert not (limited.directory / name).exists()
    limited.assert_serving()


def test_chunked_body_over_limit_is_413(limited: Server) -> None:
    name = unique()
    before = limited.directory_entries()
    body = chunked(*[b"y" * 300] * 5)
    with limited.client() as client:
        client.send(request("POST", f"/files/{name}", [("Transfer-Encoding", "chunked")]) + body)
        response = client.read_response("POST")
        assert response.status == 413, response.raw
        client.read_until_close(timeout=3.0)
    assert wait_for(lambda: limited.directory_entries() == before)
    limited.assert_serving()


@pytest.mark.parametrize(
    ("body", "statuses"),
    [
        (b"ffffffffffffffffffffffff\r\n" + b"x" * 2000, (400, 413)),
        (b"fffff\r\n" + b"x" * 2000, (413,)),
        (b"5;" + b"e" * 100_000 + b"\r\nhello\r\n0\r\n\r\n", (400, 431)),
        (b"5\r\nhello\r\n0\r\nX-T: " + b"t" * 100_000 + b"\r\n\r\n", (400, 431)),
    ],
    ids=["size-overflow", "size-over-limit", "long-extension", "long-trailer"],
)
def test_chunk_edge_cases(limited: Server, body: bytes, statuses: tuple[int, ...]) -> None:
    name = unique()
    before = limited.directory_entries()
    data = request("POST", f"/files/{name}", [("Transfer-Encoding", "chunked")]) + body
    with limited.client() as client:
        client.send(data)
        response = client.read_response("POST")
        assert response.status in statuses, response.raw
        client.read_until_close(timeout=3.0)
    assert wait_for(lambda: limited.directory_entries() == before)
    limited.assert_serving()


def test_chunked_body_at_limit_is_accepted(limited: Server) -> None:
    name = unique()
    body = chunked(b"x" * 600, b"y" * (MAX_BODY - 600))
    response = limited.fetch(request("POST", f"/files/{name}", [("Transfer-Encoding", "chunked")]) + body)
    assert response.status == 201
    assert (limited.directory / name).read_bytes() == b"x" * 600 + b"y" * (MAX_BODY - 600)


def test_body_at_limit_is_accepted(limited: Server) -> None:
    name = unique()
    response = limited.fetch(request("POST", f"/files/{name}", body=b"z" * MAX_BODY))
    assert response.status == 201
    assert (limited.directory / name).read_bytes() == b"z" * MAX_BODY


def test_head_over_limit_is_431(limited: Server) -> None:
    refused_and_closed(limited, request("GET", "/echo/a", [("X-Big", "b" * 5000)]), (431,))


def test_default_head_limit_is_431(server: Server) -> None:
    refused_and_closed(server, request("GET", "/echo/a", [("X-Big", "b" * 20000)]), (431,))


def test_too_many_header_fields_is_431(limited: Server) -> None:
    headers = [(f"X-H{i}", "v") for i in range(30)]
    refused_and_closed(limited, request("GET", "/echo/a", headers), (431,))


def test_limits_are_inclusive(limited: Server) -> None:
    headers = [(f"X-H{i}", "v") for i in range(19)]  # with Host: exactly 20 fields
    assert limited.fetch(request("GET", "/echo/a", headers)).status == 200
    target = "/echo/" + "t" * (200 - len("/echo/"))  # exactly 200 bytes
    assert limited.get(target).status == 200
    refused_and_closed(limited, request("GET", target + "t"), (414,))
    refused_and_closed(limited, request("GET", "/echo/a", [*headers, ("X-H19", "v")]), (431,))


@pytest.mark.parametrize("length", [300, 5000, 70000])
def test_long_target_is_414(limited: Server, length: int) -> None:
    """Over the target limit, or a request line over the whole head's limit (4096), as nginx."""
    refused_and_closed(limited, request("GET", "/echo/" + "t" * length), (414,))


@pytest.mark.parser_agnostic
def test_max_connections_makes_room_by_closing_an_idle_connection(start_server: StartServer) -> None:
    """As nginx: at the limit, a connection waiting for a request is closed for a new client."""
    server = start_server("--max-connections", "4", "--keep-alive-timeout", "30")
    clients = [server.client() for _ in range(4)]
    try:
        for client in clients:  # make sure each is accepted, served, and now idle
            client.send(request("GET", "/echo/held"))
            assert client.read_response().body == b"held"
        for round_ in range(3):  # each stays open, idle: the next one needs room again
            extra = server.client()
            clients.append(extra)
            extra.send(request("GET", f"/echo/extra{round_}"))
            assert extra.read_response().body == f"extra{round_}".encode()  # not after 30 s
        still_open = [client for client in clients if client.is_open(wait=0.1)]
        assert len(still_open) == 4, "one idle connection closed per new client"
    finally:
        for client in clients:
            client.close()
    server.assert_serving()


def test_max_connections_keeps_busy_connections(start_server: StartServer) -> None:
    """Connections in the middle of a request keep their slot: the new client waits its turn."""
    server = start_server("--max-connections", "2")
    busy = [server.client() for _ in range(2)]
    try:
        for client in busy:
            client.send(b"GET /echo/slow HTTP/1.1\r\nHost: x\r\n")  # a head under way
        time.sleep(0.5)  # read by the server: these are not idle
        with server.client() as extra:
            extra.send(request("GET", "/echo/extra"))
            assert not extra.is_open(wait=0.3) or not extra.unread, "answered while no slot was free"
            busy[0].send(b"Connection: close\r\n\r\n")  # finished: its slot frees after the answer
            assert busy[0].read_response().body == b"slow"
            assert extra.read_response().body == b"extra"
        busy[1].send(b"\r\n")
        assert busy[1].read_response().body == b"slow"
    finally:
        for client in busy:
            client.close()
    server.assert_serving()


def test_pipelining_flood_meets_backpressure(start_server: StartServer) -> None:
    """A client that sends requests and never reads the answers must not grow the server's memory."""
    server = start_server("--no-access-log")
    server.assert_serving()
    before = server.status("VmHWM")
    flood = server.client(timeout=1.0)
    try:
        flood.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        batch = request("GET", "/echo/" + "e" * 8000) * 10
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the send blocks once the server stops reading
            while time.monotonic() - started < 8.0:
                flood.send(batch)
        assert time.monotonic() - started < 8.0, "the server read requests without bound"
        server.assert_serving()
        growth = server.status("VmHWM") - before
        assert growth < 16 * 1024, f"peak RSS grew by {growth} KiB"
    finally:
        flood.reset()
    server.assert_serving()


@pytest.mark.parser_agnostic
def test_connection_limit_bounds_threads(start_server: StartServer) -> None:
    server = start_server("--max-connections", "20")
    clients = [server.client() for _ in range(150)]
    try:
        time.sleep(0.5)
        assert server.status("Threads") <= 20 + 45, "threads grow with connections"
    finally:
        for client in clients:
            client.close()
    server.assert_serving()


# --- time ----------------------------------------------------------------------------------


def test_slowloris_gets_408_and_others_are_served(limited: Server) -> None:
    outcome: dict[str, object] = {}

    def dribble() -> None:
        client = limited.client()
        try:
            data = b"GET /echo/slow HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
            started = time.monotonic()
            for byte in data:
                if select.select([client.sock], [], [], 0.1)[0]:
                    break
                try:
                    client.send(bytes([byte]))
                except OSError:
                    break
            response = client.read_response()
            outcome["elapsed"] = time.monotonic() - started
            outcome["status"] = response.status
            client.assert_closed(within=1.0)
            outcome["closed"] = True
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            client.close()

    thread = threading.Thread(target=dribble)
    thread.start()
    worst = 0.0
    while thread.is_alive():
        started = time.monotonic()
        limited.assert_serving()
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    thread.join(10)
    assert "error" not in outcome, outcome
    assert outcome["status"] == 408
    assert 0.8 <= float(outcome["elapsed"]) <= 2.5, outcome  # type: ignore[arg-type]
    assert outcome.get("closed") is True
    assert worst < 0.5, f"a normal request took {worst:.2f}s while a slow client dribbled"


@pytest.mark.parser_agnostic
def test_idle_keep_alive_closes_silently(limited: Server) -> None:
    with limited.client() as client:
        client.send(request("GET", "/echo/then-idle"))
        assert client.read_response().body == b"then-idle"
        started = time.monotonic()
        assert client.read_until_close(timeout=3.0) == b""
        assert 0.3 <= time.monotonic() - started <= 2.0


@pytest.mark.parser_agnostic
def test_silent_connection_closes_silently(limited: Server) -> None:
    with limited.client() as client:
        started = time.monotonic()
        assert client.read_until_close(timeout=3.0) == b""
        assert time.monotonic() - started <= 2.0


def test_stalled_body_gets_408_or_close(limited: Server) -> None:
    name = unique()
    before = limited.directory_entries()
    with limited.client() as client:
        client.send(request("POST", f"/files/{name}", [("Content-Length", "500")]) + b"partial")
        data = client.read_until_close(timeout=4.0)
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data
    assert wait_for(lambda: limited.directory_entries() == before)
    limited.assert_serving()


# --- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_disconnect_mid_upload_leaves_nothing(server: Server, framing: str, how: str) -> None:
    name = unique()
    before = server.directory_entries()
    client = server.client()
    if framing == "chunked":
        client.send(request("POST", f"/files/{name}", [("Transfer-Encoding", "chunked")]))
        client.send(b"".join(b"4000\r\n" + b"c" * 0x4000 + b"\r\n" for _ in range(20)))
    else:
        client.send(request("POST", f"/files/{name}", [("Content-Length", "1000000")]))
        client.send(b"l" * 300000)
    time.sleep(0.1)  # let the server start writing the upload
    if how == "rst":
        client.reset()
    else:
        client.close()
    assert wait_for(lambda: server.directory_entries() == before), server.directory_entries() - before
    server.assert_serving()


@pytest.mark.parser_agnostic
def test_non_regular_files_are_refused_without_blocking(start_server: StartServer) -> None:
    """A FIFO would block a naive open() forever; a directory is no file either."""
    server = start_server()
    os.mkfifo(server.directory / "fifo")
    (server.directory / "subdir").mkdir()
    (server.directory / "subdir" / "inner").write_bytes(b"inner")
    for name in ("fifo", "subdir"):
        started = time.monotonic()
        response = server.get(f"/files/{name}")
        assert 400 <= response.status < 500, response.raw
        assert time.monotonic() - started < 2.0
    post = server.fetch(request("POST", "/files/subdir", body=b"onto a directory"))
    assert 400 <= post.status < 500, post.raw
    assert (server.directory / "subdir" / "inner").read_bytes() == b"inner"
    assert server.directory_entries() == {"fifo", "subdir"}
    server.assert_serving()


@pytest.mark.parser_agnostic
def test_abort_mid_download_frees_the_file(start_server: StartServer) -> None:
    server = start_server()
    (server.directory / "big").write_bytes(b"z" * (16 * 1024 * 1024))
    server.assert_serving()
    baseline = server.settled_fd_count()
    for _ in range(5):
        client = server.client()
        client.send(request("GET", "/files/big"))
        client.sock.recv(1000)
        client.reset()
    assert wait_for(lambda: server.fd_count() == baseline), (server.fd_count(), baseline)
    server.assert_serving()


@pytest.mark.parser_agnostic
def test_reader_that_stalls_is_dropped_after_send_timeout(start_server: StartServer) -> None:
    server = start_server("--send-timeout", "0.5")
    (server.directory / "big").write_bytes(b"z" * (32 * 1024 * 1024))
    server.assert_serving()
    baseline = server.settled_fd_count()
    client = server.client()
    try:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.send(request("GET", "/files/big"))
        client.sock.recv(1000)  # the download started; now never read again
        started = time.monotonic()
        counts = [server.fd_count()]
        assert counts[0] >= baseline + 2, (counts, baseline)  # the connection and the open file
        while counts[-1] != baseline and time.monotonic() - started < 6.0:
            time.sleep(0.05)
            counts.append(server.fd_count())
        elapsed = time.monotonic() - started
        assert counts[-1] == baseline, (counts, baseline)
        assert 0.25 <= elapsed <= 4.0, (elapsed, counts)
    finally:
        client.close()
    server.assert_serving()


def _small_window_client(server: Server) -> socket.socket:
    """A client whose receive buffer (set before connecting: its window) is 4 KiB."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5.0)
    sock.connect((server.host, server.port))
    return sock


def _read_steadily(sock: socket.socket, until: float, step: int = 8192, pause: float = 0.04) -> bytes:
    """Read about `step` bytes every `pause` seconds (~200 KB/s) until `until` or the end."""
    data = bytearray()
    while time.monotonic() < until:
        got = 0
        while got < step:
            more = sock.recv(step - got)
            if not more:
                return bytes(data)
            got += len(more)
            data += more
        time.sleep(pause)
    return bytes(data)


@pytest.mark.parser_agnostic
def test_a_slow_steady_reader_gets_a_file_of_many_pieces_whole(start_server: StartServer) -> None:
    """--send-timeout is for progress, as nginx's send_timeout: a client that keeps taking
    bytes is served however long a piece takes (was: trio cut it when one --send-chunk-size
    piece took longer than the send timeout, here ~0.65 s a piece against 0.5 s)."""
    server = start_server("--send-timeout", "0.5", "--send-chunk-size", "128k")
    body = os.urandom(3 * 128 * 1024)  # the bug cut the first piece: three show it
    (server.directory / "big").write_bytes(body)
    with _small_window_client(server) as sock:
        sock.sendall(request("GET", "/files/big", [("Connection", "close")]))  # ends at its last byte
        started = time.monotonic()
        data = _read_steadily(sock, started + 15.0)
        elapsed = time.monotonic() - started
        head, _, received = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert len(received) == len(body) and received == body, (len(received), elapsed)
        assert elapsed > 1.5, elapsed  # it was slow: three send timeouts long
    server.assert_serving()


@pytest.mark.parser_agnostic
def test_a_reader_that_stops_is_cut_a_send_timeout_after_its_last_byte(start_server: StartServer) -> None:
    server = start_server("--send-timeout", "0.5", "--send-chunk-size", "128k")
    (server.directory / "big").write_bytes(b"z" * (32 * 1024 * 1024))
    server.assert_serving()
    baseline = server.settled_fd_count()
    sock = _small_window_client(server)
    try:
        sock.sendall(request("GET", "/files/big"))
        data = _read_steadily(sock, time.monotonic() + 1.0)  # two send timeouts
        assert len(data) > 100_000, len(data)  # served all along (each read took bytes)
        assert server.fd_count() >= baseline + 2  # the connection and its file
        stopped = time.monotonic()  # and now it reads no more
        while server.fd_count() != baseline and time.monotonic() - stopped < 5.0:
            time.sleep(0.02)
        elapsed = time.monotonic() - stopped
        assert server.fd_count() == baseline, (server.fd_count(), baseline)
        assert 0.3 <= elapsed <= 2.0, elapsed
    finally:
        sock.close()
    server.assert_serving()


@pytest.mark.parser_agnostic
def test_running_out_of_fds_pauses_accepting(start_server: StartServer) -> None:
    server = start_server(max_fds=64)
    server.assert_serving()
    clients = []
    try:
        for _ in range(100):  # more than the server can hold: the rest wait in the backlog
            clients.append(server.client())
        time.sleep(0.5)
        assert server.process.poll() is None, server.stderr()
        for client in clients[:5]:
            client.send(request("GET", "/echo/crowded"))
            assert client.read_response().body == b"crowded"
    finally:
        for client in clients:
            client.close()
    assert wait_for(lambda: server.process.poll() is None and server.fd_count() < 40)
    server.assert_serving()


def test_upload_in_progress_is_invisible(server: Server) -> None:
    name = unique()
    before = server.directory_entries()
    with server.client() as uploader:
        uploader.send(request("POST", f"/files/{name}", [("Content-Length", "100000")]) + b"p" * 50000)
        assert wait_for(lambda: server.directory_entries() != before, timeout=2.0)
        assert not (server.directory / name).exists(), "the target appeared before the body was complete"
        assert server.get(f"/files/{name}").status == 404
        for temp in server.directory_entries() - before:  # a temporary file: never served, never clobbered
            assert 400 <= server.get(f"/files/{temp}").status < 500
            assert 400 <= server.fetch(request("POST", f"/files/{temp}", body=b"clobber")).status < 500
        uploader.send(b"p" * 50000)
        assert uploader.read_response("POST").status == 201
    assert (server.directory / name).read_bytes() == b"p" * 100000
    assert server.directory_entries() == before | {name}


def test_concurrent_uploads_to_one_name(server: Server) -> None:
    name = unique()
    before = server.directory_entries()
    contents = [bytes([65 + i]) * 200_000 for i in range(8)]
    statuses: list[int] = []

    def upload(content: bytes) -> None:
        with server.client() as client:
            data = request("POST", f"/files/{name}", body=content)
            for i in range(0, len(data), 50_000):
                client.send(data[i : i + 50_000])
            statuses.append(client.read_response("POST").status)

    threads = [threading.Thread(target=upload, args=(content,)) for content in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert statuses == [201] * 8
    assert (server.directory / name).read_bytes() in contents
    assert server.directory_entries() == before | {name}


def test_atomic_replace(server: Server) -> None:
    name = unique()
    size = 256 * 1024
    contents = [b"a" * size, b"b" * size]
    (server.directory / name).write_bytes(contents[0])
    done = threading.Event()
    errors: list[str] = []
    reads = [0]

    def read() -> None:
        try:
            with server.client() as client:
                while not done.is_set():
                    client.send(request("GET", f"/files/{name}"))
                    body = client.read_response().body
                    if body not in contents:
                        errors.append(f"mixed or partial read: {len(body)} bytes, {set(body)!r}")
                        return
                    reads[0] += 1
        except BaseException as exc:
            errors.append(repr(exc))

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        with server.client() as writer:
            for i in range(30):
                writer.send(request("POST", f"/files/{name}", body=contents[(i + 1) % 2]))
                assert writer.read_response().status == 201
    finally:
        done.set()
        for reader in readers:
            reader.join(10)
    assert not errors, errors
    assert reads[0] > 0
    assert server.directory_entries() >= {name}
    assert not [entry for entry in server.directory_entries() if name in entry and entry != name]


def test_soak_keeps_fds_and_leaves_no_temp_files(start_server: StartServer) -> None:
    server = start_server()
    (server.directory / "static").write_bytes(b"s" * 50000)
    for target in ("/", "/echo/warm", "/files/static", "/nope"):
        server.get(target, [("Accept-Encoding", "gzip")])
    server.fetch(request("POST", "/files/warm", body=b"w"))
    baseline = server.settled_fd_count()
    uploaded = {"static", "warm"}
    lock = threading.Lock()
    errors: list[str] = []
    completed = [0]

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        client: RawClient | None = None
        try:
            for _ in range(50):
                if client is None:
                    client = server.client()
                kind = rng.randrange(10)
                if kind == 0:  # abrupt end in the middle of an upload
                    client.send(
                        request("POST", f"/files/cut-{seed}", [("Content-Length", "5000")]) + b"x" * 100
                    )
                    if rng.random() < 0.5:
                        client.reset()
                    else:
                        client.close()
                    client = None
                    continue
                if kind == 1:  # abrupt end in the middle of a request head
                    client.send(b"GET /echo/half HTTP/1.1\r\nHo")
                    client.reset()
                    client = None
                    continue
                if kind == 2:
                    name = f"up-{seed}-{rng.randrange(3)}"
                    client.send(request("POST", f"/files/{name}", body=b"u" * rng.randrange(1, 20000)))
                    assert client.read_response().status == 201
                    with lock:
                        uploaded.add(name)
                elif kind == 3:
                    client.send(request("GET", "/files/static", [("Accept-Encoding", "gzip")]))
                    assert client.read_response().status == 200
                elif kind == 4:
                    client.send(request("GET", f"/missing-{seed}"))
                    assert client.read_response().status == 404
                elif kind == 5:
                    client.send(request("GET", "/user-agent", [("User-Agent", f"soak-{seed}")]))
                    assert client.read_response().body == f"soak-{seed}".encode()
                elif kind == 6:
                    client.send(request("GET", "/echo/bye", [("Connection", "close")]))
                    assert client.read_response().body == b"bye"
                    client.close()
                    client = None
                else:
                    client.send(request("GET", f"/echo/{seed}-{kind}", [("Accept-Encoding", "gzip")]))
                    response = client.read_response()
                    assert gzip.decompress(response.body) == f"{seed}-{kind}".encode()
                with lock:
                    completed[0] += 1
        except BaseException as exc:
            errors.append(f"client {seed}: {exc!r}")
        finally:
            if client is not None:
                client.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    assert not errors, errors[:5]
    assert completed[0] > 1500
    assert elapsed < 45, f"soak took {elapsed:.1f}s"
    assert wait_for(lambda: server.fd_count() == baseline, timeout=8.0), (server.fd_count(), baseline)
    assert wait_for(lambda: server.directory_entries() == uploaded, timeout=5.0), (
        server.directory_entries() ^ uploaded
    )
    server.assert_serving()


# --- shutdown ------------------------------------------------------------------------------


_TGKILL: dict[str, int] = {"x86_64": 234, "aarch64": 131}
"""tgkill's system call number, to send a signal to one thread of another process."""


def _blocks_sigterm(pid: int, tid: str) -> bool:
    with open(f"/proc/{pid}/task/{tid}/status") as status:
        for line in status:
            if line.startswith("SigBlk:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


@pytest.mark.parser_agnostic
@pytest.mark.skipif(os.uname().machine not in _TGKILL, reason="tgkill's number unknown here")
def test_sigterm_delivered_to_a_worker_thread_still_stops_the_server(start_server: StartServer) -> None:
    """Regression: the kernel may hand a process's SIGTERM to any thread; when a threads
    transport's connection thread took it, the main thread slept on in select() forever."""
    import ctypes

    server = start_server()
    with server.client() as client:  # makes a connection thread (threads); others have theirs
        client.send(request("GET", "/echo/x"))
        assert client.read_response().body == b"x"
    pid = server.process.pid
    # The kernel picks, for a process's signal, any thread that does not block it. The
    # main thread blocks SIGTERM for a moment while it starts a worker, so look again.
    takers: list[int] = []

    def find_takers() -> bool:
        takers[:] = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if not _blocks_sigterm(pid, tid)]
        return bool(takers)

    assert wait_for(find_takers), "every thread blocks SIGTERM"
    # Another thread than the main one if there is one: the main thread would wake up anyway.
    taker = next((tid for tid in takers if tid != pid), pid)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(_TGKILL[os.uname().machine], pid, taker, signal.SIGTERM) == 0
    try:
        server.process.wait(5)
    except Exception:
        pytest.fail("SIGTERM taken by a worker thread did not stop the server")
    server.stopped = True
    assert server.process.returncode == 0


@pytest.mark.parser_agnostic
def test_sigterm_with_idle_keep_alive_exits_promptly(start_server: StartServer) -> None:
    server = start_server("--keep-alive-timeout", "30")
    clients = [server.client() for _ in range(20)]
    try:
        for client in clients:  # all answered at once, so some are still on their way back to recv
            client.send(request("GET", "/echo/idle"))
        for client in clients:
            assert client.read_response().body == b"idle"
        elapsed = stop(server)
        assert elapsed < 2.0, f"SIGTERM took {elapsed:.2f}s with idle keep-alive connections"
        for client in clients:
            assert client.read_until_close(timeout=1.0) == b""
    finally:
        for client in clients:
            client.close()


@pytest.mark.parser_agnostic
def test_sigint_exits_zero(start_server: StartServer) -> None:
    server = start_server()
    server.assert_serving()
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(5) == 0, server.stderr()
    server.stopped = True


@pytest.mark.parser_agnostic
def test_sigterm_during_upload_completes_or_leaves_nothing(start_server: StartServer) -> None:
    server = start_server("--shutdown-grace", "5")
    name = unique()
    with server.client() as client:
        client.send(request("POST", f"/files/{name}", [("Content-Length", "200000")]) + b"q" * 100000)
        time.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        try:
            client.send(b"q" * 100000)
            data = client.read_until_close(timeout=6.0)
        except OSError:
            data = b""
    assert server.process.wait(8) == 0, server.stderr()
    server.stopped = True
    path = server.directory / name
    if data.startswith(b"HTTP/1.1 201 "):
        assert path.read_bytes() == b"q" * 200000
    else:
        assert server.directory_entries() == set(), server.directory_entries()


@pytest.mark.parser_agnostic
def test_sigterm_lets_a_download_finish(start_server: StartServer) -> None:
    server = start_server("--shutdown-grace", "5")
    (server.directory / "big").write_bytes(b"d" * (32 * 1024 * 1024))
    with server.client(timeout=10) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.send(request("GET", "/files/big"))
        client.receive_some()
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        response = client.read_response()
        assert (response.status, len(response.body)) == (200, 32 * 1024 * 1024)
        client.assert_closed(within=1.0)
    assert server.process.wait(5) == 0, server.stderr()
    server.stopped = True
    assert time.monotonic() - started < 5.0


@pytest.mark.parser_agnostic
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_cuts_at_once_and_leaves_nothing(start_server: StartServer, signum: int) -> None:
    """Regression (trio): the second signal killed the process, which left `.upload-*` behind."""
    server = start_server("--shutdown-grace", "30")
    with server.client() as client:
        client.send(request("POST", "/files/stalled", [("Content-Length", "200000")], b"u" * 100000))
        assert wait_for(lambda: bool(server.directory_entries()))  # the upload is under way
        started = time.monotonic()
        server.process.send_signal(signum)
        time.sleep(0.3)
        assert server.process.poll() is None, "waits for the upload, within the grace period"
        server.process.send_signal(signum)
        assert server.process.wait(5) == 0, server.stderr()
        server.stopped = True
        assert time.monotonic() - started < 5.0, "cut at once, not after the 30 s grace period"
    assert server.directory_entries() == set(), "the cut upload left nothing"
    assert "Traceback" not in server.stderr()


@pytest.mark.parser_agnostic
def test_sigterm_grace_cuts_a_stalled_download(start_server: StartServer) -> None:
    server = start_server("--shutdown-grace", "0.5")
    (server.directory / "big").write_bytes(b"d" * (32 * 1024 * 1024))
    with server.client() as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.send(request("GET", "/files/big"))
        client.receive_some()  # then never read again
        elapsed = stop(server, timeout=5.0)
        assert elapsed < 2.5, f"shutdown took {elapsed:.2f}s with a 0.5s grace period"
