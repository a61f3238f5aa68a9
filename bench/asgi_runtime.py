"""What the ASGI adapter's runtime layer costs: our notifier against anyio, in-process.

    .venv/bin/python -m bench.asgi_runtime          # anyio comes with the test dependencies

Three figures per runtime (trio, asyncio), in µs, best of 5 runs:

- `request`: one whole minimal request through the adapter (session, scope, the app's
  two sends, finish) against a core that answers at once: the hot path, which never waits.
- `wake (loop)`: one wait/notify round trip, the notify from the loop's own thread (trio
  and asyncio transports: a streamed piece delivered, a body piece arrived).
- `wake (thread)`: the same with the notify from another thread (the threads transport).
  anyio has no non-blocking way to call into the loop from a foreign thread:
  `anyio.from_thread.run_sync` blocks the calling thread (the core's worker) until the
  loop ran the call, so its figure includes that wait.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import trio

from handlers.asgi import ASGIApp, Receive, Scope, Send
from handlers.notify import notifier
from protocol import Channel, Request

ROUNDS = 5
REQUESTS = 20_000
WAKES = 20_000


async def minimal(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
    await send({"type": "http.response.body", "body": b"abc"})


REQUEST = Request(
    b"GET",
    b"/",
    [(b"host", b"localhost"), (b"user-agent", b"wrk"), (b"accept", b"*/*")],
    client=("127.0.0.1", 5000),
    server=("127.0.0.1", 4221),
)


async def requests(count: int) -> float:
    app = ASGIApp(minimal)
    started = time.perf_counter()
    for _ in range(count):
        channel = Channel(_nothing)
        await app(REQUEST).run(channel)
        while channel.next_message() is not None:
            pass
    return (time.perf_counter() - started) / count * 1e6


def _nothing() -> None:
    pass


async def ours_loop(count: int) -> float:
    n = notifier()
    started = time.perf_counter()
    for _ in range(count):
        since = n.generation
        _call_soon(n.set)
        await n.wait(since)
    return (time.perf_counter() - started) / count * 1e6


async def anyio_loop(count: int) -> float:
    import anyio

    started = time.perf_counter()
    for _ in range(count):
        event = anyio.Event()
        _call_soon(event.set)
        await event.wait()
    return (time.perf_counter() - started) / count * 1e6


def _call_soon(function: Callable[[], object]) -> None:
    """Run `function` soon on this loop, as the core's next step would."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        trio.lowlevel.current_trio_token().run_sync_soon(function)
    else:
        asyncio.get_running_loop().call_soon(function)


async def ours_thread(count: int) -> float:
    n = notifier()
    go = threading.Semaphore(0)

    def core() -> None:
        for _ in range(count):
            go.acquire()
            n.set()

    thread = threading.Thread(target=core)
    thread.start()
    started = time.perf_counter()
    for _ in range(count):
        since = n.generation
        go.release()
        await n.wait(since)
    elapsed = time.perf_counter() - started
    thread.join()
    return elapsed / count * 1e6


async def anyio_thread(count: int) -> float:
    import anyio
    import anyio.from_thread
    import anyio.lowlevel

    token = anyio.lowlevel.current_token()
    go = threading.Semaphore(0)
    box: list[anyio.Event] = []

    def core() -> None:
        for _ in range(count):
            go.acquire()
            anyio.from_thread.run_sync(box[-1].set, token=token)

    thread = threading.Thread(target=core)
    thread.start()
    started = time.perf_counter()
    for _ in range(count):
        box.append(anyio.Event())
        go.release()
        await box[-1].wait()
    elapsed = time.perf_counter() - started
    await anyio.to_thread.run_sync(thread.join)
    return elapsed / count * 1e6


def run(runtime: str, bench: Callable[[int], Awaitable[float]], count: int) -> float:
    results = []
    for _ in range(ROUNDS):
        if runtime == "trio":
            results.append(trio.run(bench, count))
        else:
            results.append(asyncio.run(bench(count)))  # type: ignore[arg-type]
    return min(results)


def main() -> None:
    print("| runtime | request | wake (loop): ours | anyio | wake (thread): ours | anyio |")
    print("|---|---:|---:|---:|---:|---:|")
    for runtime in ("trio", "asyncio"):
        row = [
            run(runtime, requests, REQUESTS),
            run(runtime, ours_loop, WAKES),
            run(runtime, anyio_loop, WAKES),
            run(runtime, ours_thread, WAKES // 4),
            run(runtime, anyio_thread, WAKES // 4),
        ]
        print(f"| {runtime} | " + " | ".join(f"{value:.2f}" for value in row) + " |")


if __name__ == "__main__":
    main()
