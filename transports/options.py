"""Server-level options: where to listen, how many connections to carry, and the
hooks that run around serving.

The HTTP core's limits and timeouts are `protocol.Config`; these are the transport's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # ssl and asyncio cost start-up time; only the paths that use them import them
    import asyncio
    import ssl

__all__ = ["Lifespan", "ServerOptions", "hooks"]

Lifespan = Callable[[], AbstractAsyncContextManager[object]]
"""Makes an async context manager that a server enters before it accepts its first
connection and exits once it has drained (see `ServerOptions.lifespan`)."""


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Where a server listens and how many connections it carries (the CLI builds one)."""

    host: str = "127.0.0.1"
    """Address to bind; a name that resolves to several addresses binds each. `::` alone
    is dual-stack (IPv4 clients too); `""` binds `0.0.0.0` and `::` apart."""
    port: int = 4221
    """TCP port; 0 picks a free one (see the server's `ports`)."""
    max_connections: int = 1000
    """Concurrent connections per process. At the limit, a new client takes the slot of a
    connection waiting for a request (closed, as nginx does); else it waits in the backlog."""
    shutdown_grace: float = 10.0
    """On shutdown, in-flight requests get this long to finish before they are cut."""
    backlog: int = 1024
    """The listen backlog."""
    ssl_context: ssl.SSLContext | None = None
    """Serve HTTPS with this server-side context."""
    workers: int = 1
    """Processes sharing the listening sockets (the CLI forks them)."""
    threads: int = 16
    """At most this many blocking steps (disk work, WSGI app calls) run at once: trio and
    asyncio run them in a pool of this many threads; the threads transport has this many
    worker threads, which also bounds the connections it serves at once (connections that
    wait for the network hold none)."""
    handle_signals: bool = False
    """Install SIGTERM/SIGINT handlers (main thread only): the first signal shuts the
    server down gracefully, a second one cuts the remaining connections."""
    lifespan: Lifespan | None = None
    """Start-up and shut-down work (an app's), as an async context manager made per `serve`
    (per process with `workers`). It is entered on the event loop where app tasks run (trio
    and asyncio: the server's; threads: its app loop thread) once the sockets are bound and
    before the first connection is accepted; if entering raises, `serve` raises that and
    serves nothing. It is exited after shutdown has drained: connections closed and spawned
    tasks ended (or cancelled past the grace period). A context manager rather than two
    callbacks, so that a hook may keep tasks running in between (an anyio task group works
    on trio too); `hooks()` makes one from two callbacks."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    """The threads transport's app loop (where `Spawn`ed tasks and `lifespan` run): None for
    `asyncio.new_event_loop`; e.g. `uvloop.new_event_loop`. The command line (`--loop`) also
    runs the asyncio transport on a loop from it; `asyncio_server.serve` itself runs on
    whichever loop is running."""

    def __post_init__(self) -> None:
        """Refuse a pool that could serve nobody, at start-up."""
        if self.threads < 1:
            raise ValueError("threads must be at least 1")


def hooks(
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> Lifespan:
    """A `ServerOptions.lifespan` that awaits `on_startup()` on entering and `on_shutdown()`
    on exiting (also when serving failed; not when `on_startup` raised)."""

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        if on_startup is not None:
            await on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                await on_shutdown()

    return lifespan
