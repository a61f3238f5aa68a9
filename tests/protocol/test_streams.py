"""Stream bodies: a blocking producer's pieces, one `Run` step each, framed by the core."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from protocol import Close, Config, Request, Response, Run, Send

from .helpers import Driver, get, parse_one


class Pieces:
    """A `Stream` over `pieces`; `fail_at` raises instead of giving that piece."""

    def __init__(self, pieces: Iterable[bytes], fail_at: int = -1) -> None:
        self.pieces = list(pieces)
        self.fail_at = fail_at
        self.given = 0
        self.closed = 0

    def next_piece(self) -> bytes | None:
        if self.given == self.fail_at:
            raise RuntimeError("producer failed")
        if self.given == len(self.pieces):
            return None
        self.given += 1
        return self.pieces[self.given - 1]

    def close(self) -> None:
        self.closed += 1


class StreamApp:
    def __init__(self, stream: Pieces, headers: tuple[tuple[bytes, bytes], ...] = (), status: int = 200):
        self.stream = stream
        self.headers = headers
        self.status = status

    def __call__(self, request: Request) -> Response:
        return Response(self.status, self.headers, self.stream)


def test_pieces_go_out_chunked_each_after_the_previous_one_is_sent() -> None:
    stream = Pieces([b"one", b"", b"two"])
    d = Driver(StreamApp(stream), run_steps=False)
    d.feed(get())
    # Each piece is asked for in a watched step, and the next step comes only after the
    # Send of the piece before it: memory holds one piece.
    watched = []
    while isinstance(d.waiting, Run):
        watched.append(d.waiting.watch)
        d.waiting.step()
        d.advance()
    assert watched == [True] * 4 + [False]  # four pieces asked for (the last says: no more), then close()
    sends = [a for a in d.actions if isinstance(a, Send)]
    order = [type(a).__name__ for a in d.actions if isinstance(a, (Send, Run))]
    # The head at once; then each piece's Send before the step that makes the next one.
    assert order == ["Send", "Run", "Send", "Run", "Run", "Send", "Run", "Send", "Run"], str(order)
    response = parse_one(bytes(d.output))
    assert response.body == b"onetwo"
    assert response.header(b"transfer-encoding") == b"chunked"
    assert stream.closed == 1
    assert len(sends) >= 2


def test_the_connection_goes_on_after_a_stream() -> None:
    stream = Pieces([b"abc"])
    d = Driver(StreamApp(stream))
    d.feed(get() + get())
    assert d.output.count(b"HTTP/1.1 200") == 2
    assert not d.closed


def test_content_length_from_the_handler_frames_the_stream() -> None:
    stream = Pieces([b"ab", b"c"])
    d = Driver(StreamApp(stream, ((b"Content-Length", b"3"),)))
    d.feed(get())
    response = parse_one(bytes(d.output))
    assert response.body == b"abc"
    assert response.header(b"transfer-encoding") is None
    assert not d.closed


def test_more_than_the_content_length_is_never_sent_and_the_connection_is_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = Pieces([b"ab", b"cdef"])
    d = Driver(StreamApp(stream, ((b"Content-Length", b"3"),)))
    d.feed(get() + get())
    assert d.closed
    assert bytes(d.output).endswith(b"\r\n\r\nabc")
    assert stream.closed == 1
    assert "longer than its Content-Length" in caplog.text


def test_a_stream_short_of_its_content_length_cuts_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    stream = Pieces([b"ab"])
    d = Driver(StreamApp(stream, ((b"Content-Length", b"5"),)))
    d.feed(get() + get())
    assert d.closed
    assert bytes(d.output).endswith(b"\r\n\r\nab")
    assert stream.closed == 1
    assert "short of its Content-Length" in caplog.text


def test_http_1_0_without_content_length_is_delimited_by_closing() -> None:
    stream = Pieces([b"old", b"client"])
    d = Driver(StreamApp(stream))
    d.feed(get(version=b"1.0"))
    assert d.closed
    head, _, body = bytes(d.output).partition(b"\r\n\r\n")
    assert body == b"oldclient"
    assert b"chunked" not in head.lower()


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)])
def test_no_piece_is_asked_for_after_head_204_or_304_but_the_stream_is_closed(
    method: bytes, status: int
) -> None:
    stream = Pieces([b"never"])
    d = Driver(StreamApp(stream, status=status))
    d.feed(get(method=method))
    assert stream.given == 0
    assert stream.closed == 1
    assert b"never" not in d.output
    assert not d.closed


def test_a_producer_that_fails_after_the_head_cuts_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    stream = Pieces([b"first", b"second"], fail_at=1)
    d = Driver(StreamApp(stream))
    d.feed(get() + get())
    assert d.closed
    assert b"first" in d.output
    assert not bytes(d.output).endswith(b"0\r\n\r\n")  # no last chunk: the client sees the cut
    assert stream.closed == 1
    assert "producer failed" in caplog.text


def test_a_client_lost_between_pieces_closes_the_stream_and_asks_no_more() -> None:
    stream = Pieces([b"a", b"b", b"c"])
    d = Driver(StreamApp(stream), run_steps=False)
    d.feed(get())
    first = d.waiting
    assert isinstance(first, Run)
    first.step()
    d.conn.connection_lost()  # what a transport reports after a watched step saw the peer go
    d.run_steps = True
    d.advance()
    assert d.closed
    assert stream.given == 1
    assert stream.closed == 1


def test_shutdown_during_a_stream_finishes_it_then_closes() -> None:
    stream = Pieces([b"a", b"b"])
    d = Driver(StreamApp(stream), run_steps=False)
    d.feed(get())
    d.conn.shutdown()
    while not d.closed:
        action = d.waiting
        assert isinstance(action, (Run, Close)), action
        if isinstance(action, Run):
            action.step()
        d.advance()
    assert parse_one(bytes(d.output)).body == b"ab"
    assert stream.closed == 1


def test_access_log_counts_the_bytes_of_a_stream(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "httpserver.access")
    d = Driver(StreamApp(Pieces([b"abc", b"de"])), Config(access_log=True), client=("10.0.0.2", 7))
    d.feed(get(b"/s"))
    assert '10.0.0.2:7 - "GET /s HTTP/1.1" 200 5' in caplog.text


def test_an_unparsable_content_length_of_a_stream_is_a_500() -> None:
    stream = Pieces([b"abc"])
    d = Driver(StreamApp(stream, ((b"Content-Length", b"abc"),)))
    d.feed(get())
    response = parse_one(bytes(d.output))
    assert (response.status, response.closes) == (500, True)
    assert stream.closed == 1
