"""The ASGI adapter against a fake core (tests/handlers/asgi_driver.py), on every runtime.

Each test runs the session's task on trio, on asyncio, and on asyncio with the core on
another thread (the threads transport's case, where notify comes from off the loop).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from handlers.asgi import (
    HIGH_WATER,
    HIGH_WATER_PIECES,
    ASGIApp,
    ClientDisconnected,
    Message,
    Receive,
    Scope,
    Send,
)
from protocol import FileBody
from protocol.channel import Start

from .asgi_driver import RUNTIMES, Driver, request


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
    await send({"type": "http.response.body", "body": b"hi!"})


def test_a_minimal_app_posts_start_and_one_last_piece(runtime: str) -> None:
    driver = Driver()
    outcome = driver.run(hello, runtime=runtime)
    assert outcome.start.response.status == 200
    assert list(outcome.start.response.headers) == [(b"content-length", b"3")]
    assert not outcome.start.trailers
    assert [(p.data, p.more) for p in outcome.pieces] == [(b"hi!", False)]
    assert outcome.whole  # posted together, for the core to take in one step
    assert outcome.finish_count == 1 and outcome.error is None


def test_scope_for_a_tricky_target(runtime: str) -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await hello(scope, receive, send)

    headers = ((b"x-a", b"1"), (b"accept", b"*/*"), (b"x-a", b"2"))
    req = request(b"GET", b"/caf%C3%A9/a%2Fb?x=%20&y", headers, scheme="https")
    Driver().run(app, req, runtime)
    scope = seen[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "https"
    assert scope["path"] == "/café/a/b"
    assert scope["raw_path"] == b"/caf%C3%A9/a%2Fb"
    assert scope["query_string"] == b"x=%20&y"
    assert scope["root_path"] == ""
    assert list(scope["headers"]) == [(b"host", b"example"), *headers]
    assert tuple(scope["client"]) == ("127.0.0.1", 50000)
    assert tuple(scope["server"]) == ("127.0.0.1", 8000)
    assert scope["state"] == {}
    assert scope["extensions"] == {"http.response.pathsend": {}}


def test_invalid_utf8_in_the_path_is_replaced_as_uvicorn_does(runtime: str) -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await hello(scope, receive, send)

    Driver().run(app, request(target=b"/a%FFb%e9"), runtime)
    assert seen[0]["path"] == "/a\ufffdb\ufffd"
    assert seen[0]["raw_path"] == b"/a%FFb%e9"


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/api/items", "/api/items"),  # the proxy passed the prefix on
        (b"/api", "/api"),
        (b"/items", "/api/items"),  # the proxy stripped it (uvicorn's case)
        (b"/apiary", "/api/apiary"),  # not below /api
    ],
)
def test_root_path_is_always_the_start_of_path(target: bytes, path: str) -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await hello(scope, receive, send)

    Driver().run(ASGIApp(app, root_path="/api/"), request(target=target))
    assert seen[0]["root_path"] == "/api"
    assert seen[0]["path"] == path


def test_state_is_a_shallow_copy_per_request() -> None:
    shared: list[int] = []
    state: dict[str, Any] = {"items": shared}
    wrapper = ASGIApp(hello_state := _state_app(), state=state)  # noqa: F841
    for _ in range(2):
        Driver().run(wrapper)
    assert state == {"items": shared}  # keys set by requests stay theirs
    assert shared == [1, 1]  # the values are shared


def _state_app() -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"]["mine"] = True
        scope["state"]["items"].append(1)
        await hello(scope, receive, send)

    return app


def test_body_pieces_with_more_body_then_disconnect_once_done(runtime: str) -> None:
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            got.append(message)
            if not message.get("more_body"):
                break
        body = b"".join(m["body"] for m in got)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body})
        got.append(await receive())  # waits until the core says done

    def script(driver: Driver) -> None:
        if driver.outcome.complete and not driver.channel.done:
            driver.channel.mark_done()

    driver = Driver([b"ab", b"cd", b"e"], script=script)
    outcome = driver.run(app, request(b"POST"), runtime)
    assert [(m["type"], m.get("body"), m.get("more_body")) for m in got] == [
        ("http.request", b"ab", True),
        ("http.request", b"cd", True),
        ("http.request", b"e", False),
        ("http.disconnect", None, None),
    ]
    assert outcome.body == b"abcde"
    assert driver.asked_for_body == 3


def test_a_body_cut_by_the_client_ends_with_disconnect(runtime: str) -> None:
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            got.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break

    def script(driver: Driver) -> None:
        if driver.asked_for_body == 1 and not driver.channel.gone:
            driver.channel.mark_gone()

    outcome = Driver([b"ab", b"cd", b"ef"], script=script).run(app, request(b"POST"), runtime)
    assert [m["type"] for m in got] == ["http.request", "http.disconnect"]
    assert got[0] == {"type": "http.request", "body": b"ab", "more_body": True}
    assert outcome.finish_count == 1


def test_a_long_poll_sees_the_client_leave(runtime: str) -> None:
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append(await receive())
        got.append(await receive())  # the long poll: nothing until the client leaves

    def script(driver: Driver) -> None:
        if driver.elapsed() > 0.1 and not driver.channel.gone:
            driver.channel.mark_gone()

    outcome = Driver(script=script).run(app, runtime=runtime)
    assert [m["type"] for m in got] == ["http.request", "http.disconnect"]
    assert outcome.error is None and outcome.finish_count == 1
    assert not [m for m in outcome.messages if isinstance(m, Start)]


def test_shutdown_gives_a_waiting_receive_disconnect(runtime: str) -> None:
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append(await receive())
        got.append(await receive())
        await hello(scope, receive, send)

    def script(driver: Driver) -> None:
        if driver.elapsed() > 0.05 and not driver.channel.stopping:
            driver.channel.mark_stopping()

    outcome = Driver(script=script).run(app, runtime=runtime)
    assert [m["type"] for m in got] == ["http.request", "http.disconnect"]
    assert outcome.body == b"hi!"


def test_shutdown_ends_an_event_stream_cleanly_at_its_next_send(runtime: str) -> None:
    sent = 0
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal sent
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        try:
            while True:
                await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
                sent += 1
                await _sleep(0.005)
        except OSError as exc:
            raised.append(exc)
            raise

    def script(driver: Driver) -> None:
        if sent >= 3 and not driver.channel.stopping:
            driver.channel.mark_stopping()

    outcome = Driver(script=script).run(app, runtime=runtime)
    assert isinstance(raised[0], ClientDisconnected)
    assert outcome.pieces[-1].data == b"" and not outcome.pieces[-1].more
    assert outcome.error is None  # a clean end: the core completes the response


def test_shutdown_lets_other_streams_finish(runtime: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/csv")]}
        )
        for _ in range(5):
            await send({"type": "http.response.body", "body": b"a,b\n", "more_body": True})
            await _sleep(0.005)
        await send({"type": "http.response.body", "body": b""})

    def script(driver: Driver) -> None:
        if driver.outcome.pieces and not driver.channel.stopping:
            driver.channel.mark_stopping()

    outcome = Driver(script=script).run(app, runtime=runtime)
    assert outcome.body == b"a,b\n" * 5 and outcome.error is None


async def _sleep(seconds: float) -> None:
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        await trio.sleep(seconds)
    else:
        import asyncio

        await asyncio.sleep(seconds)


def test_send_after_the_client_left_raises_oserror_and_is_not_logged_as_an_error(
    runtime: str, caplog: pytest.LogCaptureFixture
) -> None:
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        while True:
            try:
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
            except OSError as exc:
                raised.append(exc)
                raise
            await _sleep(0.002)

    def script(driver: Driver) -> None:
        if len(driver.outcome.pieces) >= 3 and not driver.channel.gone:
            driver.channel.mark_gone()

    with caplog.at_level(logging.DEBUG, "httpserver.error"):
        outcome = Driver(script=script).run(app, runtime=runtime)
    assert isinstance(raised[0], ClientDisconnected) and isinstance(raised[0], OSError)
    assert outcome.finish_count == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_backpressure_holds_the_app_while_pieces_wait(runtime: str) -> None:
    piece = b"x" * (HIGH_WATER // 2)
    sent = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal sent
        await send({"type": "http.response.start", "status": 200})
        for _ in range(20):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent += 1
        await send({"type": "http.response.body", "body": b""})

    most_waiting = 0

    def script(driver: Driver) -> None:
        nonlocal most_waiting
        most_waiting = max(most_waiting, driver.undelivered)
        if driver.rounds % 5 == 0:
            driver.release(1)  # a slow client: one piece now and then

    driver = Driver(deliver=False, script=script)
    outcome = driver.run(app, runtime=runtime)
    assert outcome.body == piece * 20
    assert most_waiting <= 3  # HIGH_WATER / piece + the one that made send() wait


def test_the_head_waits_for_the_first_body_message_so_an_error_between_is_a_500(runtime: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200})
        raise ValueError("boom")

    outcome = Driver().run(app, runtime=runtime)
    assert not outcome.messages[:-1]  # no Start: the core answers 500
    assert isinstance(outcome.error, ValueError) and outcome.finish_count == 1


@pytest.mark.parametrize("more", [False, True])
def test_a_first_body_that_is_not_bytes_is_a_500(more: bool) -> None:
    """Checked before the head goes out: a clean 500, not a 200 cut short."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": "text", "more_body": more})

    outcome = Driver().run(app)
    assert isinstance(outcome.error, TypeError) and "bytes" in str(outcome.error)
    assert not [m for m in outcome.messages if isinstance(m, Start)]  # so: a 500


def test_large_header_lists_are_not_kept_in_the_checked_cache() -> None:
    """The cache of checked header lists is bounded by count: an app whose every response
    carries a distinct megabyte header would hold hundreds of megabytes in it."""
    from handlers import asgi

    headers = ((b"x-big", b"a" * 100_000),)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    assert Driver().run(app).error is None
    assert headers not in asgi._HEADS


def test_a_huge_invalid_header_is_shown_briefly_and_redacted() -> None:
    """The error names the field, its value cut short (no megabyte log line), still quoted
    whole so that the log's redaction finds a credential field's value."""
    from protocol.redaction import redact_text

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"set-cookie", "s3cr3t" * 100_000)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    error = Driver().run(app).error
    assert isinstance(error, TypeError) and len(str(error)) < 500
    assert "s3cr3t" not in redact_text(str(error)), redact_text(str(error))


def test_an_error_after_the_body_started_is_passed_on_to_cut_the_connection(runtime: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        raise ValueError("boom")

    outcome = Driver().run(app, runtime=runtime)
    assert outcome.start.response.status == 200
    assert isinstance(outcome.error, ValueError) and outcome.finish_count == 1


@pytest.mark.parametrize("sends", [0, 1, 2])
def test_returning_without_a_complete_response_is_an_error(
    sends: int, caplog: pytest.LogCaptureFixture
) -> None:
    messages: list[Message] = [
        {"type": "http.response.start", "status": 200},
        {"type": "http.response.body", "body": b"x", "more_body": True},
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for message in messages[:sends]:
            await send(message)

    outcome = Driver().run(app)
    assert isinstance(outcome.error, RuntimeError) and outcome.finish_count == 1
    assert "returned without" in caplog.text


def test_errors_are_logged_with_a_traceback_and_without_credentials(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError(f"bad request {scope['headers']!r}")

    headers = ((b"authorization", b"Bearer s3cr3t-t0ken"), (b"cookie", b"session=abcdef123; theme=dark"))
    Driver().run(app, request(b"GET", b"/x?token=1", headers))
    assert "Traceback" in caplog.text and "ValueError" in caplog.text and "GET /x" in caplog.text
    assert "s3cr3t-t0ken" not in caplog.text and "abcdef123" not in caplog.text
    assert "<redacted>" in caplog.text


@pytest.mark.parametrize(
    "message",
    [
        {"type": "http.response.body", "body": b"x"},  # before start
        {"type": "http.response.start", "status": "200"},
        {"type": "http.response.start", "status": 200, "headers": [("content-type", "text/plain")]},
        {"type": "http.response.start", "status": 101},
        {"type": "http.response.whatever"},
    ],
)
def test_invalid_messages_raise_in_the_app(message: Message) -> None:
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(message)
        except (RuntimeError, TypeError, ValueError) as exc:
            raised.append(exc)
            raise

    outcome = Driver().run(app)
    assert raised and outcome.error is raised[0]


def test_transfer_encoding_from_the_app_is_ignored() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"transfer-encoding", b"chunked"), (b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    outcome = Driver().run(app)
    assert list(outcome.start.response.headers) == [(b"content-type", b"text/plain")]


def test_pathsend_hands_the_core_the_open_file(runtime: str, tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"0123456789")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert "http.response.pathsend" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.pathsend", "path": str(target)})

    outcome = Driver().run(app, runtime=runtime)
    piece = outcome.pieces[0]
    assert isinstance(piece.data, FileBody) and not piece.more
    assert (piece.data.offset, piece.data.length) == (0, 10)
    assert outcome.body == b"0123456789" and outcome.error is None


def test_pathsend_of_a_missing_file_raises_in_the_app(tmp_path: Path) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.pathsend", "path": str(tmp_path / "missing")})

    outcome = Driver().run(app)
    assert isinstance(outcome.error, FileNotFoundError)
    assert not [m for m in outcome.messages if isinstance(m, Start)]  # so: a 500


def _trailer_app(scope: Scope, receive: Receive, send: Send) -> Any:
    async def run() -> None:
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-sum", b"1")], "more_trailers": True})
        await send({"type": "http.response.trailers", "headers": [(b"x-sum2", b"2")]})

    return run()


def test_trailers_go_to_a_client_that_asked(runtime: str) -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await _trailer_app(scope, receive, send)

    outcome = Driver().run(app, request(headers=((b"te", b"trailers"),)), runtime)
    assert "http.response.trailers" in seen[0]["extensions"]
    assert outcome.start.trailers
    assert [list(t.headers) for t in outcome.trailers] == [[(b"x-sum", b"1"), (b"x-sum2", b"2")]]
    assert outcome.error is None


def test_trailers_are_dropped_for_a_client_that_did_not_ask() -> None:
    outcome = Driver().run(_trailer_app)
    assert not outcome.start.trailers and not outcome.trailers
    assert outcome.body == b"data" and outcome.error is None


def test_a_cancelled_task_still_finishes_its_channel() -> None:
    import trio

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await trio.sleep_forever()

    driver = Driver()
    session = ASGIApp(app)(request())

    async def main() -> None:
        with trio.move_on_after(0.05):
            await session.run(driver.channel)

    trio.run(main)
    driver.pump()
    assert driver.outcome.finish_count == 1
    assert isinstance(driver.outcome.error, trio.Cancelled)


def test_the_file_of_a_pathsend_opens_no_descriptor_it_does_not_hand_over(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    test_pathsend_of_a_missing_file_raises_in_the_app(tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before


def test_pieces_are_bytes() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": memoryview(b"abc"), "more_body": True})
        await send({"type": "http.response.body", "body": bytearray(b"def")})

    outcome = Driver().run(app)
    assert [type(p.data) for p in outcome.pieces] == [bytes, bytes]
    assert outcome.body == b"abcdef"


def test_a_long_stream_of_small_pieces_keeps_little_bookkeeping() -> None:
    cycles: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200})
        for _ in range(3000):
            await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    class Recording(ASGIApp):
        def __call__(self, request: Any) -> Any:
            cycle = super().__call__(request)
            cycles.append(cycle)
            return cycle

    outcome = Driver().run(Recording(app))
    assert outcome.body == b"data: x\n\n" * 3000
    assert len(cycles[0]._pending) <= HIGH_WATER_PIECES + 1  # delivered pieces are forgotten as it goes
