"""The ASGI lifespan protocol: the app's startup before the server accepts, its shutdown after.

`Lifespan(app, mode)` gives two hooks for the transport (`ServerOptions.on_startup` and
`on_shutdown`), which awaits them on the loop where the app's requests run. `startup()`
starts the app's lifespan task in the background (it lives until shutdown), sends
`lifespan.startup` and waits for the answer; `shutdown()` sends `lifespan.shutdown` once
the connections drained and waits for that answer. Modes, with uvicorn's meaning:

- `on`: the app must speak lifespan. `lifespan.startup.failed`, an exception, or no
  answer within the startup timeout: logged, and `startup()` raises `LifespanFailed`
  (the server exits with status 3, as uvicorn does, without serving).
- `auto` (default): the same, except that an app that raises before it even read the
  `lifespan.startup` message is taken not to support lifespan (apps without it raise on
  the unknown scope type first): logged once at info level, and the server runs without
  it. One that raises after reading it failed its startup. (uvicorn's auto takes any
  exception before the answer for "unsupported", so a startup that crashes is served.)
- `off`: no lifespan scope at all.

`state` is the dict passed as the lifespan scope's `state`; every request gets a shallow
copy of it (`ASGIApp(..., state=lifespan.state)`). Shutdown problems are logged, never
raised: the server still exits as it would have. A `startup()` that is cancelled (the
server was told to stop meanwhile) cancels the app's task too, and never sends shutdown.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any, Final, Literal

from .asgi import ASGI3App, Message
from .notify import Handle, Notifier, notifier, spawn

error_log: Final = logging.getLogger("httpserver.error")

Mode = Literal["auto", "on", "off"]
MODES: Final = ("auto", "on", "off")
STARTUP_TIMEOUT: Final = 60.0
SHUTDOWN_TIMEOUT: Final = 30.0


class LifespanFailed(Exception):
    """The app's lifespan startup failed (already logged): do not serve."""


class Lifespan:
    """One process's lifespan cycle. See the module docstring."""

    def __init__(
        self,
        app: ASGI3App,
        mode: Mode = "auto",
        *,
        startup_timeout: float = STARTUP_TIMEOUT,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
        state: dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"lifespan mode must be one of {MODES}, not {mode!r}")
        self.app = app
        self.mode = mode
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.state: dict[str, Any] = {} if state is None else state
        self.active = False
        """The app speaks lifespan and its task runs: shutdown() will talk to it."""
        self._notifier: Notifier | None = None
        self._task: Handle | None = None
        self._asked = 0  # messages handed to the app's receive(): 1 startup, 2 shutdown
        self._shutdown_requested = False
        self._answers: list[Message] = []
        self._ended = False
        self._error: BaseException | None = None

    # --- the hooks ---------------------------------------------------------------------

    async def startup(self) -> None:
        if self.mode == "off":
            return
        self._notifier = notifier()
        self._task = spawn(self._main)
        try:
            answer = await self._await_answer(1, self.startup_timeout)
        except BaseException:  # cancelled (a stop signal): the app's startup is cancelled too
            self._cancel()
            raise
        kind = answer.get("type") if answer else None
        if kind == "lifespan.startup.complete":
            self.active = True
            error_log.info("ASGI lifespan startup complete")
            return
        if kind == "lifespan.startup.failed":
            error_log.error("ASGI lifespan startup failed: %s", answer.get("message", "") if answer else "")
            self._cancel()
            raise LifespanFailed("lifespan.startup.failed")
        if kind is not None:
            error_log.error("ASGI lifespan startup: unexpected answer %r", kind)
            self._cancel()
            raise LifespanFailed(kind)
        if not self._ended:
            error_log.error("ASGI lifespan startup did not complete within %gs", self.startup_timeout)
            self._cancel()
            raise LifespanFailed("timeout")
        error = self._error
        if error is None:
            if self.mode == "on":
                error_log.warning("the ASGI app returned from the lifespan scope without starting up")
            return
        if self.mode == "auto" and self._asked == 0:  # raised before it read lifespan.startup
            error_log.info(
                "the ASGI app does not support lifespan (it raised %s: %s); serving without it",
                type(error).__name__,
                error,
            )
            return
        error_log.error("ASGI lifespan startup failed\n%s", _format(error))
        raise LifespanFailed(repr(error))

    async def shutdown(self) -> None:
        if not self.active:
            return
        self.active = False
        self._shutdown_requested = True
        self._wake()
        answer = await self._await_answer(2, self.shutdown_timeout)
        kind = answer.get("type") if answer else None
        if kind == "lifespan.shutdown.complete":
            error_log.info("ASGI lifespan shutdown complete")
        elif kind == "lifespan.shutdown.failed":
            error_log.error("ASGI lifespan shutdown failed: %s", answer.get("message", "") if answer else "")
        elif kind is not None:
            error_log.error("ASGI lifespan shutdown: unexpected answer %r", kind)
        elif not self._ended:
            error_log.error("ASGI lifespan shutdown did not complete within %gs", self.shutdown_timeout)
        elif self._error is not None:
            error_log.error("ASGI lifespan shutdown failed\n%s", _format(self._error))
        else:
            error_log.warning("the ASGI app returned from the lifespan scope without shutting down")
        self._cancel()

    # --- the app's task ----------------------------------------------------------------

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            self._error = exc
            if self.active:  # after startup, before shutdown: nobody else will say it
                error_log.error("the ASGI lifespan task failed\n%s", _format(exc))
        finally:
            self._ended = True
            self._wake()

    async def _receive(self) -> Message:
        if self._asked == 0:
            self._asked = 1
            return {"type": "lifespan.startup"}
        waiter = self._waiter()
        while True:
            since = waiter.generation
            if self._shutdown_requested and self._asked == 1:
                self._asked = 2
                return {"type": "lifespan.shutdown"}
            await waiter.wait(since)

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        expected = ("lifespan.startup.complete", "lifespan.startup.failed")
        if self._asked == 2:
            expected = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")
        if kind not in expected or len(self._answers) >= self._asked:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")
        self._answers.append(message)
        self._wake()

    # --- between the two ----------------------------------------------------------------

    def _waiter(self) -> Notifier:
        assert self._notifier is not None
        return self._notifier

    def _wake(self) -> None:
        if self._notifier is not None:
            self._notifier.set()

    async def _await_answer(self, wanted: int, timeout: float) -> Message | None:
        """The app's answer to startup (1) or shutdown (2); None: it ended, or the time ran out."""
        waiter = self._waiter()
        deadline = time.monotonic() + timeout
        while True:
            since = waiter.generation
            if len(self._answers) >= wanted:
                return self._answers[wanted - 1]
            left = deadline - time.monotonic()
            if self._ended or left <= 0:
                return None
            await waiter.wait(since, left)

    def _cancel(self) -> None:
        if self._task is not None and not self._ended:
            self._task.cancel()


def _format(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)).rstrip()
