"""Transports: trio, asyncio and threads, each driving `protocol.ServerConnection`.

A transport owns sockets, the clock and threads; it performs the core's actions and
reports what happened, and makes no HTTP decision of its own. All three share one loop
shape (ask `next_action`, perform it, report, repeat until `Close`) and the helpers in
`common`. Each module is imported only when chosen, so that start-up stays fast:

- `transports.trio_server.serve`
- `transports.asyncio_server.serve`
- `transports.thread_server.serve`
"""
