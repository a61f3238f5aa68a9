"""The WSGI adapter called directly, as the core would: environ, input, start_response, the body."""

from __future__ import annotations

import io
import logging
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import pytest

from handlers.wsgi import FileWrapper, WSGIApp
from protocol import FileBody, Request, Response

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def make_request(
    target: bytes = b"/",
    method: bytes = b"GET",
    headers: Iterable[tuple[bytes, bytes]] = ((b"host", b"example.com"),),
    **fields: Any,
) -> Request:
    return Request(method, target, list(headers), **fields)


def call(
    app: WsgiApp, request: Request | None = None, body: Iterable[bytes] = (), **options: Any
) -> Response:
    """The Response, as the core gets it: start(), receive() per chunk, respond()."""
    exchange = WSGIApp(app, **options)(request or make_request())
    assert exchange.may_block
    assert exchange.start() is None
    for chunk in body:
        exchange.receive(chunk)
    return exchange.respond()


def body_of(response: Response) -> bytes:
    """The whole body as the core would send it (pulling a Stream to its end, then closing it)."""
    body = response.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, FileBody):
        try:
            body.file.seek(body.offset)
            return body.file.read(body.length)
        finally:
            body.file.close()
    pieces = []
    try:
        while (piece := body.next_piece()) is not None:
            pieces.append(piece)
    finally:
        body.close()
    return b"".join(pieces)


def capture_environ(request: Request | None = None, body: Iterable[bytes] = (), **options: Any) -> Environ:
    seen: list[Environ] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        environ["test.body"] = environ["wsgi.input"].read()
        seen.append(dict(environ))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    response = call(app, request, body, **options)
    assert response.status == 200, response
    return seen[0]


def hello(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


# --- environ ---------------------------------------------------------------------------


def test_environ_for_a_tricky_target() -> None:
    environ = capture_environ(make_request(b"/caf%C3%A9/a%2Fb?x=%20&y=%C3%A9"))
    assert type(environ) is dict
    assert environ["PATH_INFO"] == "/caf\xc3\xa9/a/b"  # percent-decoded bytes read as latin-1
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/a/b"
    assert environ["QUERY_STRING"] == "x=%20&y=%C3%A9"  # raw
    assert environ["SCRIPT_NAME"] == ""
    assert environ["REQUEST_METHOD"] == "GET"
    for key, value in environ.items():
        if "." not in key:
            assert type(value) is str, key


def test_environ_matches_wsgirefs_for_the_same_request() -> None:
    """The CGI keys wsgiref's own server sets, with the same values (SERVER_NAME aside: it uses
    the host's name, we use Host as gunicorn does)."""
    from wsgiref.simple_server import WSGIRequestHandler

    raw = (
        b"POST /a%20b/c?q=1%202 HTTP/1.1\r\nHost: example.com:8080\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 3\r\nX-Thing: one\r\nX-Thing: two\r\nUser-Agent: t\r\n\r\nabc"
    )

    class Handler(WSGIRequestHandler):
        def __init__(self) -> None:
            self.rfile = io.BytesIO(raw)
            self.raw_requestline = self.rfile.readline()
            self.parse_request()
            self.client_address = ("10.0.0.1", 5555)
            self.server = type("S", (), {"base_environ": {}})()

    theirs = Handler().get_environ()
    request = make_request(
        b"/a%20b/c?q=1%202",
        b"POST",
        [
            (b"host", b"example.com:8080"),
            (b"content-type", b"text/plain"),
            (b"content-length", b"3"),
            (b"x-thing", b"one"),
            (b"x-thing", b"two"),
            (b"user-agent", b"t"),
        ],
        client=("10.0.0.1", 5555),
        server=("127.0.0.1", 8080),
    )
    ours = capture_environ(request, [b"abc"])
    for key in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH"):
        assert ours[key] == theirs[key], key
    for key in ("SERVER_PROTOCOL", "REMOTE_ADDR", "HTTP_HOST", "HTTP_USER_AGENT"):
        assert ours[key] == theirs[key], key
    assert ours["HTTP_X_THING"] == "one, two"  # wsgiref joins with "," alone
    assert ours["SERVER_PORT"] == "8080"
    assert ours["test.body"] == b"abc"


def test_root_path_is_script_name_and_stripped_from_path_info() -> None:
    def path(target: bytes) -> tuple[str, str]:
        environ = capture_environ(make_request(target), root_path="/api/")
        return environ["SCRIPT_NAME"], environ["PATH_INFO"]

    assert path(b"/api/users?x=1") == ("/api", "/users")
    assert path(b"/api") == ("/api", "")
    assert path(b"/api/") == ("/api", "/")
    assert path(b"/apix/y") == ("/api", "/apix/y")  # not a segment boundary
    assert path(b"/users") == ("/api", "/users")  # a proxy already stripped it


def test_non_ascii_root_path_is_latin1_like_path_info() -> None:
    environ = capture_environ(make_request(b"/caf%C3%A9/x"), root_path="/café")
    assert environ["SCRIPT_NAME"] == "/caf\xc3\xa9"
    assert environ["PATH_INFO"] == "/x"


def test_headers_in_environ() -> None:
    request = make_request(
        b"/",
        b"POST",
        [
            (b"host", b"example.com"),
            (b"content-type", b"application/json"),
            (b"content-length", b"2"),
            (b"accept", b"a"),
            (b"accept", b"b"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"x_user", b"admin"),  # dropped: would read as X-User
            (b"x-user", b"me"),
            (b"x-latin", b"caf\xe9"),
        ],
        client=("192.0.2.7", 40000),
    )
    environ = capture_environ(request, [b"{}"])
    assert environ["CONTENT_TYPE"] == "application/json"
    assert environ["CONTENT_LENGTH"] == "2"
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_ACCEPT"] == "a, b"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["HTTP_X_USER"] == "me"
    assert environ["HTTP_X_LATIN"] == "caf\xe9"
    assert environ["HTTP_HOST"] == "example.com"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.com", "80")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("192.0.2.7", "40000")


@pytest.mark.parametrize(
    ("host", "scheme", "name", "port"),
    [
        (b"example.com:8443", "https", "example.com", "8443"),
        (b"example.com", "https", "example.com", "443"),
        (b"[::1]:8080", "http", "[::1]", "8080"),
        (b"[::1]", "http", "[::1]", "80"),
    ],
)
def test_server_name_and_port_from_host(host: bytes, scheme: str, name: str, port: str) -> None:
    environ = capture_environ(make_request(b"/", headers=[(b"host", host)], scheme=scheme))
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"], environ["wsgi.url_scheme"]) == (
        name,
        port,
        scheme,
    )


def test_server_name_without_host_comes_from_the_socket() -> None:
    request = make_request(b"/", headers=[], http_version=b"1.0", server=("127.0.0.1", 4221))
    environ = capture_environ(request)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "4221")
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert environ["REMOTE_ADDR"] == "" and "REMOTE_PORT" not in environ  # unknown client (gunicorn's)
    unix = capture_environ(make_request(b"/", headers=[], http_version=b"1.0", server=("/tmp/s", None)))
    assert (unix["SERVER_NAME"], unix["SERVER_PORT"]) == ("localhost", "80")


def test_wsgi_keys() -> None:
    environ = capture_environ(make_request(scheme="https"), multiprocess=True)
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["wsgi.errors"] is sys.stderr
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    assert environ["wsgi.file_wrapper"] is FileWrapper
    assert capture_environ()["wsgi.multiprocess"] is False


def test_asterisk_target() -> None:
    assert capture_environ(make_request(b"*", b"OPTIONS"))["PATH_INFO"] == "*"


def test_chunked_body_gets_its_length() -> None:
    request = make_request(b"/", b"POST", [(b"host", b"h"), (b"transfer-encoding", b"chunked")])
    environ = capture_environ(request, [b"abc", b"defg"])
    assert environ["CONTENT_LENGTH"] == "7"
    assert "HTTP_TRANSFER_ENCODING" not in environ
    assert environ["test.body"] == b"abcdefg"


# --- wsgi.input ------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1024 * 1024, 10])
def test_input_reads(threshold: int) -> None:
    """read(n), read(), readline(size), readlines(), iteration; in memory or spooled to disk."""
    results: dict[str, Any] = {}

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        results["spooled"] = not isinstance(stream, io.BytesIO)
        results["read3"] = stream.read(3)
        results["line"] = stream.readline()
        results["line2"] = stream.readline(2)
        results["rest_lines"] = stream.readlines()
        results["eof"] = (stream.read(), stream.read(5), stream.readline())
        start_response("200 OK", [])
        return []

    body = [b"abcdef\n", b"ghi\njkl\n", b"mno"]
    request = make_request(b"/", b"POST", [(b"host", b"h"), (b"content-length", b"18")])
    call(app, request, body, spool_threshold=threshold)
    assert results["spooled"] is (threshold == 10)
    assert results["read3"] == b"abc"
    assert results["line"] == b"def\n"
    assert results["line2"] == b"gh"
    assert results["rest_lines"] == [b"i\n", b"jkl\n", b"mno"]
    assert results["eof"] == (b"", b"", b"")

    def iterate(environ: Environ, start_response: StartResponse) -> list[bytes]:
        results["iterated"] = list(environ["wsgi.input"])
        start_response("200 OK", [])
        return []

    call(iterate, request, body, spool_threshold=threshold)
    assert results["iterated"] == [b"abcdef\n", b"ghi\n", b"jkl\n", b"mno"]


def test_spooled_input_is_closed_after_the_response_and_on_abort() -> None:
    streams: list[Any] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        streams.append(environ["wsgi.input"])
        start_response("200 OK", [])
        return [b"x"]

    call(app, make_request(b"/", b"POST"), [b"a" * 100], spool_threshold=10)
    assert streams[0].closed
    exchange = WSGIApp(app, spool_threshold=10)(make_request(b"/", b"POST"))
    exchange.start()
    exchange.receive(b"b" * 100)
    exchange.abort()  # the client left mid-body: the spool goes, the app never runs
    assert len(streams) == 1


def test_empty_input() -> None:
    assert capture_environ()["test.body"] == b""


# --- the app's side: start_response, write, the iterable ---------------------------------


def test_whole_body_with_matching_content_length_is_bytes() -> None:
    response = call(hello)
    assert response.status == 200
    assert response.body == b"hello"
    assert response.headers == ((b"Content-Type", b"text/plain"),)  # the core adds its own length


def test_list_without_content_length() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("201 Created", [("X-A", "1")])
        return [b"a", b"", b"bc"]

    response = call(app)
    assert (response.status, response.headers, response.body) == (201, ((b"X-A", b"1"),), b"abc")


def test_generator_is_streamed_after_its_first_piece() -> None:
    produced: list[int] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        for index in range(3):
            produced.append(index)
            yield b"" if index == 0 else b"piece%d" % index

    response = call(app)
    assert produced == [0, 1]  # pulled up to the first non-empty piece only
    assert not isinstance(response.body, (bytes, FileBody))
    assert body_of(response) == b"piece1piece2"


def test_first_piece_filling_content_length_is_the_whole_body() -> None:
    closed: list[bool] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        try:
            start_response("200 OK", [("Content-Length", "4")])
            yield b"abcdef"
            raise AssertionError("pulled past the Content-Length")
        finally:
            closed.append(True)

    response = call(app)
    assert response.body == b"abcd"  # never more than declared
    assert closed == [True]


def test_content_length_that_does_not_match_frames_a_stream() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "10")])
        return [b"short"]

    response = call(app)
    assert (b"Content-Length", b"10") in response.headers  # the core enforces it: a cut
    assert not isinstance(response.body, bytes)
    assert body_of(response) == b"short"


def test_head_keeps_the_apps_content_length() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "1234")])
        return []  # werkzeug answers HEAD with an empty body and the GET's length

    response = call(app, make_request(b"/", b"HEAD"))
    assert (b"Content-Length", b"1234") in response.headers


def test_lazy_start_response_inside_the_generator() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("202 Accepted", [])
        yield b"late"

    assert body_of(call(app)) == b"late"


def test_exc_info_replaces_headers_not_yet_sent() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-Old", "1")])
        try:
            raise ValueError("oops")
        except ValueError:
            start_response("500 Internal Server Error", [("X-New", "1")], sys.exc_info())
        return [b"error page"]

    response = call(app)
    assert (response.status, response.headers, response.body) == (500, ((b"X-New", b"1"),), b"error page")


def test_exc_info_reraises_once_sent(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        try:
            raise ValueError("after the start")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        yield b"never"

    response = call(app)
    assert response.status == 200
    stream = response.body
    assert not isinstance(stream, (bytes, FileBody))
    assert stream.next_piece() == b"first"
    with pytest.raises(ValueError, match="after the start"):
        stream.next_piece()  # the core cuts the connection
    stream.close()


def test_start_response_twice_without_exc_info_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        start_response("201 Created", [])
        return []

    assert call(app).status == 500
    assert "second time" in caplog.text


@pytest.mark.parametrize(
    "name",
    ["Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "TE", "Trailer", "Proxy-Authenticate"],
)
def test_hop_by_hop_header_is_an_error(name: str, caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [(name, "x")])
        return [b"body"]

    response = call(app)
    assert response.status == 500
    assert "hop-by-hop" in caplog.text


def test_whitespace_around_header_values_is_stripped() -> None:
    """Django's WSGI handler sends `Set-Cookie` values with a leading space; RFC 9110 §5.5:
    whitespace around a field value is not part of it."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response(
            "200 OK", [("Set-Cookie", " a=b; Path=/"), ("X-Tab", "\tv\t"), ("Content-Length", " 4 ")]
        )
        return [b"body"]

    response = call(app)
    assert response.status == 200
    assert (b"Set-Cookie", b"a=b; Path=/") in response.headers
    assert (b"X-Tab", b"v") in response.headers


@pytest.mark.parametrize(
    "bad",
    [
        lambda sr: sr("200", []),
        lambda sr: sr("600 Beyond", []),  # RFC 9110 §15: 100 to 599
        lambda sr: sr("099 Below", []),
        lambda sr: sr("103 Early Hints", []),  # an interim response is no WSGI response
        lambda sr: sr("101 Switching Protocols", []),
        lambda sr: sr("\uff1200 OK", []),  # a fullwidth 2: str.isdigit() says yes
        lambda sr: sr("200 OK\r\nX-Evil: 1", []),  # RFC 9112 §4: reason-phrase
        lambda sr: sr("200 OK\x00", []),
        lambda sr: sr("200 \u03a9\u03ba", []),  # PEP 3333: latin-1
        lambda sr: sr(b"200 OK", []),
        lambda sr: sr("200 OK", [(b"X", b"y")]),
        lambda sr: sr("200 OK", [("X", "\u20ac")]),
        lambda sr: sr("200 OK", [("Content-Length", "abc")]),
    ],
)
def test_invalid_status_or_headers_are_a_500(bad: Callable[[StartResponse], object]) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        bad(start_response)
        return [b"x"]

    assert call(app).status == 500


def test_large_statuses_and_header_lists_are_not_kept_in_the_checked_caches() -> None:
    """The caches of checked statuses and header lists are bounded by count: an app whose
    every response carries a distinct megabyte header held a gigabyte in them."""
    from handlers import wsgi

    status, headers = "200 " + "k" * 100_000, [("X-Big", "a" * 100_000)]

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response(status, headers)
        return [b"x"]

    assert call(app).status == 200
    assert status not in wsgi._STATUSES and tuple(headers) not in wsgi._CONVERTED


def test_a_huge_invalid_header_is_logged_briefly(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-Big", b"a" * 1_000_000)])
        return [b"x"]

    with caplog.at_level(logging.ERROR, "httpserver.error"):
        assert call(app).status == 500
    [record] = caplog.records
    assert "native strings" in record.getMessage() and len(record.getMessage()) < 5000


def test_an_asgi_app_taken_for_wsgi_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """An ASGI app whose `__call__` returns a coroutine without being a coroutine function
    (a wrapper) is WSGI to `--interface auto`: the log says what to do, and the coroutine
    is closed (no 'never awaited' warning)."""

    async def asgi(scope: object, receive: object, send: object) -> None:
        pass

    coroutines: list[Any] = []

    def app(environ: Environ, start_response: StartResponse) -> Any:
        coroutines.append(asgi(environ, start_response, None))
        return coroutines[-1]

    assert call(app).status == 500
    assert "use --interface asgi" in caplog.text
    assert coroutines[0].cr_frame is None  # closed


def test_pieces_must_be_bytes() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[Any]:
        start_response("200 OK", [])
        return ["text"]

    assert call(app).status == 500


def test_no_start_response_is_a_500() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        return [b"body"]

    def empty(environ: Environ, start_response: StartResponse) -> list[bytes]:
        return []

    assert call(app).status == 500
    assert call(empty).status == 500


@pytest.mark.parametrize("size", [10, 3 * 1024 * 1024])
def test_write_before_returning(size: int) -> None:
    """Bytes given to write() come first, then the iterable; large ones are spooled to disk."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"w" * size)
        write(b"")
        write(b"+")
        return [b"iterable"]

    response = call(app)
    assert body_of(response) == b"w" * size + b"+iterable"


def test_write_then_exc_info_reraises() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"partial")
        try:
            raise KeyError("late")
        except KeyError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return []

    assert call(app).status == 500  # the re-raised error, before anything went out


def test_write_while_the_iterable_is_pulled() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        write = start_response("200 OK", [])
        yield b"a"
        write(b"b")
        yield b"c"

    assert body_of(call(app)) == b"abc"


class Closing:
    """An iterable with close(), recording what happened."""

    def __init__(self, pieces: list[bytes], fail_at: int | None = None) -> None:
        self.pieces = pieces
        self.fail_at = fail_at
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for index, piece in enumerate(self.pieces):
            if index == self.fail_at:
                raise RuntimeError(f"failed at piece {index}")
            yield piece

    def close(self) -> None:
        self.closed += 1


def closing_app(iterable: Closing, headers: list[tuple[str, str]] | None = None) -> WsgiApp:
    def app(environ: Environ, start_response: StartResponse) -> Closing:
        start_response("200 OK", headers or [])
        return iterable

    return app


def test_close_after_success() -> None:
    iterable = Closing([b"a", b"b"])
    assert body_of(call(closing_app(iterable))) == b"ab"
    assert iterable.closed == 1
    whole = Closing([b"abc"])
    assert call(closing_app(whole, [("Content-Length", "3")])).body == b"abc"
    assert whole.closed == 1


def test_close_after_an_error_before_the_start(caplog: pytest.LogCaptureFixture) -> None:
    iterable = Closing([b"a"], fail_at=0)
    assert call(closing_app(iterable)).status == 500
    assert iterable.closed == 1


def test_close_after_an_error_after_the_start() -> None:
    iterable = Closing([b"a", b"b"], fail_at=1)
    response = call(closing_app(iterable))
    stream = response.body
    assert not isinstance(stream, (bytes, FileBody))
    assert stream.next_piece() == b"a"
    with pytest.raises(RuntimeError):
        stream.next_piece()
    stream.close()
    assert iterable.closed == 1


def test_close_when_the_client_leaves() -> None:
    iterable = Closing([b"a", b"b", b"c"])
    stream = call(closing_app(iterable)).body
    assert not isinstance(stream, (bytes, FileBody))
    assert stream.next_piece() == b"a"
    stream.close()  # the core closes the Stream when the client is gone
    assert iterable.closed == 1


def test_error_before_the_start_is_a_500_logged_without_credentials(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        raise ZeroDivisionError("app bug")

    request = make_request(
        b"/private/path?token=SECRET-QUERY",
        headers=[
            (b"host", b"h"),
            (b"authorization", b"Bearer SECRET-TOKEN"),
            (b"cookie", b"s=SECRET-COOKIE"),
        ],
    )
    with caplog.at_level(logging.ERROR, logger="httpserver.error"):
        response = call(app, request)
    assert response.status == 500
    assert "ZeroDivisionError: app bug" in caplog.text  # the traceback
    assert "/private/path" in caplog.text
    assert "SECRET" not in caplog.text


def test_credentials_an_app_quotes_in_its_exception_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """The values themselves, not only `Name: value` forms: the token after the scheme, a
    cookie's value, as an app's own message may quote them."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        token = environ["HTTP_AUTHORIZATION"].split()[1]
        raise PermissionError(f"token {token} refused; cookie value {environ['HTTP_COOKIE'][2:]}")

    request = make_request(
        b"/x",
        headers=[(b"host", b"h"), (b"authorization", b"Bearer tok-12345"), (b"cookie", b"s=cookie-6789")],
    )
    with caplog.at_level(logging.ERROR, logger="httpserver.error"):
        response = call(app, request)
    assert response.status == 500
    assert "PermissionError: token <redacted> refused; cookie value <redacted>" in caplog.text
    assert "tok-12345" not in caplog.text and "cookie-6789" not in caplog.text


# --- wsgi.file_wrapper -----------------------------------------------------------------


def file_app(path: Path, skip: int = 0, length: int | None = None) -> WsgiApp:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        file = open(path, "rb")  # noqa: SIM115 (the server closes it)
        file.seek(skip)
        headers = [("Content-Type", "application/octet-stream")]
        if length is not None:
            headers.append(("Content-Length", str(length)))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](file, 4096)  # type: ignore[no-any-return]

    return app


def test_file_wrapper_is_a_file_body_from_the_current_position(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 40)
    response = call(file_app(path, skip=100))
    assert isinstance(response.body, FileBody)
    assert (response.body.offset, response.body.length) == (100, 10240 - 100)
    assert body_of(response) == path.read_bytes()[100:]


def test_file_wrapper_bounded_by_content_length(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 1000)
    response = call(file_app(path, skip=10, length=500))
    assert isinstance(response.body, FileBody)
    assert (response.body.offset, response.body.length) == (10, 500)
    assert all(name.lower() != b"content-length" for name, _ in response.headers)
    body_of(response)


def test_file_wrapper_longer_content_length_than_the_file_is_a_stream(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 100)
    response = call(file_app(path, length=200))
    assert not isinstance(response.body, (bytes, FileBody))
    assert (b"Content-Length", b"200") in response.headers
    assert body_of(response) == b"x" * 100  # the core cuts the connection: short


def test_file_wrapper_without_a_descriptor_is_iterated() -> None:
    closed: list[bool] = []

    class Buffer(io.BytesIO):
        def close(self) -> None:
            closed.append(True)
            super().close()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](Buffer(b"y" * 10000), 4096)  # type: ignore[no-any-return]

    response = call(app)
    assert not isinstance(response.body, FileBody)
    assert body_of(response) == b"y" * 10000
    assert closed == [True]


# --- the stdlib's validator ------------------------------------------------------------


def test_validator_raises_nothing() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.errors"].write("")
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"validated"

    def written(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"w")
        return [b"x"]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for target in (b"/", b"/caf%C3%A9/a%2Fb?x=%20"):
            request = make_request(target, b"POST", [(b"host", b"h:1"), (b"content-length", b"4")])
            response = call(validator(app), request, [b"body"])
            assert (response.status, body_of(response)) == (200, b"validated")
        assert body_of(call(validator(written))) == b"wx"


def test_the_iterable_runs_in_one_context_whatever_thread_pulls_it() -> None:
    """Flask's stream_with_context sets a context variable before its first piece and resets it
    after its last: the pieces come in later steps, maybe other threads, each in its own context."""
    import contextvars
    import threading

    var: contextvars.ContextVar[str] = contextvars.ContextVar("request")

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        token = var.set("mine")
        try:
            for index in range(3):
                yield f"{var.get()}{index}".encode()
        finally:
            var.reset(token)  # ValueError if resumed in another Context

    response = contextvars.copy_context().run(call, app)
    stream = response.body
    assert not isinstance(stream, (bytes, FileBody))
    pieces: list[bytes | Exception | None] = []

    def step() -> None:
        try:
            pieces.append(contextvars.copy_context().run(stream.next_piece))
        except Exception as exc:
            pieces.append(exc)

    for _ in range(4):
        thread = threading.Thread(target=step)
        thread.start()
        thread.join()
    thread = threading.Thread(target=stream.close)
    thread.start()
    thread.join()
    assert pieces == [b"mine0", b"mine1", b"mine2", None]
