"""The server inside an existing asyncio application, next to the application's other tasks.

The application here has a heartbeat task that ticks every `interval` seconds. The HTTP
server runs on the same loop and shares the application's state: `GET /ticks` answers the
heartbeat's count (handlers run on the loop, so no lock is needed). The application starts
and stops the server itself: `Application.run` serves until `Application.stop` is set, then
shuts the server down gracefully (in-flight requests finish, idle connections close) and
stops the heartbeat.

    python -m examples.asyncio_embedded --port 8080    # from the repository root; Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable

from handlers import Route, build_app, text_response
from protocol import Config, Request, Response
from transports.asyncio_server import AsyncioServer, serve
from transports.options import ServerOptions


class Application:
    """An asyncio application that also answers HTTP."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.ticks = 0
        self.stop = asyncio.Event()
        """Set it (on the loop) to stop the whole application."""

    async def heartbeat(self) -> None:
        """The application's own periodic work."""
        while True:
            await asyncio.sleep(self.interval)
            self.ticks += 1

    def ticks_handler(self, request: Request, rest: bytes) -> Response:
        return text_response(request, b"%d" % self.ticks)

    async def run(self, options: ServerOptions, ready: Callable[[int], object] | None = None) -> None:
        """Run the heartbeat and the server until `stop`; `ready(port)` once the server listens."""
        app = build_app(None)
        app.add(Route(b"/ticks", self.ticks_handler))
        listening: asyncio.Future[AsyncioServer] = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as tasks:  # a failing task cancels the others
            heartbeat = tasks.create_task(self.heartbeat())
            serving = tasks.create_task(serve(app, Config(), options, started=listening.set_result))
            server = await listening
            if ready is not None:
                ready(server.ports[0])
            await self.stop.wait()
            server.shutdown()  # graceful: returns once connections are done (or cut after the grace)
            await serving
            heartbeat.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between heartbeats")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)  # the access log goes to `logging`, like the app's own logs

    async def application_main() -> None:
        application = Application(args.interval)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):  # the application owns the signals, not the server
            loop.add_signal_handler(signum, application.stop.set)
        options = ServerOptions(host=args.host, port=args.port, shutdown_grace=5.0)

        def ready(port: int) -> None:
            print(f"Listening on http://{args.host}:{port}", flush=True)

        await application.run(options, ready)
        print(f"Stopped after {application.ticks} heartbeats", flush=True)

    asyncio.run(application_main())


if __name__ == "__main__":
    main()
