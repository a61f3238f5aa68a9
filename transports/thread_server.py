"""The threads transport: an epoll thread parks waiting connections; a bounded pool serves them.

The thread that calls `serve` runs the reactor: an epoll over the listening sockets, a
wake-up socket and every connection that waits for the network, and a heap of their
deadlines. A connection whose socket became ready, or whose deadline passed, goes to a
FIFO queue. At most `options.threads` worker threads (started as needed, then reused)
take connections from it and drive the core on non-blocking sockets until it has to
wait for the network again, then park it. Blocking steps (disk) run inline in the
worker: that is what the threads are for. So no thread waits on a slow client, an idle
keep-alive connection holds no thread, and only the pool competes for the GIL (with a
thread per connection, dozens of runnable threads convoy on it: a long latency tail).

A connection is in exactly one place at a time: parked (armed in the epoll, or only on
its deadline), queued for a worker, or in one worker. Only its holder touches its socket
and its core. What parking changes (the epoll's interest, the deadline heap, the counts)
is changed under one lock, the lot, which the reactor holds except while it waits in
epoll: a worker parks the connection it served itself when it gets the lot without
waiting, else hands it to the reactor through a queue (and always so once it closed:
the reactor alone frees slots). The reactor alone accepts (taking a slot first: at
`max_connections`, a parked connection that waits for a request is closed to make room,
else new ones wait in the listen backlog) and carries out shutdown for the connections
parked; workers see it through two flags.

Per keep-alive request that costs few system calls: a connection's descriptor is
registered once, one-shot, and re-armed (one epoll_ctl) at each wait; its event disarms
it, and one taken back before its event stays armed (the event, if it comes, is ignored;
a wait for the events it is still armed for needs no epoll_ctl: an ASGI response's
Receive waits on the read its app's Wait armed).
After a response a worker parks for the next request without trying to read it first (a
client sends it after reading the response; not under TLS, whose buffered bytes epoll
cannot see).

App tasks (`Spawn`) run on one asyncio event loop in a thread of its own (`_AppLoop`,
started at the first task, or at start-up for `options.lifespan`; the tasks spawned
together start with one `call_soon_threadsafe`). A task's `wake` takes a connection
parked for a `Receive` or a `Wait` out of the lot to a worker, with no reactor between
(unless the lot is held: it never waits for it, the reactor does it then, told by a
message); one held elsewhere sees the flag before it parks. A `Wait` parks for
readability without peeking first (the app usually answers before); readable, a worker
peeks: the peer leaving ends it at once, bytes waiting park it on its deadline and wake
only. A watched `Run` step runs inline, unwatched; the socket is peeked at once it has
returned.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import heapq
import itertools
import math
import os
import queue
import select
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, cast

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
    RECEIVE_SIZE,
    TLS_HANDSHAKE,
    Client,
    abandon,
    accept_error,
    bind,
    bytes_acked,
    client_address,
    error_log,
    format_peer,
    has_fileno,
    limit_unsent,
    peer_left,
    ports,
    read_at,
    run_task,
    server_address,
    take_stop_signals,
)
from .options import Lifespan, ServerOptions

if TYPE_CHECKING:  # ssl costs start-up time; only the TLS path imports it
    import ssl

_STOP_SIGNALS: Final = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1}
_DRAIN: Final = "drain"  # what a connection's core was told (`_Connection.stopped`)
_STOP: Final = "stop"
_SIGNAL_CHECK_INTERVAL: Final = 0.5
"""Seconds the reactor waits in epoll at most (see `_react_holding`)."""
_READ: Final = select.EPOLLIN
_WRITE: Final = select.EPOLLOUT
_ONESHOT: Final = select.EPOLLONESHOT
_TURN: Final = 0.01
"""Seconds a worker drives one connection that never waits before serving others waiting."""
_YIELD_BEFORE: Final = (Receive, Send, SendFile)
"""Where a connection may give its worker up. Not a Run step nor Close: after a cut, those
come next, and the cut (no TLS close_notify) is a local of `_drive`."""
_WAKEABLE: Final = (Receive, Wait)
"""The waits that `wake` ends."""
_SLEEP: Final = 0
"""`events` of a connection parked only on its deadline and `wake` (a `Wait` whose peer
sent more: there is nothing left to watch for)."""

# What a worker does with a connection once it stops driving it.
_WAIT: Final = "wait"  # back to the reactor, to wait for `events` until `deadline`
_YIELD: Final = "yield"  # to the back of the queue: other connections wait for a worker
_OVER: Final = "over"  # closed; the reactor frees its slot


class _Connection:
    """One connection's socket and core, and what it waits for while parked."""

    __slots__ = (
        "acked",
        "action",
        "armed",
        "client",
        "closed",
        "conn",
        "deadline",
        "events",
        "fd",
        "file_left",
        "file_offset",
        "handshake_deadline",
        "out",
        "pacing",
        "parked",
        "sock",
        "stopped",
        "timed_out",
        "timer",
        "tls",
        "unsent",
        "woken",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn: ServerConnection | None = None  # made once the socket is set up (after TLS's handshake)
        self.client: Client = None
        self.handshake_deadline: float | None = None  # set when a worker first sees it
        self.action: Action | None = None  # the action to resume (tried again) when it comes back
        self.events = _READ  # what it waits for while parked, and until when
        self.deadline: float | None = None
        self.out: bytes | memoryview = b""  # the rest of a Send, or of a file piece
        self.file_offset = 0  # the rest of a SendFile
        self.file_left = 0
        # The Send or SendFile that waited last, and its bytes left then (`_wait_for`).
        self.pacing: Send | SendFile | None = None
        self.unsent = 0
        self.acked: int | None = None  # under TLS, the bytes the client had taken then
        self.timed_out = False  # set by the reactor: the deadline passed, not the wait
        self.closed = False  # set by the worker that closed it
        self.woken = False  # set by `wake` (any thread): give up the Receive or Wait, ask again
        self.stopped = ""  # what the core was told: "" nothing yet, _DRAIN or _STOP
        self.tls = False  # its socket is wrapped in TLS (on a TLS server, a plain-HTTP client's is not)
        # The reactor's own:
        self.parked = False
        self.fd = -1  # its descriptor once registered with epoll (it stays so until closed)
        # The events its registration waits for; 0 once its event came (whoever takes
        # events from the epoll must clear it, under the lot: `_park` trusts it).
        self.armed = 0
        self.timer: tuple[float, int, _Connection] | None = None  # its live entry in the deadline heap


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
        self._tls = options.ssl_context is not None
        # The SSL layer's "try again once the socket is readable/writable"; plain sockets
        # have only BlockingIOError (an empty tuple catches nothing).
        self._want_read: tuple[type[OSError], ...] = ()
        self._want_write: tuple[type[OSError], ...] = ()
        if self._tls:
            import ssl

            self._want_read, self._want_write = (ssl.SSLWantReadError,), (ssl.SSLWantWriteError,)
        # Set from any thread (shutdown), read by all: the first stops, the second cuts.
        self._stopping = False
        self._cutting = False
        self._ready: queue.SimpleQueue[_Connection | None] = queue.SimpleQueue()  # to the workers
        self._inbox: queue.SimpleQueue[_Connection] = queue.SimpleQueue()  # to the reactor
        self._woken: queue.SimpleQueue[_Connection] = queue.SimpleQueue()  # `_wake`s, to the reactor
        # Held by the reactor whenever it is not waiting in epoll, and by `wake` while it
        # takes a parked connection to the workers (re-entrant: the core may call `wake`
        # from the reactor, in `shutdown`).
        self._lot = threading.RLock()
        self._apps: _AppLoop | None = None  # where app tasks run, once one is spawned
        self._apps_lock = threading.Lock()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._wake_pending = False  # a wake-up byte is on its way: one per batch of messages
        # The reactor's own:
        self._epoll = select.epoll()
        # What each registered descriptor is: a connection, a listener or the wake-up socket.
        # A connection's entry stays (disarmed while it is away) until it closes.
        self._polled: dict[int, _Connection | socket.socket] = {}
        self._timers: list[tuple[float, int, _Connection]] = []  # a heap; see `_set_timer`
        self._timer_ids = itertools.count()  # ties in the heap never compare connections
        self._sleeping: set[_Connection] = set()  # parked on their deadline alone (`_SLEEP`)
        self._open: set[_Connection] = set()  # accepted and not yet closed (changed by the reactor)
        self._busy = 0  # of those, queued for or in a worker
        self._workers: list[threading.Thread] = []
        self._accepting = False
        self._paused_until = 0.0  # accepting resumes then, after EMFILE and the like
        self._full = False  # a client came with every slot taken: listen again once one frees
        self._room_wanted = False  # and no connection was idle then: the next to be makes room
        self._draining = False  # stopping, and idle connections wait for a last request
        self._undrain = False  # a graceful stop came while draining: the reactor closes idle ones

    def shutdown(self, *, drain: bool = False) -> None:
        """Stop accepting, finish in-flight requests (within the grace period), return from serve.

        `drain`: idle keep-alive connections are not closed but wait for a last request
        (answered with Connection: close) or their keep-alive deadline, so that no request
        crosses our close on the wire (a reload retires workers so). Called again (a second
        Ctrl-C), it closes idle connections if draining, else cuts the remaining ones at once.
        """
        if self._stopping:
            if drain:
                return
            if self._draining:
                self._draining = False
                self._undrain = True
            else:
                self._cutting = True
        else:
            self._draining = drain  # before _stopping: whoever sees that sees this
        self._stopping = True
        if self._apps is not None:
            self._apps.cancel_startup()
        with contextlib.suppress(OSError):  # full: the reactor wakes anyway
            self._wake_writer.send(b"x")

    # --- the reactor -----------------------------------------------------------------

    def _tear_down(self) -> None:
        """Release what serving holds, however serve() ends (also before it began)."""
        for sock in (*self._sockets, self._wake_reader, self._wake_writer):
            sock.close()  # new connections are refused, not left waiting
        self._epoll.close()
        for _ in self._workers:
            self._ready.put(None)  # idle workers exit; busy ones when their step returns

    def _react(self) -> None:
        """Accept, park, wake and time out connections until shutdown has run its course."""
        self._epoll.register(self._wake_reader.fileno(), _READ)
        self._polled[self._wake_reader.fileno()] = self._wake_reader
        lot = self._lot
        lot.acquire()
        try:
            self._react_holding(lot)
        finally:
            lot.release()

    def _react_holding(self, lot: threading.RLock) -> None:
        """`_react`'s loop, run holding `lot` except while it waits in epoll."""
        monotonic = time.monotonic
        grace_end = cleanup_end = math.inf
        polled = self._polled
        ready = self._ready
        while True:
            now = monotonic()
            if self._stopping and grace_end == math.inf:
                grace_end = now + self._options.shutdown_grace
                self._stop_accepting(now)
                logs.shutdown_begins(self._phases(), self._options.shutdown_grace, drain=self._draining)
            if self._undrain:
                self._undrain = False
                self._close_idle_parked()
            if (self._cutting or now >= grace_end) and cleanup_end == math.inf:
                self._cutting = True  # workers abandon what they hold at their next step
                cleanup_end = now + CLEANUP_WAIT
                logs.shutdown_cuts(self._phases())
                self._cut_parked()
                if self._apps is not None:
                    self._apps.cancel_all()  # their cleanup runs within CLEANUP_WAIT too
            if self._stopping and ((not self._open and not self._tasks_left()) or now >= cleanup_end):
                logs.shutdown_done()
                return
            self._update_accepting(now)
            self._grow_pool()
            # A timeout, so that Python code runs here now and then: a signal handler runs
            # only between bytecodes of the main thread, and a signal arriving just before
            # epoll blocks does not interrupt it.
            wake_at = min(grace_end, cleanup_end, self._timers[0][0] if self._timers else math.inf)
            if self._paused_until > now:
                wake_at = min(wake_at, self._paused_until)
            timeout = min(max(wake_at - now, 0.0), _SIGNAL_CHECK_INTERVAL)
            lot.release()
            try:
                events = self._epoll.poll(timeout)
            finally:
                lot.acquire()
            listeners = []
            for fd, _ in events:
                polled_object = polled.get(fd)
                if polled_object is None:
                    continue  # a worker closed that connection while this thread waited in epoll
                if type(polled_object) is _Connection:
                    # Unparked connections stay armed (see `_unpark`): an event may come
                    # while it is elsewhere (ignored), or be stale, from before it was
                    # parked again earlier in this batch: a spurious wake-up, harmless
                    # (the worker tries again and parks it again).
                    polled_object.armed = 0  # one-shot: the event disarmed it
                    if polled_object.parked:  # `_unpark` and `_dispatch`, inline (every request)
                        if polled_object.events == _SLEEP:
                            self._sleeping.discard(polled_object)
                        polled_object.parked = False
                        self._busy += 1
                        ready.put(polled_object)
                elif polled_object is self._wake_reader:
                    self._take_messages()
                else:
                    listeners.append(polled_object)
            # Last: a connection whose request came in the same batch is no longer idle,
            # so it is not the one closed to make room for a new client.
            for listener in listeners:
                assert isinstance(listener, socket.socket)
                self._accept(listener)
            self._expire(monotonic())

    def _update_accepting(self, now: float) -> None:
        """Listen unless a client found every slot taken (it waits in the backlog) or paused."""
        accepting = not self._stopping and not self._full and now >= self._paused_until
        if accepting != self._accepting:
            self._accepting = accepting
            for sock in self._sockets:
                if accepting:
                    self._epoll.register(sock.fileno(), _READ)
                    self._polled[sock.fileno()] = sock
                else:
                    self._epoll.unregister(sock.fileno())

    def _stop_accepting(self, now: float) -> None:
        """Close the listeners; idle parked connections close at once, the rest finish."""
        self._update_accepting(now)
        for sock in self._sockets:
            sock.close()  # new connections are refused, not left waiting
        self._close_idle_parked()

    def _close_idle_parked(self) -> None:
        """Tell every parked connection the server stops; the idle ones go to close."""
        for connection in self._parked():
            if self._stop(connection):
                self._unpark(connection)
                self._dispatch(connection)

    def _phases(self) -> list[Phase]:
        """Where each open connection stands (for the shutdown log): closed ones on their way
        here and ones not set up yet (closed at shutdown: no request began) are left out.
        A worker may be moving one on meanwhile: each is read once, as it stands."""
        return [c.conn.phase for c in self._open if c.conn is not None and not c.closed]

    def _stop(self, connection: _Connection) -> bool:
        """Tell a connection the reactor holds that the server stops; True if it is to close now."""
        conn = connection.conn
        if conn is None:  # still in its TLS handshake: no request to finish
            return True
        self._tell_stop(connection, conn)
        if type(connection.action) is Receive and conn.phase is Phase.IDLE and not self._draining:
            connection.action = None  # abandon the wait: asked again, the core closes
            return True
        return False

    def _tell_stop(self, connection: _Connection, conn: ServerConnection) -> None:
        """Tell the core that the server stops, draining or not (again if that changed)."""
        told = _DRAIN if self._draining else _STOP
        if connection.stopped != told:
            connection.stopped = told
            conn.shutdown(drain=told == _DRAIN)

    def _cut_parked(self) -> None:
        """The grace period is over: every parked connection goes to a worker that abandons it."""
        for connection in self._parked():
            self._unpark(connection)
            self._dispatch(connection)

    def _parked(self) -> list[_Connection]:
        polled = [c for c in self._polled.values() if type(c) is _Connection and c.parked]
        return [c for c in polled if c.events != _SLEEP] + list(self._sleeping)

    def _tasks_left(self) -> bool:
        return self._apps is not None and self._apps.count > 0

    def _accept(self, listener: socket.socket) -> None:
        if len(self._open) >= self._options.max_connections:
            # Full, and a client is waiting: it takes the slot of a connection that waits
            # for a request, if any, as in nginx; else it waits in the backlog for a slot.
            idle = next((connection for connection in self._parked() if _idle(connection)), None)
            if idle is None:
                self._room_wanted = True
            else:
                self._unpark(idle)
                self._make_room(idle)
            self._full = True  # `_update_accepting` stops listening until a slot frees
            return
        for _ in range(self._options.backlog):
            if len(self._open) >= self._options.max_connections:
                return  # still listening: the next client to come makes room
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                pause = accept_error(exc)
                if pause:
                    self._paused_until = time.monotonic() + pause
                    return
                continue
            sock.setblocking(False)
            connection = _Connection(sock)
            self._open.add(connection)
            self._dispatch(connection)  # a worker sets it up (TLS: the handshake)

    def _take_messages(self) -> None:
        """Connections workers handed back (to park, or closed), and those woken (`_wake`)."""
        with contextlib.suppress(OSError):
            self._wake_reader.recv(4096)
        # Cleared after the bytes are read and before the queue is: a message put after
        # this is either taken below or comes with a byte of its own.
        self._wake_pending = False
        inbox = self._inbox
        for _ in range(inbox.qsize()):  # this thread alone takes from it
            connection = inbox.get()
            self._busy -= 1
            if connection.closed:
                self._open.discard(connection)
                if self._polled.get(connection.fd) is connection:  # else its number was reused
                    del self._polled[connection.fd]
                self._full = self._room_wanted = False
                connection.timer = None  # its heap entry, if any, is stale
            elif self._cutting or (self._stopping and self._stop(connection)):
                self._dispatch(connection)  # a worker closes or abandons it
            elif self._room_wanted and _idle(connection):
                self._make_room(connection)
            elif connection.woken and type(connection.action) in _WAKEABLE:
                self._dispatch(connection)  # woken on its way here: it gives its wait up
            else:
                self._park(connection)
        woken = self._woken
        for _ in range(woken.qsize()):
            connection = woken.get()
            # Else it was not parked then (it sees the flag before it parks), or its
            # worker gave the wait up since (the flag is down).
            if connection.woken:
                self._end_parked_wait(connection)

    def _make_room(self, connection: _Connection) -> None:
        """Close `connection`, which waits for a request, for a client that found no slot."""
        self._room_wanted = False
        self._stop(connection)
        self._dispatch(connection)  # a worker closes it

    def _park(self, connection: _Connection) -> None:
        events = connection.events
        if events == _SLEEP:
            self._sleeping.add(connection)
        elif connection.fd >= 0:
            # Registered once, then re-armed: one system call per wait, and none when
            # its event comes (one-shot), where register/unregister took two. None if
            # it is still armed so, taken back before its event (see `_unpark`): an
            # ASGI request's response waits for the read its app's Wait armed.
            if connection.armed != events:
                self._epoll.modify(connection.fd, events | _ONESHOT)
                connection.armed = events
        else:
            fd = connection.fd = connection.sock.fileno()
            self._epoll.register(fd, events | _ONESHOT)
            self._polled[fd] = connection
            connection.armed = events
        connection.parked = True
        deadline = connection.deadline
        if deadline is not None and (connection.timer is None or deadline < connection.timer[0]):
            self._set_timer(connection, deadline)

    def _unpark(self, connection: _Connection) -> None:
        """Take a parked connection back (its event came, or a deadline, wake-up, shutdown).

        Taken back before its event, it stays armed: disarming would cost a system call
        (about every ASGI request, whose app's wake-up ends a Wait), and its one event,
        if it comes while the connection is elsewhere, is ignored.
        """
        if connection.events == _SLEEP:
            self._sleeping.discard(connection)
        connection.parked = False

    def _set_timer(self, connection: _Connection, at: float) -> None:
        """Give `connection` one live heap entry, at `at`.

        Like the asyncio transport's timer, an entry is moved only when a deadline comes
        before it; a later one (the usual case: each keep-alive wait ends after the last)
        is found when the entry pops, which then re-arms. So a request costs no heap push.
        Superseded entries stay in the heap, stale, until they pop or the heap is rebuilt.
        """
        entry = (at, next(self._timer_ids), connection)
        connection.timer = entry
        heapq.heappush(self._timers, entry)
        if len(self._timers) > 2 * len(self._open) + 64:  # mostly stale (closed connections)
            self._timers[:] = [entry for entry in self._timers if entry is entry[2].timer]
            heapq.heapify(self._timers)

    def _expire(self, now: float) -> None:
        """Parked connections whose deadline passed go to a worker, which reports the timeout."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            connection = entry[2]
            if entry is not connection.timer:
                continue  # superseded, or its connection closed
            connection.timer = None
            deadline = connection.deadline
            if not connection.parked or deadline is None:
                continue  # with a worker: it sets a timer again when it parks
            if deadline > now:
                self._set_timer(connection, deadline)
            else:
                self._unpark(connection)
                connection.timed_out = True  # an event that comes now is ignored (unparked)
                self._dispatch(connection)

    def _dispatch(self, connection: _Connection) -> None:
        """Queue `connection` for a worker."""
        self._busy += 1
        self._ready.put(connection)

    def _grow_pool(self) -> None:
        """Start workers while more connections are queued or served than there are workers.

        Called once per batch of events, after the batch's messages: a connection that
        went back to wait in the same batch as a new one arrived needs no new thread.
        """
        while len(self._workers) < min(self._busy, self._options.threads) and self._start_worker():
            pass

    def _start_worker(self) -> bool:
        # The kernel may hand a process's SIGTERM to any thread that does not block it;
        # taken by a worker, the main thread would sleep on in epoll and never see
        # it. Threads inherit the mask they are started with.
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            worker = threading.Thread(
                target=self._work, name=f"http-worker-{len(self._workers)}", daemon=True
            )
            worker.start()
        except RuntimeError:  # no more threads: the ones there are serve the queue
            error_log.exception("cannot start a worker thread")
            return False
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        self._workers.append(worker)
        return True

    # --- the workers -----------------------------------------------------------------

    def _work(self) -> None:
        """A worker: serve connections from the queue until told to stop (None)."""
        ready = self._ready
        lot = self._lot
        while (connection := ready.get()) is not None:
            try:
                conn = connection.conn
                outcome = self._serve(connection) if conn is None else self._drive(connection, conn)
            except BaseException:  # even SystemExit from a handler: the worker must go on
                error_log.exception("connection from %s failed", format_peer(connection.client))
                self._abandon(connection)
                outcome = _OVER
            if outcome == _YIELD:
                ready.put(connection)
                continue
            if outcome == _OVER:
                self._close(connection)
            elif lot.acquire(False):  # not blocking: the reactor waits in epoll
                try:
                    parked = self._park_here(connection)
                finally:
                    lot.release()
                if parked:
                    continue
            self._hand_back(connection)

    def _park_here(self, connection: _Connection) -> bool:
        """Park a connection that waits, as the reactor would, holding the lot; False if the
        reactor must see to it (shutdown, room wanted, or a deadline it does not know yet).

        A connection that waits is then parked by the thread that served it: no message,
        and no reactor waking up to take it (a thread handoff less per request).
        """
        if self._stopping or self._room_wanted or self._epoll.closed:  # closed: serve failed
            return False
        deadline = connection.deadline
        if deadline is not None and (connection.timer is None or deadline < connection.timer[0]):
            return False  # the reactor may be asleep until later: it sets the timer itself
        if connection.woken and type(connection.action) in _WAKEABLE:
            self._ready.put(connection)  # woken meanwhile: it gives its wait up (still busy)
            return True
        self._busy -= 1
        self._park(connection)
        return True

    def _hand_back(self, connection: _Connection) -> None:
        """Give the connection to the reactor; after this, this thread must not touch it."""
        self._inbox.put(connection)
        self._notify_reactor()

    def _notify_reactor(self) -> None:
        """Make the reactor look at its queues (any thread)."""
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(OSError):  # full: a byte is there already; closed: stopped
                self._wake_writer.send(b"x")

    def _wake(self, connection: _Connection) -> None:
        """A connection's `wake` (any thread, any time): its Receive or Wait, now or next, ends.

        Parked, it goes to the workers from here (the reactor is not involved: one thread
        handoff less per answer of an app task). Elsewhere, it sees the flag before it
        parks: the flag is set before the lot is looked at, and the reactor checks it,
        under the lot, when the connection comes back (`_take_messages`).

        Never waits for the lot: held by the reactor, which may wait for the GIL while it
        holds it, it would stall the app loop (about 0.1 ms a wake, under load). The
        reactor then takes the connection out itself, told by a message.
        """
        connection.woken = True
        lot = self._lot
        if not lot.acquire(blocking=False):
            self._woken.put(connection)
            self._notify_reactor()
            return
        try:
            self._end_parked_wait(connection)
        finally:
            lot.release()

    def _end_parked_wait(self, connection: _Connection) -> None:
        """A woken connection parked for a `Receive` or a `Wait` goes to a worker, which
        gives the wait up and asks the core again (the lot held)."""
        if connection.parked and type(connection.action) in _WAKEABLE:
            self._unpark(connection)
            self._dispatch(connection)

    # --- app tasks ----------------------------------------------------------------------

    def _app_loop(self) -> _AppLoop:
        """The loop app tasks run on, started the first time one is needed."""
        apps = self._apps
        if apps is None:
            with self._apps_lock:
                if self._apps is None:
                    self._apps = _AppLoop(self._options.loop_factory, self._task_over)
                apps = self._apps
        return apps

    def _task_over(self) -> None:
        if self._stopping:  # the reactor waits for the last ones
            self._notify_reactor()

    def _serve(self, connection: _Connection) -> str:
        """Drive the connection as far as it goes without waiting: `_WAIT`, `_YIELD` or `_OVER`."""
        conn = connection.conn
        if conn is None:
            made = self._set_up(connection)
            if isinstance(made, str):
                return made  # the TLS handshake waits, or the connection failed
            conn = connection.conn = made
        return self._drive(connection, conn)

    def _set_up(self, connection: _Connection) -> ServerConnection | str:
        """The connection's core once its socket is ready (after the TLS handshake), or an outcome."""
        sock = connection.sock
        app = self._app
        try:
            if connection.handshake_deadline is None:  # a new connection
                if sock.family != socket.AF_UNIX:  # no Nagle on TCP (a Unix socket has none)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    limit_unsent(sock)  # a slow client's progress shows (`--send-timeout`)
                connection.client = client_address(sock)
                connection.handshake_deadline = time.monotonic() + self._config.head_timeout
            context = self._options.ssl_context
            if context is not None and not connection.tls:
                if connection.timed_out or self._stopping:
                    return _OVER  # no request started yet: nothing to finish
                try:
                    first = sock.recv(1, socket.MSG_PEEK)  # a TLS client begins with a handshake
                except BlockingIOError:
                    return self._wait(connection, _READ, connection.handshake_deadline)
                if first == TLS_HANDSHAKE:
                    sock = connection.sock = context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                    connection.tls = True
                elif first:
                    app = plain_http_app  # plain HTTP to the TLS port: served without TLS, a 400
                else:
                    return _OVER
            if connection.tls:
                if connection.timed_out or self._stopping:
                    return _OVER  # no request started yet: nothing to finish
                try:
                    cast("ssl.SSLSocket", sock).do_handshake()
                except self._want_read:
                    return self._wait(connection, _READ, connection.handshake_deadline)
                except self._want_write:
                    return self._wait(connection, _WRITE, connection.handshake_deadline)
        except OSError as exc:  # the peer went away, or the TLS handshake failed
            error_log.debug("connection from %s failed: %r", format_peer(connection.client), exc)
            return _OVER
        return ServerConnection(
            app,
            self._config,
            now=time.monotonic(),
            client=connection.client,
            server=server_address(sock),
            tls=connection.tls,
            wake=functools.partial(self._wake, connection),
        )

    def _drive(self, connection: _Connection, conn: ServerConnection) -> str:
        """The loop every transport has: ask the core, perform, report, until it must wait or Close."""
        sock = connection.sock
        monotonic = time.monotonic
        ready = self._ready
        action = connection.action  # the action it waited for, tried again; else a new one
        connection.action = None
        # A Wait parks for readability before it peeks: the app usually answers first (an
        # app task spawned just before, running on the app loop), and its wake-up ends the
        # wait without a system call. Readable, it comes back here, and peeks then.
        readable_wait = action if type(action) is Wait else None
        # A response cut short (a write failed or timed out) ends without TLS's close_notify,
        # so the client sees the cut. From there to Close nothing waits: a local will do.
        cut = False
        if connection.timed_out:
            connection.timed_out = False
            if self._paced(connection, action):
                return _WAIT
            cut = type(action) is Send or type(action) is SendFile
            action = None
            connection.out = b""
            connection.file_left = 0
            conn.timeout(monotonic())
        turn_end = monotonic() + _TURN
        # Set once a Send went out whole on a plain socket: a client sends its next request
        # after reading the response (pipelining is rare), so the recv would almost always
        # fail (a system call and an exception); park for it at once instead. Not under
        # TLS: the SSLSocket may hold decrypted bytes, which epoll cannot see.
        answered = False
        while True:
            if self._stopping:
                if self._cutting:
                    abandon(conn, monotonic())
                    return _OVER
                self._tell_stop(connection, conn)
                if type(action) is Receive and conn.phase is Phase.IDLE and not self._draining:
                    action = None  # abandon the wait: asked again, the core closes
            if action is None:
                action = conn.next_action(monotonic())
                # What is left to send lives on the connection: a Send or SendFile that
                # waited or yielded goes on from where it stopped.
                if type(action) is Send:
                    connection.out = action.data
                elif type(action) is SendFile:
                    connection.file_offset, connection.file_left = action.offset, action.count
                if ready.qsize() and type(action) in _YIELD_BEFORE and monotonic() > turn_end:
                    # A client that always has data (a fast upload), always takes it (a fast
                    # download) or has many requests read already (pipelining) goes behind
                    # the connections waiting for a worker now and then. Not after every
                    # request: workers that are always runnable convoy on the GIL, and the
                    # reactor, starved of it, parks and wakes late.
                    connection.action = action
                    return _YIELD
            try:
                if type(action) is Receive:
                    if answered:
                        answered = False
                        if not connection.woken:  # `_wait_for`, inline (every request)
                            connection.action = action
                            connection.events = _READ
                            connection.deadline = action.deadline
                            return _WAIT
                        connection.woken = False  # give the wait up: ask again
                    else:
                        conn.receive_data(sock.recv(RECEIVE_SIZE), monotonic())
                elif type(action) is Send:
                    out = connection.out
                    sent = sock.send(out) if out else 0  # the usual whole send, inline
                    if sent == len(out):
                        connection.out = b""
                    else:
                        connection.out = memoryview(out)[sent:]
                        self._send_out(connection)
                    answered = not connection.tls
                elif type(action) is SendFile:
                    self._send_file(connection, action)
                elif type(action) is Run:
                    action.step()
                    if action.watch and peer_left(sock):  # unwatched while it ran: look now
                        cut = True
                        conn.connection_lost(monotonic())
                elif type(action) is Wait:
                    if connection.woken:
                        connection.woken = False
                    elif action is not readable_wait:
                        connection.action = action
                        return self._wait(connection, _READ, action.deadline)
                    else:
                        left = peer_left(sock)
                        if not left:  # nothing yet: watch; bytes waiting: sleep until woken
                            connection.action = action
                            return self._wait(connection, _READ if left is None else _SLEEP, action.deadline)
                        cut = True
                        conn.connection_lost(monotonic())
                elif type(action) is Spawn:
                    self._app_loop().spawn(action.task)
                elif type(action) is HalfClose:
                    if not connection.tls:
                        sock.shutdown(socket.SHUT_WR)
                else:  # Close
                    if connection.tls and not cut:
                        _send_close_notify(cast("ssl.SSLSocket", sock))
                    return _OVER
            except BlockingIOError:
                if type(action) is not Receive:
                    return self._wait_for(connection, action, _WRITE)
                if not connection.woken:
                    return self._wait_for(connection, action, _READ)
                connection.woken = False  # give the wait up: ask again
            except self._want_read:
                # TLS needs bytes from the peer first. A recv raises this only once the
                # SSLSocket holds no decrypted byte (which epoll could not see).
                if type(action) is not Receive or not connection.woken:
                    return self._wait_for(connection, action, _READ)
                connection.woken = False
            except self._want_write:
                return self._wait_for(connection, action, _WRITE)
            except OSError:
                connection.out = b""
                connection.file_left = 0
                cut = True
                conn.connection_lost(monotonic())
            action = None

    def _wait_for(self, connection: _Connection, action: Action, events: int) -> str:
        """Park until `events`, then try `action` again (it goes on where it stopped).

        A Send or SendFile with a `timeout` waits on a deadline for progress: first its
        own, then, each time it parks again with fewer bytes left than the last time, the
        moment plus `timeout` (so the clock is read only for writes that wait). Under TLS
        a write that must wait takes no byte of its buffer (OpenSSL retries it whole): the
        bytes the client took, looked at when the deadline passes, tell (`_paced`)."""
        assert isinstance(action, (Receive, Send, SendFile))
        connection.action = action
        deadline = action.deadline
        if not isinstance(action, Receive) and action.timeout is not None:
            left = len(connection.out) + connection.file_left
            if connection.pacing is not action:  # its first wait
                connection.pacing = action
                connection.acked = bytes_acked(connection.sock) if connection.tls else None
            elif left < connection.unsent:  # bytes went out since it last parked
                deadline = time.monotonic() + action.timeout
            else:
                deadline = connection.deadline
            connection.unsent = left
        return self._wait(connection, events, deadline)

    def _paced(self, connection: _Connection, action: Action | None) -> bool:
        """At the deadline of a Send or SendFile under TLS: whether the client took bytes
        since it last looked (then the connection is set to wait on, a timeout later)."""
        if not isinstance(action, (Send, SendFile)) or action.timeout is None or connection.acked is None:
            return False
        acked = bytes_acked(connection.sock)
        if acked is None or acked <= connection.acked:
            return False
        connection.acked = acked
        connection.action = action
        self._wait(connection, connection.events, time.monotonic() + action.timeout)
        return True

    def _wait(self, connection: _Connection, events: int, deadline: float | None) -> str:
        """Park until `events` or `deadline`, whichever comes first."""
        connection.events = events
        connection.deadline = deadline
        return _WAIT

    def _send_out(self, connection: _Connection) -> None:
        """Send what is left of `out`; BlockingIOError (or the SSL layer's) when the socket is full.

        Under TLS a send that must wait is tried again with the same bytes, as OpenSSL requires.
        """
        sock = connection.sock
        out = connection.out
        while out:
            sent = sock.send(out)
            out = connection.out = memoryview(out)[sent:] if sent < len(out) else b""

    def _send_file(self, connection: _Connection, action: SendFile) -> None:
        """Send what is left of the file's part: os.sendfile where possible, else piece by piece."""
        file = action.file
        if connection.tls or not has_fileno(file):
            while True:
                self._send_out(connection)
                size = min(connection.file_left, FILE_PIECE_SIZE)
                if not size:
                    return
                piece = read_at(file, connection.file_offset, size)  # the disk: allowed here
                if not piece:
                    raise OSError("file ended before its announced length")
                connection.out = piece
                connection.file_offset += len(piece)
                connection.file_left -= len(piece)
        out_fd, in_fd = connection.sock.fileno(), file.fileno()
        while connection.file_left:
            sent = os.sendfile(out_fd, in_fd, connection.file_offset, connection.file_left)
            if not sent:
                raise OSError("file ended before its announced length")
            connection.file_offset += sent
            connection.file_left -= sent

    def _abandon(self, connection: _Connection) -> None:
        """No more I/O on this connection: the core still undoes what is in progress."""
        if connection.conn is not None:
            try:
                abandon(connection.conn, time.monotonic())
            except Exception:
                error_log.exception(
                    "cleaning up the connection from %s failed", format_peer(connection.client)
                )

    def _close(self, connection: _Connection) -> None:
        with contextlib.suppress(OSError):
            connection.sock.close()
        connection.closed = True
        connection.conn = None  # a stale heap entry may keep the shell a while, not the core
        connection.action = None
        connection.out = b""
        connection.pacing = None


class _AppLoop:
    """One asyncio event loop in a thread of its own, where app tasks and the lifespan run.

    Any thread may `spawn`; the tasks are kept (and counted, for shutdown) until they end.
    """

    def __init__(
        self, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None, over: Callable[[], None]
    ):
        self.loop = (loop_factory or asyncio.new_event_loop)()
        self.count = 0  # tasks spawned and not yet over; read by the reactor
        self._over = over  # called (on the loop's thread) whenever a task ends
        self._lock = threading.Lock()  # for `count`: workers spawn at once
        self._tasks: set[asyncio.Task[None]] = set()  # the loop thread's own
        self._cancelling = False
        self._entering: asyncio.Task[None] | None = None  # `enter`'s task, until entered (loop thread)
        self._startup_cancelled = False  # by `cancel_startup` (loop thread)
        # Tasks spawned and not yet started: one call_soon_threadsafe (a write to the
        # loop's self-pipe) per batch of them, not one per task.
        self._spawned: collections.deque[Callable[[], Awaitable[None]]] = collections.deque()
        self._start_pending = False
        self._thread = threading.Thread(target=self._run, name="http-app-loop", daemon=True)
        # Like the workers, it leaves SIGTERM and SIGINT to the main thread.
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        """Start `task()` on the loop (from any thread)."""
        with self._lock:
            self.count += 1
        self._spawned.append(task)
        if not self._start_pending:
            self._start_pending = True
            self.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        # Cleared before the queue is emptied: a task appended after this is either
        # started below or comes with a call of its own (as `_notify_reactor`'s byte).
        self._start_pending = False
        spawned = self._spawned
        create_task = self.loop.create_task
        while spawned:
            running = create_task(run_task(spawned.popleft()))
            self._tasks.add(running)
            running.add_done_callback(self._done)
            if self._cancelling:
                running.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        with self._lock:
            self.count -= 1
        self._over()

    def cancel_all(self) -> None:
        """Cancel every task, and those still to start (from any thread); each runs its cleanup."""
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self.loop.call_soon_threadsafe(self._cancel_all)

    def _cancel_all(self) -> None:
        self._cancelling = True
        for task in self._tasks:
            task.cancel()

    def enter(self, lifespan: Lifespan) -> Callable[[], None] | None:
        """Enter `lifespan()` in a task on the loop; raises what entering raised. Returns the
        function that exits it (blocking until it did, and raising what exiting raised), or
        None when `cancel_startup` cancelled the entering."""
        entered: concurrent.futures.Future[None] = concurrent.futures.Future()
        leave: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def hold() -> None:
            if self._startup_cancelled:
                raise asyncio.CancelledError
            self._entering = asyncio.current_task()
            try:
                async with lifespan():
                    self._entering = None  # on the loop's thread, as the cancel: none comes after this
                    entered.set_result(None)
                    await asyncio.wrap_future(leave)
            finally:
                self._entering = None

        held = asyncio.run_coroutine_threadsafe(hold(), self.loop)
        concurrent.futures.wait([entered, held], return_when=concurrent.futures.FIRST_COMPLETED)
        if not entered.done():
            if held.cancelled():
                return None
            held.result()  # raises the failure
            raise RuntimeError("the lifespan returned without entering")  # pragma: no cover

        def exit_lifespan() -> None:
            leave.set_result(None)
            held.result()

        return exit_lifespan

    def cancel_startup(self) -> None:
        """Cancel the entering of the lifespan, if it is under way (from any thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self.loop.call_soon_threadsafe(self._cancel_entering)

    def _cancel_entering(self) -> None:
        self._startup_cancelled = True
        if self._entering is not None:
            self._entering.cancel()

    def stop(self) -> None:
        """Stop the loop and wait (a bounded time) for its thread."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CLEANUP_WAIT)


def _idle(connection: _Connection) -> bool:
    """Whether the connection waits for a request (none started yet)."""
    conn = connection.conn
    return conn is not None and conn.phase is Phase.IDLE and type(connection.action) is Receive


def _send_close_notify(sock: ssl.SSLSocket) -> None:
    """Send TLS's close_notify without waiting for the peer's, as trio and asyncio do: the
    client can then tell the end of a response from a cut. Best effort: a full socket skips it."""
    with contextlib.suppress(OSError, ValueError):  # SSLError (want read or write) is an OSError
        sock.unwrap()


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
    stops accepting), else binds `options.host`/`options.port`. Enters
    `options.lifespan` on the app loop before accepting (raising what it raises) and
    exits it once drained; a signal during that startup cancels it, and `serve` returns
    without serving. Calls `started(server)` once accepting. Blocks; signals
    need it on the main thread.
    """
    sockets = bind(options) if sockets is None else sockets
    previous: dict[signal.Signals, Any] = {}
    try:
        server = ThreadServer(app, config, options, sockets)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    try:
        if options.handle_signals:

            def on_signal(signum: int, frame: FrameType | None) -> None:
                server.shutdown(drain=signum == signal.SIGUSR1)

            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                previous[signum] = signal.signal(signum, on_signal)
            take_stop_signals()
        leave = None
        if options.lifespan is not None:
            apps = server._app_loop()
            if server._stopping:  # a signal came before there was a loop to tell
                apps.cancel_startup()
            leave = apps.enter(options.lifespan)
            if leave is None:
                logs.startup_cancelled()
                return
        try:
            if started is not None:
                started(server)
            server._react()
        finally:
            if leave is not None:
                leave()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server._tear_down()
        if server._apps is not None:
            server._apps.stop()
