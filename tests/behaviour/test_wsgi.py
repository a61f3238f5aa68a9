"""WSGI apps served by the real server, over loopback, on every transport (tests/apps/wsgi_suite.py).

Every route of the suite runs inside `wsgiref.validate.validator` with its warnings as errors:
a PEP 3333 breach on the server's side is a 500, or a complaint on the server's stderr, which
each test checks (the `app` fixture).
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest
import trustme

from .app_client import Reader, get_json, post
from .client import RawClient, Response, chunked, request
from .conftest import Server, SharedApps, StartServer, app_args, stop

SUITE = "wsgi_suite:app"
VALIDATOR_COMPLAINTS = ("AssertionError", "garbage collected without being closed", "WSGIWarning")


@pytest.fixture
def app(shared_apps: SharedApps) -> Iterator[Server]:
    """The shared suite server of this transport; after the test, its stderr must hold no
    complaint from the validator."""
    server = shared_apps.get(*app_args(SUITE))
    before = len(server.stderr())
    yield server
    assert server.process.poll() is None, server.stderr()
    new = server.stderr()[before:]
    for complaint in VALIDATOR_COMPLAINTS:
        assert complaint not in new, new


def wait_closed(server: Server, track: str, timeout: float = 5.0) -> bool:
    """Whether the app's iterable tracked as `track` was closed within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get_json(server, f"/closed?track={track}")["closed"]:
            return True
        time.sleep(0.05)
    return False


# --- environ and input ----------------------------------------------------------------


def test_environ_for_an_absolute_form_target(app: Server) -> None:
    """RFC 9112 §3.2.2: the host comes from the target, whatever Host says."""
    environ = get_json(app, "http://example.com:8080/environ/p?q=1", [("Host", "other.test")])
    assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/environ/p", "q=1")
    assert environ["HTTP_HOST"] == "example.com:8080"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.com", "8080")
    assert app.get("ftp://example.com/environ").status == 400


def test_environ_for_a_tricky_target(app: Server) -> None:
    with RawClient(app.host, app.port) as client:
        client.send(request("GET", "/environ/caf%C3%A9/a%2Fb?x=%20", [("X-Two", "a"), ("X-Two", "b")]))
        environ = json.loads(client.read_response().body)
        local_port = client.sock.getsockname()[1]
    assert environ["PATH_INFO"] == "/environ/caf\xc3\xa9/a/b"
    assert environ["QUERY_STRING"] == "x=%20"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "80")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("127.0.0.1", str(local_port))
    assert environ["HTTP_X_TWO"] == "a, b"
    assert environ["url_scheme"] == "http"
    assert environ["wsgi.version"] == [1, 0]
    assert environ["flags"] == {
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    assert environ["file_wrapper"] == "FileWrapper"
    assert environ["types"]["wsgi.input"] and environ["types"]["wsgi.errors"]


def test_root_path_and_workers(transport: str, shared_apps: SharedApps) -> None:
    server = shared_apps.get(*app_args(SUITE, "--root-path", "/api", "--workers", "2"))
    environ = get_json(server, "/api/environ?q")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/api", "/environ")
    assert environ["flags"]["wsgi.multiprocess"] is True
    stripped = get_json(server, "/environ")  # a proxy that already stripped the prefix
    assert (stripped["SCRIPT_NAME"], stripped["PATH_INFO"]) == ("/api", "/environ")


@pytest.mark.parametrize("size", [0, 10, 3 * 1024 * 1024 + 7])
def test_upload_with_content_length(app: Server, size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    response = post(app, "/upload", body)
    assert response.status == 200, response.raw[:500]
    result = json.loads(response.body)
    assert result == {
        "size": size,
        "sha256": hashlib.sha256(body).hexdigest(),
        "extra": "",
        "content_length": str(size) if size else None,
    }


def test_chunked_upload(app: Server) -> None:
    pieces = [b"a" * 1000, b"b" * 70000, b"c"]
    response = post(app, "/upload", chunked(*pieces), [("Transfer-Encoding", "chunked")])
    result = json.loads(response.body)
    whole = b"".join(pieces)
    assert (result["size"], result["sha256"]) == (len(whole), hashlib.sha256(whole).hexdigest())
    assert result["content_length"] == str(len(whole))  # known once the body is in


def test_upload_read_by_lines(app: Server) -> None:
    body = b"".join(b"line %d\n" % index for index in range(5000)) + b"no newline"
    result = json.loads(post(app, "/upload?mode=lines", body).body)
    assert (result["size"], result["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())


def test_100_continue_is_transparent(app: Server) -> None:
    body = b"z" * 5000
    with RawClient(app.host, app.port) as client:
        client.send(request("POST", "/upload", [("Expect", "100-continue"), ("Content-Length", "5000")]))
        assert client.read_informational().startswith(b"HTTP/1.1 100 ")
        client.send(body)
        result = json.loads(client.read_response("POST").body)
    assert (result["size"], result["sha256"]) == (5000, hashlib.sha256(body).hexdigest())


# --- response bodies ------------------------------------------------------------------


def test_streamed_pieces_arrive_before_the_producer_ends(app: Server) -> None:
    reader = Reader(app, "/stream?count=2&size=5&delay=1")
    try:
        started = time.monotonic()
        head = reader.head()
        assert head.status_code == 200
        assert (b"transfer-encoding", b"chunked") in head.headers
        first = reader.next_event()
        assert isinstance(first, h11.Data) and bytes(first.data) == b"ppppp"
        assert time.monotonic() - started < 0.9  # the producer needs 1 s more
        body = b""
        while not isinstance(event := reader.next_event(), h11.EndOfMessage):
            body += bytes(event.data)
        assert body == b"p" * 5
        assert time.monotonic() - started >= 0.9
    finally:
        reader.close()


def test_short_content_length_cuts_the_connection(app: Server) -> None:
    track = uuid.uuid4().hex
    reader = Reader(app, f"/short?track={track}")
    try:
        head = reader.head()
        assert (b"content-length", b"10") in head.headers
        received = b""
        while isinstance(event := reader.next_event(), h11.Data):
            received += bytes(event.data)
        assert received == b"abcde"
        assert not isinstance(event, h11.EndOfMessage)  # incomplete: the client can tell
    finally:
        reader.close()
    assert wait_closed(app, track)


def test_long_body_is_cut_at_content_length(app: Server) -> None:
    with RawClient(app.host, app.port) as client:
        client.send(request("GET", "/long"))
        assert client.read_response().body == b"abcd"  # never more than declared
        client.assert_closed(within=2.0)  # an app that broke its word: the connection ends


def test_head(app: Server) -> None:
    with RawClient(app.host, app.port) as client:
        client.send(request("HEAD", "/head") + request("GET", "/head"))
        head = client.read_response("HEAD")
        get = client.read_response()
    assert (head.status, head.header("content-length"), head.body) == (200, b"11", b"")
    assert (get.status, get.header("content-length"), get.body) == (200, b"11", b"hello world")


def test_head_of_a_stream_sends_no_body(app: Server) -> None:
    track = uuid.uuid4().hex
    with RawClient(app.host, app.port) as client:
        client.send(request("HEAD", f"/stream?count=2&track={track}") + request("GET", "/environ"))
        head = client.read_response("HEAD")
        assert (head.status, head.body) == (200, b"")
        assert client.read_response().status == 200
    assert wait_closed(app, track)


@pytest.mark.parametrize("size", [5, 3 * 1024 * 1024])
def test_write_callable(app: Server, size: int) -> None:
    response = app.get(f"/write?size={size}")
    assert response.body == b"w" * size + b"|iterable"


def test_exc_info_replaces_the_unsent_response(app: Server) -> None:
    response = app.get("/exc-info")
    assert (response.status, response.body) == (503, b"replaced")
    assert response.header("x-second") == b"1" and not response.has("x-first")


def test_error_before_the_start_is_a_500(app: Server) -> None:
    response = app.get("/error-before")
    assert response.status == 500
    assert get_json(app, "/environ")["REQUEST_METHOD"] == "GET"
    assert "error before the start (expected by the test)" in app.stderr()  # the traceback


def test_error_after_the_start_cuts_the_connection(app: Server) -> None:
    track = uuid.uuid4().hex
    reader = Reader(app, f"/error-after?track={track}")
    try:
        assert reader.head().status_code == 200
        received = b""
        while isinstance(event := reader.next_event(), h11.Data):
            received += bytes(event.data)
        assert received == b"first piece"
        assert not isinstance(event, h11.EndOfMessage)  # no terminating chunk
    finally:
        reader.close()
    assert wait_closed(app, track)
    assert get_json(app, "/environ")["REQUEST_METHOD"] == "GET"


def test_hop_by_hop_header_is_a_500(app: Server) -> None:
    assert app.get("/hop-by-hop").status == 500


def test_close_is_called_when_the_client_leaves(app: Server) -> None:
    track = uuid.uuid4().hex
    reader = Reader(app, f"/endless?track={track}&size=1000&delay=0.02")
    try:
        assert reader.head().status_code == 200
        assert isinstance(reader.next_event(), h11.Data)
    finally:
        reader.close()
    assert wait_closed(app, track, timeout=5.0)


@pytest.mark.parametrize("path", ["/file", "/file-validated"])
def test_file_wrapper(app: Server, path: str) -> None:
    whole = bytes(range(256)) * (100000 // 256) + bytes(range(100000 % 256))
    response = app.get(f"{path}?size=100000&skip=10")
    assert (response.status, response.body) == (200, whole[10:])
    bounded = app.get(f"{path}?size=100000&skip=10&length=5000")
    assert (bounded.header("content-length"), bounded.body) == (b"5000", whole[10:5010])


def test_a_slow_app_does_not_stall_others(app: Server) -> None:
    done: list[float] = []

    def slow() -> None:
        app.get("/sleep?seconds=1.5")
        done.append(time.monotonic())

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        time.sleep(0.2)
        started = time.monotonic()
        get_json(app, "/environ")
        assert time.monotonic() - started < 0.8
        assert not done
    finally:
        thread.join(10)


# --- bounded memory -------------------------------------------------------------------

HUGE = 200 * 1024 * 1024
GROWTH_LIMIT_KIB = 50 * 1024


def test_slow_reader_of_a_huge_stream_costs_bounded_memory(start_server: StartServer) -> None:
    server = start_server(*app_args(SUITE, "--no-access-log"), directory=False)
    get_json(server, "/environ")  # warm
    before = server.status("VmHWM")
    reader = Reader(server, f"/huge?size={HUGE}", timeout=30)
    try:
        reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        assert reader.head().status_code == 200
        time.sleep(1.0)  # a reader that stalls: the server must stop pulling the app's pieces
        stalled = server.status("VmHWM") - before
        received = 0
        while isinstance(event := reader.next_event(), h11.Data):
            received += len(event.data)
            if received < 20 * 1024 * 1024:
                time.sleep(0.0005)  # slow for the first 20 MB
        assert isinstance(event, h11.EndOfMessage)
        assert received == HUGE
    finally:
        reader.close()
    growth = server.status("VmHWM") - before
    print(f"stream: stalled +{stalled} KiB, whole +{growth} KiB")
    assert stalled < GROWTH_LIMIT_KIB
    assert growth < GROWTH_LIMIT_KIB, f"peak RSS grew by {growth} KiB for a {HUGE >> 20} MiB stream"


def test_huge_upload_costs_bounded_memory(start_server: StartServer) -> None:
    server = start_server(
        *app_args(SUITE, "--no-access-log", "--max-body-size", str(HUGE + 1)), directory=False
    )
    get_json(server, "/environ")
    before = server.status("VmHWM")
    piece = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()
    with RawClient(server.host, server.port, timeout=60) as client:
        client.send(request("POST", "/upload", [("Content-Length", str(HUGE))]))
        for _ in range(HUGE // len(piece)):
            client.send(piece)
            digest.update(piece)
        result = json.loads(client.read_response("POST").body)
    assert (result["size"], result["sha256"]) == (HUGE, digest.hexdigest())
    growth = server.status("VmHWM") - before
    print(f"upload: +{growth} KiB")
    assert growth < GROWTH_LIMIT_KIB, f"peak RSS grew by {growth} KiB for a {HUGE >> 20} MiB upload"


# --- the hostile suite's limits and timeouts, for app requests -----------------------


@pytest.fixture
def limited(shared_apps: SharedApps) -> Server:
    return shared_apps.get(
        *app_args(SUITE, "--max-body-size", "100000", "--body-timeout", "1", "--head-timeout", "1")
    )


def test_limits_hold_for_apps(limited: Server) -> None:
    assert post(limited, "/upload", b"x" * 100001).status == 413
    too_long = post(
        limited, "/upload", chunked(b"x" * 60000, b"y" * 60000), [("Transfer-Encoding", "chunked")]
    )
    assert too_long.status == 413
    with RawClient(limited.host, limited.port) as client:  # the declared length alone is enough
        client.send(request("POST", "/upload", [("Content-Length", "200000"), ("Expect", "100-continue")]))
        assert client.read_response("POST").status == 413
    assert json.loads(post(limited, "/upload", b"x" * 100000).body)["size"] == 100000


def test_timeouts_hold_for_apps(limited: Server) -> None:
    with RawClient(limited.host, limited.port) as client, RawClient(limited.host, limited.port) as head:
        client.send(request("POST", "/upload", [("Content-Length", "1000")]) + b"only part")
        started = time.monotonic()
        head.send(b"GET /environ HTTP/1.1\r\nHost: x\r\n")  # a head that never ends, meanwhile
        response = client.read_response("POST")
        assert response.status == 408
        assert time.monotonic() - started < 4
        assert head.read_response().status == 408


def tls_server(start_server: StartServer, tmp_path: Path, *args: str) -> tuple[Server, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    server = start_server(
        *app_args(SUITE, "--certfile", str(certfile), "--keyfile", str(keyfile), *args), directory=False
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return server, context


def test_tls_app(start_server: StartServer, tmp_path: Path) -> None:
    """file_wrapper under TLS is read in pieces (no sendfile through TLS)."""
    server, context = tls_server(start_server, tmp_path)
    with RawClient(server.host, server.port, tls=context) as client:
        client.send(request("GET", "/file?size=300000&skip=5"))
        whole = bytes(range(256)) * (300000 // 256) + bytes(range(300000 % 256))
        assert client.read_response().body == whole[5:]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_slow_steady_reader_gets_a_large_app_body_whole(
    start_server: StartServer, tmp_path: Path, tls: bool
) -> None:
    """--send-timeout is for progress: each 256 KiB piece of /huge (a Send) takes a reader
    at ~400 KB/s over a 4 KiB window longer (~0.65 s) than the 0.5 s send timeout, and the
    whole body still comes (was: trio cut it at the first piece)."""
    args = ("--send-timeout", "0.5")
    context: ssl.SSLContext | None = None
    if tls:
        server, context = tls_server(start_server, tmp_path, *args)
    else:
        server = start_server(*app_args(SUITE, *args), directory=False)
    size = 2 * 256 * 1024  # the bug cut the first piece: two show it
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window
    raw.settimeout(5.0)
    raw.connect((server.host, server.port))
    sock = raw if context is None else context.wrap_socket(raw, server_hostname=server.host)
    with sock:
        sock.sendall(request("GET", f"/huge?size={size}"))
        started = time.monotonic()
        data = bytearray()
        while time.monotonic() - started < 15.0:
            more = sock.recv(8192)
            if not more:
                break
            data += more
            head, _, body = bytes(data).partition(b"\r\n\r\n")
            if len(body) >= size:
                break
            time.sleep(0.02 * len(more) / 8192)  # about 400 KB/s
        elapsed = time.monotonic() - started
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == b"h" * size, (len(body), elapsed)
    assert elapsed > 1.0, elapsed  # slow: two send timeouts long


def test_tls_app_scheme(start_server: StartServer, tmp_path: Path) -> None:
    server, context = tls_server(start_server, tmp_path)
    with RawClient(server.host, server.port, tls=context) as client:
        client.send(request("GET", "/environ"))
        environ = json.loads(client.read_response().body)
    assert (environ["url_scheme"], environ["SERVER_PORT"]) == ("https", "443")


def test_graceful_shutdown_with_app_requests_in_flight(start_server: StartServer, tmp_path: Path) -> None:
    """SIGTERM: a slow app call finishes within the grace period; an endless stream is cut at
    its end, its iterable closed; the server exits 0."""
    server = start_server(*app_args(SUITE, "--shutdown-grace", "1"), directory=False)
    record = tmp_path / "closed.txt"
    results: list[Response] = []
    slow = threading.Thread(target=lambda: results.append(server.get("/sleep?seconds=0.6")))
    reader = Reader(server, f"/endless?track=shutdown&record={record}&size=100&delay=0.05")
    try:
        assert reader.head().status_code == 200
        slow.start()
        time.sleep(0.3)  # the slow call is in the app
        elapsed = stop(server, timeout=10)
        assert elapsed < 6
        slow.join(10)
        assert results and results[0].status == 200  # finished within the grace period
        while isinstance(event := reader.next_event(), h11.Data):
            pass
        assert not isinstance(event, h11.EndOfMessage)  # the endless stream was cut
    finally:
        reader.close()
    assert record.read_text() == "closed shutdown\n"
