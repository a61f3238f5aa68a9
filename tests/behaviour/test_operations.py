"""What an operator trips over, on every transport (issue 12): logs of cut responses and of
shutdown, storage errors, PUT, plain HTTP to the TLS port, --keep-alive-timeout 0,
--log-level, --mime-types."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from .client import RawClient, request
from .conftest import Server, StartServer, stop, unique


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.02)


def _access_lines(server: Server, target: str) -> list[str]:
    return [
        line for line in server.stderr().splitlines() if "httpserver.access" in line and f" {target} " in line
    ]


def _uploads_in_progress(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(".upload-")]


# --- 3. access-log lines for cut responses; shutdown says what it does ---------------------------


def test_a_download_the_client_cuts_is_logged_with_the_bytes_sent(start_server: StartServer) -> None:
    server = start_server("--send-chunk-size", "64k")
    size = 256 * 1024 * 1024  # sparse: far more than loopback buffers hold
    with open(server.directory / "big", "wb") as file:
        file.truncate(size)
    with server.client() as client:
        client.send(request("GET", "/files/big"))
        client.receive_some()
        client.reset()
    _wait_for(lambda: _access_lines(server, "/files/big"), "access-log line for the cut download")
    [line] = _access_lines(server, "/files/big")
    match = re.search(r'"GET /files/big HTTP/1.1" (\d+) (\d+) ', line)
    assert match, line
    status, sent = int(match[1]), int(match[2])
    assert status == 200 and 0 <= sent < size and sent % (64 * 1024) == 0, line
    server.assert_serving()


def test_a_request_cut_at_shutdown_is_logged_and_shutdown_says_what_it_does(
    start_server: StartServer,
) -> None:
    server = start_server("--shutdown-grace", "0.5")
    new = server.client()  # accepted, no request yet: its first one would still be answered
    for name in ("gone-1", "gone-2"):  # served, and gone just before the signal: not in flight
        with server.client() as gone:
            gone.send(request("GET", f"/echo/{name}"))
            assert gone.read_response().body == name.encode()
    with server.client() as idle:
        idle.send(request("GET", "/echo/idle"))
        assert idle.read_response().body == b"idle"  # waits for its next request: closed at once
        slow = server.client()
        slow.send(request("POST", "/files/cut", [("Content-Length", "100")]) + b"abc")
        _wait_for(lambda: _uploads_in_progress(server.directory), "upload in progress")
        assert stop(server) < 4.0
        slow.close()
    new.close()
    assert not _uploads_in_progress(server.directory)
    stderr = server.stderr()
    assert '"POST /files/cut HTTP/1.1" 499 0 ' in stderr, stderr
    order = [
        "httpserver.server: shutting down: waiting up to 0.5s for 1 request in flight"
        " and the first request of 1 new connection",
        "httpserver.server: shutdown: cutting 1 request still in flight and closing 1 other connection",
        "httpserver.server: shutdown complete",
    ]
    positions = [stderr.find(text) for text in order]
    assert -1 not in positions and positions == sorted(positions), stderr


def test_a_quiet_shutdown_says_so(start_server: StartServer) -> None:
    server = start_server()
    server.assert_serving()  # and gone just before the signal: not in flight
    stop(server)
    stderr = server.stderr()
    assert "shutting down: no request in flight" in stderr and "shutdown complete" in stderr, stderr


# --- 5. storage errors: a clear status, one log line, nothing left behind -------------------------


def _upload_fails(server: Server, body: bytes, status: int) -> None:
    name = unique()
    with server.client() as client:
        client.send(request("POST", f"/files/{name}", body=body))
        response = client.read_response()
        assert response.status == status, response.raw
        client.send(request("GET", "/echo/after"))  # the connection goes on
        assert client.read_response().body == b"after"
    assert not (server.directory / name).exists()
    assert not _uploads_in_progress(server.directory)
    stderr = server.stderr()
    logged = [line for line in stderr.splitlines() if "cannot store" in line]
    assert len(logged) == 1 and f"({status})" in logged[0], stderr
    assert "Traceback" not in stderr


def test_a_file_too_large_for_the_file_system_is_413(start_server: StartServer) -> None:
    """EFBIG, here from RLIMIT_FSIZE: answered as soon as the write fails, before the body is all in."""
    server = start_server(max_file_size=1024 * 1024)
    _upload_fails(server, b"x" * (3 * 1024 * 1024), 413)


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[None]:
    """A tmpfs mounted on `path` (root with CAP_SYS_ADMIN only; else the test is skipped)."""
    path.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_is_507(start_server: StartServer) -> None:
    server = start_server()
    with _tmpfs(server.directory, "size=256k"):  # mounted over the served directory
        _upload_fails(server, b"x" * (1024 * 1024), 507)


def test_a_read_only_directory_is_403_and_warned_of_at_start(
    start_server: StartServer, tmp_path: Path
) -> None:
    directory = tmp_path / "read-only"
    with _tmpfs(directory, "ro,size=64k"):
        server = start_server("--directory", str(directory))
        assert f"--directory {directory} is not writable: uploads to it will get 403" in server.stderr()
        server.directory = directory
        _upload_fails(server, b"data", 403)
        stop(server)


# --- 6. PUT ----------------------------------------------------------------------------------------


def test_put_creates_201_with_location_and_replaces_204(server: Server) -> None:
    name = unique()
    created = server.fetch(request("PUT", f"/files/{name}", body=b"one"))
    assert created.status_line == b"HTTP/1.1 201 Created", created.raw
    assert created.header("location") == f"/files/{name}".encode()
    replaced = server.fetch(request("PUT", f"/files/{name}", body=b"two"))
    assert (replaced.status, replaced.body, replaced.has("location")) == (204, b"", False), replaced.raw
    assert (server.directory / name).read_bytes() == b"two"


def test_put_is_conditional_like_post(server: Server) -> None:
    name = unique()
    create_only = [("If-None-Match", "*")]
    assert server.fetch(request("PUT", f"/files/{name}", create_only, b"first")).status == 201
    assert server.fetch(request("PUT", f"/files/{name}", create_only, b"second")).status == 412
    etag = server.get(f"/files/{name}").header("etag")
    assert etag is not None
    stale = [("If-Match", '"0-0"')]
    assert server.fetch(request("PUT", f"/files/{name}", stale, b"third")).status == 412
    assert (
        server.fetch(request("PUT", f"/files/{name}", [("If-Match", etag.decode())], b"fourth")).status == 204
    )
    assert (server.directory / name).read_bytes() == b"fourth"


def test_put_with_expect_100_continue_as_curl_T_sends_it(server: Server) -> None:
    name = unique()
    with server.client() as client:
        client.send(request("PUT", f"/files/{name}", [("Expect", "100-continue"), ("Content-Length", "5")]))
        assert client.read_informational().startswith(b"HTTP/1.1 100 Continue")
        client.send(b"hello")
        assert client.read_response().status == 201
    assert (server.directory / name).read_bytes() == b"hello"


def test_post_keeps_its_status_line_and_gains_location(server: Server) -> None:
    name = unique()
    for _ in range(2):  # new, then replaced: POST is 201 either way
        response = server.fetch(request("POST", f"/files/{name}", body=b"data"))
        assert response.status_line == b"HTTP/1.1 201 Created"
        assert response.header("location") == f"/files/{name}".encode()


# --- 7. plain HTTP to the TLS port -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_plain_http_to_the_tls_port_gets_400_saying_so(
    start_server: StartServer, ca: trustme.CA, tmp_path: Path
) -> None:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    server = start_server("--certfile", str(certfile), "--keyfile", str(keyfile))
    for head in (request("GET", "/echo/plain"), request("POST", "/files/x", body=b"abc")):
        with RawClient(server.host, server.port) as plain:
            plain.send(head)
            response = plain.read_response()
            assert response.status_line == b"HTTP/1.1 400 Bad Request", response.raw
            assert b"plain HTTP request was sent to an HTTPS port" in response.body
            assert response.header("connection") == b"close"
            plain.assert_closed(within=2.0)
    with RawClient(server.host, server.port) as plain:  # not HTTP at all: the core's own 400
        plain.send(b"\x00\x01garbage\r\n\r\n")
        assert plain.read_until_close(timeout=3.0).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with RawClient(server.host, server.port, tls=context) as client:
        client.send(request("GET", "/echo/secure"))
        assert client.read_response().body == b"secure"
    assert '"GET /echo/plain HTTP/1.1" 400 ' in server.stderr()


# --- 8. --keep-alive-timeout 0, --log-level, requests without Host -------------------------------------


def test_keep_alive_timeout_zero_and_log_level_warning(start_server: StartServer) -> None:
    server = start_server("--keep-alive-timeout", "0", "--log-level", "warning")
    with server.client() as client:
        client.send(request("GET", "/echo/once"))
        response = client.read_response()
        assert (response.body, response.header("connection")) == (b"once", b"close")
        client.assert_closed(within=1.0)
    no_host = server.fetch(b"GET /no-host HTTP/1.1\r\n\r\n")
    assert no_host.status == 400
    stop(server)
    stderr = server.stderr()
    assert '"GET /echo/once HTTP/1.1" 200 4 ' in stderr, "--log-level warning turned the access log off"
    assert '"GET /no-host HTTP/1.1" 400 ' in stderr, stderr  # was "- - HTTP/-"
    assert "shutdown complete" not in stderr  # INFO of the other loggers is off


def test_no_access_log_is_its_own_switch(start_server: StartServer) -> None:
    server = start_server("--no-access-log", "--log-level", "debug")
    server.assert_serving()
    stop(server)
    assert "httpserver.access" not in server.stderr()


# --- 9. --mime-types ------------------------------------------------------------------------------------

_TYPES = {
    "page.html": b"text/html",
    "notes.txt": b"text/plain",
    "data.JSON": b"application/json",
    "image.png": b"image/png",
    "archive.tar.gz": b"application/gzip",
    "blob.unknown-extension": b"application/octet-stream",
    "no-extension": b"application/octet-stream",
}


def test_mime_types_serve_the_type_the_name_suggests(start_server: StartServer) -> None:
    server = start_server("--mime-types")
    for name, kind in _TYPES.items():
        (server.directory / name).write_bytes(b"content")
        response = server.get(f"/files/{name}")
        assert (response.status, response.header("content-type")) == (200, kind), name
        ranged = server.get(f"/files/{name}", [("Range", "bytes=0-1")])
        assert (ranged.status, ranged.header("content-type")) == (206, kind), name


def test_without_mime_types_every_file_is_octet_stream(server: Server) -> None:
    name = unique() + ".html"
    (server.directory / name).write_bytes(b"<p>hi</p>")
    assert server.get(f"/files/{name}").header("content-type") == b"application/octet-stream"


# --- 4. credentials in logs (the program's log formatter; the core's reprs are in tests/protocol) ---------


def test_no_credential_reaches_the_log(start_server: StartServer) -> None:
    """An upload refused as storage error is logged, and the access log has no header values;
    a request with credentials leaves none of them in any line."""
    server = start_server("--log-level", "debug")
    secret = "Basic c2VjcmV0OnNlY3JldA=="
    headers = [("Authorization", secret), ("Cookie", "session=s3cr3t"), ("Proxy-Authorization", secret)]
    for target in ("/echo/x", "/files/", "/nope"):
        server.get(target, headers)
    with socket.create_connection((server.host, server.port), timeout=5) as sock:  # a head too large: 431
        sock.sendall(request("GET", "/echo/x", [*headers, ("X-Big", "x" * 20000)]))
        sock.recv(65536)
    stop(server)
    stderr = server.stderr()
    assert "s3cr3t" not in stderr and secret not in stderr
