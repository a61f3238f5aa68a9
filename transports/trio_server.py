"""The trio transport: one task per connection driving `ServerConnection`.

Deadlines are cancel scopes on `trio.current_time()`, so tests can run it on a
virtual clock; blocking steps go to `trio.to_thread`. One connection's failure is
logged and ends that connection only.
"""

from __future__ import annotations

import math
import os
import signal
import socket
from collections.abc import Sequence
from typing import BinaryIO, Final

import trio

from protocol import App, Close, Config, HalfClose, Phase, Receive, Run, Send, SendFile, ServerConnection

from .common import ACCEPT_CAPACITY_ERRNOS, ACCEPT_PAUSE, RECEIVE_SIZE, abandon, bind, error_log, peer_name
from .options import ServerOptions

_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_FALLBACK_PIECE: Final = 256 * 1024


class _Connection:
    """What shutdown needs to reach a running connection."""

    __slots__ = ("abandoned", "conn", "receiving")

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.receiving: trio.CancelScope | None = None
        self.abandoned = False

    def stop(self) -> None:
        """Finish the request in progress; an idle connection stops waiting at once."""
        self.conn.shutdown()
        if self.receiving is not None and self.conn.phase is Phase.IDLE:
            self.abandoned = True
            self.receiving.cancel()


class TrioServer:
    """A running server: its `ports`, and `shutdown()` to stop it gracefully."""

    def __init__(self, app: App, config: Config, options: ServerOptions, ports: list[int]) -> None:
        self.ports = ports
        self._app = app
        self._config = config
        self._options = options
        self._slots = trio.Semaphore(options.max_connections)
        self._connections: set[_Connection] = set()
        self._stop = trio.Event()
        self._all_closed = trio.Event()

    def shutdown(self) -> None:
        """Stop accepting, finish in-flight requests (within the grace period), return from serve."""
        self._stop.set()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                self.shutdown()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        context = self._options.ssl_context
        while True:
            await self._slots.acquire()
            try:
                tcp = await listener.accept()
            except OSError as exc:
                self._slots.release()
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                error_log.warning("accept failed (%s); pausing", exc)
                await trio.sleep(ACCEPT_PAUSE)
                continue
            except BaseException:
                self._slots.release()
                raise
            stream: trio.abc.HalfCloseableStream | trio.SSLStream[trio.SocketStream] = tcp
            if context is not None:
                stream = trio.SSLStream(tcp, context, server_side=True, https_compatible=True)
            nursery.start_soon(self._serve_connection, stream, tcp)

    async def _serve_connection(self, stream: trio.abc.Stream, tcp: trio.SocketStream) -> None:
        now = trio.current_time()
        peer = peer_name(tcp.socket)  # type: ignore[arg-type]
        conn = ServerConnection(self._app, self._config, now=now, peer=peer)
        connection = _Connection(conn)
        self._connections.add(connection)
        clean = False
        try:
            await self._drive(stream, tcp, connection)
            clean = True
        except Exception:
            error_log.exception("connection from %s failed", peer)
        finally:
            if not clean:  # cancelled or failed: the core still undoes what is in progress
                try:
                    abandon(conn, trio.current_time())
                except Exception:
                    error_log.exception("cleaning up the connection from %s failed", peer)
            with trio.move_on_after(1):  # bounds a TLS close_notify to a stalled peer
                await (stream.aclose() if clean else trio.aclose_forcefully(stream))
            self._connections.discard(connection)
            self._slots.release()
            if not self._connections and self._stop.is_set():
                self._all_closed.set()

    async def _drive(self, stream: trio.abc.Stream, tcp: trio.SocketStream, connection: _Connection) -> None:
        """The loop every transport has: ask the core, perform, report, until Close."""
        conn = connection.conn
        current_time = trio.current_time
        while True:
            action = conn.next_action(current_time())
            kind = type(action)
            try:
                if kind is Receive:
                    deadline = action.deadline  # type: ignore[union-attr]
                    with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                        connection.receiving = scope
                        try:
                            data = await stream.receive_some(RECEIVE_SIZE)
                        finally:
                            connection.receiving = None
                    if not scope.cancelled_caught:
                        conn.receive_data(data, current_time())  # type: ignore[arg-type]  # bytes in practice
                    elif connection.abandoned:
                        connection.abandoned = False  # shutdown: ask again, the core closes
                    else:
                        conn.timeout(current_time())
                elif kind is Send:
                    with trio.move_on_at(_at(action.deadline)) as scope:  # type: ignore[union-attr]
                        await stream.send_all(action.data)  # type: ignore[union-attr]
                    if scope.cancelled_caught:
                        conn.timeout(current_time())
                elif kind is SendFile:
                    assert isinstance(action, SendFile)
                    with trio.move_on_at(_at(action.deadline)) as scope:
                        if stream is tcp:
                            await _sendfile(tcp, action.file, action.offset, action.count)
                        else:
                            await _send_file_pieces(stream, action.file, action.offset, action.count)
                    if scope.cancelled_caught:
                        conn.timeout(current_time())
                elif kind is Run:
                    await trio.to_thread.run_sync(action.step)  # type: ignore[union-attr]
                elif kind is HalfClose:
                    if stream is tcp:
                        await tcp.send_eof()
                elif kind is Close:
                    return
            except _BROKEN:
                conn.connection_lost()


def _at(deadline: float | None) -> float:
    return math.inf if deadline is None else deadline


async def _sendfile(tcp: trio.SocketStream, file: BinaryIO, offset: int, count: int) -> None:
    """os.sendfile on the raw socket, waiting for writability between tries."""
    try:
        in_fd = file.fileno()
    except (AttributeError, OSError):
        await _send_file_pieces(tcp, file, offset, count)
        return
    out_fd = tcp.socket.fileno()
    await trio.lowlevel.checkpoint_if_cancelled()
    while count:
        try:
            sent = os.sendfile(out_fd, in_fd, offset, count)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(out_fd)
            continue
        if not sent:
            raise OSError("file ended before its announced length")
        offset += sent
        count -= sent
    await trio.lowlevel.cancel_shielded_checkpoint()


async def _send_file_pieces(stream: trio.abc.Stream, file: BinaryIO, offset: int, count: int) -> None:
    """The portable way (TLS, files without a descriptor): read in a thread, send."""
    while count:
        data = await trio.to_thread.run_sync(_read_at, file, offset, min(count, _FALLBACK_PIECE))
        if not data:
            raise OSError("file ended before its announced length")
        await stream.send_all(data)
        offset += len(data)
        count -= len(data)


def _read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size)


async def serve(
    app: App,
    config: Config,
    options: ServerOptions,
    *,
    sockets: Sequence[socket.socket] | None = None,
    task_status: trio.TaskStatus[TrioServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown()` (or a signal, with `options.handle_signals`).

    Listens on `sockets` when given (already bound and listening), else binds
    `options.host`/`options.port`. Reports the `TrioServer` (its `ports`) via
    `task_status`. Cancelling `serve` cuts every connection at once.
    """
    owned = sockets is None
    sockets = bind(options) if sockets is None else sockets
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]
    server = TrioServer(app, config, options, sorted({sock.getsockname()[1] for sock in sockets}))
    try:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(server._accept, listener, connections)
                if options.handle_signals:
                    accepting.start_soon(server._watch_signals)
                task_status.started(server)
                await server._stop.wait()
                accepting.cancel_scope.cancel()
            if owned:
                for listener in listeners:
                    await listener.aclose()
            for connection in list(server._connections):
                connection.stop()
            if server._connections:
                with trio.move_on_after(options.shutdown_grace):
                    await server._all_closed.wait()
            connections.cancel_scope.cancel()
    finally:
        if owned:
            for sock in sockets:
                sock.close()
