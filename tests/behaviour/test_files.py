"""Issue 5, black-box: file semantics as nginx gives them, and the access log."""

from __future__ import annotations

import os
import time

import pytest

from .client import request
from .conftest import Server, StartServer, unique

CONTENT = bytes(range(256)) * 40  # 10240 bytes
SIZE = len(CONTENT)


@pytest.fixture
def stored(server: Server) -> str:
    name = unique()
    path = server.directory / name
    path.write_bytes(CONTENT)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    return name


def test_validators_and_accept_ranges(server: Server, stored: str) -> None:
    response = server.get(f"/files/{stored}")
    assert response.status == 200
    etag = response.header("etag")
    assert etag is not None and etag.startswith((b'"', b'W/"')) and etag.endswith(b'"'), etag
    assert response.header("last-modified") == b"Tue, 14 Nov 2023 22:13:20 GMT"
    assert response.header("accept-ranges") == b"bytes"
    assert server.get(f"/files/{stored}").header("etag") == etag, "ETag must be stable"


def test_etag_changes_with_content(server: Server, stored: str) -> None:
    first = server.get(f"/files/{stored}").header("etag")
    response = server.fetch(request("POST", f"/files/{stored}", body=b"new content"))
    assert response.status == 201
    assert server.get(f"/files/{stored}").header("etag") != first


def test_if_none_match_gives_304(server: Server, stored: str) -> None:
    etag = server.get(f"/files/{stored}").header("etag")
    assert etag is not None
    with server.client() as client:
        for value in (etag.decode(), f'"nope", {etag.decode()}', "*"):
            client.send(request("GET", f"/files/{stored}", [("If-None-Match", value)]))
            response = client.read_response()
            assert response.status_line == b"HTTP/1.1 304 Not Modified", response.raw
            assert response.body == b""
            assert response.header("etag") == etag
        # the connection goes on: a 304 has no body to confuse the framing
        client.send(request("GET", "/echo/after-304"))
        assert client.read_response().body == b"after-304"


def test_if_none_match_other_gives_200(server: Server, stored: str) -> None:
    response = server.get(f"/files/{stored}", [("If-None-Match", '"something-else"')])
    assert (response.status, response.body) == (200, CONTENT)


def test_if_modified_since(server: Server, stored: str) -> None:
    last_modified = server.get(f"/files/{stored}").header("last-modified")
    assert last_modified is not None
    same = server.get(f"/files/{stored}", [("If-Modified-Since", last_modified.decode())])
    assert (same.status, same.body) == (304, b"")
    later = server.get(f"/files/{stored}", [("If-Modified-Since", "Wed, 15 Nov 2023 00:00:00 GMT")])
    assert later.status == 304
    earlier = server.get(f"/files/{stored}", [("If-Modified-Since", "Mon, 13 Nov 2023 00:00:00 GMT")])
    assert (earlier.status, earlier.body) == (200, CONTENT)
    garbage = server.get(f"/files/{stored}", [("If-Modified-Since", "not a date")])
    assert garbage.status == 200


def test_if_match_and_if_unmodified_since_give_412(server: Server, stored: str) -> None:
    etag = server.get(f"/files/{stored}").header("etag")
    assert etag is not None
    with server.client() as client:
        for headers, status in [
            ([("If-Match", etag.decode())], 200),
            ([("If-Match", "*")], 200),
            ([("If-Match", '"stale"')], 412),
            ([("If-Unmodified-Since", "Wed, 15 Nov 2023 00:00:00 GMT")], 200),
            ([("If-Unmodified-Since", "Mon, 13 Nov 2023 00:00:00 GMT")], 412),
            ([("If-Match", '"stale"'), ("If-None-Match", etag.decode())], 412),
        ]:
            client.send(request("GET", f"/files/{stored}", headers))
            response = client.read_response()
            assert response.status == status, (headers, response.raw)
            if status == 412:
                assert response.status_line == b"HTTP/1.1 412 Precondition Failed"
                assert CONTENT not in response.body
        client.send(request("GET", "/echo/after-412"))
        assert client.read_response().body == b"after-412"


def test_conditional_uploads(server: Server, stored: str) -> None:
    name = unique()
    etag = server.get(f"/files/{stored}").header("etag")
    assert etag is not None
    with server.client() as client:
        for target, headers, status in [
            (name, [("If-None-Match", "*")], 201),  # create only
            (name, [("If-None-Match", "*")], 412),  # ...once
            (stored, [("If-None-Match", "*")], 412),
            (stored, [("If-Match", '"stale"')], 412),
            (unique(), [("If-Match", "*")], 412),  # no file to match
        ]:
            client.send(request("POST", f"/files/{target}", headers, body=b"new content"))
            assert client.read_response().status == status, (target, headers)
        assert (server.directory / name).read_bytes() == b"new content"
        assert (server.directory / stored).read_bytes() == CONTENT
        client.send(request("POST", f"/files/{stored}", [("If-Match", etag.decode())], body=b"v2"))
        assert client.read_response().status == 201
        assert client.is_open()
    assert (server.directory / stored).read_bytes() == b"v2"
    assert not [entry for entry in server.directory_entries() if entry.startswith(".upload-")]


@pytest.mark.parametrize(
    ("headers", "status"),
    [([("If-None-Match", "*")], 412), ([("If-Match", '"stale"')], 412), ([], 409)],
)
def test_a_refused_upload_is_answered_before_its_body(
    server: Server, stored: str, headers: list[tuple[str, str]], status: int
) -> None:
    """With `Expect: 100-continue`, the refusal comes instead of 100 Continue (curl -T does this)."""
    target = "sub" if status == 409 else stored
    (server.directory / "sub").mkdir(exist_ok=True)
    with server.client() as client:
        fields = [("Content-Length", "1000000"), ("Expect", "100-continue"), *headers]
        client.send(request("POST", f"/files/{target}", fields))
        response = client.read_response("POST")
        assert response.informational == [], response.raw
        assert response.status == status, response.raw
        assert response.header("connection") == b"close"
        client.assert_closed(within=1.0)
    assert (server.directory / stored).read_bytes() == CONTENT
    assert not [entry for entry in server.directory_entries() if entry.startswith(".upload-")]
    server.assert_serving()


@pytest.mark.parametrize("expect", [False, True])
def test_put_with_content_range_is_400_and_stores_nothing(server: Server, stored: str, expect: bool) -> None:
    """RFC 9110 §14.5: a PUT with Content-Range MUST get 400 (its body is likely a part that
    would be stored as the whole file); refused before the body, like the other refusals."""
    fields = [("Content-Range", f"bytes 0-2/{SIZE}"), ("Content-Length", "3")]
    if expect:
        fields.append(("Expect", "100-continue"))
    with server.client() as client:
        client.send(request("PUT", f"/files/{stored}", fields) + (b"" if expect else b"abc"))
        response = client.read_response("PUT")
        assert response.informational == [], response.raw
        assert response.status == 400, response.raw
    assert (server.directory / stored).read_bytes() == CONTENT
    assert not [entry for entry in server.directory_entries() if entry.startswith(".upload-")]
    server.assert_serving()


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-4", 0, 4),
        ("bytes=100-", 100, SIZE - 1),
        ("bytes=-10", SIZE - 10, SIZE - 1),
        ("bytes=5-999999", 5, SIZE - 1),
    ],
)
def test_single_range_is_206(server: Server, stored: str, spec: str, start: int, end: int) -> None:
    response = server.get(f"/files/{stored}", [("Range", spec), ("Accept-Encoding", "gzip")])
    assert response.status_line == b"HTTP/1.1 206 Partial Content", response.raw
    assert response.header("content-range") == f"bytes {start}-{end}/{SIZE}".encode()
    assert response.header("content-length") == str(end - start + 1).encode()
    assert response.body == CONTENT[start : end + 1]
    assert not response.has("content-encoding"), "a range response is never compressed"


@pytest.mark.parametrize("spec", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0"])
def test_unsatisfiable_range_is_416(server: Server, stored: str, spec: str) -> None:
    response = server.get(f"/files/{stored}", [("Range", spec)])
    assert response.status == 416, response.raw
    assert response.header("content-range") == f"bytes */{SIZE}".encode()
    server.assert_serving()


@pytest.mark.parametrize("spec", ["bytes=-5", "bytes=-1", "bytes=0-", "bytes=0-0"])
def test_a_range_of_an_empty_file(server: Server, spec: str) -> None:
    """RFC 9110 §14.1.1: a non-zero suffix range is satisfiable even for an empty file, but no
    206 can express it (no `bytes a-b/0`): the whole (empty) file, 200, as nginx answers. A
    first-pos range stays unsatisfiable (416)."""
    name = unique()
    (server.directory / name).write_bytes(b"")
    response = server.get(f"/files/{name}", [("Range", spec)])
    if spec.startswith("bytes=-"):
        assert (response.status, response.body) == (200, b""), response.raw
        assert response.header("content-length") == b"0"
        assert not response.has("content-range")
    else:
        assert response.status == 416, response.raw
        assert response.header("content-range") == b"bytes */0"
    server.assert_serving()


@pytest.mark.parametrize("spec", ["bytes=5-2", "items=0-4", "bytes=abc", "bytes="])
def test_invalid_range_is_ignored(server: Server, stored: str, spec: str) -> None:
    response = server.get(f"/files/{stored}", [("Range", spec)])
    assert response.status in (200, 416), response.raw
    if response.status == 200:
        assert response.body == CONTENT


def test_several_ranges(server: Server, stored: str) -> None:
    response = server.get(f"/files/{stored}", [("Range", "bytes=0-1,5-6")])
    assert response.status in (200, 206), response.raw
    if response.status == 200:
        assert response.body == CONTENT


def test_if_range(server: Server, stored: str) -> None:
    full = server.get(f"/files/{stored}")
    etag, last_modified = full.header("etag"), full.header("last-modified")
    assert etag is not None and last_modified is not None
    matching = server.get(f"/files/{stored}", [("Range", "bytes=0-9"), ("If-Range", etag.decode())])
    assert (matching.status, matching.body) == (206, CONTENT[:10])
    by_date = server.get(f"/files/{stored}", [("Range", "bytes=0-9"), ("If-Range", last_modified.decode())])
    assert (by_date.status, by_date.body) == (206, CONTENT[:10])
    stale = server.get(f"/files/{stored}", [("Range", "bytes=0-9"), ("If-Range", '"stale-etag"')])
    assert (stale.status, stale.body) == (200, CONTENT)


def test_head_file_has_get_headers_and_no_body(server: Server, stored: str) -> None:
    get = server.get(f"/files/{stored}")
    with server.client() as client:
        client.send(request("HEAD", f"/files/{stored}"))
        head = client.read_response("HEAD")
        assert head.status == 200 and head.body == b""
        for name in ("content-length", "content-type", "etag", "last-modified", "accept-ranges"):
            assert head.header(name) == get.header(name), name
        client.send(request("HEAD", f"/files/{unique()}"))
        assert client.read_response("HEAD").status == 404
        client.send(request("GET", "/echo/after-head"))
        assert client.read_response().body == b"after-head"


def _wait_for_log(server: Server, needle: str, timeout: float = 2.0) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.stderr().splitlines():
            if needle in line:
                return line
        time.sleep(0.02)
    return None


def test_access_log_line(server: Server) -> None:
    marker = unique("log")
    response = server.get(f"/echo/{marker}")
    assert response.status == 200
    line = _wait_for_log(server, f'"GET /echo/{marker} HTTP/1.1" 200')
    assert line is not None, server.stderr()[-2000:]
    assert "127.0.0.1" in line
    assert f" 200 {len(marker)}" in line, line
    missing = unique("missing")
    server.get(f"/{missing}")
    assert _wait_for_log(server, f'"GET /{missing} HTTP/1.1" 404') is not None


def test_access_log_has_bad_requests(server: Server) -> None:
    """A request that never parsed is still logged (as 400), so an operator sees the abuse."""
    before = server.stderr().count(" 400 ")
    assert server.fetch(b"GARBAGE\r\n\r\n").status == 400
    deadline = time.monotonic() + 2.0
    while server.stderr().count(" 400 ") == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.stderr().count(" 400 ") == before + 1, server.stderr()[-1000:]


def test_no_access_log(start_server: StartServer) -> None:
    server = start_server("--no-access-log")
    marker = unique("quiet")
    assert server.get(f"/echo/{marker}").status == 200
    time.sleep(0.3)
    assert marker not in server.stderr()
