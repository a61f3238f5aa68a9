"""Real ASGI frameworks, checked as a user would with an HTTP client (http.client).

FastAPI (examples/fastapi_app.py, on Starlette and anyio) on every transport; Django's ASGI
handler (tests/apps/django_site/asgi.py) on asyncio and threads only: it is tied to asyncio.
Both serve the routes of tests/behaviour/test_frameworks.py (JSON, form, multipart upload,
stream, file, error), plus what is ASGI's own: lifespan state, background tasks, pydantic's
validation errors, and an endless event stream that must end when its client leaves.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import APPS, ROOT, Server, SharedApps, StartServer, stop
from .test_frameworks import multipart

FRAMEWORKS = {
    "fastapi": (["examples.fastapi_app:app", "--app-dir", str(ROOT)], ROOT / "examples" / "fastapi_app.py"),
    "django": (["django_site.asgi:application", "--app-dir", str(APPS)], APPS / "django_site" / "views.py"),
}


@pytest.fixture(params=sorted(FRAMEWORKS))
def site(
    request: pytest.FixtureRequest, transport: str, shared_apps: SharedApps
) -> Iterator[tuple[str, Server]]:
    name = str(request.param)
    if name == "django" and transport.split("-")[0] == "trio":
        pytest.skip("Django's ASGI handler runs on asyncio only (README: asyncio or threads)")
    server = shared_apps.get(*FRAMEWORKS[name][0])
    yield name, server
    assert server.process.poll() is None, server.stderr()


@pytest.fixture
def fastapi(transport: str, shared_apps: SharedApps) -> Server:
    return shared_apps.get(*FRAMEWORKS["fastapi"][0])


@pytest.fixture
def conn(site: tuple[str, Server]) -> Iterator[http.client.HTTPConnection]:
    connection = http.client.HTTPConnection(site[1].host, site[1].port, timeout=10)
    yield connection
    connection.close()


def call(
    server: Server,
    method: str,
    target: str,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request(method, target, body, headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response
    finally:
        connection.close()


def test_text_and_json_on_one_connection(site: tuple[str, Server], conn: http.client.HTTPConnection) -> None:
    name, _ = site
    conn.request("GET", "/")
    response = conn.getresponse()
    assert (response.status, response.read()) == (
        200,
        f"Hello from {'FastAPI' if name == 'fastapi' else 'Django'}\n".encode(),
    )
    conn.request("GET", "/api/items/1")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(response.read()) == {"id": 1, "name": "apple"}
    conn.request("GET", "/api/items/99")
    response = conn.getresponse()
    response.read()
    assert response.status == 404


def test_form(conn: http.client.HTTPConnection) -> None:
    conn.request(
        "POST", "/form", "a=1&b=caf%C3%A9+au+lait", {"Content-Type": "application/x-www-form-urlencoded"}
    )
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (200, {"a": "1", "b": "café au lait"})


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_multipart_upload(site: tuple[str, Server], conn: http.client.HTTPConnection, chunked: bool) -> None:
    if chunked and site[0] == "django":
        pytest.skip("Django's ASGI handler parses a form only with a Content-Length, under any server")
    small = b"small file\n"
    large = bytes(range(256)) * 12000  # ~3 MiB
    body, content_type = multipart({"note": "hi"}, {"one": ("one.txt", small), "two": ("two.bin", large)})
    headers = {"Content-Type": content_type}
    if chunked:
        conn.request("POST", "/upload", iter([body[:1000], body[1000:]]), headers, encode_chunked=True)
    else:
        conn.request("POST", "/upload", body, headers)
    response = conn.getresponse()
    assert response.status == 200
    result = json.loads(response.read())
    assert result["fields"] == {"note": "hi"}
    assert result["files"] == {
        "one": {"filename": "one.txt", "size": len(small), "sha256": hashlib.sha256(small).hexdigest()},
        "two": {"filename": "two.bin", "size": len(large), "sha256": hashlib.sha256(large).hexdigest()},
    }


def test_streamed_response(site: tuple[str, Server], conn: http.client.HTTPConnection) -> None:
    started = time.monotonic()
    conn.request("GET", ("/stream" if site[0] == "fastapi" else "/astream") + "?count=2&delay=0.7")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.readline() == b"line 0\n"
    assert time.monotonic() - started < 0.6  # before the producer's next 0.7 s
    assert response.read() == b"line 1\n"


def test_file_response(site: tuple[str, Server], conn: http.client.HTTPConnection) -> None:
    path = FRAMEWORKS[site[0]][1]
    conn.request("GET", "/download")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Length") == str(path.stat().st_size)
    assert "attachment" in (response.getheader("Content-Disposition") or "")
    assert response.read() == Path(path).read_bytes()
    conn.request("HEAD", "/download")
    head = conn.getresponse()
    assert (head.status, head.getheader("Content-Length"), head.read()) == (
        200,
        str(path.stat().st_size),
        b"",
    )


def test_unhandled_error_is_a_500_and_the_server_goes_on(
    site: tuple[str, Server], conn: http.client.HTTPConnection
) -> None:
    conn.request("GET", "/boom")
    response = conn.getresponse()
    response.read()
    assert response.status == 500
    conn.request("GET", "/api/items/2")
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())["name"]) == (200, "pear")
    assert "RuntimeError: an unhandled error in a" in site[1].stderr()


def test_an_event_stream_ends_when_its_client_leaves(site: tuple[str, Server]) -> None:
    server = site[1]
    before = len(server.stderr())
    track = uuid.uuid4().hex[:12]
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"GET /events?track={track} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"data: 2" not in data:
            data += sock.recv(65536)
        assert b"text/event-stream" in data
    left = time.monotonic()
    while True:
        status = json.loads(call(server, "GET", f"/events/{track}")[1])["status"]
        if status.startswith("ended") or time.monotonic() - left > 5:
            break
        time.sleep(0.05)
    assert status.startswith("ended"), status
    assert time.monotonic() - left < 2.5
    after = server.stderr()[before:]
    assert "Traceback" not in after, after  # a client leaving is no error


# --- FastAPI's own --------------------------------------------------------------------


def test_validation_error_is_a_422_with_the_details(fastapi: Server) -> None:
    status, body, _ = call(
        fastapi,
        "POST",
        "/api/items",
        json.dumps({"name": "plum", "price": 1.5}),
        {"Content-Type": "application/json"},
    )
    assert (status, json.loads(body)) == (201, {"created": {"name": "plum", "price": 1.5, "tags": []}})
    status, body, _ = call(
        fastapi,
        "POST",
        "/api/items",
        json.dumps({"name": "plum", "price": "cheap"}),
        {"Content-Type": "application/json"},
    )
    assert status == 422
    assert json.loads(body)["detail"][0]["loc"] == ["body", "price"]


def test_upload_file(fastapi: Server) -> None:
    data = b"x" * 100_000
    body, content_type = multipart({}, {"file": ("f.bin", data)})
    status, result, _ = call(fastapi, "POST", "/upload-file", body, {"Content-Type": content_type})
    assert (status, json.loads(result)) == (200, {"filename": "f.bin", "size": len(data)})


def test_background_task_runs_after_the_response(fastapi: Server) -> None:
    note = uuid.uuid4().hex
    status, body, _ = call(
        fastapi, "POST", "/notes", f"note={note}", {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert (status, json.loads(body)) == (201, {"accepted": note})
    assert note not in json.loads(call(fastapi, "GET", "/notes")[1])  # the response did not wait for it
    deadline = time.monotonic() + 5
    while note not in json.loads(call(fastapi, "GET", "/notes")[1]):
        assert time.monotonic() < deadline, "the background task never ran"
        time.sleep(0.05)


def test_lifespan_state_and_shutdown(start_server: StartServer) -> None:
    server = start_server(*FRAMEWORKS["fastapi"][0], directory=False)
    assert json.loads(call(server, "GET", "/api/items/2")[1])["name"] == "pear"
    stop(server)
    log = server.stderr()
    assert log.index("fastapi_app: startup") < log.index("fastapi_app: shutdown")
