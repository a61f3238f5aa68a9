"""What the core asks its transport to do next.

Every action that waits carries an absolute `deadline` on the clock the transport
passes as `now` (None: no limit). If the deadline passes first, the transport calls
`ServerConnection.timeout(now)` instead of completing the action.

A `Send` or `SendFile` with a `timeout` (the core gives every one `Config.send_timeout`)
has a deadline for progress, not for the whole write, as nginx's `send_timeout`: each
time some of its bytes go out, the transport moves the deadline on to that moment plus
`timeout`. So a slow but steady reader gets the whole response, and one that takes no
byte for `timeout` seconds is cut. A write that goes out at once needs no clock. (A
transport may notice progress late, by sampling, but never cut sooner than `timeout`
after the last byte went out.) Without a `timeout`, the deadline is for the whole write.

Actions are read-only by contract but not frozen: the core builds two or more per
request, and a frozen dataclass costs about twice as much to build (its __init__ goes
through object.__setattr__ for every field).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(slots=True)
class Receive:
    """Read some bytes and pass them to `receive_data` (b"" at end of input).

    If `wake` is called meanwhile (an app task has something for the core), give the wait
    up and ask for the next action; bytes already read go to `receive_data` first.
    """

    deadline: float | None


@dataclass(slots=True)
class Send:
    """Write all of `data`; `deadline` moves on with progress by `timeout` (see above)."""

    data: bytes
    deadline: float | None
    timeout: float | None = None


@dataclass(slots=True)
class SendFile:
    """Write `count` bytes of `file` from `offset` (os.sendfile where possible);
    `deadline` moves on with progress by `timeout` (see above)."""

    file: BinaryIO
    offset: int
    count: int
    deadline: float | None
    timeout: float | None = None


@dataclass(slots=True)
class Run:
    """Call `step()` where blocking is allowed (a worker thread); it never raises.

    With `watch`, the step produces a response for a client that may leave meanwhile (an
    app's work): while it runs, notice the peer closing or resetting the connection,
    without handing its bytes to the core (peek at them, or read and hold them), and if
    it did, call `connection_lost()` once the step has returned.
    """

    step: Callable[[], None]
    watch: bool = False


@dataclass(slots=True)
class Wait:
    """Wait until the connection's `wake` is called (an app task has something for the
    core), then ask for the next action. Do not read; watch as for `Run(watch=True)`,
    and call `connection_lost()` at once if the peer leaves."""

    deadline: float | None


@dataclass(slots=True)
class Spawn:
    """Start `task()` concurrently on the event loop where async apps run; do not wait for it.

    The task talks to the core through a `Channel` and `wake`, never by raising: it
    handles its own errors. The transport keeps it until it returns: at shutdown it
    waits for spawned tasks within the grace period, then cancels those left.
    """

    task: Callable[[], Awaitable[None]]


@dataclass(slots=True)
class HalfClose:
    """Shut down the sending side (the peer sees end of input); keep receiving."""


@dataclass(slots=True)
class Close:
    """Close the connection. This is the last action."""


Action = Receive | Send | SendFile | Run | Wait | Spawn | HalfClose | Close
