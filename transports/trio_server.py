"""The trio transport: one task per connection driving `ServerConnection`.

Deadlines are cancel scopes on `trio.current_time()`, so tests can run it on a
virtual clock; blocking steps go to a pool of worker threads (`_StepPool`). One
connection's failure is logged and ends that connection only. App tasks (`Spawn`) run
in a nursery of their own beside the connections' nursery, on pooled runner tasks
(`_AppRunner`); `wake` cancels the scope of the connection's wait.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import BinaryIO, Final

import sniffio
import trio

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
    FILE_PIECE_SIZE,
    RECEIVE_SIZE,
    STOP_SIGNALS,
    TLS_HANDSHAKE,
    Step,
    StepPool,
    abandon,
    accept_error,
    addresses,
    bind,
    error_log,
    format_peer,
    has_fileno,
    peer_left,
    ports,
    read_at,
    take_stop_signals,
)
from .options import ServerOptions

_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_ACCEPT_BURST: Final = 64
"""Connections accepted in a row, with no checkpoint between them."""


_IDLE: Final = 0
_SPAWNED: Final = 1
_PARKED: Final = 2
_KICKED: Final = 3


class _Connection:
    """What shutdown and `wake` need to reach a running connection, and what an app task's
    runner needs to hand the connection's task its next step (`kick`, `help`)."""

    __slots__ = (
        "conn",
        "error",
        "handed",
        "raw",
        "relay",
        "scope",
        "stopped",
        "task",
        "thread",
        "token",
        "woken",
    )

    conn: ServerConnection

    def __init__(self, thread: int, token: trio.lowlevel.TrioToken, raw: socket.socket | None) -> None:
        self.scope: trio.CancelScope | None = None  # of the Receive or Wait in progress
        self.woken = False  # give the next (or current) Receive or Wait up: ask the core again
        self.stopped = False
        self.thread = thread
        self.token = token
        self.raw = raw  # the socket itself, without TLS: what `help` may send on
        self.task = trio.lowlevel.current_task()  # the connection's own
        self.relay = _IDLE  # where the hand-off with the app task spawned last stands (below)
        self.handed: Action | None = None  # the core's next action, taken by `help`
        self.error: Exception | None = None  # what `help` met, for the task to raise

    def wake(self) -> None:
        """The core's `wake`, from any thread: give the wait in progress (or the next) up."""
        if threading.get_ident() == self.thread:
            self.wake_here()
        else:
            with contextlib.suppress(trio.RunFinishedError):  # serve is over: nothing waits
                self.token.run_sync_soon(self.wake_here)

    def wake_here(self) -> None:
        # `_receive` and `_wait` give their wait up, or do not begin one: the task may be
        # on its way there, between the core's action and the wait.
        self.woken = True
        if self.scope is not None:
            self.scope.cancel()

    def stop(self, *, drain: bool = False) -> None:
        """Finish the request in progress; an idle connection stops waiting at once (draining:
        it waits on, for a last request to answer with Connection: close, or its deadline)."""
        self.stopped = True
        self.conn.shutdown(drain=drain)
        self.wake_here()  # asked again, an idle connection's core closes (or, draining, waits on)

    # An app task usually answers in its first step. The connection's task waits for that
    # step with a bare park instead of checkpoints (one scheduler pass, not one or two by
    # chance: trio runs a batch in either order); if the task answered, its response is
    # sent on the connection's behalf once the batch is over (`_Flush`), before the
    # connection's task resumes. A request then costs two task steps (the connection's
    # read, the app's step) instead of three or four. `relay` goes
    #   _IDLE -> _SPAWNED (`Spawn`) -> _PARKED (`park`) -> _KICKED (`kick`) -> _IDLE (resumed),
    # or from _SPAWNED back to _IDLE at `kick` when the task was busy elsewhere (reading a
    # request body), or from _PARKED when the park is cancelled.

    async def park(self) -> None:
        """Wait for the first step of the app task spawned last to be over (`kick`)."""
        self.relay = _PARKED
        await trio.lowlevel.wait_task_rescheduled(self._unpark)
        self.relay = _IDLE

    def _unpark(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self.relay = _IDLE
        return trio.lowlevel.Abort.SUCCEEDED

    def kick(self) -> None:
        """An app task's first step begins: a task parked for it resumes in the next batch."""
        if self.relay == _PARKED:
            self.relay = _KICKED
            trio.lowlevel.reschedule(self.task)
        else:
            self.relay = _IDLE

    def take(self) -> Action | None:
        """What `help` left for the task to do (None: nothing, ask the core); raises what
        it met."""
        error = self.error
        if error is not None:
            self.error = None
            raise error
        handed, self.handed = self.handed, None
        return handed

    def help(self, now: float) -> None:
        """Act for the task, which resumes in the next batch to ask the core for its next
        action (kicked, or its blocking step done): take that action now, and if it is a
        send that the socket takes at once, that is all. Else, or for what is left of it,
        the action is handed to the task, as is an error."""
        self.woken = False  # a wake asks the core again, as this does
        try:
            action = self.conn.next_action(now)
            if type(action) is Send and self.raw is not None:
                data = action.data
                try:
                    sent = self.raw.send(data)
                except OSError:  # full (BlockingIOError), or broken: the task finds out itself
                    sent = 0
                if sent == len(data):
                    return
                if sent:
                    action = Send(data[sent:], action.deadline, action.timeout)
            self.handed = action
        except Exception as exc:
            self.error = exc


class _AppRunner:
    """A task of the apps' nursery that runs spawned app tasks one after another.

    Starting a trio task per request (spawn_impl, a Task, a nursery child, its exit) was
    a good part of the scheduler's cost per ASGI request; a runner that is done parks in
    the server's pool and the next `Spawn` hands it its task with one `reschedule`. Each task
    still runs in its own copy of the spawner's contextvars, as `start_soon` gives it
    (`Task.context` is what trio runs each step of a task in), so nothing an app sets
    leaks into the next request, and it sees no more than `start_soon` would show it.
    """

    __slots__ = ("connection", "job", "pool", "task")

    def __init__(self, pool: list[_AppRunner], connection: _Connection) -> None:
        self.task = trio.lowlevel.current_task()
        self.job: Callable[[], Awaitable[None]] | None = None
        self.connection: _Connection | None = connection  # the job's
        self.pool = pool

    def start(
        self, job: Callable[[], Awaitable[None]], connection: _Connection, context: contextvars.Context
    ) -> None:
        """Hand a parked runner `job` of `connection`, to run in `context`."""
        self.job = job
        self.connection = connection
        self.task.context = context  # in effect from the runner's next step: the job's
        trio.lowlevel.reschedule(self.task)

    def retire(self) -> None:
        """End a parked runner (the pool is larger than needed)."""
        self.job = None
        trio.lowlevel.reschedule(self.task)

    async def park(self, idle: contextvars.Context) -> Callable[[], Awaitable[None]] | None:
        """Wait in the pool for the next job (None: retired)."""
        self.job = None
        self.connection = None
        self.task.context = idle  # the last job's contextvars are not kept alive meanwhile
        self.pool.append(self)
        await trio.lowlevel.wait_task_rescheduled(self._abort)
        return self.job

    def _abort(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self.pool.remove(self)  # cancelled (the server stops): never handed a job
        return trio.lowlevel.Abort.SUCCEEDED


class _Flush(trio.abc.Instrument):
    """Acts for the connections whose app task answered in its first step in this batch
    (`_Connection.help`), once the batch is over: before their tasks, rescheduled
    meanwhile, resume in the next. Sending the responses of a batch in a row, rather
    than each amid other tasks' work, cost about 10% less CPU per minimal ASGI request
    (7-12% side by side with sending from the runner). The hook (`before_io_wait`,
    public API) runs once per scheduler pass, between batches; no per-step hook is added."""

    __slots__ = ("helps", "now")

    def __init__(self, helps: list[_Connection]) -> None:
        self.helps = helps
        self.now = trio.lowlevel.current_clock().current_time

    def before_io_wait(self, timeout: float) -> None:
        # Each connection's task is in the run queue, so trio's wait for I/O that follows
        # does not block (`timeout` is 0). `help` raises nothing: trio would disable an
        # instrument that did. If it never ran, the tasks would ask the core themselves.
        #
        # The tasks resume in the order they were rescheduled in, which is the order of
        # `helps`, or its reverse (trio picks at random). Sent from both ends inward, the
        # first responses out are those of the tasks that resume first either way: their
        # clients have had the most time to send the next request when they try to read
        # it (one that is not there yet costs the task a batch more).
        helps = self.helps
        if helps:
            now = self.now()
            front, back = 0, len(helps) - 1
            while front < back:
                connection = helps[front]
                connection.task.context.run(connection.help, now)
                connection = helps[back]
                connection.task.context.run(connection.help, now)
                front += 1
                back -= 1
            if front == back:
                connection = helps[front]
                connection.task.context.run(connection.help, now)
            helps.clear()


class _StepPool(StepPool):
    """Runs blocking steps (`Run`) on at most `size` worker threads (`common.StepPool`), in
    place of `trio.to_thread.run_sync` with a `CapacityLimiter`, whose hand-off cost a
    minimal WSGI request more than its parsing: a limiter checkpoint, closures and thread
    names per call, a thread cache hand-off, one `run_sync_soon` per result, and every idle
    thread woken in turn. Here results come back in one `run_sync_soon` per batch.

    Cancellation is as with `run_sync`: a step that no worker took yet is dropped and the
    cancellation goes through; one that runs is waited for (a thread cannot be stopped) and
    the cancellation comes at the task's next checkpoint. A step runs in a copy of the
    context the pool was made in, with sniffio's variable unset, as `run_sync` runs it in a
    copy of the caller's (a connection's context is a copy of the server's).
    """

    def __init__(self, size: int, token: trio.lowlevel.TrioToken) -> None:
        context = contextvars.copy_context()
        context.run(sniffio.current_async_library_cvar.set, None)
        super().__init__(size, "trio-step-worker", context)
        self._token = token

    async def run(self, function: Callable[[], object], connection: _Connection | None = None) -> None:
        """Run `function()` in a worker thread; raise what it raised. With `connection` (the
        calling task's), the connection's next action is taken for the task as the step's
        result is delivered (`_Connection.help`: the response of a WSGI app's step; `take` it)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        step = _Step(function, self._context.copy(), trio.lowlevel.current_task(), connection)
        self._submit(step)

        def abort(raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            step.connection = None  # cancelled: the task goes on by itself
            if self._drop(step):
                return trio.lowlevel.Abort.SUCCEEDED  # still queued: dropped, never run
            return trio.lowlevel.Abort.FAILED  # running: wait for it

        await trio.lowlevel.wait_task_rescheduled(abort)
        if step.error is not None:
            raise step.error

    def _post(self) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._deliver)

    def _deliver(self) -> None:
        self._delivering = False
        done = self._done
        reschedule = trio.lowlevel.reschedule
        now = trio.current_time()
        while done:
            step = done.popleft()
            connection = step.connection  # type: ignore[attr-defined]
            if connection is not None and step.error is None:
                # The task resumes in the next batch to ask the core for its next action
                # (the response): taken here, in its context. The results of a batch of
                # steps come here in a row already; waiting for the batch's end (`_Flush`)
                # cost no less CPU and raised wrk's p99 by about 10%.
                connection.task.context.run(connection.help, now)
            reschedule(step.waiter)  # type: ignore[arg-type]


class _Step(Step):
    """A step of a connection's task whose delivery may take the task's next action."""

    __slots__ = ("connection",)

    def __init__(
        self,
        function: Callable[[], object],
        context: contextvars.Context,
        waiter: trio.lowlevel.Task,
        connection: _Connection | None,
    ) -> None:
        super().__init__(function, context, waiter)
        self.connection = connection


class TrioServer:
    """A running server: its `ports`, and `shutdown()` to stop it gracefully."""

    def __init__(self, app: App, config: Config, options: ServerOptions, ports: list[int]) -> None:
        self.ports = ports
        self._app = app
        self._config = config
        self._options = options
        self._slots = trio.Semaphore(options.max_connections)
        self._connections: set[_Connection] = set()
        self._apps: trio.Nursery | None = None  # where spawned app tasks run
        self._tasks = 0  # spawned app tasks not yet over
        self._runners: list[_AppRunner] = []  # parked, the last one parked on top
        self._idle_context = contextvars.copy_context()  # a parked runner's
        self._stop = trio.Event()
        self._drained = trio.Event()  # stopping, and no connection or app task is left
        self._grace = trio.CancelScope()  # the wait for requests in flight
        self._startup = trio.CancelScope()  # a shutdown before `_started` cancels the lifespan's entering
        self._started = False  # the lifespan was entered
        self._room_wanted = False  # a client found every slot taken and no connection idle
        self._thread = threading.get_ident()
        self._token = trio.lowlevel.current_trio_token()
        self._helps: list[_Connection] = []  # to act for at the end of this batch (`_Flush`)
        self._flush = _Flush(self._helps)
        self._steps = _StepPool(options.threads, self._token)  # blocking steps
        self._draining = False

    def shutdown(self, *, drain: bool = False) -> None:
        """Stop accepting, finish in-flight requests (within the grace period), return from serve.

        `drain`: idle keep-alive connections are not closed but wait for a last request
        (answered with Connection: close) or their keep-alive deadline, so that no request
        crosses our close on the wire (a reload retires workers so). Called again (a second
        Ctrl-C), it closes idle connections if draining, else cuts the remaining ones at once.
        """
        if not self._started:
            self._startup.cancel()
        if self._stop.is_set():
            if drain:
                return
            if self._draining:
                self._draining = False
                for connection in list(self._connections):
                    connection.stop()
                return
            self._grace.cancel()
        self._draining = drain
        self._stop.set()

    async def _serve(
        self, sockets: Sequence[socket.socket], task_status: trio.TaskStatus[TrioServer]
    ) -> None:
        """Accept until shutdown, then drain: connections and app tasks get the grace period,
        then both are cancelled (a cancelled task still runs its cleanup: trio waits for it)."""
        trio.lowlevel.add_instrument(self._flush)
        try:
            async with trio.open_nursery() as apps:
                self._apps = apps
                async with trio.open_nursery() as connections:
                    async with trio.open_nursery() as accepting:
                        for sock in sockets:
                            accepting.start_soon(self._accept, sock, connections)
                        task_status.started(self)
                        await self._stop.wait()
                        accepting.cancel_scope.cancel()
                    for sock in sockets:
                        sock.close()  # new connections are refused, not left waiting
                    for connection in list(self._connections):
                        connection.stop(drain=self._draining)
                    logs.shutdown_begins(self._phases(), self._options.shutdown_grace, drain=self._draining)
                    self._check_drained()
                    self._grace.deadline = trio.current_time() + self._options.shutdown_grace
                    with self._grace:
                        await self._drained.wait()
                    if not self._drained.is_set():
                        logs.shutdown_cuts(self._phases())
                    connections.cancel_scope.cancel()  # their channels tell app tasks: gone
                apps.cancel_scope.cancel()
        finally:
            with contextlib.suppress(KeyError):  # trio disables an instrument that raised
                trio.lowlevel.remove_instrument(self._flush)
            self._steps.close()  # every step is over: trio waited for the tasks awaiting them
        logs.shutdown_done()

    def _phases(self) -> list[Phase]:
        """Where each open connection stands (for the shutdown log)."""
        return [connection.conn.phase for connection in self._connections]

    async def _watch_signals(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            take_stop_signals()
            task_status.started()
            async for signum in signals:
                self.shutdown(drain=signum == signal.SIGUSR1)

    async def _accept(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        # Clients that connect at once (a load balancer's or a benchmark's pool) are accepted
        # in a row, up to _ACCEPT_BURST, as asyncio accepts its backlog: one per scheduler
        # pass (a checkpoint each) left the last of 50 waiting 50 passes for its first reply.
        burst = 0
        while True:
            if not self._slots.value:  # full: a client that comes takes an idle one's slot
                await trio.lowlevel.wait_readable(listener)
                self._room_wanted = not self._close_an_idle_connection()
            if burst < _ACCEPT_BURST and self._slots.value:
                self._slots.acquire_nowait()
                burst += 1
            else:
                await self._slots.acquire()
                burst = 0
            self._room_wanted = False
            try:
                try:
                    sock = listener.accept()[0]
                except BlockingIOError:  # none waiting: wait for the next
                    burst = 0
                    sock = await _accept_socket(listener)
            except OSError as exc:
                self._slots.release()
                pause = accept_error(exc)
                if pause:
                    await trio.sleep(pause)
                continue
            except BaseException:
                self._slots.release()
                raise
            nursery.start_soon(self._serve_connection, sock)

    def _close_an_idle_connection(self) -> bool:
        """Make room, as nginx does: close a connection that waits for a request, if any.

        If none does, the next one to wait for a request closes (`_room_wanted`)."""
        for connection in self._connections:
            if connection.conn.phase is Phase.IDLE and not connection.stopped:
                connection.stop()
                return True
        return False

    async def _serve_connection(self, sock: socket.socket) -> None:
        peer = "-"
        context = self._options.ssl_context
        app = self._app
        if context is not None:
            try:
                first = await _first_byte(sock, trio.current_time() + self._config.head_timeout)
            except BaseException:  # cancelled: the server stops
                sock.close()
                self._slots.release()
                raise
            if not first:  # nothing came, or the client left
                sock.close()
                self._slots.release()
                return
            if first != TLS_HANDSHAKE:
                context = None  # plain HTTP to the TLS port: served without TLS, a 400
                app = plain_http_app
        try:
            tcp = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            stream: trio.abc.Stream = tcp
            if context is not None:
                # Standard TLS closes: aclose() sends close_notify, so a client can tell the
                # end of a response from a cut (a peer's cut is BrokenResourceError: lost).
                # Beneath it, `_PacedTcp`: a send's deadline moves on with progress.
                stream = trio.SSLStream(_PacedTcp(tcp, sock), context, server_side=True)
            client, server = addresses(sock)
            peer = format_peer(client)
            connection = _Connection(self._thread, self._token, sock if context is None else None)
            conn = connection.conn = ServerConnection(
                app,
                self._config,
                now=trio.current_time(),
                client=client,
                server=server,
                tls=context is not None,
                wake=connection.wake,
            )
        except Exception:
            error_log.exception("cannot set up a connection")
            sock.close()
            self._slots.release()
            return
        self._connections.add(connection)
        if self._stop.is_set():  # accepted just before shutdown began
            conn.shutdown(drain=self._draining)
        clean = graceful = False
        try:
            graceful = await self._drive(stream, tcp, sock, context is None, connection)
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
                await (stream.aclose() if graceful else trio.aclose_forcefully(stream))
            self._connections.discard(connection)
            self._slots.release()
            self._retire_runners()
            self._check_drained()

    def _spawn(self, task: Callable[[], Awaitable[None]], connection: _Connection) -> None:
        self._tasks += 1
        connection.relay = _SPAWNED
        if self._runners:
            # A copy of the caller's context, as start_soon would make (the connection's).
            self._runners.pop().start(task, connection, contextvars.copy_context())
        else:
            assert self._apps is not None
            self._apps.start_soon(self._run_tasks, task, connection)

    async def _run_tasks(self, task: Callable[[], Awaitable[None]] | None, connection: _Connection) -> None:
        """An `_AppRunner`'s life: run `task`, then, while a connection may want a runner,
        park in the pool and run what it is handed. Cancelled, it ends (as a task would)."""
        runner = _AppRunner(self._runners, connection)
        del connection
        while task is not None:
            owner = runner.connection
            assert owner is not None
            owner.kick()  # before anything that could yield: this is the task's first step
            try:
                await task()  # as common.run_task, one coroutine less
            except Exception:
                error_log.exception("an app task failed")
            finally:
                task = None  # a parked runner holds nothing of the request it ran
                self._tasks -= 1
                self._check_drained()
            if owner.relay == _KICKED and owner.woken:
                # Done in its first step, which posted: the connection's task, kicked, has
                # yet to resume; its next action (the response) is taken for it at the end
                # of this batch (`_Flush`).
                self._helps.append(owner)
            del owner  # a parked runner holds nothing of the connection either
            if self._stop.is_set() or len(self._runners) >= len(self._connections):
                return
            task = await runner.park(self._idle_context)

    def _retire_runners(self) -> None:
        """Keep no more parked runners than connections (each runs one request at a time)."""
        while len(self._runners) > len(self._connections):
            self._runners.pop(0).retire()

    def _check_drained(self) -> None:
        if self._stop.is_set() and not self._connections and not self._tasks:
            self._drained.set()

    async def _drive(
        self,
        stream: trio.abc.Stream,
        tcp: trio.SocketStream,
        sock: socket.socket,
        plain: bool,
        connection: _Connection,
    ) -> bool:
        """The loop every transport has: ask the core, perform, report, until Close.

        Without TLS (`plain`), reads and writes that need no waiting use the socket itself,
        which spares a cancel scope per request (the hot path). Under TLS, `sock` (the
        socket beneath) is only peeked at, to watch for the peer leaving.
        Returns whether the close is graceful: something was received (so a TLS handshake
        completed) and no response was cut. Only then does TLS's close_notify go out.
        """
        conn = connection.conn
        current_time = trio.lowlevel.current_clock().current_time  # trio.current_time, less a call
        raw = sock if plain else None
        checkpoint = trio.lowlevel.checkpoint
        received = False
        cut = False
        handed: Action | None = None  # the next action, taken for the task (`_Connection.help`)
        rested = False  # yielded since the last read: parked for an app task, or a blocking step
        while True:
            if handed is None:
                action = conn.next_action(current_time())
            else:
                action, handed = handed, None
            try:
                if type(action) is Receive:
                    if self._room_wanted and conn.phase is Phase.IDLE:
                        self._room_wanted = False  # a client found no free slot: make room
                        conn.shutdown()
                        continue  # asked again, the core closes
                    if raw is not None:
                        # Yield first, then try: by the time the other connections have had
                        # their turn, a keep-alive client has usually sent its next request,
                        # so the recv succeeds and no cancel scope or epoll registration is
                        # needed (the bare loop gets this from send_all). One yield per read
                        # also keeps a connection that always has data from starving others.
                        # Resumed after its response went out (`rested`), the task tries
                        # at once; too soon (the request is on its way), it yields once
                        # more before the wait, which costs several times a yield.
                        data: bytes | None = None
                        if rested:
                            rested = False
                            try:
                                data = raw.recv(RECEIVE_SIZE)
                            except BlockingIOError:
                                data = None
                        if data is None:
                            await checkpoint()
                            try:
                                data = raw.recv(RECEIVE_SIZE)
                            except BlockingIOError:
                                data = await _receive(stream, raw, action.deadline, connection)
                    else:
                        data = await _receive(stream, raw, action.deadline, connection)
                    if data is not None:
                        received = True
                        conn.receive_data(data, current_time())
                    elif connection.woken:
                        connection.woken = False  # woken, or shutdown: ask again
                    else:
                        conn.timeout(current_time())
                elif type(action) is Send:
                    data = action.data
                    if raw is not None:
                        try:
                            sent = raw.send(data)
                        except BlockingIOError:
                            sent = 0
                        if sent == len(data):
                            continue  # the next Receive is the checkpoint
                    else:
                        sent = 0
                    # The rest waits for the client; its deadline moves on with progress.
                    with trio.move_on_at(_at(action.deadline)) as scope:
                        if raw is not None:
                            await _send_raw(raw, memoryview(data)[sent:], scope, action.timeout)
                        else:
                            await _send_paced(stream, data, scope, action.timeout)
                    if scope.cancelled_caught:
                        cut = True
                        conn.timeout(current_time())
                elif type(action) is SendFile:
                    with trio.move_on_at(_at(action.deadline)) as scope:
                        span = action.timeout
                        if raw is not None and has_fileno(action.file):
                            await _sendfile(raw, action.file, action.offset, action.count, scope, span)
                        else:
                            await _send_file_pieces(
                                stream, raw, action.file, action.offset, action.count, scope, span
                            )
                    if scope.cancelled_caught:
                        cut = True
                        conn.timeout(current_time())
                elif type(action) is Run:
                    if not action.watch:
                        await self._steps.run(action.step, connection if raw is not None else None)
                        handed = connection.take()  # None: ask the core (the response went out?)
                        rested = True  # the task yielded since its read
                    elif await _run_watched(action.step, sock, self._steps):
                        cut = True
                        conn.connection_lost(current_time())
                elif type(action) is Wait:
                    if connection.relay == _SPAWNED:  # an app task was spawned: its first step is next
                        await connection.park()
                        handed = connection.take()  # None: ask the core (it answered, and that went out?)
                        rested = True
                        continue
                    outcome = await _wait(sock, action.deadline, connection, yielded=rested)
                    rested = False
                    if outcome is _LEFT:
                        cut = True
                        conn.connection_lost(current_time())
                    elif outcome is _TIMED_OUT:
                        conn.timeout(current_time())
                elif type(action) is Spawn:
                    self._spawn(action.task, connection)
                elif type(action) is HalfClose:
                    if raw is not None:
                        await tcp.send_eof()
                else:  # Close
                    return received and not cut
            except _BROKEN:
                cut = True
                conn.connection_lost(current_time())


async def _receive(
    stream: trio.abc.Stream, raw: socket.socket | None, deadline: float | None, connection: _Connection
) -> bytes | None:
    """Some bytes (b"" at end of input), or None if the deadline passed or the wait was
    given up (`connection.woken`: a wake, or shutdown).

    On a raw socket (which `_drive` tried once already), waiting is a bare `wait_readable`:
    an idle connection holds little.
    """
    if connection.woken:  # woken or stopped while on its way here
        return None
    with trio.CancelScope(deadline=_at(deadline)) as scope:
        connection.scope = scope
        try:
            if raw is None:
                return bytes(await stream.receive_some(RECEIVE_SIZE))
            while True:
                await trio.lowlevel.wait_readable(raw)
                try:
                    return raw.recv(RECEIVE_SIZE)
                except BlockingIOError:  # a spurious wake-up
                    continue
        finally:
            connection.scope = None
    return None


_WOKEN: Final = "woken"
_TIMED_OUT: Final = "timed out"
_LEFT: Final = "left"


async def _wait(
    sock: socket.socket, deadline: float | None, connection: _Connection, *, yielded: bool = False
) -> str:
    """Until `wake` (`_WOKEN`) or `deadline` (`_TIMED_OUT`), watching the socket: `_LEFT` as
    soon as the peer leaves. Once bytes wait to be read (a pipelined request), only waits.
    `yielded`: the app task spawned last had its first step since (`_Connection.park`)."""
    # Yield first: an app task spawned just now runs, and if it posts at once (a quick
    # response) its wake comes before the wait begins, sparing a cancel scope, an epoll
    # registration and a Cancelled unwinding (most of a Session's cost on trio). Twice:
    # trio runs a batch of tasks in either order, and the task was started in this one.
    if not yielded:
        await trio.lowlevel.checkpoint()
        if not connection.woken:
            await trio.lowlevel.checkpoint()
    if not connection.woken:
        with trio.CancelScope(deadline=_at(deadline)) as scope:
            connection.scope = scope
            try:
                if await _watch(sock):
                    return _LEFT
                await trio.sleep_forever()
            finally:
                connection.scope = None
        if not connection.woken:
            return _TIMED_OUT
    connection.woken = False
    return _WOKEN


async def _watch(sock: socket.socket) -> bool:
    """Until the peer leaves (True: end of input or a reset) or bytes wait to be read (False).

    Peeks, never reads: the bytes stay for the core's next `Receive`."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        left = peer_left(sock)
        if left is not None:
            return left


async def _run_watched(step: Callable[[], None], sock: socket.socket, steps: _StepPool) -> bool:
    """Run `step` in a worker thread while watching the socket; whether the peer left."""
    left = False

    async def watch() -> None:
        nonlocal left
        left = await _watch(sock)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await steps.run(step)
        nursery.cancel_scope.cancel()
    return left


async def _first_byte(sock: socket.socket, deadline: float) -> bytes:
    """The first byte the client sent, left unread; b"" if it sent none by `deadline` or left."""
    sock.setblocking(False)
    with trio.move_on_at(deadline):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            except OSError:
                return b""
    return b""


def _at(deadline: float | None) -> float:
    return math.inf if deadline is None else deadline


async def _accept_socket(listener: socket.socket) -> socket.socket:
    while True:
        try:
            return listener.accept()[0]
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)


def _progress(scope: trio.CancelScope, span: float | None) -> None:
    """Bytes of a Send or SendFile went out: its deadline moves on by `span` (the action's
    `timeout`; None: the deadline is for the whole write)."""
    if span is not None:
        scope.deadline = trio.current_time() + span


async def _send_raw(
    sock: socket.socket, data: memoryview, scope: trio.CancelScope, span: float | None
) -> None:
    """Send all of `data` on the raw socket, waiting for writability when it is full; each
    send that takes bytes moves `scope`'s deadline on (`_progress`)."""
    while data:
        try:
            sent = sock.send(data)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        data = data[sent:]
        _progress(scope, span)


async def _send_paced(
    stream: trio.abc.Stream, data: bytes, scope: trio.CancelScope, span: float | None
) -> None:
    """`stream.send_all(data)` under TLS, where the bytes on the wire are not the data's:
    the socket beneath (`_PacedTcp`) moves `scope`'s deadline on as it takes bytes."""
    tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else None
    if not isinstance(tcp, _PacedTcp):
        await stream.send_all(data)
        return
    tcp.pace(scope, span)
    try:
        await stream.send_all(data)
    finally:
        tcp.pace(None, None)


class _PacedTcp(trio.abc.HalfCloseableStream):
    """The TCP stream beneath TLS. While a Send or SendFile is paced (`pace`), its sends go
    on the raw socket and move that action's deadline on each time the socket takes bytes
    (`_progress`); else it is the `trio.SocketStream` it wraps."""

    def __init__(self, tcp: trio.SocketStream, sock: socket.socket) -> None:
        self.tcp = tcp
        self._sock = sock
        self._scope: trio.CancelScope | None = None
        self._span: float | None = None

    def pace(self, scope: trio.CancelScope | None, span: float | None) -> None:
        self._scope = scope
        self._span = span

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        scope = self._scope
        if scope is None:
            await self.tcp.send_all(data)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        await _send_raw(self._sock, memoryview(data), scope, self._span)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await self.tcp.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.tcp.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.tcp.send_eof()

    async def aclose(self) -> None:
        await self.tcp.aclose()


async def _sendfile(
    sock: socket.socket, file: BinaryIO, offset: int, count: int, scope: trio.CancelScope, span: float | None
) -> None:
    """os.sendfile on the raw socket, waiting for writability between tries; each try that
    sends bytes moves `scope`'s deadline on (`_progress`)."""
    in_fd = file.fileno()
    out_fd = sock.fileno()
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
        _progress(scope, span)
    await trio.lowlevel.cancel_shielded_checkpoint()


async def _send_file_pieces(
    stream: trio.abc.Stream,
    raw: socket.socket | None,
    file: BinaryIO,
    offset: int,
    count: int,
    scope: trio.CancelScope,
    span: float | None,
) -> None:
    """The portable way (TLS, files without a descriptor): read in a thread, send; the
    deadline moves on as bytes go out (`_send_raw`, `_send_paced`)."""
    while count:
        data = await trio.to_thread.run_sync(read_at, file, offset, min(count, FILE_PIECE_SIZE))
        if not data:
            raise OSError("file ended before its announced length")
        if raw is not None:
            await _send_raw(raw, memoryview(data), scope, span)
        else:
            await _send_paced(stream, data, scope, span)
        offset += len(data)
        count -= len(data)


async def serve(
    app: App,
    config: Config,
    options: ServerOptions,
    *,
    sockets: Sequence[socket.socket] | None = None,
    task_status: trio.TaskStatus[TrioServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown()` (or a signal, with `options.handle_signals`).

    Listens on `sockets` when given (bound and listening; serve closes them when it
    stops accepting), else binds `options.host`/`options.port`. Enters
    `options.lifespan` before accepting (raising what it raises) and exits it once
    drained; a signal during that startup cancels it, and `serve` returns without serving.
    Reports the `TrioServer` (its `ports`) via `task_status` once accepting.
    Cancelling `serve` cuts every connection and app task at once.
    """
    sockets = bind(options) if sockets is None else sockets
    failure: Exception | None = None
    try:
        server = TrioServer(app, config, options, ports(sockets))
        async with trio.open_nursery() as signals:
            if options.handle_signals:  # until the very end: a second signal cuts the grace period
                await signals.start(server._watch_signals)  # already during the app's startup
            try:
                # The scope holds serving too: a lifespan may open a nursery on entering.
                with server._startup:
                    async with options.lifespan() if options.lifespan else contextlib.nullcontext():
                        server._started = True
                        await server._serve(sockets, task_status)
                if server._startup.cancelled_caught:
                    logs.startup_cancelled()
            except Exception as exc:  # raised as it is, not in the nursery's ExceptionGroup
                failure = exc
            signals.cancel_scope.cancel()
    finally:
        for sock in sockets:
            sock.close()
    if failure is not None:
        raise failure
