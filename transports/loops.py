"""The event loops we run: asyncio's own, or uvloop (an optional extra).

`--loop` picks the loop of the asyncio transport and of the threads transport's app loop
(its ASGI apps), as `ServerOptions.loop_factory`; `asyncio_server.serve()` itself runs on
whichever loop is running, and `run` starts it on the chosen one. uvloop is imported only
when chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

if TYPE_CHECKING:  # imported when used: the trio and threads transports start without asyncio
    import asyncio

LOOPS: Final = ("asyncio", "uvloop")
"""The loop names `--loop` takes."""

LOOP_TRANSPORTS: Final = frozenset({"asyncio", "threads"})
"""The transports that run an asyncio event loop (threads: for its apps); trio has its own."""

_T = TypeVar("_T")


class LoopUnavailable(ImportError):
    """The loop asked for is not installed; the message says what to install."""


def new_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new loop of kind `name` ("asyncio" or "uvloop").

    Raises `ValueError` for an unknown name and `LoopUnavailable` when uvloop is missing.
    """
    if name == "asyncio":
        import asyncio

        return asyncio.new_event_loop
    if name != "uvloop":
        raise ValueError(f"unknown event loop {name!r}; choose one of {', '.join(LOOPS)}")
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        raise LoopUnavailable(
            "--loop uvloop needs the uvloop package, which is not installed"
            " (pip install '.[fast]' or pip install -r requirements-fast.txt)"
        ) from exc
    return cast("Callable[[], asyncio.AbstractEventLoop]", uvloop.new_event_loop)


def run(main: Coroutine[Any, Any, _T], loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> _T:
    """`asyncio.run(main)`, on a loop from `loop_factory` (None: asyncio's own)."""
    import asyncio

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)
