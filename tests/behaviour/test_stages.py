"""The challenge's stages, mirroring the public CodeCrafters http-server tester's checks.

The tester starts the program with no arguments (or `--directory DIR/`, trailing slash),
opens plain TCP connections, writes Go-`net/http`-shaped requests, parses each response
(status code and reason phrase exact, selected headers compared, body exact, Content-Length
exact) and then checks that no unread bytes are left on the connection. Each response must
arrive within 2 s; after `Connection: close` the connection must be closed right away.
Its anti-cheat rejects a `Date` or `Server` header on `GET /`.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from .client import RawClient, Response
from .conftest import Server, running_server

READ_TIMEOUT = 2.0
"""The tester gives each response 2 seconds."""

_rng = random.Random(4221)


def _word() -> str:
    words = ["apple", "banana", "blueberry", "grape", "mango", "orange", "pear", "pineapple", "raspberry"]
    return _rng.choice(words)


def _path_word() -> str:
    return f"{_word()}/{_word()}"


def _go_request(
    path: str, headers: list[tuple[str, str]] | None = None, method: str = "GET", body: bytes = b""
) -> bytes:
    """A request as the tester writes it with Go's httputil (Host, User-Agent, then the rest)."""
    headers = headers or []
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost:4221"]
    names = {name.lower() for name, _ in headers}
    if "user-agent" not in names:
        lines.append("User-Agent: Go-http-client/1.1")
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class StageConnection:
    """Like the tester's HttpConnection: send, read one response within 2 s, no leftovers."""

    def __init__(self, server: Server) -> None:
        self.client = RawClient(server.host, server.port, timeout=READ_TIMEOUT)

    def run(self, data: bytes, method: str = "GET") -> Response:
        self.client.send(data)
        response = self.client.read_response(method)
        assert self.client.unread == b"", f"unread data after the response: {self.client.unread!r}"
        return response

    def is_open(self) -> bool:
        return self.client.is_open(wait=0.05)

    def close(self) -> None:
        self.client.close()


def _assert(
    response: Response,
    status: int,
    reason: bytes,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> None:
    assert response.http_version == b"1.1"
    assert (response.status, response.reason) == (status, reason), response.raw
    for name, value in (headers or {}).items():
        actual = response.header(name)
        assert actual is not None, f"expected header {name}: {value}, not present in {response.raw!r}"
        assert actual.lower() == value.lower().encode(), f"expected {name}: {value}, got {actual!r}"
    if body is not None:
        assert response.body == body


@pytest.fixture(scope="module")
def plain(transport: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Started like `./your_program.sh` with no arguments (port 0 instead of 4221)."""
    with running_server(transport, tmp_path_factory.mktemp(f"plain-{transport}"), directory=False) as server:
        yield server


@pytest.fixture(scope="module")
def with_directory(transport: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Started like `./your_program.sh --directory /tmp/data/.../` (trailing slash)."""
    base = tmp_path_factory.mktemp(f"dir-{transport}")
    with running_server(transport, base, directory=True, trailing_slash=True) as server:
        assert server.stdout_line.endswith(")"), server.stdout_line
        yield server


def _echo_case(server: Server, conn: StageConnection | None = None) -> None:
    text = _path_word().replace("/", "-")
    own = conn is None
    conn = conn or StageConnection(server)
    response = conn.run(_go_request(f"/echo/{text}"))
    _assert(
        response, 200, b"OK", {"Content-Type": "text/plain", "Content-Length": str(len(text))}, text.encode()
    )
    if own:
        conn.close()


def _random_case(server: Server, index: int) -> tuple[bytes, str, tuple[int, bytes, dict[str, str], bytes]]:
    """One of the tester's random request/response pairs: GET /, echo, user-agent or a file."""
    kind = index % 4
    if kind == 0:
        return _go_request("/"), "GET", (200, b"OK", {}, b"")
    if kind == 1:
        text = _word()
        return (
            _go_request(f"/echo/{text}"),
            "GET",
            (200, b"OK", {"Content-Type": "text/plain"}, text.encode()),
        )
    if kind == 2:
        agent = f"{_word()}/{_word()}-{_word()}"
        request = _go_request("/user-agent", [("User-Agent", agent)])
        return request, "GET", (200, b"OK", {"Content-Type": "text/plain"}, agent.encode())
    name, content = f"{_word()}_{_rng.randint(1, 10**6)}", " ".join(_word() for _ in range(4))
    (server.directory / name).write_text(content)
    expected = (200, b"OK", {"Content-Type": "application/octet-stream"}, content.encode())
    return _go_request(f"/files/{name}"), "GET", expected


# --- stages ------------------------------------------------------------------------------


def test_stage_bind(plain: Server) -> None:
    conn = StageConnection(plain)
    conn.close()


def test_stage_200(plain: Server) -> None:
    conn = StageConnection(plain)
    response = conn.run(_go_request("/"))
    _assert(response, 200, b"OK")
    assert response.status_line == b"HTTP/1.1 200 OK"
    # anti-cheat: a stock server gives itself away with these
    assert not response.has("date") and not response.has("server"), response.raw
    conn.close()


def test_stage_404(plain: Server) -> None:
    conn = StageConnection(plain)
    response = conn.run(_go_request(f"/{_path_word()}"))
    _assert(response, 404, b"Not Found")
    conn.close()


def test_stage_echo(plain: Server) -> None:
    _echo_case(plain)


def test_stage_user_agent(plain: Server) -> None:
    agent = f"{_word()}/{_word()}-{_word()}"
    conn = StageConnection(plain)
    response = conn.run(_go_request("/user-agent", [("User-Agent", agent)]))
    _assert(
        response,
        200,
        b"OK",
        {"Content-Type": "text/plain", "Content-Length": str(len(agent))},
        agent.encode(),
    )
    conn.close()


def test_stage_concurrent_connections(plain: Server) -> None:
    for _ in range(2):
        count = _rng.randint(3, 5)
        conns = [StageConnection(plain) for _ in range(count)]
        # Served in reverse order, so that a server handling one connection at a time fails.
        for conn in reversed(conns):
            _assert(conn.run(_go_request("/")), 200, b"OK")
            conn.close()


def test_stage_get_file(with_directory: Server) -> None:
    name = f"{_word()}_{_word()}_{_rng.randint(1, 1000)}"
    content = " ".join(_word() for _ in range(4))
    (with_directory.directory / name).write_text(content)
    conn = StageConnection(with_directory)
    response = conn.run(_go_request(f"/files/{name}"))
    _assert(
        response,
        200,
        b"OK",
        {"Content-Type": "application/octet-stream", "Content-Length": str(len(content))},
        content.encode(),
    )
    conn.close()
    conn = StageConnection(with_directory)
    _assert(
        conn.run(_go_request(f"/files/non-existent_{_word()}_{_rng.randint(1, 1000)}")), 404, b"Not Found"
    )
    conn.close()


def test_stage_post_file(with_directory: Server) -> None:
    name = f"{_word()}_{_word()}_{_rng.randint(1, 1000)}"
    content = " ".join(_word() for _ in range(4)).encode()
    conn = StageConnection(with_directory)
    request = _go_request(
        f"/files/{name}", [("Content-Type", "application/octet-stream")], method="POST", body=content
    )
    _assert(conn.run(request, "POST"), 201, b"Created")
    conn.close()
    path: Path = with_directory.directory / name
    assert path.read_bytes() == content


def test_stage_compression_headers(plain: Server) -> None:
    text = _word()
    conn = StageConnection(plain)
    response = conn.run(_go_request(f"/echo/{text}", [("Accept-Encoding", "gzip")]))
    _assert(response, 200, b"OK", {"Content-Type": "text/plain", "Content-Encoding": "gzip"})
    conn.close()
    conn = StageConnection(plain)
    response = conn.run(_go_request(f"/echo/{text}", [("Accept-Encoding", "invalid-encoding")]))
    _assert(response, 200, b"OK", {"Content-Type": "text/plain"}, text.encode())
    assert not response.has("content-encoding")
    conn.close()


def test_stage_multiple_compression_schemes(plain: Server) -> None:
    text = _word()
    conn = StageConnection(plain)
    response = conn.run(
        _go_request(f"/echo/{text}", [("Accept-Encoding", "invalid-encoding-1, gzip, invalid-encoding-2")])
    )
    _assert(response, 200, b"OK", {"Content-Type": "text/plain", "Content-Encoding": "gzip"})
    conn.close()
    conn = StageConnection(plain)
    response = conn.run(
        _go_request(f"/echo/{text}", [("Accept-Encoding", "invalid-encoding-1, invalid-encoding-2")])
    )
    _assert(response, 200, b"OK", {"Content-Type": "text/plain"}, text.encode())
    assert not response.has("content-encoding")
    conn.close()


def test_stage_gzip_body(plain: Server) -> None:
    text = _word()
    conn = StageConnection(plain)
    response = conn.run(_go_request(f"/echo/{text}", [("Accept-Encoding", "gzip")]))
    _assert(response, 200, b"OK", {"Content-Type": "text/plain", "Content-Encoding": "gzip"})
    assert response.header("content-length") == str(len(response.body)).encode()
    assert gzip.decompress(response.body) == text.encode()
    conn.close()


def test_stage_persistent_connection(with_directory: Server) -> None:
    cases = [_random_case(with_directory, i) for i in range(_rng.randint(3, 5))]
    conn = StageConnection(with_directory)
    for _ in range(2):  # the same requests twice on one connection
        for request, method, (status, reason, headers, body) in cases:
            _assert(conn.run(request, method), status, reason, headers, body)
    assert conn.is_open()
    conn.close()


def test_stage_concurrent_persistent_connections(with_directory: Server) -> None:
    count = _rng.randint(2, 3)
    cases = [_random_case(with_directory, i) for i in range(count)]
    conns = [StageConnection(with_directory) for _ in range(count)]
    for i in reversed(range(count)):
        request, method, (status, reason, headers, body) = cases[i]
        _assert(conns[i].run(request, method), status, reason, headers, body)
    for i in range(count):
        request, method, (status, reason, headers, body) = cases[i]
        _assert(conns[i].run(request, method), status, reason, headers, body)
    for conn in conns:
        conn.close()


def test_stage_connection_closure(with_directory: Server) -> None:
    cases = [_random_case(with_directory, i) for i in (1, 2)]
    conns = [StageConnection(with_directory) for _ in range(2)]
    for conn in conns:
        for index, (request, method, (status, reason, headers, body)) in enumerate(cases):
            if index == 1:
                request = request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
                headers = {**headers, "Connection": "close"}
            _assert(conn.run(request, method), status, reason, headers, body)
        assert not conn.is_open(), "connection is still open after Connection: close"
        conn.close()
