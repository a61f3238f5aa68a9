"""A sans-IO HTTP/1.1 server core on h11: bytes and the current time in, actions out.

This package does no I/O and never sleeps; it imports h11 and the standard library's
pure parts only. A transport (trio, asyncio, threads, or your own loop) owns the
socket and the clock and drives one `ServerConnection` per connection:

1. Ask `conn.next_action(now)` and perform what it says:
   - `Receive(deadline)`: read some bytes, then `conn.receive_data(data, now)`;
     pass b"" when the peer closed its side.
   - `Send(data, deadline, timeout)`: write all of `data`.
   - `SendFile(file, offset, count, deadline, timeout)`: write that part of the file.
   For both, `deadline` is one for progress: each time bytes go out, move it on to
   that moment plus `timeout` (a client that takes no byte for that long is cut).
   - `Run(step)`: call `step()` where blocking is allowed (a worker thread in an event
     loop; inline in a threaded server). It never raises.
   - `Run(step, watch)`: with `watch`, notice the peer leaving while the step runs (peek,
     or read and hold its bytes) and then call `conn.connection_lost()` after the step.
   - `Wait(deadline)`: wait for `wake` (see below); don't read, but watch as above and
     call `conn.connection_lost()` at once if the peer leaves.
   - `Spawn(task)`: start `task()` on the event loop where async apps run; keep it until
     it returns (at shutdown: wait within the grace period, then cancel).
   - `HalfClose()`: shut down the writing side; keep reading.
   - `Close()`: close the socket; the connection is over.
   A `Receive` or `Wait` in progress is given up when the `wake` callable passed to
   `ServerConnection` is called (from any thread, at any time; remember a wake that
   comes before the wait began): then ask for the next action.
2. If an action's deadline passes before it completes, call `conn.timeout(now)` instead.
3. If the socket fails (reset, broken pipe), call `conn.connection_lost()` (after any
   `Run` step in progress has returned); the actions that follow may still include
   `Run` steps that undo half-done work, then `Close`.
4. Repeat from 1 until `Close`. To stop a server gracefully, call `conn.shutdown()` on
   every connection and abandon any `Receive` in progress on an idle one (its `phase`
   is `Phase.IDLE`; a new connection, `Phase.NEW`, still gets its first request), then
   ask for the next action. `conn.shutdown(drain=True)` lets idle connections wait on for
   one more request (answered with `Connection: close`) or their keep-alive deadline, so
   that no request crosses the server's close (a reload, a rolling restart).

No exception reaches the transport from these calls, whatever the peer sends or the
application does (a failing handler gets a 500); only breaking this contract raises.

`now` is any monotonic clock in seconds; deadlines are on the same clock. All HTTP
decisions (keep-alive, pipelining, 100-continue, error statuses, timeouts, lingering
close) are made here, so every transport behaves the same.

A complete blocking server for one connection, without timeouts::

    import socket, time
    from protocol import Config, ServerConnection, Receive, Send, SendFile, Run, HalfClose, Close

    def serve(sock: socket.socket, app) -> None:
        conn = ServerConnection(app, Config(), now=time.monotonic())
        while True:
            action = conn.next_action(time.monotonic())
            if isinstance(action, Receive):
                conn.receive_data(sock.recv(65536), time.monotonic())
            elif isinstance(action, Send):
                sock.sendall(action.data)
            elif isinstance(action, SendFile):
                sock.sendfile(action.file, action.offset, action.count)
            elif isinstance(action, Run):
                action.step()
            elif isinstance(action, HalfClose):
                sock.shutdown(socket.SHUT_WR)
            else:
                sock.close()
                return

The application is an `App`: a callable from `Request` to a `Response`; to an
`Exchange` when it reads the request body or its work may block; or to a `Session`
when a task running concurrently (an async app) serves the request through a `Channel`
(see `messages` and `channel`). A Response's body may be a `Stream`, made piece by piece
by a producer that may block (a WSGI iterable): the core asks for each piece in a
watched `Run` step once the one before it went out.

The core parses with h11, or with the compiled fork h11-mypyc (about twice as fast, an
optional extra): call `select_parser("h11-mypyc")` once, before making connections
(see `parser`).

WebSockets (RFC 6455 with permessage-deflate; `protocol.websocket`, on wsproto): with
`Config.websocket`, a valid handshake reaches the app flagged `Request.websocket`; a
`Session` answering it accepts, refuses or answers in HTTP through its `Channel`, then
exchanges messages there. The transport sees only the same actions (time is data: a
ping that is due is a `Receive` deadline).
"""

from .actions import Action, Close, HalfClose, Receive, Run, Send, SendFile, Spawn, Wait
from .channel import Channel
from .config import Config
from .connection import Phase, ServerConnection
from .messages import (
    App,
    Exchange,
    FileBody,
    Headers,
    Request,
    Response,
    Session,
    Stream,
    cacheable,
)
from .parser import PARSERS, ParserUnavailable, select_parser
from .proxy import TrustedProxies

__all__ = [
    "PARSERS",
    "Action",
    "App",
    "Channel",
    "Close",
    "Config",
    "Exchange",
    "FileBody",
    "HalfClose",
    "Headers",
    "ParserUnavailable",
    "Phase",
    "Receive",
    "Request",
    "Response",
    "Run",
    "Send",
    "SendFile",
    "ServerConnection",
    "Session",
    "Spawn",
    "Stream",
    "TrustedProxies",
    "Wait",
    "cacheable",
    "select_parser",
]
