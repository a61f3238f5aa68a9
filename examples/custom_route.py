"""Custom routes added to the server's route table, served by the transport of your choice.

    GET  /hello/{name}   200 "Hello, {name}!"            (a handler answering a Response at once)
    POST /reverse        200 the request body reversed   (an Exchange that reads the body)

plus every built-in route (`/`, `/echo/...`, `/user-agent`, `/files/...`).

    python -m examples.custom_route --transport asyncio --port 8080    # from the repository root

Ctrl-C or SIGTERM stops the server gracefully (in-flight requests finish).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Protocol

from handlers import Route, Router, build_app, text_response
from protocol import App, Config, Exchange, Request, Response
from transports.options import ServerOptions

MAX_BODY: int = 1024 * 1024
"""POST /reverse keeps the body in memory, so the core refuses larger ones (413) for us."""


def hello(request: Request, rest: bytes) -> Response:
    """`GET /hello/{name}`: `rest` is the path after the prefix, still percent-encoded."""
    return text_response(request, b"Hello, " + rest + b"!")


class Reverse:
    """`POST /reverse`: an `Exchange` collects the body, then answers it reversed.

    It touches no disk, so it runs on the event loop (`may_block` false); a handler that
    reads files or does other blocking work sets `may_block` and the transport runs it
    in a worker thread.
    """

    may_block = False

    def __init__(self, request: Request) -> None:
        self.request = request
        self.body = bytearray()

    def start(self) -> None:
        """Nothing to check before the body: every request is accepted."""

    def receive(self, data: bytes) -> None:
        self.body += data

    def respond(self) -> Response:
        return text_response(self.request, bytes(reversed(self.body)))

    def abort(self) -> None:
        self.body.clear()  # nothing to undo: the client went away or the request failed


def reverse(request: Request, rest: bytes) -> Exchange:
    return Reverse(request)


def make_app(directory: Path | None = None) -> Router:
    """The built-in routes plus ours."""
    app = build_app(directory)
    app.add(Route(b"/hello/", hello, prefix=True))
    app.add(Route(b"/reverse", reverse, frozenset({b"POST"})))
    return app


class Listening(Protocol):
    """What every transport's server object offers once it listens (also `shutdown()`)."""

    ports: list[int]


def run(transport: str, app: App, config: Config, options: ServerOptions) -> None:
    """Serve until a signal, with one transport's `serve`; each tells us its bound port once listening."""

    def started(server: Listening) -> None:
        print(f"Listening on http://{options.host}:{server.ports[0]}", flush=True)

    if transport == "trio":
        import trio

        from transports import trio_server

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(functools.partial(trio_server.serve, app, config, options))
                started(server)

        trio.run(main)
    elif transport == "asyncio":
        import asyncio

        from transports import asyncio_server

        asyncio.run(asyncio_server.serve(app, config, options, started=started))
    else:
        from transports import thread_server

        thread_server.serve(app, config, options, started=started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=("trio", "asyncio", "threads"), default="trio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--directory", type=Path, help="serve /files/ from here")
    args = parser.parse_args()
    options = ServerOptions(host=args.host, port=args.port, handle_signals=True, shutdown_grace=5.0)
    run(args.transport, make_app(args.directory), Config(max_body_size=MAX_BODY), options)


if __name__ == "__main__":
    main()
