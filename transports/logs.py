"""The server's loggers, and how the command line sets them up.

- `httpserver.access`: one line per response (INFO), on or off by itself (`--no-access-log`),
  whatever `--log-level` says;
- `httpserver.error`: what went wrong (a handler's exception, a connection that failed);
- `httpserver.server`: one server process's life: shutdown begun, what it waits for, done;
- `httpserver.workers`: the `--workers` supervisor: workers started, replaced, reloaded.

Every line but the access log's goes through `protocol.redaction.redact_text`: credentials
(Authorization, Cookie...) never reach the log, not even in a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Final

from protocol import Phase
from protocol.redaction import redact_text

ACCESS: Final = "httpserver.access"
SERVER_LOGGERS: Final = "httpserver"
"""The parent of the server's loggers."""
server_log: Final = logging.getLogger("httpserver.server")


class RedactingFormatter(logging.Formatter):
    """A formatter that redacts credentials from everything it formats (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.name == ACCESS else redact_text(text)


def configure(level: str, *, access_log: bool, process_ids: bool) -> None:
    """Log to stderr at `level` (a name such as "info"); the access log follows `access_log` alone."""
    handler = logging.StreamHandler(sys.stderr)
    pid = "[%(process)d] " if process_ids else ""  # which worker logged it
    handler.setFormatter(RedactingFormatter(f"%(asctime)s {pid}%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger(ACCESS).setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    global _level
    _level = root.level


_level: int | None = None
"""The root level `configure` set (`--log-level`), or None."""


def reclaim() -> None:
    """Give the server's loggers back what an app's logging configuration (at its import, or
    in its lifespan startup) took: `disable_existing_loggers` (true by default in
    `logging.config.fileConfig`, and often in `dictConfig` configurations such as Django's
    LOGGING) disables every logger that existed then, which silenced the access and error
    logs; a root level of the app's own would decide theirs, so they keep `--log-level`."""
    manager = logging.Logger.manager
    for name in (SERVER_LOGGERS, *manager.loggerDict):
        if name == SERVER_LOGGERS or name.startswith(SERVER_LOGGERS + "."):
            logging.getLogger(name).disabled = False
    if _level is not None and logging.getLogger().level != _level:
        logging.getLogger(SERVER_LOGGERS).setLevel(_level)


_IN_FLIGHT: Final = frozenset(
    {Phase.HEAD, Phase.BODY, Phase.STEP, Phase.RESPONDING, Phase.STREAM, Phase.APP, Phase.WEBSOCKET}
)
"""The phases of a connection with a request in flight (its response not yet all sent)."""


def _tally(phases: Iterable[Phase]) -> tuple[int, int, int]:
    """(requests in flight, new connections, others open) among connections in `phases`;
    closed ones are left out."""
    in_flight = new = other = 0
    for phase in phases:
        if phase in _IN_FLIGHT:
            in_flight += 1
        elif phase is Phase.NEW:
            new += 1
        elif phase is not Phase.CLOSED:
            other += 1  # idle, or closing after its response (DRAIN, LINGER)
    return in_flight, new, other


def _some(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


def shutdown_begins(phases: Iterable[Phase], grace: float, *, drain: bool = False) -> None:
    """Log that shutdown began, given the phases of the connections open then: listeners
    closed, idle connections closing (unless `drain`: then they wait for a last request or
    their keep-alive deadline), and what it waits for."""
    in_flight, new, other = _tally(phases)
    if drain:
        server_log.info(
            "draining: waiting up to %gs for %s to end (%d with a request in flight; idle ones: a last "
            "request, answered with Connection: close, or their keep-alive timeout)",
            grace,
            _some(in_flight + new + other, "connection"),
            in_flight,
        )
        return
    waits = [_some(in_flight, "request") + " in flight"] if in_flight else []
    if new:  # accepted, no request yet: its first one is still answered
        waits.append(f"the first request of {_some(new, 'new connection')}")
    if waits:
        server_log.info("shutting down: waiting up to %gs for %s", grace, " and ".join(waits))
    else:
        server_log.info("shutting down: no request in flight")


def shutdown_cuts(phases: Iterable[Phase]) -> None:
    """Log that the grace period is over (or a second signal came), given the phases of the
    connections still open: those with a request in flight are cut, the others closed."""
    in_flight, new, other = _tally(phases)
    if in_flight + new + other == 0:
        return
    cuts = f"cutting {_some(in_flight, 'request')} still in flight" if in_flight else ""
    if new + other:  # new, idle (draining), or discarding input after a closing response
        closing = f"closing {_some(new + other, 'other connection' if in_flight else 'connection')}"
        cuts = f"{cuts} and {closing}" if in_flight else f"{closing} with no request in flight"
    server_log.warning("shutdown: %s", cuts)


def startup_cancelled() -> None:
    """Log that a stop (a signal) came during the app's startup, which was cancelled."""
    server_log.info("stopped during the app's startup: not serving (the startup was cancelled)")


def shutdown_done() -> None:
    server_log.info("shutdown complete")
