"""Keep-alive, pipelining, Connection: close, HTTP/1.0, HEAD and shutdown."""

from __future__ import annotations

import pytest

from protocol import Close, Config, HalfClose, Phase, Receive, Send

from .helpers import FRAGMENT_SIZES, App, Driver, get, parse, parse_one, post


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
def test_keep_alive_serves_requests_one_after_another(size: int) -> None:
    d = Driver(App())
    for word in (b"abc", b"de", b"f"):
        d.feed(get(b"/echo/" + word), size)
        response = parse_one(d.take())
        assert (response.status, response.body) == (200, word)
        assert response.header(b"content-type") == b"text/plain"
        assert response.header(b"content-length") == b"%d" % len(word)
        assert not response.closes
        assert isinstance(d.waiting, Receive) and d.conn.phase is Phase.IDLE
    assert not d.closed


def test_exact_bytes_of_a_simple_response() -> None:
    d = Driver(App())
    d.feed(get(b"/echo/abc"))
    assert d.take() == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc"
    d.feed(get(b"/"))
    assert d.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    d.feed(get(b"/nothing"))
    assert d.take().startswith(b"HTTP/1.1 404 Not Found\r\n")


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
def test_pipelined_requests_are_answered_in_order(size: int) -> None:
    d = Driver(App())
    words = [b"%d" % i for i in range(20)]
    d.feed(b"".join(get(b"/echo/" + w) for w in words) + get(b"/"), size)
    responses = parse(d.take(), len(words) + 1)
    assert [r.body for r in responses] == [*words, b""]
    assert [r.target for r in d.app.requests] == [b"/echo/" + w for w in words] + [b"/"]


def test_pipelined_responses_are_coalesced_into_one_send() -> None:
    d = Driver(App())
    d.feed(get(b"/echo/a") + get(b"/echo/b") + get(b"/echo/c"))
    sends = [a for a in d.actions if isinstance(a, Send)]
    assert len(sends) == 1
    assert [r.body for r in parse(sends[0].data, 3)] == [b"a", b"b", b"c"]


def test_a_partial_pipelined_request_waits_for_the_rest() -> None:
    d = Driver(App())
    second = get(b"/echo/b")
    d.feed(get(b"/echo/a") + second[:5])
    assert parse_one(d.take()).body == b"a"
    assert d.conn.phase is Phase.HEAD
    d.feed(second[5:])
    assert parse_one(d.take()).body == b"b"


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
def test_connection_close_is_answered_with_close_and_closed_at_once(size: int) -> None:
    d = Driver(App())
    d.feed(get(b"/echo/bye", b"Connection: close"), size)
    response = parse_one(d.take())
    assert response.body == b"bye" and response.closes
    assert d.closed and not d.half_closed, "nothing unread: close at once, no lingering"
    d.feed(get(b"/echo/late"))
    assert d.unprocessed == get(b"/echo/late") and len(d.app.requests) == 1


def test_nothing_after_a_closing_request_is_processed() -> None:
    d = Driver(App())
    d.feed(get(b"/echo/a", b"Connection: close") + get(b"/echo/b"))
    assert [r.body for r in parse(d.take(), 1)] == [b"a"]
    assert len(d.app.requests) == 1
    # Input is left unread: shut output so the response is not lost to a reset, then linger.
    assert d.half_closed and isinstance(d.waiting, Receive)
    assert d.waiting.deadline == d.now + d.config.linger_timeout
    d.feed(b"more junk" * 100)
    assert len(d.app.requests) == 1 and not d.output
    d.eof()
    assert d.closed


def test_linger_ends_at_its_deadline() -> None:
    d = Driver(App(), now=50.0)
    d.feed(get(b"/", b"Connection: close") + b"GET /")
    assert d.half_closed
    d.expire()
    assert d.closed and d.now == 50.0 + d.config.linger_timeout


def test_a_closing_request_with_an_unread_body_lingers() -> None:
    d = Driver(App())
    d.feed(post(b"/", b"x" * 100, b"Connection: close")[:-50])
    assert parse_one(d.take()).closes
    assert d.half_closed and not d.closed


def test_a_closing_request_with_its_whole_body_read_closes_at_once() -> None:
    d = Driver(App())
    d.feed(post(b"/upload", b"x" * 100, b"Connection: close"))
    response = parse_one(d.take())
    assert (response.status, response.body, response.closes) == (201, b"got 100", True)
    assert d.closed and not d.half_closed


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
def test_http_1_0_gets_one_response_and_a_close(size: int) -> None:
    d = Driver(App())
    d.feed(get(b"/echo/old", version=b"1.0"), size)
    response = parse_one(d.take())
    assert (response.status, response.body) == (200, b"old")
    assert response.header(b"content-length") == b"3"
    assert response.closes
    assert d.closed


def test_http_1_0_without_host_is_served() -> None:
    d = Driver(App())
    d.feed(b"GET /echo/x HTTP/1.0\r\n\r\n")
    assert parse_one(d.take()).body == b"x"
    assert d.closed


def test_head_gets_the_get_headers_and_no_body() -> None:
    d = Driver(App())
    d.feed(get(b"/echo/abc", method=b"HEAD") + get(b"/echo/abc"))
    head, full = parse(d.take(), [b"HEAD", b"GET"])
    assert head.body == b"" and full.body == b"abc"
    assert head.headers == full.headers
    assert head.header(b"content-length") == b"3"


def test_head_of_a_file_closes_the_file_and_sends_no_body() -> None:
    app = App(memfile_size=5000)
    d = Driver(app)
    d.feed(get(b"/memfile", method=b"HEAD"))
    response = parse_one(d.take(), b"HEAD")
    assert response.header(b"content-length") == b"5000" and response.body == b""
    assert app.files[0].closed
    assert d.conn.phase is Phase.IDLE


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_carry_no_content_length(status: int) -> None:
    d = Driver(App())
    d.feed(get(b"/status/%d" % status) + get(b"/"))
    first, second = parse(d.take(), 2)
    assert first.status == status and first.header(b"content-length") is None
    assert second.status == 200


def test_shutdown_closes_an_idle_connection_silently() -> None:
    d = Driver(App())
    d.feed(get(b"/"))
    d.take()
    d.conn.shutdown()  # the transport abandons the Receive and asks again
    d.advance()
    assert d.closed and not d.output


def test_shutdown_before_any_request_still_answers_the_first_one() -> None:
    """A new connection is not idle: its client may be sending the request it opened it for
    (a reload stops this process while others serve on): answered, then closed."""
    d = Driver(App(), Config(keep_alive_timeout=5.0, access_log=False))
    assert d.conn.phase is Phase.NEW
    d.conn.shutdown()
    d.advance()
    assert isinstance(d.waiting, Receive) and d.deadline == 5.0
    d.feed(get(b"/echo/first") + get(b"/echo/second"))
    response = parse_one(d.take())
    assert response.body == b"first" and response.closes


def test_shutdown_before_any_request_closes_at_the_usual_deadline() -> None:
    d = Driver(App(), Config(keep_alive_timeout=5.0, access_log=False))
    d.conn.shutdown()
    d.advance()
    d.expire()
    assert d.closed and not d.output


def test_shutdown_after_a_request_closes_the_idle_connection_at_once() -> None:
    d = Driver(App())
    d.feed(get(b"/echo/one"))
    assert d.conn.phase is Phase.IDLE
    d.conn.shutdown()
    assert d.conn.next_action(0.0) == Close()


def test_shutdown_mid_request_answers_with_close() -> None:
    d = Driver(App())
    d.feed(get(b"/echo/abc")[:10])
    d.conn.shutdown()
    d.feed(get(b"/echo/abc")[10:] + get(b"/echo/next"))
    response = parse_one(d.take())
    assert response.body == b"abc" and response.closes
    assert len(d.app.requests) == 1


def test_shutdown_during_an_upload_lets_it_finish_with_close() -> None:
    app = App()
    d = Driver(app)
    body = b"u" * 1000
    request = post(b"/upload", body)
    d.feed(request[:-500])
    d.conn.shutdown()
    d.feed(request[-500:])
    response = parse_one(d.take())
    assert response.status == 201 and response.closes
    assert app.exchanges[0].calls[-1] == "respond"
    assert d.closed


def test_end_of_input_between_requests_closes_silently() -> None:
    d = Driver(App())
    d.feed(get(b"/"), eof=True)
    assert parse_one(d.take()).status == 200
    assert d.closed and not d.half_closed


def test_end_of_input_right_after_pipelined_requests_still_answers_them() -> None:
    d = Driver(App())
    d.feed(get(b"/echo/a") + get(b"/echo/b"), eof=True)
    assert [r.body for r in parse(d.take(), 2)] == [b"a", b"b"]
    assert d.closed


def test_close_is_final() -> None:
    d = Driver(App())
    d.feed(get(b"/", b"Connection: close"))
    assert d.closed
    for _ in range(3):
        assert d.conn.next_action(d.now) == Close()
    assert not any(isinstance(a, HalfClose) for a in d.actions)


def test_request_head_fields_reach_the_app() -> None:
    app = App()
    d = Driver(app, Config(access_log=False))
    d.feed(get(b"/echo/x?q=1", b"User-Agent: curl/8", b"X-Multi: a", b"X-Multi: b"))
    request = app.requests[0]
    assert (request.method, request.target, request.http_version) == (b"GET", b"/echo/x?q=1", b"1.1")
    assert request.header(b"user-agent") == b"curl/8"
    assert request.header(b"x-multi") == b"a"
    assert request.header(b"missing") is None


def test_request_headers_are_a_plain_list_of_lower_case_names_in_order() -> None:
    app = App()
    d = Driver(app)
    d.feed(b"GET / HTTP/1.1\r\nHOST: h\r\nX-Multi:  a \r\nx-multi: b\r\nAccept-Encoding: gzip\r\n\r\n")
    headers = app.requests[0].headers
    assert type(headers) is list
    assert headers == [(b"host", b"h"), (b"x-multi", b"a"), (b"x-multi", b"b"), (b"accept-encoding", b"gzip")]


def test_shutdown_while_draining_an_unread_body_closes_after_it() -> None:
    app = App()
    d = Driver(app)
    d.feed(post(b"/echo/x", b"b" * 100)[:-50])
    assert parse_one(d.take()).body == b"x" and d.conn.phase is Phase.DRAIN
    d.conn.shutdown()
    d.feed(b"b" * 50)
    assert d.closed and not d.output and len(app.requests) == 1


def test_a_connection_has_no_instance_dict() -> None:
    """Servers hold thousands of idle connections; slots keep each core small."""
    d = Driver(App())
    assert not hasattr(d.conn, "__dict__")


def test_http_1_0_keep_alive_is_declined_with_close() -> None:
    """h11 implements no HTTP/1.0 keep-alive; declining it is allowed and says so."""
    d = Driver(App())
    d.feed(get(b"/echo/x", b"Connection: keep-alive", version=b"1.0") + get(b"/echo/y", version=b"1.0"))
    response = parse_one(d.take())
    assert response.body == b"x" and response.closes
    assert len(d.app.requests) == 1


# --- empty lines before a request line (RFC 9112 §2.2) --------------------------------------


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
@pytest.mark.parametrize("prefix", [b"\r\n", b"\n", b"\r\n\r\n\r\n", b"\r\n" * 10000])
def test_empty_lines_before_a_request_are_ignored(size: int, prefix: bytes) -> None:
    d = Driver(App())
    d.feed(prefix + get(b"/echo/a"), size)
    assert parse_one(d.take()).body == b"a"
    d.feed(prefix + get(b"/echo/b") + prefix, size)
    assert parse_one(d.take()).body == b"b"
    assert d.conn.phase is Phase.IDLE and not d.closed
    assert [r.target for r in d.app.requests] == [b"/echo/a", b"/echo/b"]


def test_a_crlf_split_across_reads_is_ignored() -> None:
    d = Driver(App())
    d.feed(b"\r")
    assert d.conn.phase is Phase.NEW and not d.output
    d.feed(b"\n" + get(b"/echo/split"))
    assert parse_one(d.take()).body == b"split"


def test_empty_lines_neither_start_a_request_nor_extend_the_keep_alive_deadline() -> None:
    config = Config(keep_alive_timeout=5.0, head_timeout=10.0, access_log=False)
    d = Driver(App(), config, now=100.0)
    for second in range(4):
        d.now = 101.0 + second
        d.feed(b"\r\n")
        assert d.conn.phase is Phase.NEW and d.deadline == 105.0
    d.expire()
    assert d.closed and not d.output and not d.half_closed


def test_empty_lines_then_end_of_input_close_silently() -> None:
    d = Driver(App())
    d.feed(b"\r\n\r\n", eof=True)
    assert d.closed and not d.output and not d.app.requests


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
def test_a_crlf_after_a_body_read_with_it_is_ignored(size: int) -> None:
    """Some old clients send CRLF after a POST body: h11 holds it with the body's end."""
    d = Driver(App())
    d.feed(post(b"/upload", b"data") + b"\r\n" + post(b"/upload", b"more") + b"\r\n\r\n", size)
    assert [r.status for r in parse(d.take(), [b"POST", b"POST"])] == [201, 201]
    assert [bytes(e.body) for e in d.app.exchanges] == [b"data", b"more"]
    assert d.conn.phase is Phase.IDLE and not d.closed
    d.feed(get(b"/echo/after"))
    assert parse_one(d.take()).body == b"after"


def test_crlfs_after_a_body_then_end_of_input_close_silently() -> None:
    d = Driver(App())
    d.feed(post(b"/upload", b"data") + b"\r\n", eof=True)
    assert parse_one(d.take(), b"POST").status == 201
    assert d.closed


def test_a_large_read_of_empty_lines_between_requests_is_ignored() -> None:
    """The CRLFs run past the slice h11 is fed at once (max_head_size)."""
    d = Driver(App(), Config(max_head_size=1024, access_log=False))
    d.feed(get(b"/echo/a") + b"\r\n" * 3000 + get(b"/echo/b"))
    assert [r.body for r in parse(d.take(), 2)] == [b"a", b"b"]
