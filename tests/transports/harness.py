"""Run any transport's `serve` in a background thread of this process, and stop it."""

from __future__ import annotations

import contextlib
import functools
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from protocol import App, Config
from transports import asyncio_server, loops, thread_server, trio_server
from transports.options import ServerOptions

TRANSPORTS = ["trio", "asyncio", "threads", "asyncio-uvloop"]
"""Transport ids: "asyncio-uvloop" is the asyncio transport on uvloop (an optional extra)."""
TIMEOUT = 10.0
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
"""A keep-alive request for `/`."""


def cli_args(transport: str) -> list[str]:
    """The command-line options that start the transport id `transport`."""
    if transport == "asyncio-uvloop":
        return ["--transport", "asyncio", "--loop", "uvloop"]
    return ["--transport", transport]


@dataclass
class Running:
    port: int
    shutdown: Callable[[], None]
    thread: threading.Thread

    def connect(self, tls: ssl.SSLContext | None = None) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        return tls.wrap_socket(sock, server_hostname="localhost") if tls else sock

    def stop(self, within: float = TIMEOUT) -> None:
        """Shut down gracefully; fail unless serve returned within `within` seconds."""
        self.shutdown()
        self.thread.join(within)
        assert not self.thread.is_alive(), f"serve did not return within {within}s"


def _target(
    transport: str, app: App, config: Config, options: ServerOptions, ready: queue.Queue[object]
) -> None:
    serving = False

    def started(
        server: trio_server.TrioServer | asyncio_server.AsyncioServer | thread_server.ThreadServer,
        stop: Callable[[], None],
    ) -> None:
        nonlocal serving
        serving = True
        ready.put((server.ports[0], stop))

    try:
        if transport == "trio":

            async def main() -> None:
                async with trio.open_nursery() as nursery:
                    server = await nursery.start(functools.partial(trio_server.serve, app, config, options))
                    token = trio.lowlevel.current_trio_token()
                    started(server, lambda: trio.from_thread.run_sync(server.shutdown, trio_token=token))

            trio.run(main)
        elif transport.startswith("asyncio"):
            import asyncio

            async def amain() -> None:
                loop = asyncio.get_running_loop()
                await asyncio_server.serve(
                    app,
                    config,
                    options,
                    started=lambda server: started(
                        server, lambda: loop.call_soon_threadsafe(server.shutdown)
                    ),
                )

            loops.run(amain(), loops.new_loop_factory("uvloop") if transport == "asyncio-uvloop" else None)
        else:
            thread_server.serve(app, config, options, started=lambda server: started(server, server.shutdown))
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # trio's nurseries wrap what serve raised
        ready.put(exc)
        if serving:  # else `running` raises it
            raise


@contextlib.contextmanager
def running(
    transport: str, app: App, config: Config | None = None, options: ServerOptions | None = None
) -> Iterator[Running]:
    """`transport` serving `app` on a free port of 127.0.0.1 until the block ends."""
    ready: queue.Queue[object] = queue.Queue()
    options = options or ServerOptions(port=0)
    thread = threading.Thread(
        target=_target, args=(transport, app, config or Config(), options, ready), daemon=True
    )
    thread.start()
    outcome = ready.get(timeout=TIMEOUT)
    if isinstance(outcome, BaseException):
        raise outcome
    port, shutdown = outcome  # type: ignore[misc]
    server = Running(port, shutdown, thread)
    try:
        yield server
    finally:
        if thread.is_alive():
            server.stop()


def read_until_close(sock: socket.socket) -> bytes:
    """Everything until the peer closes (a reset counts as a close)."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            data = b""
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def read_response_body(sock: socket.socket) -> bytes:
    """Read one response with a Content-Length from `sock`; its body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed before a response"
        data += chunk
    head, _, start = data.partition(b"\r\n\r\n")
    length = next(
        int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    body = bytearray(start)  # appending stays linear for big bodies
    while len(body) < length:
        body += sock.recv(65536)
    return bytes(body)


class StepCounter:
    """A blocking step (`step`, 10 ms, returns 7) that records how many ran at once at most
    (`peak`) and on which threads (`threads`): for the step pools' bound."""

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.peak = 0
        self._running = 0
        self._lock = threading.Lock()

    def step(self) -> int:
        with self._lock:
            self._running += 1
            self.peak = max(self.peak, self._running)
        time.sleep(0.01)
        self.threads.add(threading.current_thread().name)
        with self._lock:
            self._running -= 1
        return 7
