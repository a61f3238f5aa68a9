"""The core's cost per request in-process, next to bare h11's: no sockets, no event loop.

    .venv/bin/python -m bench.core [--requests 20000] [--profile] [--calls] [--parser h11-mypyc]
                                   [--asgi | --wsgi]

Drives `protocol.ServerConnection` with the real app (`handlers.build_app`) through
keep-alive `GET /echo/abc` cycles exactly as a transport would (Receive, receive_data,
Send, ...), and the bare loops' h11 code through the same bytes. The difference is what
the core and handlers add on top of h11 (`--parser h11-mypyc`: the core's parser is the
compiled fork, and so is the bare loop's, for the same comparison). Best of several
repeats, so other load on the machine hardly moves it. `--profile` prints cProfile's top
functions of the core's run; `--calls` prints Python function calls per request of both,
which load does not move at all. On a busy machine, instructions per request are the
steadiest measure (run N and 5N cycles, take the difference). `--asgi` measures the ASGI
path instead of the built-in routes: the ASGI benchmark's minimal app
(bench/peers/asgi_min.py) behind `handlers.asgi.ASGIApp`, its task run inline (it never
waits), so the figure is the core's and the adapter's cost without an event loop's. `--wsgi`
likewise measures the WSGI benchmark's minimal app (bench/peers/wsgi_app.py) behind
`handlers.wsgi.WSGIApp`, its `Run` step run inline as the threads transport runs it.
Callgrind counts instructions (`core_cycles`, `asgi_cycles` or `wsgi_cycles`):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python -c "from bench.core import core_cycles; core_cycles(1000)"
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import time

import h11

from bench.peers.bare import process
from handlers import build_app
from protocol import PARSERS, Config, Receive, Send, ServerConnection, select_parser

REQUEST = b"GET /echo/abc HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\n\r\n"


def core_cycles(n: int) -> None:
    conn = ServerConnection(build_app(None), Config(access_log=False), now=0.0)
    for _ in range(n):
        action = conn.next_action(0.0)
        assert type(action) is Receive
        conn.receive_data(REQUEST, 0.0)
        action = conn.next_action(0.0)
        assert type(action) is Send


def asgi_cycles(n: int) -> None:
    from bench.peers.asgi_min import app
    from handlers.asgi import ASGIApp
    from protocol import Spawn

    conn = ServerConnection(ASGIApp(app), Config(access_log=False), now=0.0, wake=_nothing)
    for _ in range(n):
        action = conn.next_action(0.0)
        assert type(action) is Receive
        conn.receive_data(REQUEST, 0.0)
        action = conn.next_action(0.0)
        assert type(action) is Spawn
        with contextlib.suppress(StopIteration):
            action.task().send(None)  # type: ignore[attr-defined]
        action = conn.next_action(0.0)
        assert type(action) is Send, action


def wsgi_cycles(n: int) -> None:
    from bench.peers.wsgi_app import app
    from handlers.wsgi import WSGIApp
    from protocol import Run

    conn = ServerConnection(WSGIApp(app), Config(access_log=False), now=0.0)
    for _ in range(n):
        action = conn.next_action(0.0)
        assert type(action) is Receive
        conn.receive_data(REQUEST, 0.0)
        action = conn.next_action(0.0)
        assert type(action) is Run, action
        action.step()  # inline, as the threads transport runs it
        action = conn.next_action(0.0)
        assert type(action) is Send, action


def _nothing() -> None:
    pass


def bare_cycles(n: int) -> None:
    conn = h11.Connection(h11.SERVER)  # bench.peers.bare's h11 is switched along with the core's
    for _ in range(n):
        out, close = process(conn, REQUEST)
        assert out and not close


def best(run: object, n: int, repeats: int = 7) -> float:
    """Best CPU µs per cycle over `repeats` runs (CPU time: other load on the machine barely counts)."""
    assert callable(run)
    times = []
    for _ in range(repeats):
        started = time.thread_time()
        run(n)
        times.append(time.thread_time() - started)
    return min(times) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--calls", action="store_true")
    parser.add_argument("--parser", choices=tuple(PARSERS), default="h11", help="the core's h11")
    apps = parser.add_mutually_exclusive_group()
    apps.add_argument("--asgi", action="store_true", help="the ASGI adapter instead of the built-in routes")
    apps.add_argument("--wsgi", action="store_true", help="the WSGI adapter instead of the built-in routes")
    args = parser.parse_args()
    ours = asgi_cycles if args.asgi else wsgi_cycles if args.wsgi else core_cycles
    if args.parser != "h11":
        select_parser(args.parser)
        _use_parser_in_bare_loop(PARSERS[args.parser])
    if args.calls:
        for name, run in (("core + handlers", ours), ("bare h11 loop", bare_cycles)):
            counter = cProfile.Profile()
            counter.runcall(run, 1000)
            calls = sum(value[1] for value in pstats.Stats(counter).stats.values())  # type: ignore[attr-defined]
            print(f"{name}: {calls / 1000:.0f} Python calls per request")
    core, bare = best(ours, args.requests), best(bare_cycles, args.requests)
    print(f"core + handlers: {core:.1f} µs per request")
    print(f"bare h11 loop:   {bare:.1f} µs per request")
    print(f"added by us:     {core - bare:.1f} µs ({core / bare:.2f}x bare)")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(ours, args.requests)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def _use_parser_in_bare_loop(module: str) -> None:
    """Point the bare loop (this module and bench.peers.bare) at the same parser module."""
    import importlib

    from bench.peers import bare

    chosen = importlib.import_module(module)
    globals()["h11"] = chosen
    bare.h11 = chosen  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
