"""The sans-IO core driven by a plain blocking socket loop: one connection at a time.

Everything HTTP (keep-alive, pipelining, errors, timeouts) is decided by
`protocol.ServerConnection`; this loop only performs its actions, turning each action's
deadline into a socket timeout. Being one connection at a time, a keep-alive client
holds the server until it closes or stays idle for `keep_alive_timeout`.

    python -m examples.blocking_loop --port 8080 --directory /tmp    # from the repository root
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import time
from pathlib import Path

from handlers import build_app
from protocol import App, Close, Config, HalfClose, Receive, Run, Send, SendFile, ServerConnection


def serve_connection(sock: socket.socket, app: App, config: Config) -> None:
    """Drive one connection until the core says Close."""
    tcp = sock.family in (socket.AF_INET, socket.AF_INET6)  # else no client address (a Unix socket)
    client, server = (sock.getpeername()[:2], sock.getsockname()[:2]) if tcp else (None, None)
    conn = ServerConnection(app, config, now=time.monotonic(), client=client, server=server)
    while True:
        action = conn.next_action(time.monotonic())
        try:
            match action:
                case Receive(deadline):
                    sock.settimeout(seconds_until(deadline))
                    conn.receive_data(sock.recv(65536), time.monotonic())  # b"" at end of input
                case Send(data, deadline, timeout):
                    # A deadline for progress: each send may wait `timeout` for room (sendall's
                    # timeout would be for the whole write).
                    sock.settimeout(seconds_until(deadline) if timeout is None else timeout)
                    view = memoryview(data)
                    while view:
                        view = view[sock.send(view) :]
                case SendFile(file, offset, count, deadline, timeout):
                    sock.settimeout(seconds_until(deadline) if timeout is None else timeout)  # per write
                    if sock.sendfile(file, offset, count) != count:
                        conn.connection_lost()  # the file shrank under us
                case Run(step):
                    step()  # may block (disk): fine here, we block anyway
                case HalfClose():
                    sock.shutdown(socket.SHUT_WR)
                case Close():
                    sock.close()
                    return
        except TimeoutError:
            conn.timeout(time.monotonic())
        except OSError:  # reset, broken pipe
            conn.connection_lost()


def seconds_until(deadline: float | None) -> float | None:
    """A socket timeout ending at `deadline`; never 0, which would make the socket non-blocking."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)


def serve_forever(listener: socket.socket, app: App, config: Config) -> None:
    """Accept connections one after another and serve each to its end."""
    while True:
        sock, _ = listener.accept()
        with sock:
            serve_connection(sock, app, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--directory", type=Path, help="serve /files/ from here")
    args = parser.parse_args()
    with socket.create_server((args.host, args.port)) as listener:
        for signum in (signal.SIGINT, signal.SIGTERM):  # both stop it, even if the parent ignored SIGINT
            signal.signal(signum, signal.default_int_handler)
        host, port = listener.getsockname()[:2]
        print(f"Listening on http://{host}:{port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            serve_forever(listener, build_app(args.directory), Config(keep_alive_timeout=2.0))


if __name__ == "__main__":
    main()
