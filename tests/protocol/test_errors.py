"""Malformed and refused requests: the status, a closing response, and nothing processed after."""

from __future__ import annotations

import pytest

from protocol import Config, Receive, Response, Run, Send

from .helpers import FRAGMENT_SIZES, App, Driver, chunked, get, parse, parse_one, post

FOLLOW_UP = get(b"/echo/after")
CHUNKED_IN_HTTP_1_0 = get(b"/upload", b"Transfer-Encoding: chunked", method=b"POST", version=b"1.0")
CHUNKED_IN_HTTP_1_0 += chunked(b"hi")


def refused(data: bytes, size: int = 1 << 20, config: Config | None = None) -> tuple[int, Driver[App]]:
    """Feed `data` and a valid follow-up request; check the one closing error response."""
    d = Driver(App(), config)
    d.feed(data + FOLLOW_UP, size)
    response = parse_one(d.take())
    assert response.closes, "an error response closes the connection"
    if response.body:  # the head parsed: the body says why
        assert response.header(b"content-type") == b"text/plain"
        assert response.body.startswith(b"%d " % response.status)
    else:  # h11 refused the head, so its method (HEAD?) is unknown: no body
        assert response.header(b"content-length") == b"0"
    assert d.closed or d.half_closed
    assert all(r.target != b"/echo/after" for r in d.app.requests), "nothing after the error is processed"
    return response.status, d


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (get(b"/", b"Host: other"), 400),  # two Hosts
        (get(b"/", b"X-Bad : space before colon"), 400),
        (get(b"/", b"X-Bad: nul\x00here"), 400),
        (get(b"/", b"X-Bad: cr\rhere"), 400),
        (get(b"/", b"Content-Length: abc"), 400),
        (get(b"/", b"Content-Length: -5"), 400),
        (get(b"/", b"Content-Length: +5"), 400),
        (get(b"/", b"Content-Length: 0x10"), 400),
        (get(b"/", b"Content-Length: 5", b"Content-Length: 6"), 400),
        (get(b"/", b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400),
        (get(b"/", b"Transfer-Encoding: chunked", b"Content-Length: 5"), 400),
        (get(b"/", b"Transfer-Encoding: gzip"), 501),
        (get(b"/", b"Transfer-Encoding: gzip, chunked"), 501),
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing (nginx: 400 too)
        (CHUNKED_IN_HTTP_1_0, 400),
        (get(b"/", version=b"2.0"), 505),
        (get(b"/", version=b"3.0"), 505),
    ],
)
def test_malformed_requests_get_their_status(data: bytes, status: int) -> None:
    assert refused(data)[0] == status


def test_an_error_body_only_when_the_head_parsed() -> None:
    assert parse_one(Driver(App()).feed_and_take(b"GARBAGE\r\n\r\n")).body == b""
    data = get(b"/", b"Content-Length: 1", b"Transfer-Encoding: chunked")
    assert parse_one(Driver(App()).feed_and_take(data)).body == b"400 Bad Request\n"


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
def test_status_does_not_depend_on_fragmentation(size: int) -> None:
    assert refused(get(b"/", b"Content-Length: 1", b"Transfer-Encoding: chunked"), size)[0] == 400
    assert refused(get(b"/", version=b"2.0"), size)[0] == 505


def test_content_length_and_chunked_together_is_refused_before_the_app_sees_it() -> None:
    status, d = refused(get(b"/upload", b"Content-Length: 5", b"Transfer-Encoding: chunked") + b"hello")
    assert status == 400 and d.app.requests == [] and d.app.exchanges == []


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
def test_a_request_line_longer_than_the_head_limit_gets_414(size: int) -> None:
    """As in nginx: a request line too long for the head's limit is 414, a long field 431."""
    config = Config(max_head_size=512, access_log=False)
    assert refused(get(b"/" + b"a" * 600), size, config=config)[0] == 414
    assert refused(b"x" * 600, size, config=config)[0] == 414, "a long line, whatever it holds"
    assert refused(get(b"/", b"X-Long: " + b"a" * 600), size, config=config)[0] == 431


def test_a_long_target_gets_414() -> None:
    config = Config(max_target_length=100, access_log=False)
    assert refused(get(b"/" + b"a" * 100), config=config)[0] == 414
    d = Driver(App(), config)
    d.feed(get(b"/echo/" + b"a" * 94))
    assert parse_one(d.take()).status == 200


def test_too_many_header_fields_get_431() -> None:
    config = Config(max_header_count=5, access_log=False)
    fields = [b"X-%d: v" % i for i in range(4)]
    d = Driver(App(), config)
    d.feed(get(b"/", *fields))  # Host + 4 = 5: allowed
    assert parse_one(d.take()).status == 200
    assert refused(get(b"/", *fields, b"X-5: v"), config=config)[0] == 431


@pytest.mark.parametrize("size", [1, 1000, 1 << 20])
def test_an_oversized_head_gets_431_however_it_arrives(size: int) -> None:
    """h11 bounds incomplete heads only; a complete oversized head is caught by the core."""
    config = Config(max_head_size=1024, access_log=False)
    status, _ = refused(get(b"/", b"X-Big: " + b"b" * 1100), size, config)
    assert status == 431


def test_a_head_just_under_the_limit_is_served() -> None:
    config = Config(max_head_size=1024, access_log=False)
    d = Driver(App(), config)
    request = get(b"/")
    d.feed(get(b"/", b"X-Pad: " + b"p" * (1000 - len(request))))
    assert parse_one(d.take()).status == 200


def test_a_declared_body_over_the_limit_gets_413_before_the_app() -> None:
    config = Config(max_body_size=100, access_log=False)
    status, d = refused(get(b"/upload", b"Content-Length: 101"), config=config)
    assert status == 413 and d.app.exchanges == []
    status, d = refused(get(b"/upload", b"Content-Length: 99999999999999999999999999"), config=config)
    assert status in (400, 413) and d.app.exchanges == []  # h11 refuses absurd lengths itself


def test_a_body_at_the_limit_is_accepted() -> None:
    d = Driver(App(), Config(max_body_size=100, access_log=False))
    d.feed(post(b"/upload", b"x" * 100))
    assert parse_one(d.take()).body == b"got 100"


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
def test_a_chunked_body_arrives_byte_exact(size: int) -> None:
    app = App()
    d = Driver(app)
    pieces = [b"hello ", b"\r\n0\r\n", bytes(range(256)), b"x" * 5000]
    head = get(b"/upload", b"Transfer-Encoding: chunked", method=b"POST")
    d.feed(head + chunked(*pieces) + FOLLOW_UP, size)
    first, second = parse(d.take(), 2)
    assert first.body == b"got %d" % sum(map(len, pieces)) and second.body == b"after"
    assert bytes(app.exchanges[0].body) == b"".join(pieces)


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_a_chunked_body_over_the_limit_gets_413(size: int) -> None:
    config = Config(max_body_size=1000, access_log=False)
    head = get(b"/upload", b"Transfer-Encoding: chunked", method=b"POST")
    status, d = refused(head + chunked(b"a" * 600, b"b" * 600), size, config)
    assert status == 413
    calls = d.app.exchanges[0].calls
    assert "respond" not in calls
    assert calls == [] or calls[-1] == "abort", "dropped before start(), or aborted after it"


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",  # not hex
        b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the data
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"ffffffffffffffffffffff\r\n",
    ],
)
def test_a_malformed_chunk_gets_400_and_nothing_after_it_is_processed(body: bytes) -> None:
    head = get(b"/upload", b"Transfer-Encoding: chunked", method=b"POST")
    status, d = refused(head + body)
    assert status in (400, 413)
    calls = d.app.exchanges[0].calls
    assert "respond" not in calls
    assert calls == [] or calls[-1] == "abort", "dropped before start(), or aborted after it"


def test_an_error_while_draining_an_unread_body_closes_silently() -> None:
    """The response went out already; a bad chunk in the ignored body just ends the connection."""
    d = Driver(App())
    d.feed(get(b"/echo/x", b"Transfer-Encoding: chunked", method=b"POST") + b"zz\r\n" + FOLLOW_UP)
    assert parse_one(d.take()).body == b"x"
    assert d.closed and len(d.app.requests) == 1


def test_a_request_after_a_refused_one_on_a_new_connection_is_served() -> None:
    refused(b"GARBAGE\r\n\r\n")
    d = Driver(App())
    d.feed(get(b"/"))
    assert parse_one(d.take()).status == 200


def test_the_error_response_for_an_unparsed_request_is_well_formed() -> None:
    d = Driver(App())
    d.feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS client hello
    # h11 needs the whole line before it can tell; a binary line gets 400 once complete.
    assert isinstance(d.waiting, Receive) or d.half_closed
    d.feed(b"\r\n\r\n")
    assert parse_one(d.take()).status == 400


@pytest.mark.parametrize(
    "data", [get(b"/", version=b"2.0", method=b"HEAD"), get(b"/", b"Content-Length: x", method=b"HEAD")]
)
def test_an_error_response_to_head_has_no_body(data: bytes) -> None:
    d = Driver(App())
    d.feed(data)
    response = parse_one(d.take(), b"HEAD")
    assert response.status in (400, 505) and response.body == b"" and response.closes


def test_connect_is_refused_by_the_core_whatever_the_app_says() -> None:
    """A 2xx to CONNECT would switch h11 to a tunnel; the core has none."""
    d = Driver(lambda request: Response(200, body=b"tunnel?"))
    d.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + FOLLOW_UP)
    response = parse_one(d.take())
    assert response.status == 501 and response.closes


def test_an_upgrade_request_is_answered_as_plain_http() -> None:
    d = Driver(App())
    d.feed(get(b"/echo/a", b"Upgrade: websocket", b"Connection: upgrade") + FOLLOW_UP)
    assert [r.body for r in parse(d.take(), 2)] == [b"a", b"after"]


UPLOAD = b"POST /upload HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (UPLOAD + b"Content-Length: 5\r\n 6\r\n\r\nhello", 400),  # obs-fold in Content-Length
        (UPLOAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", 501),
        (UPLOAD + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
        (UPLOAD + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", 400),  # bare LF in chunks
        (UPLOAD + b"Content-Length: \r\n\r\n", 400),
        (b"GET / HTTP/1.1\rHost: x\r\n\r\n", 400),
        (b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ],
)
def test_smuggling_shapes_are_refused(data: bytes, status: int) -> None:
    assert refused(data)[0] == status


@pytest.mark.parametrize(
    "data",
    [
        UPLOAD + b"X: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",  # folded into X
        UPLOAD + b"Transfer-Encoding:\tChunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
        UPLOAD + b"Content-Length:  005 \r\n\r\nhello",
    ],
)
def test_lenient_but_unambiguous_framing_is_accepted(data: bytes) -> None:
    app = App()
    d = Driver(app)
    d.feed(data + FOLLOW_UP)
    assert [r.body for r in parse(d.take(), 2)] == [b"got 5", b"after"]
    assert bytes(app.exchanges[0].body) == b"hello"


@pytest.mark.parametrize("size", [1000, 1 << 20])
@pytest.mark.parametrize(
    "body",
    [
        b"5;" + b"e" * 40_000 + b"\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nX-T: " + b"t" * 40_000 + b"\r\n\r\n",
    ],
    ids=["long-extension", "long-trailer"],
)
def test_long_chunk_lines_are_refused_however_they_arrive(body: bytes, size: int) -> None:
    """h11 bounds only the bytes it holds incomplete; the core feeds it in slices so a
    chunk extension or trailer is bounded the same whether it arrives in pieces or in
    one large read."""
    head = get(b"/upload", b"Transfer-Encoding: chunked", method=b"POST")
    status, d = refused(head + body, size)
    assert status == 431
    calls = d.app.exchanges[0].calls
    assert "respond" not in calls
    assert calls == [] or calls[-1] == "abort", "dropped before start(), or aborted after it"


def test_a_large_read_of_body_is_still_one_step_for_a_blocking_exchange() -> None:
    app = App()
    d = Driver(app)
    d.feed(post(b"/blocking", b"z" * 200_000))
    assert parse_one(d.take()).body == b"got 200000"
    assert app.exchanges[0].calls == ["start", "receive", "respond"]
    assert sum(isinstance(a, Run) for a in d.actions) == 1


def test_a_large_read_of_pipelined_requests_is_answered_in_one_send() -> None:
    d = Driver(App())
    requests = [get(b"/echo/%d" % i) for i in range(2000)]
    d.feed(b"".join(requests))
    assert sum(isinstance(a, Send) for a in d.actions) == 1
    assert [r.body for r in parse(d.take(), len(requests))] == [b"%d" % i for i in range(2000)]


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (413, b"Content Too Large"),
        (414, b"URI Too Long"),
        (416, b"Range Not Satisfiable"),
        (404, b"Not Found"),
    ],
)
def test_reason_phrases_are_rfc_9110s(status: int, reason: bytes) -> None:
    d = Driver(App())
    d.feed(get(b"/status/%d" % status))
    assert d.take().startswith(b"HTTP/1.1 %d %s\r\n" % (status, reason))


@pytest.mark.parametrize(
    "host",
    [b"example.com", b"example.com:8080", b"127.0.0.1:4221", b"[::1]:4221", b"[::1]", b"", b"x:", b"a-b_c~d"],
)
def test_a_valid_host_is_served(host: bytes) -> None:
    d = Driver(App())
    d.feed(b"GET /echo/ok HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
    assert parse_one(d.take()).body == b"ok"


@pytest.mark.parametrize(
    "host", [b"a/b", b"a b", b"user@x", b"x:abc", b"x:80:80", b"[::1", b"a\\b", b"x?y", b"x#y"]
)
def test_an_invalid_host_is_400(host: bytes) -> None:
    """RFC 9112 §3.2: a server MUST answer 400 to a Host field with an invalid value."""
    status, d = refused(b"GET /echo/x HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
    assert status == 400 and d.app.requests == []


@pytest.mark.parametrize("size_line", [b"3e9", b"10000", b"ffffffffffffffffffff"])
@pytest.mark.parametrize("target", [b"/upload", b"/blocking"])
def test_a_chunk_announced_past_the_body_limit_gets_413_at_once(size_line: bytes, target: bytes) -> None:
    """As nginx: the chunk's size line is enough; the server does not wait for its bytes."""
    d = Driver(App(), Config(max_body_size=1000, access_log=False))
    d.feed(get(target, b"Transfer-Encoding: chunked", method=b"POST") + b"100\r\n" + b"a" * 256 + b"\r\n")
    assert not d.output, "256 bytes are within the limit"
    d.feed(size_line + b"\r\nabc")
    response = parse_one(d.take())
    assert response.status == 413 and response.closes
    assert d.app.exchanges[0].calls[-1] == "abort"


def test_draining_stops_at_a_chunk_announced_past_the_body_limit() -> None:
    d = Driver(App(), Config(max_body_size=1000, access_log=False))
    d.feed(get(b"/echo/early", b"Transfer-Encoding: chunked", method=b"POST") + b"ffffffff\r\nabc")
    assert parse_one(d.take()).body == b"early"
    assert d.closed, "nothing of that body is worth reading"


@pytest.mark.parametrize(
    "body",
    [b"3\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\n\n", b"3\r\nabc\r\n0\r\nX-T: a\nY"],
    ids=["size-line", "last-chunk", "trailer"],
)
@pytest.mark.parametrize("target", [b"/upload", b"/echo/early"])
def test_a_bare_lf_in_chunk_lines_is_refused_at_once(body: bytes, target: bytes) -> None:
    """h11 would wait for a CRLF until the body timeout; RFC 9112 §2.2 allows refusing."""
    d = Driver(App())
    d.feed(get(target, b"Transfer-Encoding: chunked", method=b"POST") + body)
    if target == b"/upload":
        response = parse_one(d.take())
        assert response.status == 400 and response.closes
    else:  # answered before its body: draining it stops
        assert parse_one(d.take()).body == b"early"
    assert d.closed or d.half_closed


def test_crlf_chunk_lines_and_trailers_are_read_in_any_pieces() -> None:
    body = b"3;ext=1\r\nabc\r\n0\r\nX-T: a\r\nY-T: b\r\n\r\n"
    for size in (1, 2, 5):
        app = App()
        d = Driver(app)
        d.feed(get(b"/upload", b"Transfer-Encoding: chunked", method=b"POST") + body, size)
        assert parse_one(d.take()).body == b"got 3"


def test_too_many_trailer_fields_get_431() -> None:
    config = Config(max_header_count=5, access_log=False)
    head = get(b"/upload", b"Transfer-Encoding: chunked", method=b"POST")
    trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(6))
    status, d = refused(head + b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n", config=config)
    assert status == 431 and "respond" not in d.app.exchanges[0].calls
    d = Driver(App(), config)
    d.feed(head + b"3\r\nabc\r\n0\r\n" + trailers[: 5 * 9] + b"\r\n")
    assert parse_one(d.take()).body == b"got 3", "five are within the limit"


# --- request targets: origin-form, once, for every handler (RFC 9112 §3.2) ---------------------


@pytest.mark.parametrize(
    ("target", "origin", "host"),
    [
        (b"http://example.com:8080/echo/a?b", b"/echo/a?b", b"example.com:8080"),
        (b"HTTPS://Example.com", b"/", b"Example.com"),
        (b"http://example.com?q", b"/?q", b"example.com"),
        (b"http://[::1]:80/echo/x", b"/echo/x", b"[::1]:80"),
    ],
)
def test_an_absolute_form_target_becomes_origin_form_with_its_authority_as_host(
    target: bytes, origin: bytes, host: bytes
) -> None:
    """The server MUST ignore Host and use the target's authority (RFC 9112 §3.2.2)."""
    with_host = b"GET %s HTTP/1.1\r\nHost: other.test\r\n\r\n" % target
    for request in (with_host, b"GET %s HTTP/1.0\r\n\r\n" % target):  # HTTP/1.0: no Host needed
        d = Driver(App())
        d.feed(request)
        seen = d.app.requests[0]
        assert seen.target == origin
        assert [value for name, value in seen.headers if name == b"host"] == [host]


@pytest.mark.parametrize(
    "target",
    [
        b"ftp://x/echo/a",
        b"http:///echo/a",
        b"http://:80/a",
        b"http://u@x/a",
        b"http://x:y/a",
        b"x:80",
        b"a/b",
    ],
)
def test_a_target_neither_origin_nor_absolute_form_is_400_as_in_nginx(target: bytes) -> None:
    status, d = refused(get(target))
    assert status == 400 and not d.app.requests


@pytest.mark.parametrize("method", [b"GET", b"POST", b"DELETE"])
def test_the_asterisk_form_is_only_for_options(method: bytes) -> None:
    """RFC 9112 §3.2.4: `*` is a target of OPTIONS alone; with any other method it is 400
    before any handler (an app would get a path of `*`)."""
    status, d = refused(b"%s * HTTP/1.1\r\nHost: x\r\n\r\n" % method)
    assert status == 400 and not d.app.requests
    d = Driver(App())
    d.feed(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert d.app.requests[0].target == b"*"
