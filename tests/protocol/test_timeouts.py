"""Time is data: deadlines handed out with actions, and what `timeout(now)` does in each phase."""

from __future__ import annotations

import pytest

from protocol import Close, Config, Phase, Receive, Run, Send, SendFile

from .helpers import App, Driver, get, parse_one, post

CONFIG = Config(
    keep_alive_timeout=5.0, head_timeout=10.0, body_timeout=30.0, send_timeout=20.0, access_log=False
)


def test_an_idle_connection_closes_silently_at_the_keep_alive_deadline() -> None:
    d = Driver(App(), CONFIG, now=100.0)
    assert d.deadline == 105.0
    d.expire()
    assert d.closed and not d.output and not d.half_closed


def test_the_keep_alive_deadline_starts_after_each_response() -> None:
    d = Driver(App(), CONFIG, now=100.0)
    d.now = 103.0
    d.feed(get(b"/"))
    assert parse_one(d.take()).status == 200
    assert d.conn.phase is Phase.IDLE and d.deadline == 108.0
    d.expire()
    assert d.closed and not d.output


def test_the_head_deadline_runs_from_the_first_byte_and_a_dribble_gets_408_on_time() -> None:
    d = Driver(App(), CONFIG, now=0.0)
    d.now = 4.0  # idle for a while, then the first byte
    request = get(b"/echo/slow")
    for second, byte in enumerate(request[:12]):
        d.now = 4.0 + second
        d.feed(bytes([byte]))
        assert d.deadline == 14.0, "each byte must not extend the deadline"
    d.expire()
    assert d.now == 14.0
    response = parse_one(d.take())
    assert response.status == 408 and response.closes
    assert d.closed or d.half_closed
    assert d.app.requests == []


def test_a_head_completed_before_the_deadline_is_served() -> None:
    d = Driver(App(), CONFIG, now=0.0)
    request = get(b"/echo/ok")
    d.feed(request[:5])
    d.now = 9.9
    d.feed(request[5:])
    assert parse_one(d.take()).body == b"ok"


def test_a_pipelined_partial_head_gets_a_head_deadline_from_the_response() -> None:
    d = Driver(App(), CONFIG, now=50.0)
    d.feed(get(b"/") + b"GET /ec")
    d.take()
    assert d.conn.phase is Phase.HEAD and d.deadline == 60.0
    d.expire()
    assert parse_one(d.take()).status == 408


@pytest.mark.parametrize("target", [b"/upload", b"/blocking"])
def test_a_stalled_body_gets_408_and_the_exchange_is_aborted(target: bytes) -> None:
    app = App()
    d = Driver(app, CONFIG, now=0.0)
    request = post(target, b"x" * 100)
    d.feed(request[:-50])
    assert d.deadline == 30.0
    d.now = 20.0
    d.feed(request[-50:-40])
    assert d.deadline == 50.0, "progress extends the body deadline"
    d.expire()
    response = parse_one(d.take())
    assert response.status == 408 and response.closes
    assert app.exchanges[0].calls[-1] == "abort" and "respond" not in app.exchanges[0].calls


def test_a_stalled_unread_body_after_the_response_closes_silently() -> None:
    d = Driver(App(), CONFIG, now=0.0)
    d.feed(post(b"/echo/x", b"y" * 100)[:-50])
    assert parse_one(d.take()).body == b"x"
    assert d.conn.phase is Phase.DRAIN and d.deadline == 30.0
    d.expire()
    assert d.closed and not d.output


def test_a_send_that_does_not_complete_in_time_closes_without_more_output() -> None:
    d = Driver(App(), CONFIG, now=0.0)
    d.now = 1.0
    d.conn.receive_data(get(b"/echo/a") + get(b"/echo/b"), d.now)
    send = d.advance(stop_at=(Send,))
    assert isinstance(send, Send) and send.deadline == 21.0
    d.now = 21.0
    d.conn.timeout(d.now)
    assert d.conn.next_action(d.now) == Close()


def test_a_file_send_that_does_not_complete_in_time_closes_the_file() -> None:
    app = App(memfile_size=3000)
    config = Config(send_chunk_size=1000, send_timeout=20.0, access_log=False)
    d = Driver(app, config, now=0.0)
    d.conn.receive_data(get(b"/memfile"), 0.0)
    d.advance(stop_at=(SendFile,))
    d.now = 7.0
    piece = d.advance(stop_at=(SendFile,))  # the second piece: its own deadline
    assert isinstance(piece, SendFile) and piece.deadline == 27.0
    d.conn.timeout(27.0)
    assert d.conn.next_action(27.0) == Close()
    assert app.files[0].closed


def test_send_deadlines_are_for_progress_each_write_carries_the_send_timeout() -> None:
    """Send and SendFile carry `timeout` (send_timeout): the transport moves the deadline on by
    it each time bytes go out, so a slow but steady reader is never cut (nginx's send_timeout)."""
    app = App(memfile_size=3000)
    config = Config(send_chunk_size=1000, send_timeout=20.0, access_log=False)
    d = Driver(app, config, now=0.0)
    d.conn.receive_data(get(b"/memfile"), 0.0)
    head = d.advance(stop_at=(Send,))
    assert isinstance(head, Send) and (head.deadline, head.timeout) == (20.0, 20.0)
    piece = d.advance(stop_at=(SendFile,))  # queued with the head
    assert isinstance(piece, SendFile) and (piece.deadline, piece.timeout) == (20.0, 20.0)
    d.now = 500.0  # a piece may take as long as it keeps making progress
    piece = d.advance(stop_at=(SendFile,))
    assert isinstance(piece, SendFile) and (piece.deadline, piece.timeout) == (520.0, 20.0)


def test_a_timeout_while_lingering_closes() -> None:
    d = Driver(App(), CONFIG, now=0.0)
    d.feed(get(b"/", b"Connection: close") + b"junk")
    assert d.half_closed and d.deadline == CONFIG.linger_timeout
    d.expire()
    assert d.closed


def test_every_receive_carries_a_deadline() -> None:
    d = Driver(App(), CONFIG, now=0.0)
    d.feed(get(b"/") + post(b"/upload", b"abc")[:-1])
    d.feed(b"c" + get(b"/echo/x", b"Connection: close") + b"extra")
    receives = [a for a in d.actions if isinstance(a, Receive)]
    assert receives and all(r.deadline is not None for r in receives)


def test_time_spent_in_a_blocking_step_does_not_count_against_the_client() -> None:
    app = App()
    d = Driver(app, CONFIG, now=0.0, run_steps=False)
    request = post(b"/blocking", b"x" * 100)
    d.feed(request[:-50])
    run = d.waiting
    assert isinstance(run, Run)
    d.now = 29.0  # a slow disk
    run.step()
    receive = d.advance()
    assert isinstance(receive, Receive) and receive.deadline == 29.0 + CONFIG.body_timeout
