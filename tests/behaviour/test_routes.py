"""Issue 2, black-box: routes byte for byte, content coding, connections, malformed input."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import time

import pytest

from .client import RawClient, request
from .conftest import SECRET, Server, StartServer, unique

# --- routes -----------------------------------------------------------------------------


def test_root_is_exact_with_no_date_or_server(server: Server) -> None:
    response = server.get("/")
    assert response.status_line == b"HTTP/1.1 200 OK"
    assert response.header("content-length") == b"0"
    assert response.body == b""
    assert not response.has("date") and not response.has("server"), response.raw
    assert not response.has("content-encoding")


def test_echo_is_exact(server: Server) -> None:
    response = server.get("/echo/abc")
    assert response.status_line == b"HTTP/1.1 200 OK"
    assert response.header("content-type") == b"text/plain"
    assert response.header("content-length") == b"3"
    assert response.body == b"abc"
    assert not response.has("date") and not response.has("server")


def test_echo_empty_and_long(server: Server) -> None:
    empty = server.get("/echo/")
    assert (empty.status, empty.header("content-length"), empty.body) == (200, b"0", b"")
    text = "x" * 4000
    long = server.get(f"/echo/{text}")
    assert (long.status, long.header("content-length"), long.body) == (200, b"4000", text.encode())


def test_user_agent_is_exact(server: Server) -> None:
    agent = "foo/bar-1.2 (behaviour; suite)"
    response = server.fetch(request("GET", "/user-agent", [("User-Agent", agent)]))
    assert response.status_line == b"HTTP/1.1 200 OK"
    assert response.header("content-type") == b"text/plain"
    assert response.header("content-length") == str(len(agent)).encode()
    assert response.body == agent.encode()


def test_get_file_is_exact(server: Server) -> None:
    name = unique()
    content = bytes(range(256)) * 3 + b"\r\n\r\n\x00end"
    (server.directory / name).write_bytes(content)
    response = server.get(f"/files/{name}")
    assert response.status_line == b"HTTP/1.1 200 OK"
    assert response.header("content-type") == b"application/octet-stream"
    assert response.header("content-length") == str(len(content)).encode()
    assert response.body == content


def test_get_large_file(server: Server) -> None:
    name = unique()
    content = bytes(range(251)) * (3 * 1024 * 1024 // 251)
    (server.directory / name).write_bytes(content)
    response = server.get(f"/files/{name}")
    assert response.status == 200
    assert response.header("content-length") == str(len(content)).encode()
    assert response.body == content


def test_missing_file_is_404(server: Server) -> None:
    response = server.get(f"/files/{unique()}")
    assert response.status_line == b"HTTP/1.1 404 Not Found"


def test_post_file_creates_it(server: Server) -> None:
    name = unique()
    content = b"\x00\x01binary\r\n\r\nbody" * 100
    response = server.fetch(
        request("POST", f"/files/{name}", [("Content-Type", "application/octet-stream")], content)
    )
    assert response.status_line == b"HTTP/1.1 201 Created"
    assert (server.directory / name).read_bytes() == content
    assert server.get(f"/files/{name}").body == content


def test_post_replaces_and_empty_body(server: Server) -> None:
    name = unique()
    (server.directory / name).write_bytes(b"old content")
    response = server.fetch(request("POST", f"/files/{name}", [("Content-Length", "0")]))
    assert response.status == 201
    assert (server.directory / name).read_bytes() == b""


def test_percent_encoded_file_names_round_trip(server: Server) -> None:
    name = unique("a%20b%C3%A9")
    assert server.fetch(request("POST", f"/files/{name}", body=b"encoded")).status == 201
    assert (
        server.directory / name.replace("%20", " ").replace("%C3%A9", "\u00e9")
    ).read_bytes() == b"encoded"
    assert server.get(f"/files/{name}").body == b"encoded"
    assert server.get(f"/files/{name}?download=1").body == b"encoded"


def test_a_percent_sign_in_a_file_name_is_decoded_once(server: Server) -> None:
    name = unique("a%25")  # the file `a%25-...`, sent as `a%2525-...`
    assert server.fetch(request("POST", f"/files/{name.replace('%', '%25')}", body=b"pct")).status == 201
    assert (server.directory / name).read_bytes() == b"pct"
    assert not (server.directory / name.replace("%25", "%")).exists()
    assert server.get(f"/files/{name.replace('%', '%25')}").body == b"pct"
    assert server.get(f"/files/{name}").status == 404  # that is `a%-...`


@pytest.mark.parametrize("target", ["/nope", "/echo", "/user-agent/x", "/files", "/index.html", "/ECHO/abc"])
def test_unknown_paths_are_404(server: Server, target: str) -> None:
    response = server.get(target)
    assert response.status_line == b"HTTP/1.1 404 Not Found"
    server.assert_serving()


@pytest.mark.parametrize(
    ("method", "target", "allowed"),
    [("POST", "/echo/abc", {b"GET"}), ("POST", "/user-agent", {b"GET"}), ("POST", "/", {b"GET"})],
)
def test_wrong_method_is_405_with_allow(
    server: Server, method: str, target: str, allowed: set[bytes]
) -> None:
    response = server.fetch(request(method, target, body=b"data"), method)
    assert response.status_line == b"HTTP/1.1 405 Method Not Allowed"
    allow = response.header("allow")
    assert allow is not None
    assert {token.strip() for token in allow.split(b",")} >= allowed
    server.assert_serving()


@pytest.mark.parametrize(
    ("method", "target"), [("DELETE", "/user-agent"), ("DELETE", "/files/x"), ("PATCH", "/")]
)
def test_a_standard_method_no_route_has_is_405_with_allow(server: Server, method: str, target: str) -> None:
    response = server.fetch(request(method, target, body=b"data" if method != "DELETE" else b""), method)
    assert response.status == 405, response.raw
    assert response.has("allow")
    assert not (server.directory / "x").exists()
    server.assert_serving()


def test_no_directory_files_are_404(start_server: StartServer) -> None:
    server = start_server(directory=False)
    response = server.get("/files/anything")
    assert response.status_line == b"HTTP/1.1 404 Not Found"
    post = server.fetch(request("POST", "/files/anything", body=b"data"))
    assert post.status == 404
    assert not (server.directory / "anything").exists()
    server.assert_serving()


def test_date_and_server_headers_on_request(start_server: StartServer) -> None:
    server = start_server("--date-header", "--server-header", "behaviour/1")
    response = server.get("/")
    assert response.header("server") == b"behaviour/1"
    date = response.header("date")
    assert date is not None and date.endswith(b" GMT"), date


# --- traversal ---------------------------------------------------------------------------

TRAVERSALS = [
    "/files/../secret.txt",
    "/files/..%2fsecret.txt",
    "/files/%2e%2e/secret.txt",
    "/files/%2e%2e%2fsecret.txt",
    "/files/%2E%2E%2Fsecret.txt",
    "/files/..%5csecret.txt",
    "/files/..\\secret.txt",
    "/files/%252e%252e%252fsecret.txt",
    "/files/..%252fsecret.txt",
    "/files//etc/passwd",
    "/files/%2fetc%2fpasswd",
    "/files/a%00b",
    "/files/secret.txt%00",
    "/files/.",
    "/files/%2e%2e",
    "/files/sub/../../secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_get_is_refused(server: Server, target: str) -> None:
    response = server.get(target)
    assert 400 <= response.status < 500, response.raw
    assert SECRET not in response.body and b"root:" not in response.body
    server.assert_serving()


POST_TRAVERSALS = [
    "/files/../planted",
    "/files/..%2fplanted",
    "/files/%2e%2e/planted",
    "/files/%2e%2e%2fplanted",
    "/files/..%5cplanted",
    "/files/..\\planted",
    "/files/sub/../../planted",
    "/files/a%00planted",
    "/files/..",
    "/files/.",
    "/files/{outside}/planted",
    "/files/{outside_encoded}%2fplanted",
]


@pytest.mark.parametrize("target", POST_TRAVERSALS)
def test_traversal_post_is_refused(server: Server, target: str) -> None:
    outside = str(server.outside)
    target = target.format(outside=outside, outside_encoded=outside.replace("/", "%2f"))
    before, inside = server.outside_entries(), server.directory_entries()
    response = server.fetch(request("POST", target, body=b"evil"))
    assert 400 <= response.status < 500, response.raw
    assert server.outside_entries() == before
    assert server.directory_entries() == inside
    assert (server.outside / "secret.txt").read_bytes() == SECRET
    server.assert_serving()


def test_dot_segments_are_resolved_as_nginx_does(server: Server) -> None:
    name = unique()
    (server.directory / name).write_bytes(b"inside")
    assert server.get("/echo/../echo/./x").body == b"x"
    assert server.get(f"/files/sub/../{name}").body == b"inside"
    root = server.get("/files/..")  # the root: `/files/..` is `/`
    assert (root.status, root.body) == (200, b"")
    for target in ("/..", "/files/../../secret.txt", "/../outside/secret.txt"):
        response = server.get(target)
        assert response.status_line == b"HTTP/1.1 400 Bad Request", response.raw
        assert SECRET not in response.body
    server.assert_serving()


def test_double_encoding_stays_inside(server: Server) -> None:
    """One decoding of `%252e%252e%252f` gives `%2e%2e%2f`: a literal name, never a way out."""
    before = server.outside_entries()
    response = server.fetch(request("POST", "/files/%252e%252e%252fplanted", body=b"literal"))
    assert response.status == 201, response.raw
    assert server.outside_entries() == before
    assert (server.directory / "%2e%2e%2fplanted").read_bytes() == b"literal"
    assert server.get("/files/%252e%252e%252fplanted").body == b"literal"
    server.assert_serving()


def test_symlink_out_is_refused(server: Server) -> None:
    name = unique("link")
    (server.directory / name).symlink_to(server.outside / "secret.txt")
    response = server.get(f"/files/{name}")
    assert 400 <= response.status < 500, response.raw
    assert SECRET not in response.body
    post = server.fetch(request("POST", f"/files/{name}", body=b"overwritten"))
    assert 400 <= post.status < 500, post.raw
    assert (server.outside / "secret.txt").read_bytes() == SECRET
    server.assert_serving()


# --- content coding ----------------------------------------------------------------------

GZIP_ACCEPTED = [
    "gzip",
    "GZIP",
    "  gzip  ",
    "deflate, gzip, br",
    "invalid-1, gzip, invalid-2",
    "br;q=1.0, gzip;q=0.5",
    "gzip;q=0.001",
    "gzip; q=1",
    "*",
    "*;q=0.5",
]
GZIP_REFUSED = [
    "invalid-encoding",
    "invalid-1, invalid-2",
    "gzip;q=0",
    "gzip; q=0.000",
    "br, deflate",
    "identity",
    "",
    "*, gzip;q=0",
    "x-gzip-but-not-really",
]


@pytest.mark.parametrize("accept", GZIP_ACCEPTED)
def test_gzip_when_acceptable(server: Server, accept: str) -> None:
    text = "hello-" + "compress-me-" * 20
    response = server.get(f"/echo/{text}", [("Accept-Encoding", accept)])
    assert response.status_line == b"HTTP/1.1 200 OK"
    assert response.header("content-encoding") == b"gzip"
    assert response.header("content-type") == b"text/plain"
    assert response.header("content-length") == str(len(response.body)).encode()
    assert gzip.decompress(response.body) == text.encode()
    vary = response.header("vary")
    assert vary is not None and b"accept-encoding" in vary.lower()


@pytest.mark.parametrize("accept", GZIP_REFUSED)
def test_no_gzip_when_not_acceptable(server: Server, accept: str) -> None:
    response = server.get("/echo/plain-text", [("Accept-Encoding", accept)])
    assert response.status_line == b"HTTP/1.1 200 OK"
    assert not response.has("content-encoding"), response.raw
    assert response.header("content-length") == b"10"
    assert response.body == b"plain-text"
    vary = response.header("vary")
    assert vary is not None and b"accept-encoding" in vary.lower()


def test_no_accept_encoding_means_identity(server: Server) -> None:
    response = server.get("/echo/abc")
    assert not response.has("content-encoding")
    assert response.body == b"abc"


def test_empty_body_is_not_gzipped(server: Server) -> None:
    for target in ("/echo/", "/"):
        response = server.get(target, [("Accept-Encoding", "gzip")])
        assert response.status == 200
        assert not response.has("content-encoding"), response.raw
        assert response.body == b""


def test_gzip_user_agent_and_file(server: Server) -> None:
    agent = "agent/" + "a" * 100
    response = server.fetch(
        request("GET", "/user-agent", [("User-Agent", agent), ("Accept-Encoding", "gzip")])
    )
    assert response.header("content-encoding") == b"gzip"
    assert gzip.decompress(response.body) == agent.encode()


# --- connections -------------------------------------------------------------------------


def test_many_concurrent_clients(server: Server) -> None:
    count = 60
    clients = [server.client() for _ in range(count)]  # all connected before any request
    results: list[bytes | BaseException] = [b""] * count

    def run(index: int) -> None:
        try:
            clients[index].send(request("GET", f"/echo/client-{index}"))
            results[index] = clients[index].read_response().body
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in reversed(range(count))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for client in clients:
        client.close()
    assert results == [f"client-{i}".encode() for i in range(count)]


def test_idle_connections_do_not_block_others(server: Server) -> None:
    idle = [server.client() for _ in range(20)]
    try:
        started = time.monotonic()
        server.assert_serving()
        assert time.monotonic() - started < 1.0
    finally:
        for client in idle:
            client.close()


def test_keep_alive_many_requests_http_client(server: Server) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        first = conn.sock
        for i in range(200):
            conn.request("GET", f"/echo/n{i}", headers={"User-Agent": "keepalive"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, f"n{i}".encode())
            assert conn.sock is first, "the server closed a keep-alive connection"
    finally:
        conn.close()


def test_keep_alive_raw_mixed(server: Server) -> None:
    name = unique()
    with server.client() as client:
        for i in range(30):
            client.send(request("POST", f"/files/{name}", body=b"v%d" % i))
            assert client.read_response().status == 201
            client.send(request("GET", f"/files/{name}"))
            assert client.read_response().body == b"v%d" % i
            client.send(request("GET", f"/nope{i}"))
            assert client.read_response().status == 404
        assert client.is_open()


def test_pipelining_answers_in_order(server: Server) -> None:
    name = unique()
    (server.directory / name).write_bytes(b"file-body")
    batch = [
        request("GET", "/echo/one"),
        request("GET", "/user-agent", [("User-Agent", "two")]),
        request("GET", "/missing"),
        request("POST", f"/files/{name}-new", body=b"four"),
        request("GET", f"/files/{name}"),
        request("HEAD", "/echo/six"),
        request("GET", "/echo/seven", [("Accept-Encoding", "gzip")]),
        request("GET", "/echo/eight"),
    ]
    with server.client() as client:
        client.send(b"".join(batch))
        got = [client.read_response("HEAD" if i == 5 else "GET") for i in range(len(batch))]
        assert [r.status for r in got] == [200, 200, 404, 201, 200, 200, 200, 200]
        assert [got[i].body for i in (0, 1, 4, 5, 7)] == [b"one", b"two", b"file-body", b"", b"eight"]
        assert gzip.decompress(got[6].body) == b"seven"
        assert client.is_open()
    assert (server.directory / f"{name}-new").read_bytes() == b"four"


def test_pipelining_byte_by_byte(server: Server) -> None:
    data = request("GET", "/echo/a") + request("GET", "/echo/b") + request("GET", "/echo/c")
    with server.client() as client:
        for i in range(len(data)):
            client.send(data[i : i + 1])
        assert [client.read_response().body for _ in range(3)] == [b"a", b"b", b"c"]


def test_empty_lines_before_requests_are_ignored(server: Server) -> None:
    """RFC 9112 §2.2: CRLFs before a request line, alone, split, or after a body."""
    name = unique()
    with server.client() as client:
        client.send(b"\r\n\r\n" + request("GET", "/echo/first"))
        assert client.read_response().body == b"first"
        client.send(b"\r")
        time.sleep(0.05)  # most likely a read of its own
        client.send(b"\n" + request("GET", "/echo/split"))
        assert client.read_response().body == b"split"
        client.send(request("POST", f"/files/{name}", body=b"data") + b"\r\n" + request("GET", "/echo/after"))
        assert client.read_response().status == 201
        assert client.read_response().body == b"after"
        assert client.is_open()
    assert (server.directory / name).read_bytes() == b"data"


def test_connection_close_closes_at_once(server: Server) -> None:
    with server.client() as client:
        client.send(request("GET", "/echo/first"))
        assert client.read_response().body == b"first"
        client.send(request("GET", "/echo/bye", [("Connection", "close")]))
        response = client.read_response()
        assert response.body == b"bye"
        assert response.header("connection") == b"close"
        client.assert_closed(within=0.1)


def test_nothing_after_connection_close_is_processed(server: Server) -> None:
    name = unique()
    with server.client() as client:
        client.send(
            request("GET", "/echo/last", [("Connection", "close")])
            + request("POST", f"/files/{name}", body=b"must not be stored")
        )
        response = client.read_response()
        assert response.header("connection") == b"close"
        client.assert_closed(within=1.0)
    time.sleep(0.1)
    assert not (server.directory / name).exists()


def test_http_1_0(server: Server) -> None:
    with server.client() as client:
        client.send(request("GET", "/echo/old", host=False, version="1.0"))
        response = client.read_response()
        assert response.status == 200
        assert response.status_line == b"HTTP/1.1 200 OK"
        assert response.body == b"old"
        client.assert_closed(within=0.5)


def test_http_1_0_post_file(server: Server) -> None:
    name = unique()
    response = server.fetch(request("POST", f"/files/{name}", body=b"ten-bytes!", host=False, version="1.0"))
    assert response.status == 201
    assert (server.directory / name).read_bytes() == b"ten-bytes!"


def test_head_has_get_headers_and_no_body(server: Server) -> None:
    get = server.get("/echo/head-me")
    with server.client() as client:
        client.send(request("HEAD", "/echo/head-me"))
        head = client.read_response("HEAD")
        assert head.status == 200
        assert head.header("content-length") == get.header("content-length") == b"7"
        assert head.header("content-type") == b"text/plain"
        assert head.raw.endswith(b"\r\n\r\n") and head.body == b""
        # If a body had been sent, it would now be parsed as the next response.
        client.send(request("GET", "/echo/after"))
        assert client.read_response().body == b"after"


def test_http_1_0_keep_alive_is_honoured_or_refused_cleanly(server: Server) -> None:
    with server.client() as client:
        client.send(request("GET", "/echo/ka", [("Connection", "keep-alive")], host=False, version="1.0"))
        response = client.read_response()
        assert response.body == b"ka"
        if (response.header("connection") or b"").lower() == b"keep-alive":
            client.send(request("GET", "/echo/again", host=False, version="1.0"))
            assert client.read_response().body == b"again"
        else:
            client.assert_closed(within=0.5)


def test_ipv6_loopback(start_server: StartServer) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no ::1 here")
    server = start_server("--host", "::1")
    assert server.host == "::1", server.stdout_line
    server.assert_serving()


def test_big_transfers_use_bounded_memory(start_server: StartServer) -> None:
    """A 48 MiB upload and download must not be held in memory whole."""
    server = start_server()
    size = 48 * 1024 * 1024
    server.assert_serving()
    before = server.status("VmHWM")
    piece = bytes(range(256)) * 4096  # 1 MiB
    try:
        with server.client(timeout=20) as client:
            client.send(request("POST", "/files/big", [("Content-Length", str(size))]))
            for _ in range(size // len(piece)):
                client.send(piece)
            assert client.read_response().status == 201
            assert (server.directory / "big").stat().st_size == size
            client.send(request("GET", "/files/big"))
            response = client.read_response()
            assert response.header("content-length") == str(size).encode()
            assert response.body == piece * (size // len(piece))
        growth = server.status("VmHWM") - before
        assert growth < 24 * 1024, f"peak RSS grew by {growth} KiB for a {size >> 20} MiB transfer"
    finally:
        (server.directory / "big").unlink(missing_ok=True)


def test_absolute_form_target(server: Server) -> None:
    response = server.fetch(b"GET http://localhost/echo/absolute HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert (response.status, response.body) == (200, b"absolute")
    assert '"GET http://localhost/echo/absolute HTTP/1.1" 200' in server.stderr()  # logged as sent
    assert server.fetch(b"GET HTTP://localhost?x HTTP/1.1\r\nHost: x\r\n\r\n").status == 200  # the root
    for target in (b"ftp://x/echo/a", b"http:///echo/a", b"http://u@x/echo/a", b"x:80", b"echo/a"):
        assert server.fetch(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target).status == 400, target


def test_options_asterisk(server: Server) -> None:
    response = server.fetch(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status in (200, 204), response.raw
    assert response.has("allow")
    server.assert_serving()


def test_refused_body_is_drained_and_connection_goes_on(server: Server) -> None:
    with server.client() as client:
        client.send(request("POST", "/echo/abc", body=b"x" * 50000) + request("GET", "/echo/next"))
        assert client.read_response().status == 405
        assert client.read_response().body == b"next"
        client.send(request("POST", f"/{unique()}", body=b"y" * 5000))
        assert client.read_response().status == 404
        client.send(request("GET", "/echo/still"))
        assert client.read_response().body == b"still"


def test_expect_100_with_body_sent_at_once(server: Server) -> None:
    name = unique()
    with server.client() as client:
        client.send(
            request("POST", f"/files/{name}", [("Expect", "100-continue")], b"eager")
            + request("GET", f"/files/{name}")
        )
        first = client.read_response()
        assert first.status == 201
        assert first.informational in ([], [100])
        assert client.read_response().body == b"eager"


def test_head_with_gzip_matches_get(server: Server) -> None:
    target, accept = "/echo/" + "h" * 200, [("Accept-Encoding", "gzip")]
    get = server.get(target, accept)
    with server.client() as client:
        client.send(request("HEAD", target, accept))
        head = client.read_response("HEAD")
    assert head.body == b""
    for name in ("content-length", "content-encoding", "content-type", "vary"):
        assert head.header(name) == get.header(name), name


def test_many_pipelined_requests_in_one_send(server: Server) -> None:
    with server.client() as client:
        client.send(b"".join(request("GET", f"/echo/p{i}") for i in range(500)))
        assert [client.read_response().body for _ in range(500)] == [f"p{i}".encode() for i in range(500)]


# --- malformed requests ------------------------------------------------------------------

MALFORMED = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n: empty name\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"POST /files/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\n Host: folded\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400),
]


@pytest.mark.parametrize(("data", "status"), MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_request_gets_hint_and_close(server: Server, data: bytes, status: int) -> None:
    with server.client() as client:
        client.send(data)
        response = client.read_response()
        assert response.status == status, response.raw
        assert response.header("connection") == b"close"
        client.assert_closed(within=1.0)
    server.assert_serving()


@pytest.mark.parametrize("version", ["2.0", "3.0"])
def test_http_2_request_line_is_505(server: Server, version: str) -> None:
    with server.client() as client:
        client.send(f"GET / HTTP/{version}\r\nHost: x\r\n\r\n".encode())
        response = client.read_response()
        assert response.status_line == b"HTTP/1.1 505 HTTP Version Not Supported", response.raw
        client.assert_closed(within=1.0)
    server.assert_serving()


def test_http2_preface_is_refused(server: Server) -> None:
    with server.client() as client:
        client.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        response = client.read_response()
        assert response.status in (400, 505), response.raw
        client.assert_closed(within=1.0)
    server.assert_serving()


def test_bad_connection_does_not_disturb_others(server: Server) -> None:
    with server.client() as good:
        good.send(request("GET", "/echo/before"))
        assert good.read_response().body == b"before"
        with server.client() as bad:
            bad.send(b"\x00\xff garbage \r\n\r\n")
            assert bad.read_response().status == 400
        good.send(request("GET", "/echo/after"))
        assert good.read_response().body == b"after"


def test_client_abort_mid_download_is_harmless(server: Server) -> None:
    name = unique()
    (server.directory / name).write_bytes(b"z" * (8 * 1024 * 1024))
    for _ in range(5):
        client = server.client()
        client.send(request("GET", f"/files/{name}"))
        client.sock.recv(1000)
        client.reset()
    server.assert_serving()


def test_raw_client_sees_exact_framing(server: Server) -> None:
    """Two echo responses on one connection are exactly head + body, nothing in between."""
    with RawClient(server.host, server.port) as client:
        client.send(request("GET", "/echo/xy") + request("GET", "/echo/z"))
        first, second = client.read_response(), client.read_response()
        assert first.raw.endswith(b"\r\n\r\nxy") and second.raw.endswith(b"\r\n\r\nz")
        assert first.raw.startswith(b"HTTP/1.1 200 OK\r\n") and second.raw.startswith(b"HTTP/1.1 200 OK\r\n")
