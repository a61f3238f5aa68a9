"""What the three transports share: binding, addresses, file pieces, tearing a connection down,
watching a socket for its peer leaving, and the lifespan."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import BinaryIO, Final

from protocol import Close, Phase, Run, ServerConnection

from .options import ServerOptions

error_log: Final = logging.getLogger("httpserver.error")

RECEIVE_SIZE: Final = 65536
"""Bytes asked for per read."""

_ACCEPT_IGNORABLE_ERRNOS: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
"""accept() errors that concern only the connection being accepted (gone, or refused by a firewall)."""

ACCEPT_PAUSE: Final = 0.1

HOLD_LIMIT: Final = 65536
"""Bytes read ahead and held while the core does not ask for input (a `Wait`, a watched
`Run`) before reading pauses, where watching reads rather than peeks (asyncio)."""

CLEANUP_WAIT: Final = 5.0
"""After the grace period cut the remaining connections, how long serve waits for their
cleanup (a blocking step in flight; a TLS handshake, under asyncio) before it returns."""


def accept_error(exc: OSError) -> float:
    """Seconds to stop accepting after `exc` (0: go on). No accept error stops the server:
    out of descriptors or memory (EMFILE, ENFILE, ENOBUFS...), accepting resumes shortly."""
    if exc.errno in _ACCEPT_IGNORABLE_ERRNOS:
        return 0.0
    error_log.warning("accept failed (%s); pausing %.1fs", exc, ACCEPT_PAUSE)
    return ACCEPT_PAUSE


def bind(options: ServerOptions) -> list[socket.socket]:
    """Listening sockets for every address of `options.host`, all on one port.

    With port 0 the first socket picks a free port and the others reuse it.
    """
    infos = socket.getaddrinfo(
        options.host or None, options.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    port = options.port
    seen: set[object] = set()
    try:
        for family, kind, proto, _, address in infos:
            key = (family, address[0])
            if key in seen:
                continue
            seen.add(key)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]
            sock.listen(options.backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def ports(sockets: Sequence[socket.socket]) -> list[int]:
    """The distinct ports the sockets listen on."""
    return sorted({sock.getsockname()[1] for sock in sockets})


def url(sockets: Sequence[socket.socket], *, tls: bool) -> str:
    """The first socket's address as a URL, e.g. http://127.0.0.1:4221."""
    host, port = sockets[0].getsockname()[:2]
    if sockets[0].family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


Client = tuple[str, int] | None
Server = tuple[str, int | None] | None


def addresses(sock: socket.socket) -> tuple[Client, Server]:
    """The connection's (client, server) addresses for the core (see `ServerConnection`)."""
    return client_address(sock), server_address(sock)


def client_address(sock: socket.socket) -> Client:
    try:
        return address_pair(sock.family, sock.getpeername(), None)[0]
    except OSError:  # already reset
        return None


def server_address(sock: socket.socket) -> Server:
    try:
        return address_pair(sock.family, None, sock.getsockname())[1]
    except OSError:
        return None


def address_pair(family: int, peer: object, local: object) -> tuple[Client, Server]:
    """(client, server) from a socket's family, peer name and own name: (host, port) on TCP
    (IPv6's flow and scope dropped); on a Unix socket no client and (path, None)."""
    if family == socket.AF_INET or family == socket.AF_INET6:
        client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        server: Server = (local[0], local[1]) if isinstance(local, tuple) else None
        return client, server
    if family == getattr(socket, "AF_UNIX", None):
        if isinstance(local, bytes):  # an abstract socket's name
            local = local.decode("latin-1")
        return None, (local, None) if isinstance(local, str) else None
    return None, None


def format_client(client: Client) -> str:
    """host:port ([host]:port for IPv6), for error logs; "-" when unknown."""
    if client is None:
        return "-"
    host, port = client
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def abandon(conn: ServerConnection, now: float) -> None:
    """End `conn` where no more I/O will happen (the socket failed or was cut).

    The core undoes the request in progress; its cleanup steps (say, removing an
    upload's temporary file) run inline, since the transport is going away.
    """
    if conn.phase is not Phase.CLOSED:
        conn.connection_lost()
    while True:
        action = conn.next_action(now)
        if type(action) is Run:
            action.step()
        elif type(action) is Close:
            return


def peer_left(sock: socket.socket) -> bool | None:
    """Peek at a non-blocking socket: True if the peer left (end of input, or a reset), False
    if bytes wait to be read (a pipelined request), None if nothing happened yet.

    Bytes are left where they are. Under TLS this peeks at the raw records beneath: any
    record (even a close_notify) reads as bytes waiting.
    """
    try:
        return not _raw_recv(sock, 1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return True


_raw_recv: Final = socket.socket.recv
"""The kernel's recv even on an `ssl.SSLSocket` (whose own refuses flags)."""


async def run_task(task: Callable[[], Awaitable[None]]) -> None:
    """Run a spawned app task to its end. It handles its own errors; one that escapes is a bug,
    logged here so that it ends only that task (cancellation goes through)."""
    try:
        await task()
    except Exception:
        error_log.exception("an app task failed")


def has_fileno(file: BinaryIO) -> bool:
    """Whether `file` has a descriptor, for os.sendfile (io.BytesIO and the like have none)."""
    try:
        return file.fileno() >= 0
    except (AttributeError, OSError):
        return False


FILE_PIECE_SIZE: Final = 256 * 1024
"""Bytes read per piece where a file cannot go out with sendfile (TLS, no descriptor)."""


def read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    """Up to `size` bytes of `file` from `offset` (the portable way to send a file: TLS...)."""
    file.seek(offset)
    return file.read(size)
