"""Sessions: an app task running concurrently, meeting its connection in a `Channel`.

The tasks here are plain coroutines that pause (yield to the Driver, which plays the event
loop) whenever they would wait; the Driver resumes them whenever the core would wait.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import pytest

from protocol import Channel, Config, FileBody, Request, Response, SendFile, ServerConnection, Wait

from .helpers import Driver, TrackedFile, chunked, get, parse, parse_one, post


class Pause:
    def __await__(self) -> Generator[None, None, None]:
        yield


async def pause() -> None:
    await Pause()


async def read_body(channel: Channel) -> bytes:
    body = bytearray()
    while True:
        got = channel.receive()
        if got is None:
            await pause()
            continue
        data, more = got
        body += data
        if not more:
            return bytes(body)


async def sent(channel: Channel, ticket: int) -> None:
    while channel.delivered < ticket and not channel.gone:
        await pause()


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await pause()


Script = Callable[[Channel], Awaitable[None]]


class ScriptSession:
    def __init__(self, script: Script) -> None:
        self.script = script

    def run(self, channel: Channel) -> Awaitable[None]:
        return self.script(channel)


class SessionApp:
    """Serves every request with a new session running `script`; keeps the channels."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.channels: list[Channel] = []

    def __call__(self, request: Request) -> ScriptSession:
        async def run(channel: Channel) -> None:
            self.channels.append(channel)
            await self.script(channel)

        return ScriptSession(run)


def reply(status: int = 200, body: bytes = b"hello", headers: tuple[tuple[bytes, bytes], ...] = ()) -> Script:
    async def script(channel: Channel) -> None:
        channel.start(Response(status, headers))
        await sent(channel, channel.send(body, more=False))
        channel.finish()

    return script


def test_head_and_body_leave_together_and_keep_alive_goes_on() -> None:
    d = Driver(SessionApp(reply()))
    d.feed(get() + get())
    first, second = parse(bytes(d.output), 2)
    assert (first.status, first.body, second.body) == (200, b"hello", b"hello")
    assert first.header(b"transfer-encoding") == b"chunked"
    assert not d.closed
    sends = [a for a in d.actions if type(a).__name__ == "Send"]
    assert len(sends) == 2  # one write per response


def test_a_content_length_from_the_app_frames_the_body() -> None:
    d = Driver(SessionApp(reply(headers=((b"Content-Length", b"5"),))))
    d.feed(get())
    response = parse_one(bytes(d.output))
    assert (response.body, response.header(b"content-length")) == (b"hello", b"5")


def whole(status: int = 200, body: bytes = b"hello", headers: tuple[tuple[bytes, bytes], ...] = ()) -> Script:
    async def script(channel: Channel) -> None:
        await sent(channel, channel.send_response(Response(status, headers, body)))
        channel.finish()

    return script


def test_a_whole_response_posted_at_once_is_served_as_head_then_last_piece() -> None:
    app = SessionApp(whole(headers=((b"Content-Length", b"5"),)))
    d = Driver(app)
    d.feed(get() + get(method=b"HEAD") + get())
    first, head, third = parse(bytes(d.output), [b"GET", b"HEAD", b"GET"])
    assert (first.status, first.body, first.header(b"content-length")) == (200, b"hello", b"5")
    assert (head.body, head.header(b"content-length")) == (b"", b"5")
    assert third.body == b"hello"
    assert not d.closed
    assert [channel.delivered for channel in app.channels] == [1, 1, 1]
    assert all(channel.done for channel in app.channels)


@pytest.mark.parametrize("script", [reply, whole])
def test_a_204_from_a_task_goes_out_without_its_content_length(script: Callable[..., Script]) -> None:
    """RFC 9110 §8.6 (uvicorn sends it); the body is dropped and the connection goes on."""
    d = Driver(SessionApp(script(status=204, headers=((b"Content-Length", b"5"),))))
    d.feed(get() + get())
    assert b"content-length" not in bytes(d.output).lower()
    assert [r.status for r in parse(bytes(d.output), 2)] == [204, 204] and not d.closed


def test_a_whole_response_is_framed_and_checked_as_pieces_are() -> None:
    d = Driver(SessionApp(whole()))
    d.feed(get())
    response = parse_one(bytes(d.output))
    assert (response.body, response.header(b"transfer-encoding")) == (b"hello", b"chunked")
    short = Driver(SessionApp(whole(headers=((b"Content-Length", b"9"),))))
    short.feed(get() + get())
    assert short.closed  # its Content-Length promised more: cut, as for a last piece
    assert not bytes(short.output).endswith(b"hello\r\n0\r\n\r\n")


def test_body_bytes_put_with_the_end_while_the_task_looks_are_not_lost() -> None:
    # The core's thread runs put_body(data, True) between the task's look at the body
    # (empty) and its look at the end: the task must still get the bytes.
    channel = Channel(lambda: None)

    class Racing(deque[bytes]):
        looked = False

        def __len__(self) -> int:
            if not Racing.looked:
                Racing.looked = True
                channel.put_body(b"last", True)  # appends to this deque, then marks the end
                return 0  # what the task saw before it
            return super().__len__()

    channel._body = Racing()
    assert channel.receive() == (b"last", False)
    assert channel.buffered() == 0


def test_a_piece_counts_as_delivered_only_once_its_send_is_done() -> None:
    seen: list[int] = []

    async def script(channel: Channel) -> None:
        channel.start(Response(200))
        ticket = channel.send(b"a", more=True)
        seen.append(channel.delivered)
        await sent(channel, ticket)
        seen.append(channel.delivered)
        await sent(channel, channel.send(b"b", more=False))
        channel.finish()

    d = Driver(SessionApp(script))
    d.feed(get())
    assert seen == [0, 1]
    assert parse_one(bytes(d.output)).body == b"ab"


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_the_body_reaches_the_task_in_any_fragments(size: int) -> None:
    async def echo(channel: Channel) -> None:
        body = await read_body(channel)
        channel.start(Response(200))
        await sent(channel, channel.send(body, more=False))
        channel.finish()

    d = Driver(SessionApp(echo))
    d.feed(post(b"/", b"x" * 1000) + get(), size)
    first, second = parse(bytes(d.output), 2)
    assert (first.body, second.body) == (b"x" * 1000, b"")


def test_a_chunked_body_reaches_the_task() -> None:
    async def echo(channel: Channel) -> None:
        body = await read_body(channel)
        channel.start(Response(200))
        await sent(channel, channel.send(body, more=False))
        channel.finish()

    d = Driver(SessionApp(echo))
    head = get(b"/", b"Transfer-Encoding: chunked", method=b"POST")
    d.feed(head + chunked(b"abc", b"defg"), 5)
    assert parse_one(bytes(d.output)).body == b"abcdefg"


def test_100_continue_is_sent_when_the_task_first_asks_for_the_body() -> None:
    asked = []

    async def script(channel: Channel) -> None:
        await until(lambda: bool(asked))
        body = await read_body(channel)
        channel.start(Response(200))
        await sent(channel, channel.send(body, more=False))
        channel.finish()

    d = Driver(SessionApp(script))
    d.feed(get(b"/", b"Content-Length: 3", b"Expect: 100-continue", method=b"POST"))
    assert isinstance(d.waiting, (Wait, type(d.waiting)))
    assert b"100 Continue" not in d.output
    asked.append(True)
    d.run_tasks()
    d.advance()
    assert bytes(d.output).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    d.feed(b"abc")
    assert parse_one(bytes(d.output)).body == b"abc"


@pytest.mark.parametrize(
    ("headers", "complete"),
    [((), True), ((b"Expect: 100-continue",), False), ((b"Connection: upgrade", b"Upgrade: h2c"), False)],
)
def test_a_request_without_a_body_is_complete_before_the_task_runs(
    headers: tuple[bytes, ...], complete: bool
) -> None:
    """Its end is read with its head, so the task's first receive() has it; with an Expect
    or Upgrade field the core reads it later, when the task asks (as it always did)."""
    first: list[object] = []

    async def script(channel: Channel) -> None:
        first.append(channel.receive())
        body = await read_body(channel)
        channel.start(Response(200))
        await sent(channel, channel.send(body or b"empty", more=False))
        channel.finish()

    d = Driver(SessionApp(script))
    d.feed(get(b"/", *headers) + get())
    one, two = parse(bytes(d.output), 2)
    assert (one.status, one.body, two.body) == (200, b"empty", b"empty")
    assert first[0] == ((b"", False) if complete else None)
    assert first[1] == (b"", False)
    assert (b"100 Continue" in d.output) == (b"Expect: 100-continue" in headers)  # as before


def test_a_task_answering_without_the_body_a_client_holds_back_closes_the_connection() -> None:
    d = Driver(SessionApp(reply(403, b"no")))
    d.feed(get(b"/", b"Content-Length: 3", b"Expect: 100-continue", method=b"POST"))
    response = parse_one(bytes(d.output))
    assert (response.status, response.informational, response.closes) == (403, [], True)
    assert d.half_closed  # then lingers: the body may still come


def test_the_body_is_read_ahead_only_a_bounded_amount() -> None:
    release: list[bool] = []

    async def lazy(channel: Channel) -> None:
        await until(lambda: bool(release))
        body = await read_body(channel)
        channel.start(Response(200))
        await sent(channel, channel.send(b"%d" % len(body), more=False))
        channel.finish()

    app = SessionApp(lazy)
    d = Driver(app)
    size = 1 << 20
    data = post(b"/", b"y" * size)
    offset = 0
    while isinstance(d.waiting, type(d.waiting)) and not isinstance(d.waiting, Wait):
        d.feed(data[offset : offset + 16384])
        offset += 16384
    assert isinstance(d.waiting, Wait)  # it stopped reading: the task did not ask
    assert app.channels[0].buffered() <= 64 * 1024 + 16384
    release.append(True)
    d.run_tasks()
    d.advance()
    d.feed(data[offset:], 16384)
    assert parse_one(bytes(d.output)).body == b"%d" % size


def test_a_client_that_leaves_is_gone_for_the_task_and_its_sends_are_dropped() -> None:
    async def long_poll(channel: Channel) -> None:
        await read_body(channel)
        await until(lambda: channel.gone or channel.done or channel.stopping)
        channel.start(Response(200))
        channel.send(b"late", more=False)
        channel.finish()

    app = SessionApp(long_poll)
    d = Driver(app)
    d.feed(get())
    assert isinstance(d.waiting, Wait)
    d.conn.connection_lost()  # the transport saw the peer leave during the Wait
    d.advance()
    d.run_tasks()
    assert d.closed
    assert app.channels[0].gone
    assert d.output == b""
    assert not d.tasks  # it ran to its end


def test_end_of_input_while_the_task_works_is_the_client_leaving() -> None:
    async def slow(channel: Channel) -> None:
        await until(lambda: channel.gone)
        channel.finish()

    app = SessionApp(slow)
    d = Driver(app)
    d.feed(post(b"/", b"abc")[:-1], eof=True)  # while the body is still read
    d.run_tasks()
    assert app.channels[0].gone
    assert d.closed and d.output == b""


def test_shutdown_tells_the_task_and_the_response_closes_the_connection() -> None:
    async def stream(channel: Channel) -> None:
        channel.start(Response(200))
        while not channel.stopping:
            await sent(channel, channel.send(b"tick", more=True))
            await pause()
        await sent(channel, channel.send(b"", more=False))
        channel.finish()

    app = SessionApp(stream)
    d = Driver(app)
    d.feed(get())
    d.conn.shutdown()
    d.run_tasks()
    d.advance()
    assert app.channels[0].stopping
    assert d.closed
    response = parse_one(bytes(d.output))
    assert response.body.startswith(b"tick")  # complete; its head left before shutdown began


@pytest.mark.parametrize("error", [None, RuntimeError("boom")])
def test_a_task_that_ends_without_a_response_gets_500(
    error: Exception | None, caplog: pytest.LogCaptureFixture
) -> None:
    async def nothing(channel: Channel) -> None:
        channel.finish(error)

    d = Driver(SessionApp(nothing))
    d.feed(get())
    response = parse_one(bytes(d.output))
    assert (response.status, response.closes) == (500, True)
    # A task that raised logged its error itself (the ASGI adapter: with the traceback).
    assert ("without a response" in caplog.text) == (error is None)


def test_a_task_that_ends_mid_response_cuts_the_connection() -> None:
    async def half(channel: Channel) -> None:
        channel.start(Response(200))
        await sent(channel, channel.send(b"part", more=True))
        channel.finish(RuntimeError("boom"))

    d = Driver(SessionApp(half))
    d.feed(get() + get())
    assert d.closed
    assert b"part" in d.output
    assert not bytes(d.output).endswith(b"0\r\n\r\n")


def test_a_body_before_the_head_is_a_500() -> None:
    async def wrong(channel: Channel) -> None:
        channel.send(b"x", more=False)
        channel.finish()

    d = Driver(SessionApp(wrong))
    d.feed(get())
    assert parse_one(bytes(d.output)).status == 500


def test_nothing_of_the_body_goes_out_after_head() -> None:
    d = Driver(SessionApp(reply(body=b"not for HEAD")))
    d.feed(get(method=b"HEAD") + get())
    head, second = parse(bytes(d.output), [b"HEAD", b"GET"])
    assert head.body == b"" and second.body == b"not for HEAD"


@pytest.mark.parametrize(("te", "expected"), [(True, [(b"x-checksum", b"abc")]), (False, [])])
def test_trailers_go_only_to_a_client_that_asked_for_them(
    te: bool, expected: list[tuple[bytes, bytes]]
) -> None:
    async def script(channel: Channel) -> None:
        channel.start(Response(200), trailers=True)
        channel.send(b"data", more=False)
        await pause()
        channel.send_trailers(((b"X-Checksum", b"abc"),))
        await sent(channel, 1)
        channel.finish()

    d = Driver(SessionApp(script))
    d.feed(get(b"/", *([b"TE: trailers"] if te else [])))
    output = bytes(d.output)
    assert output.endswith(b"0\r\nX-Checksum: abc\r\n\r\n" if te else b"0\r\n\r\n")
    assert parse_one(output).body == b"data"
    assert expected is not None


def test_a_file_as_the_last_piece_is_sent_with_sendfile() -> None:
    files: list[TrackedFile] = []

    async def script(channel: Channel) -> None:
        files.append(TrackedFile(b"0123456789"))
        channel.start(Response(200, ((b"Content-Length", b"4"),)))
        await sent(channel, channel.send(FileBody(files[-1], 3, 4), more=False))
        channel.finish()

    d = Driver(SessionApp(script))
    d.feed(get() + get())
    assert [a for a in d.actions if isinstance(a, SendFile)]
    first, second = parse(bytes(d.output), 2)
    assert first.body == second.body == b"3456"
    assert all(file.closed for file in files)


def test_a_task_waiting_for_a_body_that_stalls_gets_408() -> None:
    async def echo(channel: Channel) -> None:
        await read_body(channel)
        channel.finish()

    d = Driver(SessionApp(echo))
    d.feed(get(b"/", b"Content-Length: 10", method=b"POST") + b"abc")
    assert d.deadline == d.now + d.config.body_timeout
    d.expire()
    assert parse_one(bytes(d.output)).status == 408
    d.run_tasks()


def test_a_body_over_the_limit_is_413_for_a_task_too() -> None:
    async def echo(channel: Channel) -> None:
        await read_body(channel)
        channel.finish()

    d = Driver(SessionApp(echo), Config(max_body_size=10, access_log=False))
    d.feed(get(b"/", b"Transfer-Encoding: chunked", method=b"POST") + chunked(b"x" * 8, b"y" * 8))
    assert parse_one(bytes(d.output)).status == 413


def test_without_wake_a_session_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    conn = ServerConnection(SessionApp(reply()), Config(access_log=False), now=0.0)
    conn.receive_data(get(), 0.0)
    action: Any = conn.next_action(0.0)
    assert b"500" in action.data
    assert "no wake" in caplog.text


@pytest.mark.parametrize(
    "headers",
    [
        ((b"content-length", b"abc"),),
        ((b"Content-Length", b""),),
        [(b"content-length", b"1x")],  # a list, as ASGI apps give (never cached)
        [(b"content-length", "1x")],  # a str value, which h11 takes (and refuses)
    ],
)
def test_an_unparsable_content_length_from_the_app_is_a_500(
    headers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The core's contract: no exception escapes to the transport, whatever the app does;
    a response h11 refuses is answered 500 (this one raised out of next_action, and the
    client got nothing)."""
    d = Driver(SessionApp(reply(headers=headers)))
    d.feed(get())
    response = parse_one(bytes(d.output))
    assert (response.status, response.closes) == (500, True)
    assert "invalid response" in caplog.text


def test_a_read_of_many_tiny_chunks_reaches_the_task_a_slice_at_a_time() -> None:
    """A flood of tiny chunks (one h11 event per body byte) is parsed a slice per turn: the
    core waits for the task between slices (the event loop runs others meanwhile), instead
    of parsing the whole read ahead (64 KiB of 1-byte pieces, ~1 s of CPU) in one go."""
    sizes: list[int] = []

    async def echo(channel: Channel) -> None:
        body = bytearray()
        while True:
            got = channel.receive()
            if got is None:
                await pause()
                continue
            data, more = got
            sizes.append(len(data))
            body += data
            if not more:
                break
        channel.start(Response(200))
        await sent(channel, channel.send(bytes(body), more=False))
        channel.finish()

    d = Driver(SessionApp(echo), Config(max_head_size=4096, access_log=False))
    head = get(b"/", b"Transfer-Encoding: chunked", method=b"POST")
    d.feed(head + b"1\r\na\r\n" * 20000 + b"0\r\n\r\n" + get())  # one read
    first, second = parse(bytes(d.output), 2)
    assert (first.body, second.status) == (b"a" * 20000, 200)
    assert max(sizes) <= 4096, max(sizes)  # at most a slice's pieces between two turns
    assert len(sizes) >= 120000 // 4096
