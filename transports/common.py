"""What the three transports share: binding, addresses, file pieces, tearing a connection down,
watching a socket for its peer leaving, the lifespan, and the worker side of the trio and
asyncio transports' step pools (`StepPool`)."""

from __future__ import annotations

import collections
import contextlib
import contextvars
import errno
import itertools
import logging
import signal
import socket
import struct
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import BinaryIO, Final

from protocol import Close, Phase, Run, ServerConnection

from .listeners import describe
from .options import ServerOptions

error_log: Final = logging.getLogger("httpserver.error")

RECEIVE_SIZE: Final = 65536
"""Bytes asked for per read."""

TLS_HANDSHAKE: Final = b"\x16"
"""The first byte a TLS client sends (a handshake record); a TLS server peeks at it, and serves a
client that sent anything else `handlers.plain_http_app` without TLS."""

_ACCEPT_IGNORABLE_ERRNOS: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
"""accept() errors that concern only the connection being accepted (gone, or refused by a firewall)."""

ACCEPT_PAUSE: Final = 0.1

HOLD_LIMIT: Final = 65536
"""Bytes read ahead and held while the core does not ask for input (a `Wait`, a watched
`Run`) before reading pauses, where watching reads rather than peeks (asyncio)."""

CLEANUP_WAIT: Final = 5.0
"""After the grace period cut the remaining connections, how long serve waits for their
cleanup (a blocking step in flight; a TLS handshake, under asyncio) before it returns."""


STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
"""The signals that stop a server (`ServerOptions.handle_signals`)."""


def hold_stop_signals() -> None:
    """Hold the stop signals back until `take_stop_signals`: the command line does so from
    its start-up line (which tells a caller it may signal) until the transport's handlers are
    in place, so that a SIGTERM in between is a graceful stop, not the default death."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def take_stop_signals() -> None:
    """Once the handlers are in place: the stop signals held back, if any, are delivered now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def accept_error(exc: OSError) -> float:
    """Seconds to stop accepting after `exc` (0: go on). No accept error stops the server:
    out of descriptors or memory (EMFILE, ENFILE, ENOBUFS...), accepting resumes shortly."""
    if exc.errno in _ACCEPT_IGNORABLE_ERRNOS:
        return 0.0
    error_log.warning("accept failed (%s); pausing %.1fs", exc, ACCEPT_PAUSE)
    return ACCEPT_PAUSE


def bind(options: ServerOptions) -> list[socket.socket]:
    """Listening sockets for every address of `options.host`, all on one port.

    With port 0 the first socket picks a free port and the others reuse it. An IPv6
    socket is dual-stack (IPv4 clients come as `::ffff:a.b.c.d`) unless the host also
    resolved to an IPv4 address, which then gets its own socket: `::` alone accepts
    both, as nginx's `[::]:80 ipv6only=off`; `""` (every address) binds `0.0.0.0` and
    `::` apart.
    """
    infos = socket.getaddrinfo(
        options.host or None, options.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    v6_only = any(info[0] == socket.AF_INET for info in infos)
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
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6_only))
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]
            sock.listen(options.backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


_INET: Final = (socket.AF_INET, socket.AF_INET6)


def ports(sockets: Sequence[socket.socket]) -> list[int]:
    """The distinct TCP ports the sockets listen on (none for Unix sockets)."""
    return sorted({sock.getsockname()[1] for sock in sockets if sock.family in _INET})


def url(sockets: Sequence[socket.socket], *, tls: bool) -> str:
    """Where the sockets listen, e.g. `http://127.0.0.1:4221`, `unix:/run/app.sock`
    (comma-separated when there are several)."""
    return ", ".join(dict.fromkeys(describe(sock, tls=tls) for sock in sockets))


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
    (IPv6's flow and scope dropped; an IPv4-mapped address, a dual-stack socket's IPv4
    client, as the IPv4 address it is); on a Unix socket no client and (path, None)."""
    if family == socket.AF_INET or family == socket.AF_INET6:
        client: Client = None
        if isinstance(peer, tuple):
            host = str(peer[0])
            if host.startswith("::ffff:") and "." in host:
                host = host[7:]
            client = (host, int(peer[1]))
        server: Server = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        return client, server
    if family == getattr(socket, "AF_UNIX", None):
        if isinstance(local, bytes):  # Linux's abstract namespace: a leading NUL
            local = "@" + local[1:].decode(errors="replace")
        return None, (local, None) if isinstance(local, str) else None
    return None, None


def format_peer(address: object) -> str:
    """host:port ([host]:port for IPv6) from a socket address; `unix:` for a Unix socket's
    peer, as nginx's `$remote_addr`. An IPv4-mapped address (a dual-stack socket's IPv4
    client) is shown as the IPv4 address it is."""
    if isinstance(address, tuple):
        host = address[0]
        if ":" not in host:
            return f"{host}:{address[1]}"
        if host.startswith("::ffff:") and "." in host:
            return f"{host[7:]}:{address[1]}"
        return f"[{host}]:{address[1]}"
    if isinstance(address, (str, bytes)):  # AF_UNIX: usually unnamed ("")
        if isinstance(address, bytes):  # Linux's abstract namespace: a leading NUL
            address = "@" + address[1:].decode(errors="replace")
        return "unix:" + address
    return "-"


def abandon(conn: ServerConnection, now: float) -> None:
    """End `conn` where no more I/O will happen (the socket failed or was cut).

    The core undoes the request in progress; its cleanup steps (say, removing an
    upload's temporary file) run inline, since the transport is going away.
    """
    if conn.phase is not Phase.CLOSED:
        conn.connection_lost(now)
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


UNSENT_LIMIT: Final = 16384
"""Bytes a TCP socket holds not yet sent before it stops taking more (TCP_NOTSENT_LOWAT,
which trio sets on every stream). So a write waits on the client, not on megabytes of
kernel buffer, and a slow client's progress is seen as it happens (`--send-timeout`)."""


def limit_unsent(sock: socket.socket) -> None:
    """Set `UNSENT_LIMIT` on a TCP socket, where the platform has it."""
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, UNSENT_LIMIT)


_TCP_INFO: Final = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None


def bytes_acked(sock: socket.socket) -> int | None:
    """How many bytes of its output a TCP socket's peer has taken (acknowledged: Linux's
    tcpi_bytes_acked), None where unknown (a Unix socket, another system). It grows as a
    client takes bytes even while the socket is too full to be writable."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 128)
    except OSError:
        return None
    if len(info) < 128:
        return None
    return int(struct.unpack_from("Q", info, 120)[0])


FILE_PIECE_SIZE: Final = 256 * 1024
"""Bytes read per piece where a file cannot go out with sendfile (TLS, no descriptor)."""


def read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    """Up to `size` bytes of `file` from `offset` (the portable way to send a file: TLS...)."""
    file.seek(offset)
    return file.read(size)


class Step:
    """A blocking step handed to a `StepPool`, and how it ended. `waiter` is the runtime's
    (trio: the task to reschedule; asyncio: the callback given the step)."""

    __slots__ = ("context", "error", "function", "result", "waiter")

    def __init__(self, function: Callable[[], object], context: contextvars.Context, waiter: object) -> None:
        self.function: Callable[[], object] | None = function
        self.context: contextvars.Context | None = context
        self.waiter = waiter
        self.result: object = None
        self.error: BaseException | None = None


class StepPool:
    """Runs blocking steps (`Run`, disk reads) on at most `size` worker threads, started as
    needed and kept until `close`; the steps beyond wait in a queue, first come first served.
    The worker side, shared by the trio and asyncio transports; a subclass delivers the
    results on its runtime's thread (`_post` asks for a `_deliver` there).

    It replaces `trio.to_thread.run_sync` and `loop.run_in_executor`, whose hand-off per step
    cost a minimal WSGI request more than its parsing, every idle thread woken in turn and
    fighting for the GIL. Here a thread is woken only when no worker is already awake and
    about to look at the queue (`_searching`): a worker that finished a step takes the next
    one queued without sleeping, so under load one or two threads serve the steps. Still, no
    step waits behind one that blocks while a thread could take it: a worker that takes a
    step and leaves others queued wakes another one first. Results go back in batches: one
    `_post` for all the steps done meanwhile.

    A step runs in a copy of `context` (made by the subclass, one per step): what it sets
    is seen by no other step.
    """

    _names = itertools.count(1)

    def __init__(self, size: int, name: str, context: contextvars.Context) -> None:
        self._size = size
        self._name = name  # of its threads, numbered
        self._context = context
        self._lock = threading.Lock()  # guards the five below
        self._queue: collections.deque[Step] = collections.deque()
        self._idle: list[threading.Lock] = []  # a sleeping worker waits for its lock
        self._threads = 0
        self._searching = 0  # workers awake and not in a step: each will look at the queue
        self._closed = False
        self._done: collections.deque[Step] = collections.deque()
        self._delivering = False  # a `_deliver` is on its way to the runtime's thread

    def _submit(self, step: Step) -> None:
        """Queue `step`, waking a worker if none is about to look; raises if no thread could start."""
        with self._lock:
            self._queue.append(step)
            if not self._searching:
                try:
                    self._wake_one()
                except BaseException:  # no thread could start (as the runtimes' own pools raise)
                    self._queue.remove(step)
                    raise

    def _drop(self, step: Step) -> bool:
        """Take `step` off the queue if no worker took it yet (it never runs): whether it was."""
        with self._lock:
            try:
                self._queue.remove(step)
            except ValueError:
                return False  # running or done
        return True

    def _wake_one(self) -> None:
        """Get one more worker looking at the queue (the lock held)."""
        if self._idle:
            self._searching += 1
            self._idle.pop().release()
        elif self._threads < self._size:
            name = f"{self._name}-{next(self._names)}"
            threading.Thread(target=self._work, name=name, daemon=True).start()
            self._searching += 1  # the new thread looks at the queue once it has the lock
            self._threads += 1

    def close(self) -> None:
        """Let the workers go once the queue is empty (the server stopped)."""
        with self._lock:
            self._closed = True
            while self._idle:
                self._searching += 1
                self._idle.pop().release()

    def _post(self) -> None:
        """Have `_deliver` run soon on the runtime's thread (from a worker; never raises)."""
        raise NotImplementedError

    def _work(self) -> None:
        lock = self._lock
        queue = self._queue
        done = self._done
        post = self._post
        wake = threading.Lock()
        wake.acquire()
        while True:
            with lock:
                if queue:
                    step: Step | None = queue.popleft()
                    self._searching -= 1
                    if queue and not self._searching:
                        # The rest must not wait behind this step, should it block.
                        with contextlib.suppress(RuntimeError):  # no thread could start
                            self._wake_one()
                else:
                    step = None
                    self._searching -= 1
                    if self._closed:
                        self._threads -= 1
                        return
                    self._idle.append(wake)
            if step is None:
                wake.acquire()
                continue
            assert step.function is not None and step.context is not None
            try:
                step.result = step.context.run(step.function)
            except BaseException as exc:
                step.error = exc
            step.function = step.context = None  # nothing of the step is kept alive meanwhile
            with lock:
                self._searching += 1  # looks at the queue again before it sleeps
            done.append(step)
            if not self._delivering:
                # `_deliver` clears the flag before it empties `done`: a step added after
                # that sees the flag down and asks for another delivery.
                self._delivering = True
                post()
