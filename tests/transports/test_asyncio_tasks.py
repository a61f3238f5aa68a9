"""The asyncio transport's app tasks (`AsyncioServer.spawn`): kept until they end, by the
callable they run, and forgotten as they end."""

from __future__ import annotations

import asyncio

import pytest

from protocol import Config
from transports import asyncio_server
from transports.options import ServerOptions


async def _ok(scope: object, receive: object, send: object) -> None:
    pass


def test_an_app_task_is_kept_until_it_ends_even_for_a_callable_spawned_twice() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = asyncio_server.AsyncioServer(_ok, Config(), ServerOptions(), [], loop)
        release = asyncio.Event()
        ran = 0

        async def job() -> None:
            nonlocal ran
            ran += 1
            await release.wait()

        server.spawn(job)
        server.spawn(job)  # the same callable again, while the first runs: its own key
        await asyncio.sleep(0)
        assert ran == 2 and len(server.tasks) == 2
        release.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert not server.tasks
        server.steps.close()

    asyncio.run(main())


def test_an_unhashable_callable_is_kept_too() -> None:
    class Job:
        __hash__ = None  # type: ignore[assignment]

        def __init__(self) -> None:
            self.ran = False

        async def __call__(self) -> None:
            self.ran = True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = asyncio_server.AsyncioServer(_ok, Config(), ServerOptions(), [], loop)
        job = Job()
        server.spawn(job)
        assert len(server.tasks) == 1
        for _ in range(3):
            await asyncio.sleep(0)
        assert job.ran and not server.tasks
        server.steps.close()

    asyncio.run(main())


def test_an_app_task_that_fails_is_logged_and_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = asyncio_server.AsyncioServer(_ok, Config(), ServerOptions(), [], loop)

        async def job() -> None:
            raise RuntimeError("a bug")

        server.spawn(job)
        for _ in range(3):
            await asyncio.sleep(0)
        assert not server.tasks
        server.steps.close()

    asyncio.run(main())
    assert "an app task failed" in caplog.text
