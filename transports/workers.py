"""`--workers N`: pre-forked processes sharing the parent's listening sockets (Linux).

The parent binds, forks the workers and supervises them; each worker builds its app and
TLS context itself, after the fork (`work`), and reports once it is serving. Signals to the
parent:

- SIGTERM/SIGINT: the parent closes its listening sockets and passes the signal on (as
  SIGTERM) to every worker, which shuts down gracefully; it exits once all are gone. A second
  one is passed on too: the workers cut their remaining connections.
- SIGUSR1: the same, but the workers drain (`shutdown(drain=True)`): an idle keep-alive
  connection is closed only after one more response, or at its keep-alive timeout. A
  SIGTERM after it makes them close idle connections at once.
- SIGHUP: reload, as gunicorn does. N new workers start (so they import the app and read the
  certificates as they are now); once all of them serve, the old ones get SIGUSR1 and drain:
  requests in flight finish, and no request crosses the close of an idle connection on the
  wire. The listening sockets stay open throughout, so no client is refused: a connection
  the old workers no longer accept waits in the backlog for a new one. If a new worker exits
  before it serves, or they are not all serving within `READY_TIMEOUT`, the reload is
  abandoned: the new workers stop and the old ones go on.

A worker that dies is replaced (after `_RESPAWN_DELAY` if it lived less than that). One of
the first generation that exits with an error before it serves stops the server (exit
status 1): it would only fail again. Workers die with the parent: they get SIGTERM when it dies, even by
SIGKILL (Linux's PR_SET_PDEATHSIG; elsewhere a thread watches the parent), so no orphan
keeps serving on the port. Workers ignore SIGHUP (a closing terminal sends it to them all).
Messages go to the `httpserver.workers` logger.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Final

log: Final = logging.getLogger("httpserver.workers")

Work = Callable[[Callable[[], None]], None]
"""What a worker runs: `work(ready)` serves until shut down, and calls `ready()` once serving."""

READY_TIMEOUT: Final = 60.0
"""Seconds a reload's new workers get to start serving, all of them."""
_RESPAWN_DELAY: Final = 1.0
"""A worker that dies within this of its start is replaced only after this long."""
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
_SIGNALS: Final = (*_STOP_SIGNALS, signal.SIGUSR1, signal.SIGHUP, signal.SIGCHLD)
_PR_SET_PDEATHSIG: Final = 1
_PARENT_CHECK_INTERVAL: Final = 1.0


@dataclass
class _Worker:
    generation: int
    started: float
    ready_fd: int
    """The read end of its readiness pipe; -1 once closed."""
    ready: bool = False
    retiring: bool = False
    """Sent SIGTERM by a reload (or an abandoned one): its exit is expected."""


@dataclass
class _Reload:
    generation: int
    deadline: float


def supervise(count: int, work: Work, listeners: Sequence[socket.socket] = ()) -> int:
    """Run `work` in `count` child processes until SIGTERM/SIGINT; reload on SIGHUP.

    `listeners` are closed when the server stops (the workers hold copies). Returns the
    exit status: 0, or 1 when the first workers could not start.
    """
    return _Supervisor(count, work, listeners).run()


class _Supervisor:
    def __init__(self, count: int, work: Work, listeners: Sequence[socket.socket]) -> None:
        self._count = count
        self._work = work
        self._listeners = listeners
        self._workers: dict[int, _Worker] = {}
        self._generation = 0  # the generation kept at `count` workers
        self._next_generation = 1
        self._booted = False  # every worker of the first generation has served
        self._reload: _Reload | None = None
        self._respawns: list[float] = []  # when to start a replacement, one entry each
        self._stopping = False
        self._draining = False  # stopping by SIGUSR1: the workers drain
        self._status = 0
        self._wake_read, self._wake_write = os.pipe()

    def run(self) -> int:
        previous = {signum: signal.signal(signum, _note) for signum in _SIGNALS}
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)
        old_wakeup = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # the command line held them back
        try:
            for _ in range(self._count):
                self._spawn(0)
            log.info("started %d workers", self._count)
            while self._workers or (self._respawns and not self._stopping):
                self._wait_and_handle()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._wake_read)
            os.close(self._wake_write)
            for worker in self._workers.values():
                _close(worker.ready_fd)
        log.info("all workers have exited")
        return self._status

    # --- the loop --------------------------------------------------------------------

    def _wait_and_handle(self) -> None:
        now = time.monotonic()
        wake_at = min(self._respawns, default=now + 60.0)
        if self._reload is not None:
            wake_at = min(wake_at, self._reload.deadline)
        pipes = {w.ready_fd: pid for pid, w in self._workers.items() if w.ready_fd >= 0}
        readable, _, _ = select.select([self._wake_read, *pipes], [], [], max(wake_at - now, 0.0))
        for fd in readable:
            if fd == self._wake_read:
                self._take_signals()
            elif fd in pipes:
                self._take_ready(pipes[fd])
        self._reap()
        now = time.monotonic()
        if self._reload is not None and now >= self._reload.deadline:
            self._abandon_reload(f"its workers were not all serving within {READY_TIMEOUT:.0f}s")
        due = [at for at in self._respawns if at <= now]
        if due:
            self._respawns = [at for at in self._respawns if at > now]
            if not self._stopping:
                for _ in due:
                    self._spawn(self._generation)

    def _take_signals(self) -> None:
        try:
            data = os.read(self._wake_read, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in _STOP_SIGNALS:
                self._stop(signal.Signals(signum).name)
            elif signum == signal.SIGUSR1:
                self._stop("SIGUSR1", drain=True)
            elif signum == signal.SIGHUP:
                self._start_reload()

    def _take_ready(self, pid: int) -> None:
        worker = self._workers[pid]
        with contextlib.suppress(BlockingIOError):
            data = os.read(worker.ready_fd, 16)
            _close(worker.ready_fd)
            worker.ready_fd = -1
            worker.ready = bool(data)  # b"": it exited before it served (reaped below)
        if not worker.ready:
            return
        if not self._booted and worker.generation == 0:
            self._booted = all(w.ready for w in self._workers.values() if w.generation == 0)
            if self._booted:
                log.info("all %d workers serving", self._count)
        reload = self._reload
        if reload is not None and worker.generation == reload.generation:
            fresh = [w for w in self._workers.values() if w.generation == reload.generation]
            if len(fresh) == self._count and all(w.ready for w in fresh):
                self._finish_reload(reload.generation)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is not None:
                self._exited(pid, worker, status)

    def _exited(self, pid: int, worker: _Worker, status: int) -> None:
        _close(worker.ready_fd)
        if self._stopping or worker.retiring:
            log.debug("worker %d exited (%s)", pid, _describe(status))
            return
        reload = self._reload
        if not worker.ready and reload is not None and worker.generation == reload.generation:
            self._abandon_reload(f"new worker {pid} exited ({_describe(status)}) before it served")
        elif not worker.ready and not self._booted and os.WIFEXITED(status) and os.WEXITSTATUS(status):
            # It failed by itself (a signal, say the OOM killer's, is no reason to stop).
            log.error("worker %d exited (%s) before it served; stopping", pid, _describe(status))
            self._status = os.WEXITSTATUS(status)  # 1, or 3 when its app's startup failed
            self._stop("a worker that could not start")
        else:
            log.warning("worker %d exited (%s); replacing it", pid, _describe(status))
            lived = time.monotonic() - worker.started
            self._respawns.append(time.monotonic() + (_RESPAWN_DELAY if lived < _RESPAWN_DELAY else 0.0))

    # --- stopping and reloading --------------------------------------------------------

    def _stop(self, why: str, *, drain: bool = False) -> None:
        """Stop every worker: SIGTERM (graceful), or SIGUSR1 with `drain`; a second stop
        signal makes draining workers close idle connections, and graceful ones cut."""
        if not self._stopping:
            log.info("%s: stopping %d workers%s", why, len(self._workers), " (draining)" if drain else "")
            for sock in self._listeners:
                sock.close()  # new clients are refused, not left in a backlog nobody serves
            self._draining = drain
        elif drain:
            return
        elif self._draining:
            log.info("%s: the draining workers close their idle connections now", why)
            self._draining = False
        else:
            log.info("%s again: the workers cut their remaining connections", why)
        self._stopping = True
        self._reload = None
        for pid in self._workers:
            _signal(pid, signal.SIGUSR1 if drain else signal.SIGTERM)

    def _start_reload(self) -> None:
        if self._stopping:
            return
        if self._reload is not None:
            log.warning("SIGHUP: a reload is already under way; ignored")
            return
        generation = self._next_generation
        self._next_generation += 1
        self._reload = _Reload(generation, time.monotonic() + READY_TIMEOUT)
        log.info("SIGHUP: reloading: starting %d new workers", self._count)
        for _ in range(self._count):
            self._spawn(generation)

    def _finish_reload(self, generation: int) -> None:
        old = [pid for pid, w in self._workers.items() if w.generation != generation and not w.retiring]
        log.info("reload: %d new workers serving; %d old ones drain", self._count, len(old))
        for pid in old:  # drain: an idle connection is closed only after a last response, or idle too long
            self._workers[pid].retiring = True
            _signal(pid, signal.SIGUSR1)
        self._generation = generation
        self._reload = None

    def _abandon_reload(self, why: str) -> None:
        reload = self._reload
        assert reload is not None
        log.error("reload abandoned: %s; the old workers go on", why)
        for pid, worker in self._workers.items():
            if worker.generation == reload.generation:
                worker.retiring = True
                _signal(pid, signal.SIGTERM)
        self._reload = None

    # --- starting a worker -------------------------------------------------------------

    def _spawn(self, generation: int) -> None:
        ready_read, ready_write = os.pipe()
        parent = os.getpid()
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # no parent handler runs in the child
        try:
            pid = os.fork()
        except OSError as exc:  # out of processes or memory: try again later
            log.error("cannot start a worker: %s", exc)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            os.close(ready_read)
            os.close(ready_write)
            self._respawns.append(time.monotonic() + _RESPAWN_DELAY)
            return
        if pid == 0:  # the child
            try:
                os.close(ready_read)
                self._become_worker(parent)
                _child(self._work, ready_write)
            finally:
                os._exit(1)  # only if the set-up above failed
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        os.close(ready_write)
        self._workers[pid] = _Worker(generation, time.monotonic(), ready_read)

    def _become_worker(self, parent: int) -> None:
        """In the child: drop the parent's signal set-up and descriptors; die with the parent."""
        signal.set_wakeup_fd(-1)
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for fd in (self._wake_read, self._wake_write, *(w.ready_fd for w in self._workers.values())):
            _close(fd)
        _die_with_parent(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


def _child(work: Work, ready_fd: int) -> None:
    def ready() -> None:
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"r")
        _close(ready_fd)

    code = 0
    try:
        work(ready)
    except SystemExit as exc:  # said why already (say, the app cannot be imported)
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker failed")
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the parent dies, however it dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        watched = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        watched = False
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)
    if not watched:
        threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_CHECK_INTERVAL)
    os.kill(os.getpid(), signal.SIGTERM)


def _note(signum: int, frame: FrameType | None) -> None:
    """The supervisor's signal handler: nothing; the wake-up descriptor carries the signal."""


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _close(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.waitstatus_to_exitcode(status)}"
