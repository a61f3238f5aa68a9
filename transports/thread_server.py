"""The threads transport: blocking sockets, one thread per connection.

Threads are bounded: the accept loop takes a slot before it accepts, so connections
beyond `max_connections` wait in the listen backlog. Deadlines become socket timeouts
measured on `time.monotonic()`; blocking steps simply run inline.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Final

from protocol import App, Config, HalfClose, Phase, Receive, Run, Send, SendFile, ServerConnection

from .common import CLEANUP_WAIT, RECEIVE_SIZE, abandon, accept_error, bind, error_log, peer_name, ports
from .options import ServerOptions

_STOP_SIGNALS: Final = {signal.SIGINT, signal.SIGTERM}
_SIGNAL_CHECK_INTERVAL: Final = 0.5
"""Seconds the accept loop waits in select() at most (see `_accept_until_stopped`)."""
_IDLE_THREAD_TIMEOUT: Final = 10.0
"""A thread that finished its connection waits this long for the next one, then exits."""


class _Connection:
    """A connection's socket and core, and the means for shutdown to reach them."""

    __slots__ = ("closed", "conn", "lock", "receiving", "sock", "stopping")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn: ServerConnection | None = None
        self.receiving = False
        self.stopping = False
        self.closed = False
        self.lock = threading.Lock()

    def stop(self) -> None:
        """Finish the request in progress; an idle connection stops waiting at once.

        Races with the connection's thread about to receive: either it sees `stopping`
        before it blocks, or this sees `receiving` and wakes its recv with SHUT_RD.
        """
        self.stopping = True
        conn = self.conn
        if conn is not None:
            conn.shutdown()
            if self.receiving and conn.phase is Phase.IDLE:
                self._shutdown(socket.SHUT_RD)  # the blocked recv returns b"": the core closes

    def cut(self) -> None:
        """Drop the connection now (the grace period is over): its blocked I/O fails."""
        self._shutdown(socket.SHUT_RDWR)

    def _shutdown(self, how: int) -> None:
        with self.lock:
            if not self.closed:
                # The plain socket's method: SSLSocket.shutdown would discard the TLS state.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self.sock, how)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.sock.close()


class ThreadServer:
    """A running server: its `ports`, and `shutdown()` (from any thread) to stop it gracefully."""

    def __init__(
        self, app: App, config: Config, options: ServerOptions, sockets: Sequence[socket.socket]
    ) -> None:
        self.ports = ports(sockets)
        self._app = app
        self._config = config
        self._options = options
        self._sockets = sockets
        self._connections: set[_Connection] = set()
        self._changed = threading.Condition()  # guards _connections, _stopping, _cutting and _idle
        self._stopping = False
        self._cutting = False  # shutdown() was called twice
        self._idle = 0  # threads waiting in `_handoff` for their next connection
        self._handoff: queue.SimpleQueue[_Connection | None] = queue.SimpleQueue()
        self._wake_reader, self._wake_writer = socket.socketpair()

    def shutdown(self) -> None:
        """Stop accepting, finish in-flight requests (within the grace period), return from serve.

        Called again (a second Ctrl-C), it cuts the remaining connections at once.
        """
        with self._changed:
            self._cutting = self._stopping
            self._stopping = True
            self._changed.notify_all()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    def _run(self) -> None:
        try:
            self._accept_until_stopped()
        finally:
            for sock in (*self._sockets, self._wake_reader, self._wake_writer):
                sock.close()  # new connections are refused, not left waiting
        with self._changed:
            connections = list(self._connections)
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._handoff.put(None)  # idle threads exit
        for connection in connections:
            connection.stop()
        with self._changed:
            self._changed.wait_for(
                lambda: not self._connections or self._cutting, self._options.shutdown_grace
            )
            if self._connections:
                for connection in self._connections:
                    connection.cut()
                self._changed.wait_for(lambda: not self._connections, CLEANUP_WAIT)

    def _accept_until_stopped(self) -> None:
        limit = self._options.max_connections
        with selectors.DefaultSelector() as selector:
            for sock in self._sockets:
                selector.register(sock, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                with self._changed:  # take a slot before accepting
                    self._changed.wait_for(lambda: self._stopping or len(self._connections) < limit)
                    if self._stopping:
                        return
                # A timeout, so that Python code runs here now and then: a signal handler
                # runs only between bytecodes of the main thread, and a signal arriving
                # just before select() blocks does not interrupt it.
                for key, _ in selector.select(_SIGNAL_CHECK_INTERVAL):
                    if key.fileobj is self._wake_reader:
                        return
                    listener = key.fileobj
                    assert isinstance(listener, socket.socket)
                    try:
                        sock, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        time.sleep(accept_error(exc))
                        continue
                    self._start(sock)
                    break  # take the next slot

    def _start(self, sock: socket.socket) -> None:
        """Hand the connection to an idle thread, or start one (starting costs far more)."""
        connection = _Connection(sock)
        with self._changed:
            self._connections.add(connection)
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1
        if reuse:
            self._handoff.put(connection)
            return
        # The kernel may hand a process's SIGTERM to any thread that does not block it;
        # taken by a connection thread, the main thread would sleep on in select() and
        # never see it. Threads inherit the mask they are started with.
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            threading.Thread(target=self._work, args=(connection,), daemon=True).start()
        except RuntimeError:  # no more threads: refuse this one, keep serving the others
            error_log.exception("cannot start a connection thread")
            self._release(connection, idle=False)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)

    def _work(self, connection: _Connection | None) -> None:
        """A connection thread: serve connections one after another until idle too long."""
        while connection is not None:
            self._serve_connection(connection)
            if not self._release(connection, idle=True):
                return
            try:
                connection = self._handoff.get(timeout=_IDLE_THREAD_TIMEOUT)
            except queue.Empty:
                with self._changed:
                    if self._idle > 0:  # no connection is on its way to this thread
                        self._idle -= 1
                        return
                connection = self._handoff.get()  # one is: `_start` counted on an idle thread

    def _release(self, connection: _Connection, *, idle: bool) -> bool:
        """The connection is over. True if its thread, now `idle`, may wait for the next one."""
        with self._changed:
            self._connections.discard(connection)
            idle = idle and not self._stopping
            if idle:
                self._idle += 1
            self._changed.notify_all()
        connection.close()  # after: a client that saw the close finds this thread idle
        return idle

    def _serve_connection(self, connection: _Connection) -> None:
        sock = connection.sock
        peer = "-"
        conn = None
        clean = False
        try:
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = peer_name(sock)
            context = self._options.ssl_context
            if context is not None:
                sock.settimeout(self._config.head_timeout)
                sock = connection.sock = context.wrap_socket(sock, server_side=True)
            conn = connection.conn = ServerConnection(
                self._app, self._config, now=time.monotonic(), peer=peer
            )
            self._drive(connection, conn, tls=context is not None)
            clean = True
        except OSError as exc:  # the TLS handshake failed
            error_log.debug("connection from %s failed: %r", peer, exc)
        except Exception:
            error_log.exception("connection from %s failed", peer)
        finally:
            if conn is not None and not clean:
                try:
                    abandon(conn, time.monotonic())
                except Exception:
                    error_log.exception("cleaning up the connection from %s failed", peer)

    def _drive(self, connection: _Connection, conn: ServerConnection, *, tls: bool) -> None:
        """The loop every transport has: ask the core, perform, report, until Close."""
        sock = connection.sock
        monotonic = time.monotonic
        while True:
            action = conn.next_action(monotonic())
            try:
                if type(action) is Receive:
                    sock.settimeout(_timeout(action.deadline))
                    connection.receiving = True
                    if connection.stopping and conn.phase is Phase.IDLE:
                        connection.receiving = False
                        conn.shutdown()  # (again: stop() may have run before conn existed)
                        continue  # abandon the wait: the core closes an idle connection
                    try:
                        data = sock.recv(RECEIVE_SIZE)
                    finally:
                        connection.receiving = False
                    conn.receive_data(data, monotonic())
                elif type(action) is Send:
                    sock.settimeout(_timeout(action.deadline))
                    sock.sendall(action.data)
                elif type(action) is SendFile:
                    sock.settimeout(_timeout(action.deadline))
                    if sock.sendfile(action.file, action.offset, action.count) != action.count:
                        raise OSError("file ended before its announced length")
                elif type(action) is Run:
                    action.step()
                elif type(action) is HalfClose:
                    if not tls:
                        sock.shutdown(socket.SHUT_WR)
                else:  # Close
                    return
            except TimeoutError:
                conn.timeout(monotonic())
            except OSError:
                conn.connection_lost()


def _timeout(deadline: float | None) -> float | None:
    """A socket timeout that ends at `deadline`; once it passed, only what is ready gets through.

    Never 0, which would make the socket non-blocking (BlockingIOError, not TimeoutError).
    """
    return None if deadline is None else max(deadline - time.monotonic(), 1e-6)


def serve(
    app: App,
    config: Config,
    options: ServerOptions,
    *,
    sockets: Sequence[socket.socket] | None = None,
    started: Callable[[ThreadServer], Any] | None = None,
) -> None:
    """Serve `app` until `shutdown()` (or a signal, with `options.handle_signals`).

    Listens on `sockets` when given (bound and listening; serve closes them when it
    stops accepting), else binds `options.host`/`options.port`. Calls
    `started(server)` once listening. Blocks; signals need it on the main thread.
    """
    sockets = bind(options) if sockets is None else sockets
    server = ThreadServer(app, config, options, sockets)
    previous: dict[signal.Signals, Any] = {}
    if options.handle_signals:

        def on_signal(signum: int, frame: FrameType | None) -> None:
            server.shutdown()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        if started is not None:
            started(server)
        server._run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for sock in sockets:
            sock.close()
