"""What the core asks its transport to do next.

Every action that waits carries an absolute `deadline` on the clock the transport
passes as `now` (None: no limit). If the deadline passes first, the transport calls
`ServerConnection.timeout(now)` instead of completing the action.

Actions are read-only by contract but not frozen: the core builds two or more per
request, and a frozen dataclass costs about twice as much to build (its __init__ goes
through object.__setattr__ for every field).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(slots=True)
class Receive:
    """Read some bytes and pass them to `receive_data` (b"" at end of input)."""

    deadline: float | None


@dataclass(slots=True)
class Send:
    """Write all of `data`."""

    data: bytes
    deadline: float | None


@dataclass(slots=True)
class SendFile:
    """Write `count` bytes of `file` from `offset` (os.sendfile where possible)."""

    file: BinaryIO
    offset: int
    count: int
    deadline: float | None


@dataclass(slots=True)
class Run:
    """Call `step()` where blocking is allowed (a worker thread); it never raises."""

    step: Callable[[], None]


@dataclass(slots=True)
class HalfClose:
    """Shut down the sending side (the peer sees end of input); keep receiving."""


@dataclass(slots=True)
class Close:
    """Close the connection. This is the last action."""


Action = Receive | Send | SendFile | Run | HalfClose | Close
