"""Server-level options: where to listen and how many connections to carry.

The HTTP core's limits and timeouts are `protocol.Config`; these are the transport's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # ssl costs start-up time; only the TLS path imports it
    import ssl


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
    """The threads transport's worker threads: at most this many connections are served
    (and blocking steps run) at once; connections waiting for the network hold none."""
    handle_signals: bool = False
    """Install SIGTERM/SIGINT handlers (main thread only): the first signal shuts the
    server down gracefully, a second one cuts the remaining connections."""

    def __post_init__(self) -> None:
        """Refuse a pool that could serve nobody, at start-up."""
        if self.threads < 1:
            raise ValueError("threads must be at least 1")
