"""The asyncio transport: an `asyncio.Protocol` per connection driving `ServerConnection`.

The fast path creates no task per request: `data_received` feeds the core and performs
its actions synchronously until the core waits for input again. Reading is paused
whenever the core is not asking for data, except while it waits for an app (`Wait`, a
watched `Run`): then bytes are read and held (up to `HOLD_LIMIT`) to see the peer leave.
Writes respect the transport's flow control; deadlines are `loop.call_at` timers on
`loop.time()`; blocking steps go to a pool of worker threads (`_StepPool`); app tasks
(`Spawn`) are tasks on the loop, and a `wake` is acted on in a later loop callback (so
that what a task posts in one go leaves together), one callback for all the wakes of a
loop iteration.

It runs on asyncio's own loop or on uvloop (`transports.loops`). uvloop's transports
implement `asyncio.Transport` without subclassing it, and uvloop has no `loop.sendfile`:
there a file goes out with os.sendfile in the step pool while the socket takes it at once
(a thread never waits for a slow client), the rest in pieces read in the pool and
written through the transport, each once the previous one drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, BinaryIO, TypeVar, cast

from handlers.plain_http import plain_http_app
from protocol import (
    Action,
    App,
    Config,
    HalfClose,
    Phase,
    Receive,
    Run,
    Send,
    SendFile,
    ServerConnection,
    Spawn,
    Wait,
)

from . import logs
from .common import (
    CLEANUP_WAIT,
    FILE_PIECE_SIZE,
    HOLD_LIMIT,
    TLS_HANDSHAKE,
    Step,
    StepPool,
    abandon,
    accept_error,
    address_pair,
    bind,
    bytes_acked,
    error_log,
    has_fileno,
    ports,
    read_at,
    take_stop_signals,
)
from .options import ServerOptions

T = TypeVar("T")


def _sendfile_some(out_fd: int, in_fd: int, offset: int, count: int) -> int | None:
    """One os.sendfile on a non-blocking socket: bytes sent (0: end of file), None if full.
    Closes both descriptors (duplicates, the thread's own)."""
    try:
        return os.sendfile(out_fd, in_fd, offset, count)
    except BlockingIOError:
        return None
    finally:
        _close_both(out_fd, in_fd)


def _close_both(out_fd: int, in_fd: int) -> None:
    os.close(out_fd)
    os.close(in_fd)


class _StepPool(StepPool):
    """Runs blocking steps (`Run`, and on uvloop a file's os.sendfile and reads) on at most
    `size` worker threads (`common.StepPool`), in place of a `ThreadPoolExecutor`: a step
    costs no concurrent future, no `wrap_future` and no `call_soon_threadsafe` of its own;
    the results of all the steps done meanwhile come back in one `call_soon_threadsafe`.

    `submit` calls back on the loop's thread (the core's `Run`: no future at all); `run` is
    awaited, with `run_in_executor`'s cancellation: a step no worker took yet is dropped, a
    running one runs on and its result is dropped, and the awaiting task is cancelled at
    once. A step runs in a copy of the context the pool was made in (the server's).
    """

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(size, "http-step", contextvars.copy_context())
        self._loop = loop

    def submit(self, function: Callable[[], object], done: Callable[[Step], None]) -> None:
        """Run `function()` in a worker thread, then `done(step)` on the loop's thread (the
        step's `error` says whether it raised)."""
        self._submit(Step(function, self._context.copy(), done))

    async def run(self, function: Callable[[], T], dropped: Callable[[], None] | None = None) -> T:
        """Run `function()` in a worker thread; return what it returned, raise what it raised.
        `dropped()` is called if it never runs (cancelled before a worker took it, or no
        thread could start)."""
        future: asyncio.Future[T] = self._loop.create_future()
        step = Step(function, self._context.copy(), functools.partial(_settle, future))
        try:
            self._submit(step)
        except BaseException:  # no thread could start: it never runs
            if dropped is not None:
                dropped()
            raise
        try:
            return await future
        except asyncio.CancelledError:
            if self._drop(step) and dropped is not None:
                dropped()
            raise

    def _post(self) -> None:
        # In the pool's context: not a worker thread's, whatever the callbacks then start.
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
            self._loop.call_soon_threadsafe(self._deliver, context=self._context)

    def _deliver(self) -> None:
        self._delivering = False
        done = self._done
        # The steps done by now only: one done meanwhile saw the flag down and posted the
        # next delivery, which comes after the loop's I/O. Looping until `done` is empty let
        # connections whose callbacks submit their next step (an upload parsed a slice per
        # step) hold the loop for seconds, feeding each other's steps.
        for _ in range(len(done)):
            step = done.popleft()
            try:
                step.waiter(step)  # type: ignore[operator]
            except Exception:  # the other steps of the batch are delivered still
                error_log.exception("delivering a step's result failed")


def _settle(future: asyncio.Future[Any], step: Step) -> None:
    if not future.done():  # else cancelled: the result is dropped
        if step.error is not None:
            future.set_exception(step.error)
        else:
            future.set_result(step.result)


class _HttpProtocol(asyncio.Protocol):
    """Performs one connection's actions; `_pump` is the loop every transport has."""

    _transport: asyncio.Transport
    _conn: ServerConnection

    def __init__(self, server: AsyncioServer, app: App, *, tls: bool) -> None:
        self._server = server
        self._app = app
        self._tls = tls
        self._loop = server.loop
        self._clock = server.clock  # the loop's time
        self._action: Action | None = None  # the action being waited on, if any
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline: float | None = None  # of the action waited on
        self._progress_at = 0.0  # a Send or SendFile waited on: when bytes last went out (seen)
        self._unsent = 0  # and the transport's buffer then (`_paced`)
        self._acked: int | None = None  # and the bytes the client had taken then
        self._sending_file: asyncio.Task[int] | None = None
        self._pending = bytearray()  # bytes that arrived while the core was busy
        self._eof = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None  # a file piece waits for the buffer to drain
        self._busy = False  # a Run step or a sendfile is in flight
        self._left = False  # the peer closed its side during a watched Run step
        self._wake_scheduled = False
        self._lost = False  # the socket is gone; cleanup waits for a step in flight
        self._broken = False  # a write failed or timed out: close without flushing
        self._done = False

    # --- asyncio's callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: the interface, not the class
        sock = transport.get_extra_info("socket")
        client, server = address_pair(
            -1 if sock is None else sock.family,
            transport.get_extra_info("peername"),
            transport.get_extra_info("sockname"),
        )
        self._conn = ServerConnection(
            self._app,
            self._server.config,
            now=self._clock(),
            client=client,
            server=server,
            tls=self._tls,
            wake=self._wake,
        )
        self._server.connections.add(self)
        if self._server.stopping:  # the TLS handshake ended after shutdown began
            self._conn.shutdown(drain=self._server.draining)
        self._pump()

    def data_received(self, data: bytes) -> None:
        if type(self._action) is Receive:
            self._action = None
            now = self._clock()
            self._conn.receive_data(data, now)
            self._pump(now)
        else:  # held for the core's next Receive
            self._pending += data
            if len(self._pending) >= HOLD_LIMIT:
                self._pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        action = self._action
        if type(action) is Receive:
            self._action = None
            self._conn.receive_data(b"", self._clock())
            self._pump()
        elif type(action) is Wait:  # the peer left while an app works
            self._action = None
            self._broken = True
            self._conn.connection_lost(self._clock())
            self._pump()
        elif type(action) is Run and action.watch:
            self._left = True  # told once the step has returned
        return not self._tls  # keep our side open; TLS cannot

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        if type(self._action) is Send:
            self._action = None
            self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._stop_sending_file()
        if not self._done:
            self._lost = True
            if self._busy:
                return  # the step in flight finishes first; then `_finish_lost` runs
            self._finish_lost()
        self._server.connection_closed(self)

    def _wake(self) -> None:
        """The core's `wake`, from any thread. Scheduled, not run at once: a task that posts a
        response head and then its body gets both into one write (`AsyncioServer.run_wakes`)."""
        if threading.get_ident() == self._server.thread:
            if not self._wake_scheduled:
                self._wake_scheduled = True
                # One loop callback for all the connections woken meanwhile (`run_wakes`).
                server = self._server
                woken = server.woken
                if not woken:
                    self._loop.call_soon(server.run_wakes, context=server.context)
                woken.append(self)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                self._loop.call_soon_threadsafe(self._on_wake)

    def _on_wake(self) -> None:
        self._wake_scheduled = False
        kind = type(self._action)
        # Any other action in flight asks the core again when it completes.
        if not self._done and (kind is Receive or kind is Wait):
            self._action = None
            self._pump()

    # --- driving the core ------------------------------------------------------------

    def _pump(self, now: float | None = None) -> None:
        """Perform the core's actions until one has to wait; a failure ends this connection only.
        (The loop is inline, not a method of its own: this runs twice per request.) `now`: the
        clock as just read by the caller."""
        try:
            conn = self._conn
            transport = self._transport
            loop = self._loop
            # One reading of the clock for the pass: nothing in it blocks.
            if now is None:
                now = self._clock()
            while True:
                action = conn.next_action(now)
                if type(action) is Receive:
                    if self._pending:
                        data = bytes(self._pending)
                        self._pending.clear()
                        conn.receive_data(data, now)
                        continue
                    if self._eof:
                        conn.receive_data(b"", now)
                        continue
                    if self._server.room_wanted and conn.phase is Phase.IDLE:
                        self._server.room_wanted = False  # a client found no free slot: make room
                        conn.shutdown()
                        continue  # asked again, the core closes
                    self._wait(action, action.deadline)
                    if not transport.is_reading():
                        transport.resume_reading()
                    return
                if type(action) is Send:
                    transport.write(action.data)
                    if self._write_paused:
                        self._pace(action, now)
                        self._pause_reading()
                        return
                elif type(action) is SendFile:
                    self._pace(action, now)
                    self._pause_reading()
                    self._busy = True
                    task = loop.create_task(self._send_file(action.file, action.offset, action.count))
                    self._sending_file = task
                    task.add_done_callback(functools.partial(self._sent_file, count=action.count))
                    return
                elif type(action) is Run:
                    self._wait(action, None)
                    if action.watch:
                        self._watch()
                    else:
                        self._pause_reading()
                    self._busy = True
                    self._server.steps.submit(action.step, self._step_done)
                    return
                elif type(action) is Wait:
                    if self._eof:  # the peer left already
                        self._broken = True
                        conn.connection_lost(now)
                        continue
                    self._wait(action, action.deadline)
                    if not transport.is_reading():  # else `_watch` has nothing to do
                        self._watch()
                    return
                elif type(action) is Spawn:
                    self._server.spawn(action.task)
                elif type(action) is HalfClose:
                    if transport.can_write_eof():
                        transport.write_eof()
                else:  # Close
                    self._cancel_timer()
                    self._done = True
                    if self._broken:
                        transport.abort()
                    else:
                        transport.close()
                    return
        except Exception:
            error_log.exception("connection failed")
            self._finish_lost()

    def _wait(self, action: Action, deadline: float | None) -> None:
        """Wait for `action` to complete, until `deadline`.

        A connection has one timer, moved only when a deadline comes before it. A later
        deadline (the usual case: each keep-alive wait ends after the previous one) is
        found when the timer fires, which then re-arms: a request costs no timer of its own.
        """
        self._action = action
        self._deadline = deadline
        if deadline is not None and (self._timer is None or deadline < self._timer_at):
            self._arm(deadline)

    def _pace(self, action: Send | SendFile, now: float) -> None:
        """Wait for a Send or SendFile on a deadline for progress: its own, or with a
        `timeout`, one that `_paced` moves on while bytes go out."""
        span = action.timeout
        if span is None or action.deadline is None:
            self._wait(action, action.deadline)
            return
        # asyncio tells no progress (nor does loop.sendfile): every span / 4 the bytes the
        # client took (`bytes_acked`) and the transport's buffer are looked at (uvloop's
        # file pieces tell theirs, `_sent_some`), so a cut comes between span and 1.25
        # span after the last byte went out.
        self._progress_at = action.deadline - span
        self._unsent = self._transport.get_write_buffer_size()
        self._acked = self._bytes_acked()
        self._wait(action, min(action.deadline, now + span / 4))

    def _bytes_acked(self) -> int | None:
        sock = self._transport.get_extra_info("socket")
        return None if sock is None else bytes_acked(sock)

    def _sent_some(self) -> None:
        """Bytes of the SendFile in progress went out."""
        self._progress_at = self._clock()

    def _paced(self) -> bool:
        """At the deadline of a Send or SendFile: whether it made progress within its
        `timeout` (then its deadline moved on)."""
        action = self._action
        assert isinstance(action, (Send, SendFile))
        span = action.timeout
        if span is None:
            return False
        now = self._clock()
        size = self._transport.get_write_buffer_size()
        acked = self._bytes_acked()
        if size < self._unsent or (acked is not None and self._acked is not None and acked > self._acked):
            self._progress_at = now
        self._unsent = size
        self._acked = acked
        if now >= self._progress_at + span:
            return False
        self._wait(action, min(self._progress_at + span, now + span / 4))
        return True

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if self._action is None or deadline is None:
            return  # nothing waits; the next wait arms the timer again
        if deadline > self._clock():
            self._arm(deadline)
        else:
            self._timed_out()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pause_reading(self) -> None:
        if self._transport.is_reading():
            self._transport.pause_reading()

    def _watch(self) -> None:
        """Read on while the core waits for an app, to see the peer leave; bytes are held."""
        if not self._eof and len(self._pending) < HOLD_LIMIT and not self._transport.is_reading():
            self._transport.resume_reading()

    def _timed_out(self) -> None:
        kind = type(self._action)
        if (kind is Send or kind is SendFile) and self._paced():
            return  # bytes went out: the deadline moved on
        if kind is SendFile:
            self._stop_sending_file()  # `_sent_file` reports the timeout
        elif kind is Receive or kind is Send or kind is Wait:
            self._broken = kind is Send
            self._action = None
            self._conn.timeout(self._clock())
            self._pump()

    async def _send_file(self, file: BinaryIO, offset: int, count: int) -> int:
        """Send `count` bytes of `file` from `offset`; how many went out."""
        if self._server.loop_sendfile:
            return await self._loop.sendfile(self._transport, file, offset, count)
        # uvloop has no loop.sendfile. While the transport holds no bytes of its own,
        # os.sendfile in the step pool sends what the socket takes at once (it never
        # waits for the client); the rest goes through the transport, read in the pool.
        native = self._server.ssl_context is None and has_fileno(file)
        sent = 0
        while sent < count:
            if native and not self._transport.get_write_buffer_size():
                more = await self._sendfile_now(file, offset + sent, count - sent)
                if more is not None:
                    if not more:
                        break  # the file is shorter than announced: the caller sees a short count
                    sent += more
                    self._sent_some()
                    continue
            size = min(FILE_PIECE_SIZE, count - sent)
            piece = await self._server.steps.run(functools.partial(read_at, file, offset + sent, size))
            if not piece:
                break
            self._transport.write(piece)
            sent += len(piece)
            if self._write_paused:
                self._drained = self._loop.create_future()
                try:
                    await self._drained
                finally:
                    self._drained = None
            self._sent_some()
        return sent

    async def _sendfile_now(self, file: BinaryIO, offset: int, count: int) -> int | None:
        """os.sendfile of what the socket takes now, in the step pool: bytes sent (0 at the
        file's end), None when the socket took nothing. The thread works on duplicates of
        both descriptors, closed when it returns: a connection closed meanwhile (and its
        descriptor number reused) can never receive another's bytes, or another file's."""
        sock = self._transport.get_extra_info("socket")
        out_fd = os.dup(sock.fileno())
        try:
            in_fd = os.dup(file.fileno())
        except OSError:
            os.close(out_fd)
            raise
        return await self._server.steps.run(
            functools.partial(_sendfile_some, out_fd, in_fd, offset, count),
            dropped=functools.partial(_close_both, out_fd, in_fd),  # never ran: they are still open
        )

    def _sent_file(self, task: asyncio.Task[int], count: int) -> None:
        self._busy = False
        self._sending_file = None
        if self._lost:
            self._finish_lost()
            self._server.connection_closed(self)
            return
        self._action = None
        self._broken = task.cancelled() or task.exception() is not None or task.result() != count
        if task.cancelled():
            self._conn.timeout(self._clock())
        elif self._broken:
            self._conn.connection_lost(self._clock())
        self._pump()

    def _stop_sending_file(self) -> None:
        # Cancelled before the transport closes: Python 3.11's transport would otherwise
        # leave a native sendfile waiting forever on a closed socket.
        if self._sending_file is not None:
            self._sending_file.cancel()

    def _step_done(self, step: Step) -> None:
        """A `Run` step returned (the core's steps handle their own errors)."""
        self._busy = False
        self._action = None
        if self._lost:
            self._finish_lost()
            self._server.connection_closed(self)
            return
        if self._left:  # the peer closed its side while a watched step ran
            self._left = False
            self._broken = True
            self._conn.connection_lost(self._clock())
        self._pump()

    def _finish_lost(self) -> None:
        """The socket is gone: let the core undo what is in progress, inline."""
        self._done = True
        try:
            abandon(self._conn, self._clock())
        except Exception:
            error_log.exception("cleaning up a connection failed")
        self._transport.abort()

    # --- the server's side -----------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Whether it waits for a request (none started yet)."""
        return not self._done and type(self._action) is Receive and self._conn.phase is Phase.IDLE

    def stop(self, *, drain: bool = False) -> None:
        """Finish the request in progress; an idle connection stops waiting at once (draining:
        it waits on, for a last request to answer with Connection: close, or its deadline)."""
        if self._done:
            return
        self._conn.shutdown(drain=drain)
        if self.idle or type(self._action) is Wait:  # asked again, the core closes or goes on
            self._action = None
            self._pump()

    def cut(self) -> None:
        """Drop the connection now (the grace period is over)."""
        if not self._done:
            self._stop_sending_file()
            self._transport.abort()


class AsyncioServer:
    """A running server: its `ports`, and `shutdown()` to stop it gracefully."""

    def __init__(
        self,
        app: App,
        config: Config,
        options: ServerOptions,
        sockets: Sequence[socket.socket],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.app = app
        self.config = config
        self.loop = loop
        self.thread = threading.get_ident()
        # The loop's clock, read two or three times per request: asyncio's own loop.time() is
        # time.monotonic() behind a Python call; another loop's (uvloop's) is its own.
        native_clock = type(loop).time is asyncio.BaseEventLoop.time
        self.clock: Callable[[], float] = time.monotonic if native_clock else loop.time
        # asyncio's loops send files natively (or fall back by themselves, as for TLS);
        # others, uvloop included, have no loop.sendfile: `_send_file` does it.
        self.loop_sendfile = isinstance(loop, asyncio.BaseEventLoop)
        self.ssl_context = options.ssl_context
        self.ports = ports(sockets)
        self.steps = _StepPool(options.threads, loop)  # all blocking work: at most `threads` threads
        self.connections: set[_HttpProtocol] = set()
        # Spawned app tasks not yet over, by the callable they run (`spawn`).
        self.tasks: dict[Callable[[], Awaitable[None]], asyncio.Task[None]] = {}
        self._options = options
        self._sockets = sockets
        self._accepting: set[socket.socket] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self._count = 0  # accepted connections not yet closed (some still in the TLS handshake)
        self.room_wanted = False  # a client found every slot taken and no connection idle
        self.stopping = False
        self._stop = asyncio.Event()
        self._cut = asyncio.Event()
        self._startup: asyncio.Task[Any] | None = None  # serve's, while it enters the lifespan
        self._startup_cancelled = False  # by a shutdown: serve returns without serving
        self._drained = asyncio.Event()  # stopping, and no connection or app task is left
        self.draining = False  # stopping, and idle connections wait for a last request
        self._peeking: set[asyncio.Future[None]] = set()  # TLS servers: waits for a client's first byte
        self.woken: list[_HttpProtocol] = []  # connections their app task woke (`_wake`, `run_wakes`)
        # Where woken connections look: the server's context, not the waking app task's (whose
        # context variables would reach the tasks spawned for the connection's next requests).
        self.context = contextvars.copy_context()

    def shutdown(self, *, drain: bool = False) -> None:
        """Stop accepting, finish in-flight requests (within the grace period), return from serve.

        `drain`: idle keep-alive connections are not closed but wait for a last request
        (answered with Connection: close) or their keep-alive deadline, so that no request
        crosses our close on the wire (a reload retires workers so). Called again (a second
        Ctrl-C), it closes idle connections if draining, else cuts the remaining ones at once.
        Call it on the loop's thread (`loop.call_soon_threadsafe(server.shutdown)` elsewhere).
        """
        if self._startup is not None and not self._startup_cancelled:
            self._startup_cancelled = True
            self._startup.cancel()
        if self._stop.is_set():
            if drain:
                return
            if self.draining:
                self.draining = False
                for protocol in list(self.connections):
                    protocol.stop()
                return
            self._cut.set()
        self.draining = drain
        self._stop.set()

    def _start_accepting(self) -> None:
        for sock in self._sockets:
            if sock not in self._accepting:
                self._accepting.add(sock)
                self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _stop_accepting(self) -> None:
        for sock in self._accepting:
            self.loop.remove_reader(sock.fileno())
        self._accepting.clear()

    def _accept(self, listener: socket.socket) -> None:
        if self._count >= self._options.max_connections:
            # Full, and a client is waiting: it takes the slot of a connection that waits
            # for a request, if any, as in nginx; else it waits in the backlog for a slot.
            for protocol in self.connections:
                if protocol.idle:
                    protocol.stop()
                    break
            else:
                self.room_wanted = True  # the next connection to wait for a request makes room
            self._stop_accepting()  # until a slot frees
            return
        for _ in range(self._options.backlog):
            if self._count >= self._options.max_connections:
                return  # still listening: the next client to come makes room
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                pause = accept_error(exc)
                if pause:
                    self._stop_accepting()
                    self.loop.call_later(pause, self._resume_accepting)
                    return
                continue
            self._count += 1
            task = self.loop.create_task(self._connect(sock))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, sock: socket.socket) -> None:
        context = self.ssl_context
        app = self.app
        if context is not None:
            first = await self._first_byte(sock)
            if not first:  # nothing came, the client left, or the server stops
                sock.close()
                self._release()
                return
            if first != TLS_HANDSHAKE:
                context = None  # plain HTTP to the TLS port: served without TLS, a 400
                app = plain_http_app
        try:
            await self.loop.connect_accepted_socket(
                lambda: _HttpProtocol(self, app, tls=context is not None),
                sock,
                ssl=context,
                ssl_handshake_timeout=self.config.head_timeout if context else None,
            )
        except Exception as exc:  # a failed TLS handshake: no protocol was made
            error_log.debug("connection setup failed: %r", exc)
            sock.close()
            self._release()

    async def _first_byte(self, sock: socket.socket) -> bytes:
        """The first byte the client sent, left unread; b"" if none came within the head timeout,
        the client left or the server stops."""
        deadline = self.loop.time() + self.config.head_timeout
        sock.setblocking(False)
        fd = sock.fileno()
        while not self.stopping:
            try:
                return sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                pass
            except OSError:
                return b""
            waiter = self.loop.create_future()
            self.loop.add_reader(fd, _wake_waiter, waiter)
            self._peeking.add(waiter)
            try:
                await asyncio.wait_for(waiter, max(deadline - self.loop.time(), 0))
            except TimeoutError:
                return b""
            finally:
                self.loop.remove_reader(fd)
                self._peeking.discard(waiter)
        return b""

    def connection_closed(self, protocol: _HttpProtocol) -> None:
        self.connections.discard(protocol)
        self._release()

    def _release(self) -> None:
        self._count -= 1
        self.room_wanted = False
        self._resume_accepting()
        self._check_drained()

    def run_wakes(self) -> None:
        """Have the connections woken meanwhile look at their apps (`_HttpProtocol._wake` adds
        to `woken` and asks for this callback): one loop callback per batch (on asyncio's loop,
        a Handle made and run per request cost ~3% of an ASGI request's CPU time). The wakes
        still run after the task steps that made them, so each iteration's writes go out
        together."""
        woken, self.woken = self.woken, []
        for protocol in woken:
            protocol._on_wake()

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        """Start an app task on the loop; it is kept until it ends, under `task` (the core's
        `Spawn` brings a new closure each time; a callable met again, or unhashable, gets a
        key of its own)."""
        tasks = self.tasks
        try:
            known = task in tasks
        except TypeError:  # unhashable
            known = True
        if known:
            task = functools.partial(task)
        tasks[task] = self.loop.create_task(self._run_task(task))

    async def _run_task(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run a spawned app task to its end. It handles its own errors; one that escapes is
        a bug, logged here so that it ends only that task (cancellation goes through). It
        forgets itself as it ends, by its key: a done callback would cost a loop callback per
        request, and `asyncio.current_task()` a getpid system call (the running loop's check)."""
        try:
            await task()
        except Exception:
            error_log.exception("an app task failed")
        finally:
            self.tasks.pop(task, None)
            if self.stopping:  # `_check_drained`'s first test: no call per request
                self._check_drained()

    def _task_done(self, key: Callable[[], Awaitable[None]], task: asyncio.Task[None]) -> None:
        self.tasks.pop(key, None)
        self._check_drained()

    def _phases(self) -> list[Phase]:
        """Where each open connection stands (for the shutdown log)."""
        return [protocol._conn.phase for protocol in self.connections if not protocol._done]

    def _check_drained(self) -> None:
        if self.stopping and not self.connections and not self._count and not self.tasks:
            self._drained.set()

    def _resume_accepting(self) -> None:
        if not self.stopping and self._count < self._options.max_connections:
            self._start_accepting()

    async def _run(self) -> None:
        try:
            self._start_accepting()
            await self._stop.wait()
            await self._close(self._options.shutdown_grace)
        except asyncio.CancelledError:
            await self._close(0)
            raise

    async def _close(self, grace: float) -> None:
        """Drain: connections and app tasks get `grace`, then connections are cut and tasks
        cancelled, and both get CLEANUP_WAIT to run their cleanup."""
        self.stopping = True
        self._stop_accepting()
        for sock in self._sockets:
            sock.close()  # new connections are refused, not left waiting
        for waiter in self._peeking:  # no request started on these: they close
            _wake_waiter(waiter)
        for protocol in list(self.connections):
            protocol.stop(drain=self.draining)
        logs.shutdown_begins(self._phases(), grace, drain=self.draining)
        self._check_drained()
        if not self._drained.is_set():
            waits = [self.loop.create_task(event.wait()) for event in (self._drained, self._cut)]
            await asyncio.wait(waits, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            if not self._drained.is_set():
                logs.shutdown_cuts(self._phases())
                for protocol in list(self.connections):
                    protocol.cut()  # their channels tell app tasks: gone
                for key, task in self.tasks.items():
                    task.cancel()
                    # One cancelled before its first step never runs `_run_task`'s `finally`.
                    task.add_done_callback(functools.partial(self._task_done, key))
                with contextlib.suppress(TimeoutError):  # cut connections and cancelled tasks clean up
                    await asyncio.wait_for(self._drained.wait(), CLEANUP_WAIT)
        logs.shutdown_done()


def _wake_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def serve(
    app: App,
    config: Config,
    options: ServerOptions,
    *,
    sockets: Sequence[socket.socket] | None = None,
    started: Callable[[AsyncioServer], Any] | None = None,
) -> None:
    """Serve `app` until `shutdown()` (or a signal, with `options.handle_signals`).

    Listens on `sockets` when given (bound and listening; serve closes them when it
    stops accepting), else binds `options.host`/`options.port`. Enters
    `options.lifespan` before accepting (raising what it raises) and exits it once
    drained; a signal during that startup cancels it, and `serve` returns without serving.
    Calls `started(server)` once accepting. Cancelling `serve` cuts every connection and
    cancels every app task at once.
    """
    loop = asyncio.get_running_loop()
    server = AsyncioServer(app, config, options, bind(options) if sockets is None else sockets, loop)
    if options.handle_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.shutdown)
        loop.add_signal_handler(signal.SIGUSR1, functools.partial(server.shutdown, drain=True))
        take_stop_signals()
    try:
        async with contextlib.AsyncExitStack() as lifespan:
            if options.lifespan is not None:
                server._startup = task = asyncio.current_task()
                try:
                    await lifespan.enter_async_context(options.lifespan())
                except asyncio.CancelledError:
                    if not server._startup_cancelled:
                        raise
                    assert task is not None
                    task.uncancel()
                    logs.startup_cancelled()
                    return
                finally:
                    server._startup = None
            if started is not None:
                started(server)
            await server._run()
    finally:
        for sock in server._sockets:  # also when the lifespan failed before serving
            sock.close()
        server.steps.close()
        if options.handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                loop.remove_signal_handler(signum)
