"""The asyncio transport's step pool, `_StepPool` (blocking steps on a bounded set of worker
threads, in place of a `ThreadPoolExecutor`; its worker side is `common.StepPool`, shared
with trio's)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import pytest

from handlers.wsgi import WSGIApp
from transports import asyncio_server
from transports.common import Step
from transports.options import ServerOptions

from .harness import GET, StepCounter, read_response_body, running


def _on_asyncio(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run the async test on an asyncio loop (the suite's async tests run on trio)."""

    def run() -> None:
        asyncio.run(test())

    run.__doc__ = test.__doc__
    return run


def _pool(size: int) -> asyncio_server._StepPool:
    return asyncio_server._StepPool(size, asyncio.get_running_loop())


@_on_asyncio
async def test_steps_run_on_at_most_size_threads_and_raise_what_they_raise() -> None:
    pool = _pool(2)
    counter = StepCounter()

    def fails() -> None:
        raise ValueError("from the step")

    try:
        results = await asyncio.gather(*(pool.run(counter.step) for _ in range(10)))
        assert results == [7] * 10
        assert counter.peak <= 2 and 1 <= len(counter.threads) <= 2
        assert all(name.startswith("http-step") for name in counter.threads)
        with pytest.raises(ValueError, match="from the step"):
            await pool.run(fails)
    finally:
        pool.close()


@_on_asyncio
async def test_submit_calls_back_on_the_loops_thread_with_the_steps_outcome() -> None:
    pool = _pool(2)
    loop_thread = threading.get_ident()
    ended: asyncio.Future[list[tuple[int, BaseException | None]]] = asyncio.get_running_loop().create_future()
    outcomes: list[tuple[int, BaseException | None]] = []

    def done(step: Step) -> None:
        outcomes.append((threading.get_ident(), step.error))
        if len(outcomes) == 2:
            ended.set_result(outcomes)

    def fails() -> None:
        raise ValueError("from the step")

    try:
        pool.submit(lambda: None, done)
        pool.submit(fails, done)
        result = await asyncio.wait_for(ended, 5)
    finally:
        pool.close()
    assert all(thread == loop_thread for thread, _ in result)
    errors = [error for _, error in result]
    assert errors.count(None) == 1
    assert any(isinstance(error, ValueError) for error in errors)


@_on_asyncio
async def test_a_blocking_step_holds_up_no_other_while_a_thread_is_free() -> None:
    pool = _pool(2)
    release = threading.Event()
    try:
        blocked = asyncio.ensure_future(pool.run(lambda: release.wait(10)))
        await asyncio.sleep(0.05)  # taken by a worker, which then blocks
        await asyncio.wait_for(pool.run(lambda: None), 5)  # the second thread takes it
        release.set()
        assert await blocked is True
    finally:
        release.set()
        pool.close()


@_on_asyncio
async def test_a_step_cancelled_while_queued_never_runs_and_a_running_one_runs_on() -> None:
    """As with run_in_executor: the awaiting task is cancelled at once either way."""
    pool = _pool(1)
    release = threading.Event()
    ran: list[str] = []
    dropped: list[str] = []

    def blocking() -> str:
        release.wait(10)
        ran.append("blocking")
        return "result dropped"

    try:
        first = asyncio.ensure_future(pool.run(blocking, dropped=lambda: dropped.append("blocking")))
        await asyncio.sleep(0.05)  # the only thread runs it
        second = asyncio.ensure_future(
            pool.run(lambda: ran.append("queued"), dropped=lambda: dropped.append("queued"))
        )
        await asyncio.sleep(0.05)
        first.cancel()
        second.cancel()
        for task in (first, second):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert ran == [] and dropped == ["queued"]  # cancelled at once; the queued one dropped
        release.set()
        await asyncio.wait_for(pool.run(lambda: ran.append("after")), 5)
        assert ran == ["blocking", "after"]
    finally:
        release.set()
        pool.close()


_var: contextvars.ContextVar[str] = contextvars.ContextVar("var")


@_on_asyncio
async def test_a_step_runs_in_a_copy_of_the_pools_context() -> None:
    _var.set("server")
    pool = _pool(1)
    _var.set("later")  # the pool's context was copied when it was made
    seen: list[str] = []

    def step() -> None:
        seen.append(_var.get())
        _var.set("changed by a step")

    try:
        await pool.run(step)
        await pool.run(step)
    finally:
        pool.close()
    assert seen == ["server", "server"]
    assert _var.get() == "later"


def test_the_steps_done_meanwhile_come_back_in_one_loop_callback() -> None:
    loop = asyncio.new_event_loop()
    pool = asyncio_server._StepPool(2, loop)
    posts = 0
    post = pool._post

    def counted() -> None:
        nonlocal posts
        posts += 1
        post()

    pool._post = counted  # type: ignore[method-assign]
    delivered: list[Step] = []
    try:
        for _ in range(20):  # the loop does not run meanwhile: nothing is delivered yet
            pool.submit(lambda: None, delivered.append)
        deadline = time.monotonic() + 5
        while len(pool._done) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(pool._done) == 20 and posts == 1
        loop.run_until_complete(asyncio.sleep(0))
        assert len(delivered) == 20
    finally:
        pool.close()
        loop.close()


@_on_asyncio
async def test_steps_done_during_a_delivery_wait_for_the_next_one() -> None:
    """A delivery hands back the steps done when it began; those done meanwhile come in the
    next one, after the loop's I/O. Else two connections whose callbacks each do some work
    and then submit their next step (the core parsing uploads of tiny chunks, a slice per
    step) kept `_deliver` looping on each other's steps: every other connection waited."""
    pool = _pool(2)
    delivered = 0
    finished = asyncio.Event()

    def done(step: Step) -> None:  # as the core would: some CPU on the loop, then the next step
        nonlocal delivered
        delivered += 1
        time.sleep(0.002)  # meanwhile the other chain's step is done
        if delivered < 400:
            pool.submit(lambda: None, done)
        elif delivered == 400:
            finished.set()

    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while not finished.is_set():
            await asyncio.sleep(0)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    try:
        pool.submit(lambda: None, done)  # two chains, as two uploads
        pool.submit(lambda: None, done)
        await asyncio.wait_for(asyncio.gather(ticker(), finished.wait()), 30)
    finally:
        pool.close()
    assert max(gaps) < 0.2, f"the loop was held {max(gaps):.2f} s by one delivery"


@pytest.mark.parametrize("transport", ["asyncio", "asyncio-uvloop"])
def test_all_blocking_work_shares_the_threads_bound(transport: str, tmp_path: Path) -> None:
    """App calls and (on uvloop) a file's os.sendfile and reads go to the one pool: no more
    than `--threads` threads serve them together."""
    if transport == "asyncio-uvloop":
        pytest.importorskip("uvloop")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(1 << 20))
    threads: set[str] = set()

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
        threads.add(threading.current_thread().name)
        if environ["PATH_INFO"] == "/file":
            start_response("200 OK", [("Content-Length", str(1 << 20))])
            wrapper = environ["wsgi.file_wrapper"]
            return wrapper(big.open("rb"))  # type: ignore[operator,no-any-return]
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    options = ServerOptions(port=0, threads=2)
    before = {thread.name for thread in threading.enumerate()}
    with running(transport, WSGIApp(app), options=options) as server:
        socks = [server.connect() for _ in range(6)]
        for i, sock in enumerate(socks):
            sock.sendall(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n" if i % 2 else GET)
        for i, sock in enumerate(socks):
            assert len(read_response_body(sock)) == (1 << 20 if i % 2 else 2)
            sock.close()
        workers = {t.name for t in threading.enumerate() if t.name.startswith("http-step")} - before
        assert 1 <= len(workers) <= 2
    assert all(name.startswith("http-step") for name in threads)
