"""A bare threads + h11 echo server, one thread per connection: the threads ceiling."""

from __future__ import annotations

import socket
import threading

import h11

from bench.peers.bare import port_from_argv, process


def handle(sock: socket.socket) -> None:
    conn = h11.Connection(h11.SERVER)
    with sock:
        while True:
            try:
                out, close = process(conn, sock.recv(65536))
                if out:
                    sock.sendall(out)
            except OSError:
                return
            if close:
                return


def main(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main(port_from_argv())
