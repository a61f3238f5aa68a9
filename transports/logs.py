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
from typing import Final

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


def shutdown_begins(in_flight: int, grace: float, *, drain: bool = False) -> None:
    """Log that shutdown began: listeners closed, idle connections closing (unless `drain`:
    then they wait for a last request or their keep-alive deadline), `in_flight` to wait for."""
    if drain:
        server_log.info(
            "draining: waiting up to %gs for %d connection%s to end (idle ones: a last request, "
            "answered with Connection: close, or their keep-alive timeout)",
            grace,
            in_flight,
            "" if in_flight == 1 else "s",
        )
    elif in_flight:
        server_log.info(
            "shutting down: waiting up to %gs for %d connection%s with a request in flight",
            grace,
            in_flight,
            "" if in_flight == 1 else "s",
        )
    else:
        server_log.info("shutting down: no request in flight")


def startup_cancelled() -> None:
    """Log that a stop (a signal) came during the app's startup, which was cancelled."""
    server_log.info("stopped during the app's startup: not serving (the startup was cancelled)")


def shutdown_cuts(count: int) -> None:
    """Log that the grace period is over (or a second signal came) and `count` connections are cut."""
    if count:
        server_log.warning(
            "shutdown: cutting %d connection%s still in flight", count, "" if count == 1 else "s"
        )


def shutdown_done() -> None:
    server_log.info("shutdown complete")
