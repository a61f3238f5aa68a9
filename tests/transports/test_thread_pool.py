"""The threads transport serves connections from a bounded pool of worker threads: any
number of connections, idle or slow, never takes more than `ServerOptions.threads`, and
no client holds a worker while it makes the server wait."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from handlers import build_app
from handlers.asgi import ASGIApp
from protocol import Config, Request, Response
from transports import thread_server
from transports.options import ServerOptions

from .harness import GET, read_until_close, running


def _workers() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("http-worker")}


def _body(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


def test_many_connections_share_at_most_threads_workers_and_reuse_them() -> None:
    def app(request: Request) -> Response:  # runs on a worker thread
        return Response(200, (), b"%d" % threading.get_ident())

    before = _workers()
    with running("threads", app, options=ServerOptions(port=0, threads=2)) as server:
        clients = [server.connect() for _ in range(20)]
        idents = set()
        try:
            for _ in range(3):  # every connection stays open, idle between its requests
                for client in clients:
                    client.sendall(GET)
                    idents.add(_body(client.recv(65536)))
            assert len(_workers() - before) <= 2
        finally:
            for client in clients:
                client.close()
        for _ in range(10):  # and one connection after another
            with server.connect() as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                idents.add(_body(read_until_close(sock)))
    assert 1 <= len(idents) <= 2


def test_a_reader_that_stalls_holds_no_worker(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"z" * (32 * 1024 * 1024))
    options = ServerOptions(port=0, threads=1)
    with running("threads", build_app(tmp_path), options=options) as server, server.connect() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
        assert stalled.recv(1000).startswith(b"HTTP/1.1 200 OK\r\n")  # then never reads again
        with server.connect() as other:
            other.settimeout(2)
            other.sendall(b"GET /echo/other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_close(other).endswith(b"other")


class _SlowSink:
    """An upload whose disk work takes a while for every piece; the body is dropped."""

    may_block = True

    def __init__(self, done: threading.Event) -> None:
        self.done = done

    def start(self) -> None:
        pass

    def receive(self, data: bytes) -> None:
        time.sleep(0.005)

    def respond(self) -> Response:
        self.done.set()
        return Response(201)

    def abort(self) -> None:
        self.done.set()


def test_a_client_that_always_has_data_does_not_starve_the_others() -> None:
    done = threading.Event()

    def app(request: Request) -> Response | _SlowSink:
        return _SlowSink(done) if request.method == b"POST" else Response(200, (), b"quick")

    size = 16 * 1024 * 1024  # hundreds of slow pieces: over a second of work for the one worker
    with running("threads", app, options=ServerOptions(port=0, threads=1)) as server:
        upload = server.connect()
        upload.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sender = threading.Thread(target=_send_quietly, args=(upload, b"u" * size), daemon=True)
        sender.start()
        try:
            time.sleep(0.2)  # the worker is busy with the upload, which never runs dry
            with server.connect() as other:
                started = time.monotonic()
                other.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert read_until_close(other).endswith(b"quick")
                assert time.monotonic() - started < 0.5
            assert not done.is_set(), "answered only once the upload was over"
        finally:
            upload.shutdown(socket.SHUT_RDWR)  # the sender's sendall fails, and it ends
            sender.join(10)
            upload.close()


class _SlowAnswer:
    """A request whose blocking step takes a while; its response is small."""

    may_block = True

    def start(self) -> None:
        pass

    def receive(self, data: bytes) -> None:
        pass

    def respond(self) -> Response:
        time.sleep(0.005)
        return Response(200, (), b"slow")


def test_pipelined_requests_that_never_wait_do_not_starve_the_others() -> None:
    """Steps and sends, no Receive in between (all requests already read), no wait either."""

    def app(request: Request) -> Response | _SlowAnswer:
        return _SlowAnswer() if request.target == b"/slow" else Response(200, (), b"quick")

    count = 200  # a second of steps for the one worker
    with running("threads", app, options=ServerOptions(port=0, threads=1)) as server:
        with server.connect() as pipelined:
            pipelined.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" * count)
            reader = threading.Thread(target=_read_quietly, args=(pipelined,), daemon=True)
            reader.start()
            time.sleep(0.1)  # the worker is busy with the pipelined requests
            with server.connect() as other:
                started = time.monotonic()
                other.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert read_until_close(other).endswith(b"quick")
                waited = time.monotonic() - started
            pipelined.shutdown(socket.SHUT_RDWR)
            reader.join(10)
        assert waited < 0.5, f"a small request waited {waited:.2f}s behind {count} pipelined ones"


def test_a_request_sent_while_the_previous_response_is_made_is_served() -> None:
    """After a response the worker parks for the next request without reading: one that
    came already (sent before the response was read) is served all the same, at once."""

    def app(request: Request) -> Response | _SlowAnswer:
        return _SlowAnswer() if request.target == b"/slow" else Response(200, (), b"quick")

    options = ServerOptions(port=0, threads=1)
    with running("threads", app, options=options) as server, server.connect() as sock:
        sock.settimeout(5)
        for _ in range(3):
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.002)  # during the step: not in the same read as the first
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while not received.endswith(b"quick"):
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
            assert received.count(b"HTTP/1.1 200") == 2, received


def test_descriptors_reused_by_new_connections_are_served() -> None:
    """A closed connection's descriptor number goes to the next client: the epoll must
    watch the new socket, not remember the old one."""

    def app(request: Request) -> Response:
        return Response(200, (), b"ok")

    with running("threads", app, options=ServerOptions(port=0, threads=2)) as server:
        keep = server.connect()  # parked between its requests all along
        try:
            for _ in range(20):
                with server.connect() as sock:  # likely the number the previous one had
                    sock.sendall(GET)
                    assert sock.recv(65536).endswith(b"ok")
                    sock.sendall(GET)  # its second request: parked and woken in between
                    assert sock.recv(65536).endswith(b"ok")
                keep.sendall(GET)
                assert keep.recv(65536).endswith(b"ok")
        finally:
            keep.close()


def _read_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def test_threads_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="threads"):
        ServerOptions(threads=0)


def test_serve_releases_everything_when_started_fails() -> None:
    """Its listener, selector and wake-up sockets are closed whatever ends serve()."""

    def failing(server: object) -> None:
        raise RuntimeError("the embedding application failed")

    before = len(os.listdir("/proc/self/fd"))
    options = ServerOptions(port=0, handle_signals=False)
    with pytest.raises(RuntimeError, match="embedding"):
        thread_server.serve(build_app(None), Config(access_log=False), options, started=failing)
    assert len(os.listdir("/proc/self/fd")) == before


def test_an_app_wake_never_waits_for_the_reactors_lot() -> None:
    """A wake that finds the lot held (the reactor at work) leaves the parked connection to
    the reactor, told by a message: the app's send returns at once (the app loop, where
    every app task runs, must not wait on the reactor), and the answer still goes out."""
    servers: list[thread_server.ThreadServer] = []
    original = thread_server.ThreadServer.__init__

    def record(self: thread_server.ThreadServer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        servers.append(self)

    answer = threading.Event()  # set by the test: the app may answer
    sent = threading.Event()  # set by the app once its last send returned

    async def app(scope: dict[str, object], receive: object, send: Callable[..., Any]) -> None:
        while not answer.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        sent.set()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(thread_server.ThreadServer, "__init__", record)
        with running("threads", ASGIApp(app)) as server, server.connect() as sock:
            sock.sendall(GET)
            time.sleep(0.3)  # the connection parks for the app's answer (a Wait)
            (served,) = servers
            with served._lot:  # as the reactor holds it while it works
                answer.set()
                assert sent.wait(2), "the app's send waited for the lot"
            assert _body(sock.recv(65536)) == b"ok"
