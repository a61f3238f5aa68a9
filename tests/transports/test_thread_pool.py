"""The threads transport hands a new connection to an idle thread instead of starting one."""

from __future__ import annotations

import threading

from protocol import Request, Response

from .harness import read_until_close, running


def test_threads_are_reused_across_connections() -> None:
    def app(request: Request) -> Response:  # runs on the connection's thread
        return Response(200, (), b"%d" % threading.get_ident())

    with running("threads", app) as server:
        idents = set()
        for _ in range(10):
            with server.connect() as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                idents.add(read_until_close(sock).split(b"\r\n\r\n", 1)[1])
    assert len(idents) == 1
