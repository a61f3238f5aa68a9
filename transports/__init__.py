"""Transports: trio, asyncio and threads, each driving `protocol.ServerConnection`.

A transport owns sockets, the clock and threads; it performs the core's actions and
reports what happened, and makes no HTTP decision of its own. All three share one loop
shape (ask `next_action`, perform it, report, repeat until `Close`) and the helpers in
`common`. Each module is imported only when chosen, so that start-up stays fast:

- `trio_server.serve(app, config, options, *, sockets=None, task_status=...)`
- `asyncio_server.serve(app, config, options, *, sockets=None, started=None)`
- `thread_server.serve(app, config, options, *, sockets=None, started=None)`

Each serves until its server's `shutdown()` (or SIGTERM/SIGINT with
`ServerOptions.handle_signals`): it stops accepting, lets requests in flight finish
within `shutdown_grace`, then cuts the rest, whose cleanup (an upload's temporary
file...) still runs. The server handle (`task_status.started` / `started`) has the
bound `ports`. `options.ServerOptions` holds the server-level settings; the HTTP
limits and timeouts are `protocol.Config`. `cli` is `python -m transports`; `workers`
forks `--workers N` processes on shared listening sockets; `listeners` makes the
sockets that are not bound from `--host`/`--port` (`--uds`, `--fd`, systemd's).
"""
