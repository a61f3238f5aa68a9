"""The lifespan hooks on trio and asyncio, without a server: startup, shutdown, failures, modes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from handlers.asgi import Receive, Scope, Send
from handlers.lifespan import Lifespan, LifespanFailed


@pytest.fixture(params=["trio", "asyncio"])
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(runtime: str, main: Callable[[], Awaitable[None]]) -> None:
    if runtime == "trio":
        trio.run(main)
    else:
        asyncio.run(main())  # type: ignore[arg-type]


async def sleep(seconds: float) -> None:
    import sniffio

    if sniffio.current_async_library() == "trio":
        await trio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


def recording_app(events: list[str]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        assert scope["asgi"]["version"] == "3.0"
        message = await receive()
        events.append(message["type"])
        scope["state"]["db"] = "connected"
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        events.append(message["type"])
        await send({"type": "lifespan.shutdown.complete"})
        events.append("returned")

    return app


def test_startup_then_shutdown_on_the_same_loop(runtime: str) -> None:
    events: list[str] = []
    lifespan = Lifespan(recording_app(events), "on")

    async def main() -> None:
        await lifespan.startup()
        events.append("serving")
        assert lifespan.state == {"db": "connected"}
        await sleep(0.01)
        await lifespan.shutdown()
        await sleep(0.01)

    run(runtime, main)
    assert events == ["lifespan.startup", "serving", "lifespan.shutdown", "returned"]


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_startup_failed_is_fatal_in_both_modes(
    runtime: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    async def main() -> None:
        with pytest.raises(LifespanFailed):
            await Lifespan(app, mode).startup()  # type: ignore[arg-type]

    run(runtime, main)
    assert "no database" in caplog.text


def test_an_app_without_lifespan_is_served_without_it_in_auto(
    runtime: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", "unsupported scope"

    lifespan = Lifespan(app, "auto")

    async def main() -> None:
        with caplog.at_level(logging.INFO, "httpserver.error"):
            await lifespan.startup()
            await lifespan.shutdown()

    run(runtime, main)
    assert not lifespan.active
    records = [r for r in caplog.records if "does not support lifespan" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_app_without_lifespan_fails_to_start_with_on(
    runtime: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("unsupported scope")

    async def main() -> None:
        with pytest.raises(LifespanFailed):
            await Lifespan(app, "on").startup()

    run(runtime, main)
    assert "Traceback" in caplog.text and "unsupported scope" in caplog.text


def test_an_exception_after_reading_startup_is_a_failed_startup_in_auto(
    runtime: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise ConnectionRefusedError("the database is down")

    async def main() -> None:
        with pytest.raises(LifespanFailed):
            await Lifespan(app, "auto").startup()

    run(runtime, main)
    assert "the database is down" in caplog.text and "Traceback" in caplog.text


def test_an_exception_after_startup_began_is_fatal_in_auto(runtime: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.startup.complete"})  # twice: an error

    async def main() -> None:
        lifespan = Lifespan(app, "auto")
        await lifespan.startup()  # the first answer counts
        assert lifespan.active
        await lifespan.shutdown()

    run(runtime, main)


def test_startup_timeout(runtime: str, caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await sleep(30)

    async def main() -> None:
        with pytest.raises(LifespanFailed):
            await Lifespan(app, "auto", startup_timeout=0.1).startup()

    run(runtime, main)
    assert "within 0.1s" in caplog.text


def test_shutdown_timeout_is_logged_and_the_task_cancelled(
    runtime: str, caplog: pytest.LogCaptureFixture
) -> None:
    cancelled: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        try:
            await sleep(30)
        except BaseException:
            cancelled.append(True)
            raise

    async def main() -> None:
        lifespan = Lifespan(app, "on", shutdown_timeout=0.1)
        await lifespan.startup()
        await lifespan.shutdown()
        await sleep(0.05)

    run(runtime, main)
    assert "shutdown did not complete within 0.1s" in caplog.text
    assert cancelled == [True]


def test_shutdown_failed_is_logged(runtime: str, caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.failed", "message": "flush failed"})

    async def main() -> None:
        lifespan = Lifespan(app, "on")
        await lifespan.startup()
        await lifespan.shutdown()

    run(runtime, main)
    assert "flush failed" in caplog.text


def test_off_never_calls_the_app(runtime: str) -> None:
    calls: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope)

    async def main() -> None:
        lifespan = Lifespan(app, "off")
        await lifespan.startup()
        await lifespan.shutdown()

    run(runtime, main)
    assert calls == []


def test_a_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="lifespan mode"):
        Lifespan(recording_app([]), "maybe")  # type: ignore[arg-type]
