"""ASGI apps served by the real server, over loopback, on every transport (tests/apps/asgi_suite.py).

One shared suite server per transport (with lifespan) carries most tests; tests that need
their own options, measure memory or stop the server start their own.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
import trustme

from .app_client import Reader, get_json, post
from .client import RawClient, Response, chunked, request
from .conftest import ROOT, Server, SharedApps, StartServer, app_args, stop, variant_args

SUITE = "asgi_suite:app"
BASE = ("trio", "asyncio", "threads")
"""The transports themselves; the accelerated variants (compiled parser, uvloop) skip the
tests that only start and stop processes or measure memory, which they do not change."""


def runtime_of(transport: str) -> str:
    """The async library an app runs on under the transport id `transport`."""
    return "trio" if transport.split("-")[0] == "trio" else "asyncio"


def base_only(transport: str) -> None:
    if transport not in BASE:
        pytest.skip("run on the three transports only (the variant changes nothing here)")


@pytest.fixture
def app(shared_apps: SharedApps) -> Iterator[Server]:
    server = shared_apps.get(*app_args(SUITE))
    before = len(server.stderr())
    yield server
    assert server.process.poll() is None, server.stderr()
    assert "Traceback" not in server.stderr()[before:] or "expected by the test" in server.stderr()[before:]


def track() -> str:
    return uuid.uuid4().hex[:12]


def wait_tracked(server: Server, key: str, field: str = "ended", timeout: float = 5.0) -> dict[str, Any]:
    """The tracked record once it has `field` (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        record: dict[str, Any] = get_json(server, f"/tracked?track={key}")
        if field in record or time.monotonic() > deadline:
            return record
        time.sleep(0.02)


# --- the scope --------------------------------------------------------------------------


def test_scope_for_a_tricky_target(app: Server, transport: str) -> None:
    headers = [("X-Repeat", "1"), ("Accept", "*/*"), ("X-Repeat", "2")]
    scope = get_json(app, "/scope/caf%C3%A9/a%2Fb?x=%20&y=%C3%A9", headers)
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert (scope["http_version"], scope["method"], scope["scheme"]) == ("1.1", "GET", "http")
    assert scope["path"] == "/scope/café/a/b"
    assert scope["raw_path"] == "/scope/caf%C3%A9/a%2Fb"
    assert scope["query_string"] == "x=%20&y=%C3%A9"
    assert scope["root_path"] == ""
    assert scope["headers"] == [
        ["host", "localhost"],
        ["x-repeat", "1"],
        ["accept", "*/*"],
        ["x-repeat", "2"],
    ]
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", app.port]
    assert scope["extensions"] == ["http.response.pathsend"]
    assert scope["state"] == ["counter", "pid", "ready"]
    assert scope["runtime"] == runtime_of(transport)


def test_scope_for_an_absolute_form_target(app: Server) -> None:
    """RFC 9112 §3.2.2: a server must accept the absolute form, and take the host from it
    (ignoring Host); the app sees origin-form (as WSGI and the built-in routes do)."""
    scope = get_json(app, "http://example.com:8080/scope/a%2Fb?x=1", [("Host", "other.test")])
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == ("/scope/a/b", "/scope/a%2Fb", "x=1")
    assert [value for name, value in scope["headers"] if name == "host"] == ["example.com:8080"]
    for target in (
        "ftp://example.com/scope",
        "http:///scope",
        "http://user@example.com/scope",
        "example.com:80",
    ):
        assert app.get(target).status == 400, target  # as nginx: the app is not called


def test_invalid_utf8_and_http_1_0(app: Server) -> None:
    scope = json.loads(app.fetch(request("GET", "/scope/%FF%e9", version="1.0")).body)
    assert scope["path"] == "/scope/\ufffd\ufffd"
    assert scope["http_version"] == "1.0"


def test_root_path(transport: str, shared_apps: SharedApps) -> None:
    server = shared_apps.get(*app_args(SUITE, "--root-path", "/api/"))
    with_prefix = get_json(server, "/api/scope/x")
    assert (with_prefix["root_path"], with_prefix["path"], with_prefix["raw_path"]) == (
        "/api",
        "/api/scope/x",
        "/api/scope/x",
    )
    stripped = get_json(server, "/scope/x")  # a proxy that stripped the prefix
    assert (stripped["root_path"], stripped["path"], stripped["raw_path"]) == (
        "/api",
        "/api/scope/x",
        "/scope/x",
    )


def test_state_is_copied_per_request(app: Server) -> None:
    first = get_json(app, "/state")
    second = get_json(app, "/state")
    assert first["ready"] is True and not first["leaked"] and not second["leaked"]
    assert second["counter"] > first["counter"]  # the shared list is the same object


# --- request bodies ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100_000, 3_000_000])
def test_body_with_content_length(app: Server, size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    result = json.loads(post(app, "/body", body).body)
    assert (result["length"], result["sha256"]) == (size, hashlib.sha256(body).hexdigest())
    # No empty message in between. The last may be empty: when the read-ahead filled up with
    # the body's last bytes, its end is read only when the app asks again (uvicorn does so too).
    assert all(result["messages"][:-1]) and (
        result["messages"][-1] or size == 0 or len(result["messages"]) > 1
    )
    if size > 1_000_000:
        assert len(result["messages"]) > 1  # streamed, not buffered whole


def test_chunked_body(app: Server) -> None:
    pieces = [b"a" * 10, b"b" * 70000, b"c"]
    response = post(app, "/body", chunked(*pieces), [("Transfer-Encoding", "chunked")])
    result = json.loads(response.body)
    assert (result["length"], result["sha256"]) == (70011, hashlib.sha256(b"".join(pieces)).hexdigest())


def test_100_continue_is_sent_when_the_app_first_asks_for_the_body(app: Server) -> None:
    with RawClient(app.host, app.port) as client:
        client.send(request("POST", "/body?delay=0.6", [("Content-Length", "5"), ("Expect", "100-continue")]))
        started = time.monotonic()
        head = client.read_informational()
        waited = time.monotonic() - started
        assert head.startswith(b"HTTP/1.1 100 ")
        assert waited >= 0.5, "100 Continue before the app asked for the body"
        client.send(b"hello")
        assert json.loads(client.read_response("POST").body)["length"] == 5


def test_no_100_continue_when_the_app_answers_without_reading(app: Server) -> None:
    with RawClient(app.host, app.port) as client:
        client.send(request("POST", "/no-read", [("Content-Length", "5"), ("Expect", "100-continue")]))
        response = client.read_response("POST")
        assert (response.status, response.informational) == (200, [])


# --- responses --------------------------------------------------------------------------


def test_streamed_pieces_arrive_before_the_app_ends(app: Server) -> None:
    reader = Reader(app, "/stream?count=3&size=5&delay=0.4")
    try:
        head = reader.head()
        assert head.status_code == 200 and (b"transfer-encoding", b"chunked") in head.headers
        started = time.monotonic()
        first = reader.next_event()
        assert isinstance(first, h11.Data) and bytes(first.data) == b"AAAAA"
        assert time.monotonic() - started < 0.3
        rest = b""
        while isinstance(event := reader.next_event(), h11.Data):
            rest += bytes(event.data)
        assert isinstance(event, h11.EndOfMessage) and rest == b"BBBBBCCCCC"
    finally:
        reader.close()


def test_a_short_content_length_cuts_the_connection(app: Server) -> None:
    with RawClient(app.host, app.port) as client:
        client.send(request("GET", "/stream?count=2&size=3&length=10"))
        data = client.read_until_close()
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"AAABBB")


def test_head_gets_no_body(app: Server) -> None:
    with RawClient(app.host, app.port) as client:
        client.send(request("HEAD", "/head") + request("GET", "/head"))
        head = client.read_response("HEAD")
        assert (head.status, head.header("content-length"), head.body) == (200, b"11", b"")
        assert client.read_response().body == b"hello world"  # the connection went on


def test_pathsend(app: Server, tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    data = bytes(range(256)) * 4000
    target.write_bytes(data)
    response = app.get(f"/pathsend?path={target}")
    assert (response.status, response.header("content-length"), response.body) == (
        200,
        b"%d" % len(data),
        data,
    )


def test_trailers_only_for_a_client_that_asked(app: Server) -> None:
    with RawClient(app.host, app.port) as client:
        client.send(request("GET", "/trailers", [("TE", "trailers")]))
        response = client.read_response()
    assert response.body == b"hello trailers"
    assert response.raw.endswith(b"0\r\nx-checksum: 42\r\n\r\n")
    plain = app.get("/trailers")
    assert plain.body == b"hello trailers" and b"x-checksum: 42" not in plain.raw


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "head"])
def test_an_error_before_the_body_is_a_500(app: Server, where: str) -> None:
    secret = "Bearer tok-" + track()
    response = app.get(f"/error?where={where}", [("Authorization", secret), ("Cookie", f"sid={secret[7:]}")])
    assert response.status == 500
    assert get_json(app, "/state")["ready"]
    log = app.stderr()
    assert f"an app error {where} the response started" in log and "Traceback" in log
    assert secret[7:] not in log


def test_an_error_after_the_start_cuts_the_connection(app: Server) -> None:
    with RawClient(app.host, app.port) as client:
        client.send(request("GET", "/error?where=after"))
        data = client.read_until_close()
    assert data.startswith(b"HTTP/1.1 200 ") and b"partial" in data
    assert not data.endswith(b"0\r\n\r\n")  # no terminating chunk: the client sees a cut
    assert get_json(app, "/state")["ready"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_an_app_error_is_logged_once(app: Server, where: str) -> None:
    """The adapter logs the traceback; the core, told that the task raised, adds no second
    error line ('app returned without a response' was untrue: it raised)."""
    key = track()
    before = len(app.stderr())
    with RawClient(app.host, app.port) as client:
        client.send(request("GET", f"/error?where={where}&track={key}"))
        client.read_until_close()
    deadline = time.monotonic() + 5
    while f'"GET /error?where={where}&track={key} HTTP/1.1"' not in app.stderr()[before:]:
        assert time.monotonic() < deadline, app.stderr()[before:]
        time.sleep(0.02)
    errors = [line for line in app.stderr()[before:].splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "ASGI app failed on GET /error" in errors[0], errors


@pytest.mark.parametrize(("query", "status"), [("", 500), ("?started=1", None)])
def test_returning_without_a_complete_response(app: Server, query: str, status: int | None) -> None:
    with RawClient(app.host, app.port) as client:
        client.send(request("GET", f"/incomplete{query}"))
        if status is not None:
            assert client.read_response().status == status
        else:
            data = client.read_until_close()
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"abc")
    assert "returned without" in app.stderr()


# --- disconnects ------------------------------------------------------------------------


def test_disconnect_comes_at_once_after_the_response(app: Server) -> None:
    key = track()
    assert app.get(f"/disconnect-after?track={key}").body == b"done\n"
    record = wait_tracked(app, key)
    assert record["ended"] == "http.disconnect" and record["waited"] < 1.0


@pytest.mark.parametrize("route", ["events", "listening-events", "long-poll"])
def test_a_client_that_leaves_is_noticed_within_a_second_or_two(app: Server, route: str) -> None:
    key = track()
    reader = Reader(app, f"/{route}?track={key}")
    if route != "long-poll":
        assert reader.head().status_code == 200
        assert isinstance(reader.next_event(), h11.Data)
    else:
        wait_tracked(app, key, "waiting")
    left = get_json(app, f"/tracked?track={key}")["now"]
    reader.close()
    record = wait_tracked(app, key, timeout=5.0)
    assert "ended" in record, record
    assert record["at"] - left < 2.0
    expected = {
        "events": "ClientDisconnected",
        "listening-events": "http.disconnect",
        "long-poll": "http.disconnect",
    }
    assert record["ended"] == expected[route]


def test_clients_that_leave_while_the_app_answers_do_not_disturb_the_server(app: Server) -> None:
    """Wake-ups and the clients' FINs arriving together (the threads transport once unparked a
    connection twice in one batch and died)."""
    data = request("GET", "/slow?delay=0.02")
    for round_ in range(12):
        sockets = [socket.create_connection((app.host, app.port), timeout=5) for _ in range(40)]
        for sock in sockets:
            sock.sendall(data)
        time.sleep(0.015 + 0.001 * round_)  # around the moment the app answers
        for sock in sockets:
            sock.close()
        assert get_json(app, "/scope/y")["path"] == "/scope/y"
    assert app.process.poll() is None


# --- bounded memory ---------------------------------------------------------------------

GROWTH_LIMIT_KIB = 40 * 1024


def test_a_slow_reader_of_an_endless_stream_costs_bounded_memory(app: Server) -> None:
    key = track()
    get_json(app, "/state")
    before = app.status("VmRSS")
    reader = Reader(app, f"/endless?track={key}&size=65536", rcvbuf=65536)
    try:
        assert reader.head().status_code == 200
        time.sleep(1.0)  # stalled: the app must be held, not produce into memory
        sent_while_stalled = get_json(app, f"/tracked?track={key}")["sent"]
        received = 0
        while received < 30 * 1024 * 1024:
            event = reader.next_event()
            assert isinstance(event, h11.Data)
            received += len(event.data)
            if received < 2 * 1024 * 1024:
                time.sleep(0.001)
        growth = app.status("VmRSS") - before
    finally:
        reader.close()
    assert sent_while_stalled < 200, (
        "the app kept producing for a stalled reader"
    )  # socket buffers, a few MiB
    assert growth < GROWTH_LIMIT_KIB, f"RSS grew by {growth} KiB"
    assert wait_tracked(app, key)["ended"] == "ClientDisconnected"


def test_a_slow_consumer_of_a_huge_upload_costs_bounded_memory(
    start_server: StartServer, transport: str
) -> None:
    base_only(transport)
    size = 150 * 1024 * 1024
    server = start_server(
        *app_args(SUITE, "--no-access-log", "--max-body-size", str(size + 1)), directory=False
    )
    get_json(server, "/state")
    before = server.status("VmHWM")
    piece = bytes(range(256)) * 4096  # 1 MiB
    with RawClient(server.host, server.port, timeout=60) as client:
        client.send(request("POST", "/slow-upload?pause=0.0005", [("Content-Length", str(size))]))
        for _ in range(size // len(piece)):
            client.send(piece)
        result = json.loads(client.read_response("POST").body)
    assert result["length"] == size
    growth = server.status("VmHWM") - before
    assert growth < GROWTH_LIMIT_KIB, f"peak RSS grew by {growth} KiB for a {size >> 20} MiB upload"


# --- the hostile suite's limits and timeouts, for app requests -------------------------


@pytest.fixture
def limited(shared_apps: SharedApps) -> Server:
    return shared_apps.get(
        *app_args(SUITE, "--max-body-size", "100000", "--body-timeout", "1", "--head-timeout", "1")
    )


def test_limits_hold_for_asgi_apps(limited: Server) -> None:
    assert post(limited, "/body", b"x" * 100001).status == 413
    too_long = post(limited, "/body", chunked(b"x" * 60000, b"y" * 60000), [("Transfer-Encoding", "chunked")])
    assert too_long.status == 413
    assert json.loads(post(limited, "/body", b"x" * 100000).body)["length"] == 100000
    response = limited.get("/scope", [("X-Big", "x" * 20000)])
    assert response.status == 431


def test_timeouts_hold_for_asgi_apps(limited: Server) -> None:
    with RawClient(limited.host, limited.port) as client, RawClient(limited.host, limited.port) as head:
        client.send(request("POST", "/body", [("Content-Length", "1000")]) + b"only part")
        started = time.monotonic()
        head.send(b"GET /scope HTTP/1.1\r\nHost: x\r\n")  # a head that never ends, meanwhile
        assert client.read_response("POST").status == 408
        assert time.monotonic() - started < 4
        assert head.read_response().status == 408


# --- lifespan and shutdown --------------------------------------------------------------


def test_lifespan_runs_before_serving_and_after_draining(start_server: StartServer, transport: str) -> None:
    server = start_server(*app_args("asgi_suite:slow_startup"), directory=False)
    assert get_json(server, "/state")["ready"] is True  # startup (0.5 s) completed before this was served
    result: list[Response] = []
    thread = threading.Thread(target=lambda: result.append(server.get("/slow?delay=0.6")))
    thread.start()
    time.sleep(0.3)  # the request is in the app, 0.3 s from its end
    stop(server, timeout=10)
    thread.join(5)
    assert result and result[0].body == b"slow done\n"
    log = server.stderr()
    runtime = runtime_of(transport)
    assert f"asgi_suite: lifespan startup on {runtime}" in log
    assert log.index("slow request finished") < log.index("asgi_suite: lifespan shutdown")
    assert "ASGI lifespan shutdown complete" in log


def test_graceful_shutdown_ends_event_streams(start_server: StartServer) -> None:
    server = start_server(*app_args(SUITE, "--shutdown-grace", "10"), directory=False)
    events = Reader(server, "/events?every=0.05")
    listening = Reader(server, "/listening-events")
    polling = Reader(server, "/long-poll")
    try:
        for reader in (events, listening):
            assert reader.head().status_code == 200
            assert isinstance(reader.next_event(), h11.Data)
        time.sleep(0.2)
        elapsed = stop(server, timeout=5)
        assert elapsed < 3, f"shutdown took {elapsed:.1f}s: streams were not ended"
        while isinstance(event := events.next_event(), h11.Data):
            pass
        assert isinstance(event, h11.EndOfMessage), event  # ended cleanly: EventSource reconnects
    finally:
        for reader in (events, listening, polling):
            reader.close()


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_failed_startup_exits_with_status_3_without_serving(
    tmp_path: Path, transport: str, mode: str
) -> None:
    base_only(transport)
    result = run_to_exit(transport, "asgi_suite:failing_startup", "--lifespan", mode)
    assert result.returncode == 3, result.stderr
    assert "the database is not there (expected)" in result.stderr


def test_a_failed_startup_with_workers_stops_them_all(transport: str) -> None:
    base_only(transport)
    result = run_to_exit(transport, "asgi_suite:failing_startup", "--workers", "2")
    assert result.returncode == 3, result.stderr
    assert "the database is not there" in result.stderr  # the other worker may be stopped first
    assert "replacing it" not in result.stderr


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "workers"])
def test_a_stop_signal_during_startup_cancels_it_at_once(transport: str, workers: list[str]) -> None:
    """SIGTERM while the app's startup hangs: cancelled now (not at the startup timeout), not
    served, said in the log, exit 0 (a stop that was asked for); the supervisor's workers too."""
    base_only(transport)
    command = [sys.executable, "-m", "transports", *app_args("asgi_suite:hanging_startup")]
    command += [*variant_args(transport), "--port", "0", "--lifespan-startup-timeout", "20", *workers]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        hanging = 2 if workers else 1
        lines: list[str] = []
        while "".join(lines).count("lifespan startup hangs") < hanging:  # workers' lines may mix
            lines.append(process.stderr.readline())
            assert lines[-1], "".join(lines)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        err = process.communicate(timeout=10)[1]
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = "".join(lines) + err
    assert process.returncode == 0, log
    assert elapsed < 2, f"took {elapsed:.1f}s\n{log}"
    assert log.count("lifespan startup cancelled") == hanging, log
    assert log.count("stopped during the app's startup: not serving") == hanging, log
    assert "startup failed" not in log and "replacing it" not in log, log


def test_an_app_without_lifespan_runs_without_it_in_auto_and_fails_with_on(
    start_server: StartServer, transport: str
) -> None:
    base_only(transport)
    server = start_server(*app_args("asgi_suite:raising_lifespan"), directory=False)
    assert get_json(server, "/scope")["state"] == []
    assert server.stderr().count("does not support lifespan") == 1
    result = run_to_exit(transport, "asgi_suite:raising_lifespan", "--lifespan", "on")
    assert result.returncode == 3 and "unsupported scope type" in result.stderr


def test_https_scheme_under_tls(start_server: StartServer, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    server = start_server(
        *app_args(SUITE, "--certfile", str(certfile), "--keyfile", str(keyfile)), directory=False
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with RawClient(server.host, server.port, tls=context) as client:
        client.send(request("GET", "/scope/x"))
        assert json.loads(client.read_response().body)["scheme"] == "https"
        target = tmp_path / "file.bin"  # pathsend through TLS: no sendfile, read in pieces
        target.write_bytes(bytes(range(256)) * 2000)
        client.send(request("GET", f"/pathsend?path={target}"))
        assert client.read_response().body == target.read_bytes()


def test_the_raw_example_app(start_server: StartServer) -> None:
    server = start_server("examples.asgi_app:app", "--app-dir", str(ROOT), directory=False)
    hello = server.get("/")
    assert hello.status == 200 and hello.body.startswith(b"Hello, ASGI\n")
    echoed = server.fetch(
        request("POST", "/echo", [("Transfer-Encoding", "chunked")], chunked(b"ab", b"cd")), "POST"
    )
    assert echoed.body == b"abcd"
    assert server.get("/visits").body == b"1 visits\n" and server.get("/visits").body == b"2 visits\n"
    reader = Reader(server, "/clock")
    try:
        assert reader.head().status_code == 200
        assert bytes(reader.next_event().data).startswith(b"data: ")
    finally:
        reader.close()


def test_apps_run_on_uvloop(app: Server, transport: str, tmp_path: Path) -> None:
    """The variants with `--loop uvloop` run the app there (and its pathsend without loop.sendfile)."""
    if "uvloop" not in variant_args(transport):
        pytest.skip("a variant on uvloop only")
    scope = get_json(app, "/scope")
    assert (scope["runtime"], scope["loop"]) == ("asyncio", "uvloop")
    target = tmp_path / "big.bin"
    data = bytes(range(256)) * 12000
    target.write_bytes(data)
    assert app.get(f"/pathsend?path={target}").body == data


def test_lifespan_off_never_calls_the_app_for_it(start_server: StartServer) -> None:
    server = start_server(*app_args(SUITE, "--lifespan", "off"), directory=False)
    assert get_json(server, "/scope")["state"] == []
    assert "lifespan startup" not in server.stderr()


def run_to_exit(transport: str, spec: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "transports",
        *app_args(spec, *variant_args(transport), "--port", "0", *args),
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
