"""The small runtime interface the ASGI adapter needs: wake a task, spawn one, on trio or asyncio.

An app task runs on whatever loop the transport gives it (trio; asyncio; one asyncio loop
thread under the threads transport) and sleeps until the core changes its `Channel`. The
core calls `Channel.notify` on the thread that drives the connection: the loop's own thread
(trio, asyncio) or a worker thread (threads). A `Notifier` is what `notify` is set to:

    since = notifier.generation          # before looking
    while not ready():                    # look at the channel
        await notifier.wait(since)        # returns at once if set() came after `since`
        since = notifier.generation

`set()` bumps the generation, then wakes every task waiting (directly on the loop's thread,
else through the loop's thread-safe entry: `call_soon_threadsafe`, trio's token). A
wake-up is never lost: a waiter registers before it compares the generation, and `set()`
bumps it before it looks for waiters. Several tasks may wait at once (an app that listens
for `http.disconnect` while another of its tasks sends); a wait may be cancelled (trio
cancel scopes, anyio timeouts, asyncio cancellation) and leaves nothing behind.

One class per runtime, chosen with sniffio (trio's own dependency); the ASGI logic above
them is written once. anyio would do the same job; see docs/asgi.md for why not (cost).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import sniffio


class Notifier(Protocol):
    generation: int

    def set(self) -> None:
        """Wake the tasks waiting; callable from any thread."""
        ...

    async def wait(self, since: int, timeout: float | None = None) -> None:
        """Return once `set()` was called after `generation` was `since` (at once if it
        already was), or after `timeout` seconds. Spurious returns are allowed: look again."""
        ...


class Handle(Protocol):
    def cancel(self) -> object: ...


def notifier() -> Notifier:
    """A notifier for the current task's loop."""
    if sniffio.current_async_library() == "trio":
        return TrioNotifier()
    return AsyncioNotifier()


def spawn(function: Callable[[], Awaitable[None]]) -> Handle:
    """Start `function()` in the background on the current loop, outliving the caller's
    task (lifespan). It must handle its own errors. `cancel()` stops it early."""
    if sniffio.current_async_library() == "trio":
        return _TrioHandle(function)
    task = asyncio.get_running_loop().create_task(_run(function))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


_background: set[asyncio.Task[None]] = set()
"""Strong references: asyncio keeps only weak ones to running tasks."""


async def _run(function: Callable[[], Awaitable[None]]) -> None:
    await function()


class _Notifier:
    """What both runtimes share: the generation, the waiters, and waking them from any thread."""

    __slots__ = ("_resume", "_schedule", "_scheduled", "_thread", "_waiters", "generation")

    def __init__(
        self, schedule: Callable[[Callable[[], None]], object], resume: Callable[[Any], object]
    ) -> None:
        self._schedule = schedule  # runs a function soon on the loop's thread; callable from any thread
        self._resume = resume  # wakes one waiter, on the loop's thread
        self._thread = threading.get_ident()
        self._waiters: list[Any] = []  # asyncio futures or trio tasks
        self._scheduled = False
        self.generation = 0

    def set(self) -> None:
        self.generation += 1
        if not self._waiters:
            return
        if threading.get_ident() == self._thread:
            self._wake()
        elif not self._scheduled:
            self._scheduled = True
            self._schedule(self._wake)

    def _wake(self) -> None:
        self._scheduled = False
        waiters, self._waiters = self._waiters, []
        resume = self._resume
        for waiter in waiters:
            resume(waiter)


class AsyncioNotifier(_Notifier):
    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        super().__init__(self._loop.call_soon_threadsafe, _resolve)

    async def wait(self, since: int, timeout: float | None = None) -> None:
        future = self._loop.create_future()
        self._waiters.append(future)
        if self.generation != since:
            self._waiters.remove(future)
            return
        timer = None if timeout is None else self._loop.call_later(timeout, _resolve, future)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
            if future in self._waiters:  # cancelled, or timed out
                self._waiters.remove(future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class TrioNotifier(_Notifier):
    __slots__ = ()

    def __init__(self) -> None:
        global _lowlevel
        if _lowlevel is None:  # imported here, so that the asyncio transports never import trio
            import trio

            _lowlevel = trio.lowlevel
        super().__init__(_lowlevel.current_trio_token().run_sync_soon, _lowlevel.reschedule)

    async def wait(self, since: int, timeout: float | None = None) -> None:
        lowlevel = _lowlevel
        assert lowlevel is not None
        if timeout is not None:
            import trio

            with trio.move_on_after(timeout):
                await self.wait(since)
            return
        task = lowlevel.current_task()
        waiters = self._waiters
        waiters.append(task)
        if self.generation != since:
            waiters.remove(task)
            return

        def abort(raise_cancel: object) -> Any:
            if task in self._waiters:
                self._waiters.remove(task)
            return lowlevel.Abort.SUCCEEDED

        await lowlevel.wait_task_rescheduled(abort)


_lowlevel: Any = None
"""trio.lowlevel, once a TrioNotifier was made."""


class _TrioHandle:
    """A trio system task (it needs no nursery, so it outlives the hook that started it)."""

    def __init__(self, function: Callable[[], Awaitable[None]]) -> None:
        import trio

        self._scope = trio.CancelScope()
        trio.lowlevel.spawn_system_task(self._run, function, name="asgi-lifespan")

    async def _run(self, function: Callable[[], Awaitable[None]]) -> None:
        with self._scope:
            await function()

    def cancel(self) -> object:
        self._scope.cancel()
        return None
