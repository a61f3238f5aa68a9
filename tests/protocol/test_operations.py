"""What operators see of the core: no keep-alive on request, access-log lines for responses cut
short, an exchange that answers in the middle of the body (a full disk)."""

from __future__ import annotations

import logging

import pytest

from protocol import Close, Config, Receive, Response, Run, SendFile

from .helpers import App, Driver, get, parse, parse_one, post


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().rsplit(" ", 1)[0] for r in caplog.records if r.name == "httpserver.access"]


# --- --keep-alive-timeout 0 ----------------------------------------------------------------------


def test_keep_alive_timeout_zero_closes_after_every_response() -> None:
    """nginx's `keepalive_timeout 0`: each response says Connection: close and the connection ends."""
    d = Driver(App(), Config(keep_alive_timeout=0, head_timeout=7.0, access_log=False))
    assert d.deadline == 7.0  # the first request gets the head timeout to arrive, not 0
    d.feed(get(b"/echo/one"))
    response = parse_one(d.take())
    assert (response.body, response.closes) == (b"one", True)
    assert d.closed
    d = Driver(App(), Config(keep_alive_timeout=0, access_log=False))
    d.feed(get(b"/echo/one") + get(b"/echo/two"))
    assert parse_one(d.take()).closes  # one response; the pipelined request is discarded
    assert d.half_closed  # while lingering, as after any closing response with input unread


def test_a_small_keep_alive_timeout_still_keeps_alive() -> None:
    d = Driver(App(), Config(keep_alive_timeout=0.001, access_log=False))
    d.feed(get(b"/echo/one") + get(b"/echo/two"))
    assert [r.body for r in parse(d.take(), 2)] == [b"one", b"two"]
    assert not d.closed


# --- access-log lines for responses that never completed -----------------------------------------


def test_a_download_cut_by_the_client_is_logged_with_the_bytes_sent(caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(App(memfile_size=100), Config(access_log=True, send_chunk_size=30), client=("10.0.0.1", 5000))
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.conn.receive_data(get(b"/memfile"), 1.0)
        d.now = 1.0
        first = d.advance(stop_at=(SendFile,))
        assert isinstance(first, SendFile) and first.count == 30
        d.output += b"x" * first.count  # the first piece went out
        second = d.advance(stop_at=(SendFile,))
        assert isinstance(second, SendFile)
        d.conn.connection_lost(3.5)  # the second failed: the client went away
        d.advance()
    assert d.closed
    assert _access_lines(caplog) == ['10.0.0.1:5000 - "GET /memfile HTTP/1.1" 200 30']
    assert caplog.records[0].getMessage().endswith(" 2500.0ms")
    assert all(file.closed for file in d.app.files)


def test_a_download_cut_before_its_first_piece_logs_zero_bytes(caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(App(memfile_size=100), Config(access_log=True, send_chunk_size=30))
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.conn.receive_data(get(b"/memfile"), 0.0)
        d.advance(stop_at=(SendFile,))
        d.expire()  # the send timed out
    assert _access_lines(caplog) == ['- - "GET /memfile HTTP/1.1" 200 0']


def test_a_request_cut_before_its_response_is_logged_499(caplog: pytest.LogCaptureFixture) -> None:
    """nginx's "client closed request"; also what a request cut at the end of shutdown's grace shows."""
    app = App()
    d = Driver(app, Config(access_log=True))
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.feed(post(b"/upload", b"0123456789")[:-4])  # the body is not all there
        d.conn.shutdown()
        d.conn.connection_lost(2.0)
        d.advance()
    assert _access_lines(caplog) == ['- - "POST /upload HTTP/1.1" 499 0']
    assert app.exchanges[0].calls == ["start", "receive", "abort"]


def test_a_client_that_ends_its_input_mid_body_is_logged_499(caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(App(), Config(access_log=True))
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.feed(post(b"/upload", b"0123456789")[:-4], eof=True)
    assert d.closed
    assert _access_lines(caplog) == ['- - "POST /upload HTTP/1.1" 499 0']


def test_complete_responses_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(App(memfile_size=100), Config(access_log=True, send_chunk_size=30))
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.feed(get(b"/memfile") + get(b"/bad-response"))
        d.conn.connection_lost(1.0)
        d.advance()
    assert _access_lines(caplog) == [
        '- - "GET /memfile HTTP/1.1" 200 100',
        '- - "GET /bad-response HTTP/1.1" 500 26',
    ]


# --- an exchange that answers before the body is complete -----------------------------------------


class _FullDisk:
    """Answers 507 at the first body byte, as the files handler does when the disk is full."""

    may_block = False

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def receive(self, data: bytes) -> Response:
        self.calls.append("receive")
        return Response(507, body=b"full")

    def respond(self) -> Response:
        self.calls.append("respond")
        return Response(201)

    def abort(self) -> None:
        self.calls.append("abort")


def test_receive_may_answer_before_the_body_is_complete() -> None:
    exchanges: list[_FullDisk] = []

    def app(request: object) -> _FullDisk | Response:
        if getattr(request, "method", b"") == b"GET":
            return Response(200, body=b"next")
        exchanges.append(_FullDisk())
        return exchanges[-1]

    d = Driver(app, Config(access_log=False))
    body = b"x" * 1000
    request = post(b"/up", body)
    d.feed(request[: len(request) - 900])
    response = parse_one(d.take(), b"POST")
    assert (response.status, response.body) == (507, b"full")  # before the rest of the body
    d.feed(request[len(request) - 900 :] + get(b"/"))  # the rest is discarded; the connection goes on
    assert parse_one(d.take()).body == b"next"
    assert exchanges[0].calls == ["start", "receive"]  # no respond(), no abort()


def test_a_stream_cut_by_the_client_is_logged_with_the_bytes_handed_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from .test_streams import Pieces, StreamApp

    d = Driver(StreamApp(Pieces([b"one", b"two", b"three"])), Config(access_log=True), run_steps=False)
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.feed(get(b"/stream"))
        for _ in range(2):  # two pieces made and sent
            assert isinstance(d.waiting, Run)
            d.waiting.step()
            d.advance()
        d.conn.connection_lost(1.0)
        d.advance()
    assert _access_lines(caplog) == ['- - "GET /stream HTTP/1.1" 200 6']


# --- shutdown(drain=True): an idle connection is closed only after one more response -------------


def test_a_draining_idle_connection_answers_its_next_request_then_closes() -> None:
    d = Driver(App(), Config(keep_alive_timeout=5.0, access_log=False))
    d.feed(get(b"/echo/one"))
    d.take()
    d.conn.shutdown(drain=True)
    d.advance()  # asked again (the transport gave its wait up): the core waits on
    assert isinstance(d.waiting, Receive) and d.deadline == 5.0
    d.feed(get(b"/echo/two"))
    response = parse_one(d.take())
    assert (response.body, response.closes) == (b"two", True)
    assert d.closed


def test_a_draining_idle_connection_closes_at_its_keep_alive_deadline() -> None:
    d = Driver(App(), Config(keep_alive_timeout=5.0, access_log=False))
    d.feed(get(b"/echo/one"))
    d.take()
    d.conn.shutdown(drain=True)
    d.advance()
    d.expire()
    assert d.closed and not d.output


def test_shutdown_without_drain_after_draining_closes_the_idle_connection_at_once() -> None:
    d = Driver(App(), Config(access_log=False))
    d.feed(get(b"/echo/one"))
    d.conn.shutdown(drain=True)
    d.advance()
    d.conn.shutdown()
    assert d.conn.next_action(0.0) == Close()
