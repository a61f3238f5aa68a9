"""`--workers N`: pre-forked processes sharing the parent's listening sockets (Linux).

The parent binds, forks the workers and supervises them: a worker that dies is
replaced; SIGTERM/SIGINT is passed on to every worker, which shuts down gracefully,
and the parent exits once all are gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Final

error_log: Final = logging.getLogger("httpserver.error")

_STOP_SIGNALS: Final = {signal.SIGTERM, signal.SIGINT}
_RESPAWN_DELAY: Final = 1.0
"""A worker that dies within this of its start is replaced only after this long."""


STARTUP_FAILED: Final = 3
"""A worker's exit status when its app could not start: it is not replaced, the others are
stopped, and `supervise` returns it (gunicorn's WORKER_BOOT_ERROR, uvicorn's exit status)."""


def supervise(count: int, work: Callable[[], int | None]) -> int:
    """Run `work()` in `count` child processes until SIGTERM/SIGINT; `work` returns the
    worker's exit status (None: 0). Returns 0, or STARTUP_FAILED if a worker's app could
    not start."""
    children: dict[int, float] = {}  # pid -> start time
    stopping = False
    status = 0

    def stop_all(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _kill(pid)

    def spawn() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)  # no parent handler in the child
        pid = os.fork()
        if pid == 0:
            for signum in _STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            _child(work)
        children[pid] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    for signum in _STOP_SIGNALS:
        signal.signal(signum, stop_all)
    for _ in range(count):
        spawn()
    error_log.info("started %d workers", count)
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        started = children.pop(pid, None)
        if started is None or stopping:
            continue
        if os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == STARTUP_FAILED:
            error_log.error("worker %d could not start the app; stopping", pid)
            stopping = True
            status = STARTUP_FAILED
            for other in children:
                _kill(other)
            continue
        error_log.warning("worker %d exited (%s); replacing it", pid, _describe(wait_status))
        if time.monotonic() - started < _RESPAWN_DELAY:
            time.sleep(_RESPAWN_DELAY)
        if not stopping:
            spawn()
    return status


def _child(work: Callable[[], int | None]) -> None:
    code = 0
    try:
        code = work() or 0
    except BaseException:
        error_log.exception("worker failed")
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.waitstatus_to_exitcode(status)}"
