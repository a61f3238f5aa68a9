"""File bodies (streamed, and closed on every path), optional headers, the access log."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from protocol import Config, FileBody, Request, Response, Run, SendFile

from .helpers import App, Driver, get, parse, parse_one, post

PATTERN = bytes(range(256)) * 40
IMF_FIXDATE = rb"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT"


def test_a_file_is_streamed_in_pieces_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(PATTERN)
    app = App(file_path=path)
    d = Driver(app, Config(send_chunk_size=4000, access_log=False))
    d.feed(get(b"/file") + get(b"/echo/after"))
    first, second = parse(d.take(), 2)
    assert first.body == PATTERN and first.header(b"content-length") == b"%d" % len(PATTERN)
    assert second.body == b"after"
    pieces = [a for a in d.actions if isinstance(a, SendFile)]
    assert [p.count for p in pieces] == [4000, 4000, 2240]
    assert [p.offset for p in pieces] == [0, 4000, 8000]
    assert app.files[0].closed


def test_a_file_body_starts_at_its_offset() -> None:
    app = App(memfile_size=1000)
    d = Driver(app)
    d.feed(get(b"/memfile"))
    assert parse_one(d.take()).body == (bytes(range(256)) * 5)[3:1003]
    assert app.files[0].closed


def test_file_closed_when_the_connection_is_lost_mid_file() -> None:
    app = App(memfile_size=5000)
    d = Driver(app, Config(send_chunk_size=1000, access_log=False))
    d.conn.receive_data(get(b"/memfile"), 0.0)
    d.advance(stop_at=(SendFile,))
    assert not app.files[0].closed
    d.conn.connection_lost()
    d.advance()
    assert d.closed and app.files[0].closed


@pytest.mark.parametrize("status", [204, 304])
def test_file_closed_for_statuses_without_a_body(status: int) -> None:
    app = App()
    d = Driver(app)
    d.feed(get(b"/memfile/%d" % status))
    assert parse_one(d.take()).body == b""
    assert app.files[0].closed


def test_file_closed_when_its_response_is_invalid() -> None:
    app = App()
    d = Driver(app)
    d.feed(get(b"/memfile/bad"))
    assert parse_one(d.take()).status == 500
    assert app.files[0].closed


def test_file_closed_when_the_client_asked_to_close() -> None:
    app = App(memfile_size=3000)
    d = Driver(app, Config(send_chunk_size=1000, access_log=False))
    d.feed(get(b"/memfile", b"Connection: close"))
    response = parse_one(d.take())
    assert len(response.body) == 3000 and response.closes and d.closed
    assert app.files[0].closed


def test_an_empty_file_body_is_closed_and_nothing_is_sent_from_it() -> None:
    app = App(memfile_size=0)
    d = Driver(app)
    d.feed(get(b"/memfile"))
    assert parse_one(d.take()).header(b"content-length") == b"0"
    assert not any(isinstance(a, SendFile) for a in d.actions)
    assert app.files[0].closed


def test_a_blocking_exchange_may_answer_with_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"file content")
    opened = []

    class Upload:
        may_block = True

        def start(self) -> None:
            pass

        def receive(self, data: bytes) -> None:
            pass

        def respond(self) -> Response:
            opened.append(path.open("rb"))
            return Response(200, (), FileBody(opened[0], 5, 7))

        def abort(self) -> None:
            raise AssertionError("not aborted")

    d = Driver(lambda request: Upload())
    d.feed(post(b"/", b"abc"))
    assert parse_one(d.take()).body == b"content"
    assert opened[0].closed and any(isinstance(a, Run) for a in d.actions)


def test_pipelined_file_responses_keep_their_order() -> None:
    app = App(memfile_size=300)
    d = Driver(app, Config(send_chunk_size=128, access_log=False))
    d.feed(get(b"/echo/1") + get(b"/memfile") + get(b"/echo/2") + get(b"/memfile", method=b"HEAD"))
    responses = parse(d.take(), [b"GET", b"GET", b"GET", b"HEAD"])
    assert [r.body[:1] for r in responses] == [b"1", b"\x03", b"2", b""]
    assert all(f.closed for f in app.files)


# --- headers the core adds -----------------------------------------------------------


def test_no_date_and_no_server_header_by_default() -> None:
    d = Driver(App())
    d.feed(get(b"/") + get(b"/nothing") + b"BAD\r\n\r\n")
    for response in parse(d.take(), 3):
        assert response.header(b"date") is None and response.header(b"server") is None


def test_date_and_server_headers_when_configured() -> None:
    d = Driver(App(), Config(date_header=True, server_header=b"h11-server", access_log=False))
    d.feed(get(b"/") + b"BAD\r\n\r\n")
    for response in parse(d.take(), 2):
        assert response.header(b"server") == b"h11-server"
        date = response.header(b"date")
        assert date is not None and re.fullmatch(IMF_FIXDATE, date)


@pytest.mark.parametrize("kind", [tuple, list])
def test_an_app_s_own_date_and_server_are_not_repeated(kind: type) -> None:
    """Date and Server are singletons (RFC 9110 §6.6.1, §10.2.4): with --date-header or
    --server-header, an app that set its own keeps it, alone (as uvicorn does)."""
    own = kind([(b"Date", b"Thu, 01 Jan 1970 00:00:00 GMT"), (b"server", b"app/1")])

    def app(request: Request) -> Response:
        return Response(200, own, b"x")

    d = Driver(app, Config(date_header=True, server_header=b"h11-server", access_log=False))
    d.feed(get(b"/") + get(b"/"))
    for response in parse(d.take(), 2):
        assert [v for n, v in response.headers if n == b"date"] == [b"Thu, 01 Jan 1970 00:00:00 GMT"]
        assert [v for n, v in response.headers if n == b"server"] == [b"app/1"]


def test_handler_headers_are_kept_in_order() -> None:
    headers = ((b"X-A", b"1"), (b"Vary", b"Accept-Encoding"), (b"X-A", b"2"))

    def app(request: Request) -> Response:
        return Response(200, headers, b"x")

    d = Driver(app)
    d.feed(get(b"/"))
    assert parse_one(d.take()).headers[:3] == [(b"x-a", b"1"), (b"vary", b"Accept-Encoding"), (b"x-a", b"2")]


# --- the access log ------------------------------------------------------------------


def test_one_access_log_record_per_response(caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(App(), Config(access_log=True), client=("10.0.0.1", 5000))
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.now = 1.0
        d.feed(get(b"/echo/abc"))
        d.now = 2.0
        d.feed(get(b"/nothing", version=b"1.0"))
    lines = [r.getMessage() for r in caplog.records if r.name == "httpserver.access"]
    assert len(lines) == 2
    assert lines[0].startswith('10.0.0.1:5000 - "GET /echo/abc HTTP/1.1" 200 3 ')
    assert lines[1].startswith('10.0.0.1:5000 - "GET /nothing HTTP/1.0" 404 9 ')


def test_quotes_and_backslashes_in_a_parsed_target_are_escaped(caplog: pytest.LogCaptureFixture) -> None:
    """h11 lets `"` and `\\` through in a target; unescaped, a client could close the quoted
    request line and write its own status and size into the line (nginx escapes them)."""
    d = Driver(App(), Config(access_log=True), client=("10.0.0.1", 5000))
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.feed(get(b'/x"_200_5_1.0ms_"GET_/admin\\'))
    lines = [r.getMessage() for r in caplog.records if r.name == "httpserver.access"]
    assert len(lines) == 1
    logged = '10.0.0.1:5000 - "GET /x\\x22_200_5_1.0ms_\\x22GET_/admin\\x5C HTTP/1.1" 404 '
    assert lines[0].startswith(logged), lines


@pytest.mark.parametrize(
    ("head", "size", "logged"),
    [
        (b"BAD\r\n\r\n", 100, '"BAD" 400 0'),
        (b"GET /no-host HTTP/1.1\r\n\r\n", 100, '"GET /no-host HTTP/1.1" 400 0'),  # was "- - HTTP/-"
        (b"GET /no-host HTTP/1.1\r\n\r\n", 3, '"GET /no-host HTTP/1.1" 400 0'),  # read in pieces
        (b"GET /x HTTP/1.1\nHost: a\nHost: b\n\n", 100, '"GET /x HTTP/1.1" 400 0'),
        (b'\x16\x03\x01\x02"\\\xff\r\n\r\n', 100, '"\\x16\\x03\\x01\\x02\\x22\\x5C\\xFF" 400 0'),  # escaped
    ],
)
def test_an_unparsed_request_is_logged_with_what_it_began_with(
    head: bytes, size: int, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = Driver(App(), Config(access_log=True))
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.feed(head, size)
    assert [r.getMessage().rsplit(" ", 1)[0] for r in caplog.records] == [f"- - {logged}"]


def test_no_access_log_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(App(), Config(access_log=False))
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.feed(get(b"/"))
    assert not caplog.records


def test_head_and_invalid_responses_are_logged_with_the_bytes_sent(caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(App(), Config(access_log=True))
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.feed(get(b"/echo/abc", method=b"HEAD") + get(b"/bad-response"))
    lines = [r.getMessage() for r in caplog.records if r.name == "httpserver.access"]
    assert [line.split('" ')[1].split()[:2] for line in lines] == [["200", "0"], ["500", "26"]]


def test_a_response_subclass_and_a_bytes_like_body_are_sent() -> None:
    class Plain(Response):
        pass

    bodies = {b"/sub": Plain(200, (), b"sub"), b"/view": Response(200, (), memoryview(b"view"))}  # type: ignore[arg-type]
    d = Driver(lambda request: bodies[request.target])
    d.feed(get(b"/sub") + get(b"/view"))
    assert [r.body for r in parse(d.take(), 2)] == [b"sub", b"view"]


def test_the_logged_duration_runs_from_the_first_byte_of_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = Driver(App(), Config(access_log=True, head_timeout=10.0))
    request = get(b"/echo/slow")
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.now = 1.0
        d.feed(request[:5])
        d.now = 3.5
        d.feed(request[5:] + get(b"/")[:3])  # the next request starts now, pipelined
        d.expire()  # and never completes: 408 at its head deadline
    durations = [r.getMessage().rsplit(" ", 1)[1] for r in caplog.records]
    assert durations == ["2500.0ms", "10000.0ms"]


class _Pieces:
    """A Stream of the given pieces."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    def next_piece(self) -> bytes | None:
        return self.pieces.pop(0) if self.pieces else None

    def close(self) -> None:
        pass


@pytest.mark.parametrize("streamed", [False, True])
def test_a_204_never_carries_the_handlers_content_length(streamed: bool) -> None:
    """RFC 9110 §8.6: a server MUST NOT send Content-Length in a 204 (a 304 may keep it)."""
    headers = ((b"Content-Length", b"5"), (b"X-A", b"1"))
    body = _Pieces(b"hello") if streamed else b"hello"
    d = Driver(lambda request: Response(204, headers, body), Config(access_log=False))
    d.feed(get(b"/") + get(b"/"))
    data = d.take()
    assert b"content-length" not in data.lower() and b"hello" not in data, data
    assert [r.status for r in parse(data, 2)] == [204, 204]


def test_an_invalid_response_is_logged_briefly(caplog: pytest.LogCaptureFixture) -> None:
    """A megabyte header value, or ten thousand fields, makes no megabyte log line."""
    headers = ((b"X-Big", b"a" * 1_000_000 + b"\n"), *((b"X-%d" % i, b"v") for i in range(10_000)))
    d = Driver(lambda request: Response(200, headers, b"x"), Config(access_log=False))
    with caplog.at_level(logging.ERROR, "httpserver.error"):
        d.feed(get(b"/"))
    assert parse_one(d.take()).status == 500
    [record] = caplog.records
    message = record.getMessage()
    assert "invalid response" in message and len(message) < 4000, len(message)


def test_large_header_sets_are_not_kept_in_the_validation_cache() -> None:
    """The cache of checked header tuples is bounded by count: an app whose every response
    carries a distinct megabyte header would hold hundreds of megabytes in it."""
    from protocol import connection

    headers = ((b"X-Big", b"a" * 100_000),)
    d = Driver(lambda request: Response(200, headers, b"x"), Config(access_log=False))
    d.feed(get(b"/"))
    assert parse_one(d.take()).header(b"x-big") == headers[0][1]
    assert headers not in connection._validated
