"""Exchanges (request bodies, blocking steps), 100-continue, and handler failures."""

from __future__ import annotations

import logging

import pytest

from protocol import Close, Config, FileBody, Phase, Receive, Request, Response, Run, Send

from .helpers import FRAGMENT_SIZES, App, Driver, Recorder, TrackedFile, chunked, get, parse, parse_one, post

EXPECT = b"Expect: 100-continue"


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
@pytest.mark.parametrize("target", [b"/upload", b"/blocking"])
def test_an_upload_reaches_the_exchange_whole_and_in_order(target: bytes, size: int) -> None:
    app = App()
    d = Driver(app)
    body = bytes(range(256)) * 40
    d.feed(post(target, body) + get(b"/echo/next"), size)
    first, second = parse(d.take(), 2)
    assert (first.status, first.body, second.body) == (201, b"got %d" % len(body), b"next")
    exchange = app.exchanges[0]
    assert bytes(exchange.body) == body
    assert exchange.calls[0] == "start" and exchange.calls[-1] == "respond"
    assert set(exchange.calls[1:-1]) <= {"receive"}
    assert (any(isinstance(a, Run) for a in d.actions)) == (target == b"/blocking")


def test_an_exchange_without_a_body_is_asked_to_respond_once() -> None:
    app = App()
    d = Driver(app)
    d.feed(get(b"/upload"))
    assert parse_one(d.take()).body == b"got 0"
    assert app.exchanges[0].calls == ["start", "respond"]


def test_blocking_steps_come_out_as_run_and_nothing_moves_until_they_ran() -> None:
    app = App()
    d = Driver(app, run_steps=False)
    d.feed(post(b"/blocking", b"abc"))
    run = d.waiting
    assert isinstance(run, Run) and not d.output and app.exchanges[0].calls == []
    with pytest.raises(RuntimeError):
        d.conn.next_action(d.now)  # a transport bug: asking again before running the step
    run.step()
    assert app.exchanges[0].calls == ["start", "receive", "respond"]
    d.advance()
    assert parse_one(d.take()).status == 201


def test_each_body_piece_is_one_run_step() -> None:
    app = App()
    d = Driver(app)
    request = post(b"/blocking", b"x" * 30)
    d.feed(request[:-20])
    d.feed(request[-20:-10])
    d.feed(request[-10:])
    runs = [a for a in d.actions if isinstance(a, Run)]
    assert len(runs) == 3 and app.exchanges[0].calls == ["start", "receive", "receive", "receive", "respond"]


def test_a_read_of_many_tiny_chunks_is_parsed_a_slice_per_step() -> None:
    """A read is gathered into one step, but a flood of tiny chunks (6 bytes on the wire per
    body byte, one h11 event each) is cut a slice of input per step: the CPU it costs comes in
    bounded pieces, with the transport's loop free between them (run in a thread)."""
    app = App()
    d = Driver(app, Config(max_head_size=4096, access_log=False))
    chunks = b"1\r\na\r\n" * 20000  # 120000 bytes in one read
    d.feed(get(b"/blocking", b"Transfer-Encoding: chunked", method=b"POST") + chunks + b"0\r\n\r\n")
    calls = app.exchanges[0].calls
    assert calls[0] == "start" and calls[-1] == "respond"
    assert bytes(app.exchanges[0].body) == b"a" * 20000
    steps = [a for a in d.actions if isinstance(a, Run)]
    assert len(steps) >= 120000 // 4096, len(steps)  # about a 4096-byte slice each
    assert parse_one(d.take()).status == 201


def test_a_read_of_large_pieces_is_still_one_step() -> None:
    app = App()
    d = Driver(app, Config(max_head_size=4096, access_log=False))
    d.feed(post(b"/blocking", b"x" * 100000))  # 25 slices of one piece each: one step
    assert app.exchanges[0].calls == ["start", "receive", "respond"]


@pytest.mark.parametrize("target", [b"/fail-receive", b"/fail-respond", b"/blocking-fail-receive"])
def test_an_exchange_that_raises_gets_500_and_one_abort(
    target: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    app = App()
    d = Driver(app)
    with caplog.at_level(logging.ERROR, "httpserver.error"):
        d.feed(post(target, b"body") + get(b"/"))
    response = parse_one(d.take())
    assert response.status == 500 and response.closes
    calls = app.exchanges[0].calls
    assert calls.count("abort") == 1 and calls[-1] == "abort"
    assert "handler failed" in caplog.text and "failed" in caplog.records[0].exc_text  # type: ignore[operator]


def test_an_app_that_raises_gets_500(caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(App())
    with caplog.at_level(logging.ERROR, "httpserver.error"):
        d.feed(get(b"/boom"))
    response = parse_one(d.take())
    assert response.status == 500 and response.closes
    assert "the app failed" in caplog.text


def test_a_response_h11_refuses_gets_500_not_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(App())
    with caplog.at_level(logging.ERROR, "httpserver.error"):
        d.feed(get(b"/bad-response") + get(b"/"))
    response = parse_one(d.take())
    assert response.status == 500 and response.closes
    assert d.closed or d.half_closed
    assert caplog.records


@pytest.mark.parametrize("target", [b"/upload", b"/blocking"])
def test_connection_lost_mid_upload_aborts(target: bytes) -> None:
    app = App()
    d = Driver(app)
    d.feed(post(target, b"x" * 100)[:-10])
    d.conn.connection_lost()
    d.advance()
    assert d.closed and not d.output
    assert app.exchanges[0].calls == ["start", "receive", "abort"]


@pytest.mark.parametrize("target", [b"/upload", b"/blocking"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_end_of_input_mid_upload_aborts_without_a_response(target: bytes, framing: str) -> None:
    app = App()
    d = Driver(app)
    if framing == "length":
        request = post(target, b"x" * 100)[:-10]
    else:
        request = get(target, b"Transfer-Encoding: chunked", method=b"POST") + chunked(b"x" * 100)[:-10]
    d.feed(request, eof=True)
    assert d.closed and not d.output
    assert app.exchanges[0].calls == ["start", "receive", "abort"]


def test_abort_that_raises_is_logged_and_the_connection_ends(caplog: pytest.LogCaptureFixture) -> None:
    app = App()
    d = Driver(app)
    d.feed(post(b"/upload", b"x" * 100)[:-10])
    app.exchanges[0].fail = "abort"
    with caplog.at_level(logging.ERROR, "httpserver.error"):
        d.conn.connection_lost()
        d.advance()
    assert d.closed and "aborting" in caplog.text


# --- 100-continue --------------------------------------------------------------------


@pytest.mark.parametrize("target", [b"/upload", b"/blocking"])
def test_100_continue_is_sent_when_the_body_is_wanted(target: bytes) -> None:
    app = App()
    d = Driver(app)
    head = get(target, b"Content-Length: 5", EXPECT, method=b"POST")
    d.feed(head)
    assert d.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    d.feed(b"hello")
    response = parse_one(d.take())
    assert (response.status, response.body, response.closes) == (201, b"got 5", False)
    assert isinstance(d.waiting, Receive) and d.conn.phase is Phase.IDLE


def test_100_continue_is_not_sent_when_the_client_sent_the_body_already() -> None:
    d = Driver(App())
    d.feed(get(b"/upload", b"Content-Length: 5", EXPECT, method=b"POST") + b"hello")
    [response] = parse(d.take())
    assert response.informational == [] and response.status == 201


def test_a_declared_body_over_the_limit_gets_413_without_100() -> None:
    app = App()
    d = Driver(app, Config(max_body_size=10, access_log=False))
    d.feed(get(b"/upload", b"Content-Length: 11", EXPECT, method=b"POST"))
    response = parse_one(d.take())
    assert response.status == 413 and response.informational == [] and response.closes
    assert app.exchanges == []
    # The client may send the body anyway: output is shut, the rest is discarded.
    assert d.half_closed
    d.feed(b"x" * 11, eof=True)
    assert d.closed and not d.output


def test_a_response_to_a_waiting_client_closes_the_connection() -> None:
    """Answering without reading the held-back body: its next bytes may be that body."""
    app = App()
    d = Driver(app)
    d.feed(get(b"/echo/no", b"Content-Length: 5", EXPECT, method=b"POST"))
    response = parse_one(d.take())
    assert response.body == b"no" and response.informational == [] and response.closes
    d.feed(get(b"/echo/smuggled"))
    assert len(app.requests) == 1 and not d.output


@pytest.mark.parametrize("target", [b"/refuse", b"/blocking-refuse"])
def test_a_refusal_from_start_replaces_100_continue(target: bytes) -> None:
    """A client waiting for 100 Continue gets the refusal instead, and never sends the body."""
    app = App()
    d = Driver(app)
    d.feed(get(target, b"Content-Length: 5", EXPECT, method=b"POST"))
    response = parse_one(d.take())
    assert (response.status, response.body, response.informational) == (403, b"refused", [])
    assert response.closes, "its next bytes may be the body after all"
    assert app.exchanges[0].calls == ["start"], "refused: neither respond() nor abort()"


def test_100_continue_waits_for_a_blocking_start() -> None:
    app = App()
    d = Driver(app, run_steps=False)
    d.feed(get(b"/blocking", b"Content-Length: 5", EXPECT, method=b"POST"))
    run = d.waiting
    assert isinstance(run, Run) and not d.output, "nothing, not even 100 Continue, before start() ran"
    run.step()
    assert app.exchanges[0].calls == ["start"]
    d.advance()
    assert d.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert isinstance(d.waiting, Receive)


@pytest.mark.parametrize("target", [b"/refuse", b"/blocking-refuse"])
@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_a_refusal_from_start_drains_a_body_already_on_its_way(target: bytes, size: int) -> None:
    app = App()
    d = Driver(app)
    d.feed(post(target, b"never stored" * 100) + get(b"/echo/next"), size)
    first, second = parse(d.take(), 2)
    assert (first.status, first.body, first.closes, second.body) == (403, b"refused", False, b"next")
    assert app.exchanges[0].calls == ["start"] and not app.exchanges[0].body


@pytest.mark.parametrize("may_block", [False, True])
def test_a_respond_that_returns_none_is_a_500_at_once(may_block: bool) -> None:
    """None is not "more body to come" at the end of the body: a handler bug, answered now."""
    exchange = Recorder(may_block=may_block)
    exchange.respond = lambda: None  # type: ignore[assignment,method-assign,return-value]
    d = Driver(lambda request: exchange)
    d.feed(post(b"/", b"abc"))
    response = parse_one(d.take())
    assert response.status == 500 and response.closes
    assert exchange.calls == ["start", "receive", "abort"]


@pytest.mark.parametrize("target", [b"/fail-start", b"/blocking-fail-start"])
def test_a_start_that_raises_gets_500_and_abort(target: bytes) -> None:
    app = App()
    d = Driver(app)
    d.feed(get(target, b"Content-Length: 5", EXPECT, method=b"POST"))
    response = parse_one(d.take())
    assert response.status == 500 and response.informational == [] and response.closes
    assert app.exchanges[0].calls == ["start", "abort"]


def test_expect_on_http_1_0_is_ignored() -> None:
    d = Driver(App())
    d.feed(get(b"/upload", b"Content-Length: 2", EXPECT, method=b"POST", version=b"1.0") + b"ab")
    response = parse_one(d.take())
    assert response.informational == [] and response.body == b"got 2"


# --- responses to unread bodies ------------------------------------------------------


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_an_unread_body_is_drained_before_the_next_request(size: int) -> None:
    app = App()
    d = Driver(app)
    smuggled = b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    d.feed(post(b"/echo/ignored", smuggled) + get(b"/echo/next"), size)
    assert [r.body for r in parse(d.take(), 2)] == [b"ignored", b"next"]
    assert [r.target for r in app.requests] == [b"/echo/ignored", b"/echo/next"]


def test_the_response_goes_out_before_the_unread_body_arrives() -> None:
    d = Driver(App())
    d.feed(get(b"/echo/early", b"Content-Length: 1000", method=b"POST"))
    assert parse_one(d.take()).body == b"early"
    assert d.conn.phase is Phase.DRAIN and isinstance(d.waiting, Receive)
    d.feed(b"z" * 1000 + get(b"/echo/next"))
    assert parse_one(d.take()).body == b"next"


def test_send_then_close_order_for_a_failed_blocking_exchange() -> None:
    app = App()
    d = Driver(app)
    d.feed(post(b"/blocking-fail-receive", b"abc"))
    # The step fails; the 500 goes out, then the abort runs where blocking is allowed, then the close.
    assert [type(a) for a in d.actions] == [Receive, Run, Send, Run, Close]


@pytest.mark.parametrize("fail", ["", "respond", "receive"])
def test_connection_lost_after_a_blocking_step_ran_undoes_only_what_is_undone(fail: str) -> None:
    """A transport may learn the socket is gone while a step runs, and report it after."""
    file = TrackedFile(b"file body")
    exchange = Recorder(may_block=True, fail=fail, response=Response(200, (), FileBody(file, 0, 9)))
    d = Driver(lambda request: exchange, run_steps=False)
    d.feed(post(b"/blocking", b"abc"))
    run = d.waiting
    assert isinstance(run, Run)
    run.step()
    d.conn.connection_lost()
    d.run_steps = True
    d.advance()
    assert d.closed and not d.output
    if fail:
        assert exchange.calls[-1] == "abort" and exchange.calls.count("abort") == 1
    else:
        assert exchange.calls == ["start", "receive", "respond"], "it responded: nothing to abort"
        assert file.closed


def test_connection_lost_before_the_first_step_ran_leaves_the_exchange_untouched() -> None:
    """Never started, so nothing to undo: neither start() nor abort()."""
    app = App()
    d = Driver(app, run_steps=False)
    d.feed(post(b"/blocking", b"abc"))
    assert isinstance(d.waiting, Run)
    d.conn.connection_lost()  # the step is abandoned, never run
    d.run_steps = True
    d.advance()
    assert d.closed and app.exchanges[0].calls == []


@pytest.mark.parametrize("target", [b"/upload", b"/blocking"])
def test_connection_lost_after_start_aborts(target: bytes) -> None:
    app = App()
    d = Driver(app)
    request = post(target, b"abcdef")
    d.feed(request[:-3])
    assert app.exchanges[0].calls == ["start", "receive"]
    d.conn.connection_lost()
    d.advance()
    assert d.closed and app.exchanges[0].calls == ["start", "receive", "abort"]


@pytest.mark.parametrize("target", [b"/upload", b"/blocking"])
def test_a_body_timeout_before_the_first_body_byte_leaves_the_exchange_untouched(target: bytes) -> None:
    app = App()
    d = Driver(app)
    d.feed(get(target, b"Content-Length: 5", method=b"POST"))
    d.expire()
    assert parse_one(d.take()).status == 408
    assert app.exchanges[0].calls == []


def test_an_app_returning_neither_a_response_nor_an_exchange_gets_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = Driver(lambda request: None)  # type: ignore[type-var]
    with caplog.at_level(logging.ERROR, "httpserver.error"):
        d.feed(get(b"/"))
    assert parse_one(d.take()).status == 500
    assert "handler returned None" in caplog.text


@pytest.mark.parametrize(
    "headers",
    [((b"X-Evil", b"a\r\nSet-Cookie: stolen"),), ((b"X-Nul", b"a\x00b"),), ((b"", b"empty name"),)],
)
def test_a_response_header_that_would_inject_gets_500(headers: tuple[tuple[bytes, bytes], ...]) -> None:
    d = Driver(lambda request: Response(200, headers, b"x"))
    d.feed(get(b"/"))
    output = d.take()
    assert parse_one(output).status == 500 and b"stolen" not in output


@pytest.mark.parametrize(
    "headers",
    [((b"X", 5),), ((b"X", "\xe9"),), ((b"X",),), ((b"X", bytearray(b"a\r\nb")),), [(b"X", b"a\r\nb")]],
    ids=["int", "non-ascii str", "not a pair", "bytearray", "list"],
)
def test_response_headers_of_the_wrong_shape_get_500(headers: object) -> None:
    for _ in range(2):  # the second time meets the verdict kept from the first
        d = Driver(lambda request: Response(200, headers, b"x"))  # type: ignore[arg-type]
        d.feed(get(b"/"))
        assert parse_one(d.take()).status == 500


def test_a_handler_changing_its_request_does_not_change_the_core_s_decisions() -> None:
    def app(request: Request) -> Response:
        request.method = b"HEAD"  # against the contract; the core must not care
        return Response(200, (), b"body")

    d = Driver(app)
    assert parse_one(d.feed_and_take(get(b"/"))).body == b"body" and not d.closed


def test_a_constant_header_tuple_gives_the_same_bytes_every_time() -> None:
    headers = ((b"X-Mixed-Case", b"a b"), (b"Content-Type", b"text/plain"))
    d = Driver(lambda request: Response(200, headers, b"x"))
    first = d.feed_and_take(get(b"/"))  # validated by h11
    assert d.feed_and_take(get(b"/") + get(b"/")) == first * 2  # the verdict kept
    assert parse_one(first).headers[:2] == [(b"x-mixed-case", b"a b"), (b"content-type", b"text/plain")]


@pytest.mark.parametrize(
    ("headers", "status", "closes"),
    [
        (((b"content-length", b"1"),), 200, False),  # the handler's own, agreeing with the body
        (((b"Content-Length", b"2"),), 500, True),  # disagreeing
        (((b"Connection", b"close"),), 200, True),
    ],
)
def test_framing_fields_from_a_handler_are_reconciled_by_h11(
    headers: tuple[tuple[bytes, bytes], ...], status: int, closes: bool
) -> None:
    for _ in range(2):  # the second time meets the verdict kept from the first
        d = Driver(lambda request: Response(200, headers, b"x"))
        response = parse_one(d.feed_and_take(get(b"/")))
        assert (response.status, response.closes, d.closed) == (status, closes, closes)


@pytest.mark.parametrize("target", [b"/echo/x", b"/upload"])
def test_expect_100_continue_without_a_body_needs_no_100_and_no_close(target: bytes) -> None:
    d = Driver(App())
    d.feed(
        get(target, EXPECT) + get(target, EXPECT, b"Content-Length: 0", method=b"POST") + get(b"/echo/next")
    )
    responses = parse(d.take(), 3)
    assert [r.informational for r in responses] == [[], [], []]
    assert not any(r.closes for r in responses) and responses[2].body == b"next"


def test_connection_lost_while_a_413_goes_out_still_aborts_the_upload() -> None:
    """Regression: connection_lost() dropped the abort queued behind the 413's Send."""
    app = App()
    d = Driver(app, Config(access_log=False, max_body_size=50))
    request = get(b"/blocking", b"Transfer-Encoding: chunked", method=b"POST")
    d.feed(request + b"28\r\n" + b"x" * 40 + b"\r\n")  # started: it now has something to undo
    assert app.exchanges[0].calls == ["start", "receive"]
    d.conn.receive_data(b"1e\r\n" + b"y" * 30 + b"\r\n0\r\n\r\n", d.now)
    action = d.advance(stop_at=(Send,))
    assert isinstance(action, Send) and action.data.startswith(b"HTTP/1.1 413 ")
    d.conn.connection_lost()  # the client reset while the 413 was being sent
    d.advance()
    assert d.closed
    assert app.exchanges[0].calls[-1] == "abort"


def test_a_body_step_queued_behind_a_failed_send_is_not_run() -> None:
    """A feed step left in the queue by connection_lost() must not reach the exchange."""
    app = App()
    d = Driver(app, run_steps=False)
    d.conn.receive_data(get(b"/") + post(b"/blocking", b"abc"), d.now)
    action = d.conn.next_action(d.now)
    assert isinstance(action, Send) and action.data.startswith(b"HTTP/1.1 200 ")
    d.conn.connection_lost()  # sending the first response failed
    d.run_steps = True
    d.advance()
    assert d.closed and app.exchanges[0].calls == [], "never started: nothing to undo"
