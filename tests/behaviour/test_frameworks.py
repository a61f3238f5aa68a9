"""Real frameworks on every transport, checked as a user would with an HTTP client (http.client).

Flask (examples/flask_app.py) and Django (tests/apps/django_site) serve the same routes: JSON,
a form, a multipart upload, a streamed response, a file, errors. Both are pinned in
requirements-dev.txt.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import APPS, ROOT, Server, SharedApps

FRAMEWORKS = {
    "flask": (["examples.flask_app:app", "--app-dir", str(ROOT)], ROOT / "examples" / "flask_app.py"),
    "django": (["django_site.wsgi:application", "--app-dir", str(APPS)], APPS / "django_site" / "views.py"),
}


@pytest.fixture(params=sorted(FRAMEWORKS))
def site(request: pytest.FixtureRequest, shared_apps: SharedApps) -> Iterator[tuple[str, Server]]:
    name = str(request.param)
    server = shared_apps.get(*FRAMEWORKS[name][0])
    yield name, server
    assert server.process.poll() is None, server.stderr()


@pytest.fixture
def conn(site: tuple[str, Server]) -> Iterator[http.client.HTTPConnection]:
    connection = http.client.HTTPConnection(site[1].host, site[1].port, timeout=10)
    yield connection
    connection.close()


def test_text_and_json(site: tuple[str, Server], conn: http.client.HTTPConnection) -> None:
    name, _ = site
    conn.request("GET", "/")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, f"Hello from {name.title()}\n".encode())
    conn.request("GET", "/api/items/1")  # the same connection: keep-alive
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(response.read()) == {"id": 1, "name": "apple"}
    conn.request("GET", "/api/items/99")
    response = conn.getresponse()
    response.read()
    assert response.status == 404


def test_json_post(conn: http.client.HTTPConnection) -> None:
    body = json.dumps({"name": "plum", "tags": ["é", 1]})
    conn.request("POST", "/api/items", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (201, {"created": json.loads(body)})
    conn.request("POST", "/api/items", "{not json", {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    assert response.status == 400


def test_form(conn: http.client.HTTPConnection) -> None:
    conn.request(
        "POST", "/form", "a=1&b=caf%C3%A9+au+lait", {"Content-Type": "application/x-www-form-urlencoded"}
    )
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (200, {"a": "1", "b": "café au lait"})


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        )
    for key, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_multipart_upload(conn: http.client.HTTPConnection, chunked: bool) -> None:
    small = b"small file\n"
    large = bytes(range(256)) * 12000  # ~3 MiB: spooled to disk by the server and by the framework
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


def test_chunked_json_post(conn: http.client.HTTPConnection) -> None:
    """Django reads exactly CONTENT_LENGTH bytes: a chunked body, whole before the app runs, has one."""
    body = json.dumps({"chunked": True}).encode()
    conn.request(
        "POST",
        "/api/items",
        iter([body[:5], body[5:]]),
        {"Content-Type": "application/json"},
        encode_chunked=True,
    )
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (201, {"created": {"chunked": True}})


def test_streamed_response(conn: http.client.HTTPConnection) -> None:
    started = time.monotonic()
    conn.request("GET", "/stream?count=2&delay=0.7")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    first = response.readline()
    assert first == b"line 0\n"
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
    assert "RuntimeError: an unhandled error in a" in site[1].stderr()  # the framework logged it


def test_django_sets_a_cookie(shared_apps: SharedApps) -> None:
    """Django's WSGI handler gives each Set-Cookie value with a leading space (`c.output(header="")`);
    the server strips it as gunicorn does, instead of failing every page that sets a cookie (the
    admin's login page, any CSRF-protected form) with a 500."""
    server = shared_apps.get(*FRAMEWORKS["django"][0])
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request("GET", "/cookie")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"a cookie\n")
        cookie = response.getheader("Set-Cookie")
        assert cookie is not None and cookie.startswith("flavour=oat; expires="), cookie
        assert "Max-Age=60" in cookie and "SameSite=Lax" in cookie
    finally:
        connection.close()
    assert "invalid response" not in server.stderr()
