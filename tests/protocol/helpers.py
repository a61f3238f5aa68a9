"""Drive a `ServerConnection` in memory: explicit times, a real h11 client as the peer.

No sockets, no mocks, no sleeps. `Driver` performs the core's actions the way a
transport would (Send and SendFile bytes go to `output`, Run steps run inline) and
stops whenever the core waits for input (`Receive`) or is done (`Close`). `parse`
reads `output` with an `h11.Connection(h11.CLIENT)`, so every byte the core sends
must be valid HTTP/1.1 framing.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar, cast

import h11

from protocol import (
    Action,
    Close,
    Config,
    Exchange,
    FileBody,
    HalfClose,
    Headers,
    Receive,
    Request,
    Response,
    Run,
    Send,
    SendFile,
    ServerConnection,
    Spawn,
    Wait,
)

FRAGMENT_SIZES = (1, 2, 3, 7, 64, 1 << 20)
"""Sizes input is fed in: odd small ones, and all at once."""


def fragments(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def get(target: bytes = b"/", *headers: bytes, version: bytes = b"1.1", method: bytes = b"GET") -> bytes:
    """A request head with a Host header and the given extra header lines."""
    lines = [b"%s %s HTTP/%s" % (method, target, version), b"Host: example", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post(target: bytes, body: bytes, *headers: bytes) -> bytes:
    return get(target, b"Content-Length: %d" % len(body), *headers, method=b"POST") + body


def chunked(*chunks: bytes) -> bytes:
    """A chunked body encoding `chunks`, with its last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"


# --- the application side ---------------------------------------------------------------


class Recorder:
    """An `Exchange` that records every call; `fail` names a call that raises, `refusal` is
    what `start()` answers."""

    def __init__(
        self,
        *,
        may_block: bool,
        fail: str = "",
        response: Response | None = None,
        refusal: Response | None = None,
    ) -> None:
        self._may_block = may_block
        self.fail = fail
        self.response = response
        self.refusal = refusal
        self.calls: list[str] = []
        self.body = bytearray()

    @property
    def may_block(self) -> bool:
        return self._may_block

    def start(self) -> Response | None:
        self.calls.append("start")
        if self.fail == "start":
            raise RuntimeError("start failed")
        return self.refusal

    def receive(self, data: bytes) -> None:
        self.calls.append("receive")
        assert data, "receive() is never called with empty data"
        self.body += data
        if self.fail == "receive":
            raise RuntimeError("receive failed")

    def respond(self) -> Response:
        self.calls.append("respond")
        if self.fail == "respond":
            raise RuntimeError("respond failed")
        return self.response or Response(201, body=b"got %d" % len(self.body))

    def abort(self) -> None:
        self.calls.append("abort")
        if self.fail == "abort":
            raise RuntimeError("abort failed")


_EXCHANGE_TARGETS = (
    b"/upload",
    b"/blocking",
    b"/fail-receive",
    b"/fail-respond",
    b"/blocking-fail-receive",
    b"/fail-start",
    b"/blocking-fail-start",
    b"/refuse",
    b"/blocking-refuse",
)


class TrackedFile(io.BytesIO):
    """An in-memory file the test can check was closed."""


@dataclass
class App:
    """A small application with one route per behaviour under test.

    /                   200, empty body
    /echo/{s}           200 text/plain, body s
    /upload, /blocking  an Exchange (non-blocking, blocking) that counts the body
    /fail-receive, /fail-respond, /blocking-fail-receive   exchanges that raise
    /fail-start, /blocking-fail-start                       (in start())
    /refuse, /blocking-refuse   exchanges whose start() answers 403 "refused"
    /file               a FileBody over a real temporary file (`file_path`)
    /memfile            a FileBody over a `TrackedFile` of `memfile_size` bytes from offset 3
    /memfile/{n}, /memfile/bad   the same with status n, or with a header h11 refuses
    /boom               the app itself raises
    /bad-response       a Response h11 refuses to send
    /status/{n}         an empty response with status n
    """

    file_path: Path | None = None
    memfile_size: int = 10
    requests: list[Request] = field(default_factory=list)
    exchanges: list[Recorder] = field(default_factory=list)
    files: list[BinaryIO] = field(default_factory=list)

    def __call__(self, request: Request) -> Response | Recorder:
        self.requests.append(request)
        target = request.target
        if target == b"/":
            return Response(200)
        if target.startswith(b"/echo/"):
            return Response(200, ((b"Content-Type", b"text/plain"),), target[6:])
        if target.startswith(b"/status/"):
            return Response(int(target[8:]))
        if target in _EXCHANGE_TARGETS:
            fail = target.rsplit(b"-", 1)[1].decode() if b"fail" in target else ""
            refusal = Response(403, body=b"refused") if target.endswith(b"refuse") else None
            exchange = Recorder(may_block=b"blocking" in target, fail=fail, refusal=refusal)
            self.exchanges.append(exchange)
            return exchange
        if target == b"/file":
            assert self.file_path is not None
            file = self.file_path.open("rb")
            self.files.append(file)
            return Response(200, (), FileBody(file, 0, self.file_path.stat().st_size))
        if target.startswith(b"/memfile"):  # /memfile, /memfile/{status}, /memfile/bad
            mem = TrackedFile(bytes(range(256)) * (self.memfile_size // 256 + 2))
            self.files.append(mem)
            status, headers = 200, cast(Headers, ())
            if target == b"/memfile/bad":
                headers = ((b"Bad Header", b"x"),)
            elif target != b"/memfile":
                status = int(target[9:])
            return Response(status, headers, FileBody(mem, 3, self.memfile_size))
        if target == b"/boom":
            raise RuntimeError("the app failed")
        if target == b"/bad-response":
            return Response(200, ((b"Bad Header", b"x"),))
        return Response(404, body=b"not found")


# --- the transport side ------------------------------------------------------------------


AppT = TypeVar("AppT", bound=Callable[[Request], "Response | Exchange"])


class Driver(Generic[AppT]):
    """Performs the core's actions in memory, at the explicit time `now`."""

    def __init__(
        self,
        app: AppT,
        config: Config | None = None,
        *,
        now: float = 0.0,
        run_steps: bool = True,
        client: tuple[str, int] | None = None,
    ) -> None:
        self.app = app
        self.config = config or Config(access_log=False)
        self.now = now
        self.woken = False
        self.tasks: list[Coroutine[Any, Any, None]] = []
        self.conn = ServerConnection(app, self.config, now=now, client=client, wake=self._wake)
        self.run_steps = run_steps
        self.actions: list[Action] = []
        self.output = bytearray()
        self.half_closed = False
        self.closed = False
        self.waiting: Action = Receive(None)
        self.unprocessed = b""  # input the core never asked for because it closed first
        self.advance()

    def advance(self, *, stop_at: tuple[type, ...] = ()) -> Action:
        """Perform actions until the core waits for input, closes, or asks for `stop_at`."""
        while True:
            action = self.conn.next_action(self.now)
            self.actions.append(action)
            self.waiting = action
            if isinstance(action, stop_at):
                return action
            if isinstance(action, Send):
                assert not self.half_closed and not self.closed
                assert action.deadline == self.now + self.config.send_timeout
                assert action.timeout == self.config.send_timeout  # a deadline for progress
                self.output += action.data
            elif isinstance(action, SendFile):
                assert not self.half_closed and not self.closed
                assert action.timeout == self.config.send_timeout
                action.file.seek(action.offset)
                data = action.file.read(action.count)
                assert len(data) == action.count > 0
                self.output += data
            elif isinstance(action, Run):
                if not self.run_steps:
                    return action
                action.step()
            elif isinstance(action, HalfClose):
                assert not self.half_closed
                self.half_closed = True
            elif isinstance(action, Spawn):
                task = action.task()
                assert isinstance(task, Coroutine)
                self.tasks.append(task)
                self.run_tasks()
            elif isinstance(action, (Receive, Wait)):
                # As a transport's wait: given up at once when woken (a task posted).
                if self.run_tasks() or self.woken:
                    self.woken = False
                    continue
                if isinstance(action, Wait) and action.deadline is not None and action.deadline <= self.now:
                    self.conn.timeout(self.now)  # a turn for the others (a transport's timer fires at once)
                    continue
                return action
            else:
                assert isinstance(action, Close)
                assert self.conn.next_action(self.now) == Close(), "Close is the last action"
                self.closed = True
                return action

    def _wake(self) -> None:
        self.woken = True

    def run_tasks(self) -> bool:
        """Let every spawned task run until it pauses; whether any of them woke the core."""
        self.woken = False
        for task in list(self.tasks):
            try:
                task.send(None)
            except StopIteration:
                self.tasks.remove(task)
        return self.woken

    def feed(self, data: bytes, size: int = 1 << 20, *, eof: bool = False) -> None:
        """Give `data` to the core in pieces of `size` whenever it asks for input."""
        pieces = list(fragments(data, size))
        if eof:
            pieces.append(b"")
        for index, piece in enumerate(pieces):
            if self.closed:
                self.unprocessed = b"".join(pieces[index:])
                return
            assert isinstance(self.waiting, Receive), self.waiting
            self.conn.receive_data(piece, self.now)
            self.advance()

    def feed_and_take(self, data: bytes) -> bytes:
        self.feed(data)
        return self.take()

    def eof(self) -> None:
        self.feed(b"", eof=True)

    @property
    def deadline(self) -> float | None:
        waiting = self.waiting
        return None if isinstance(waiting, (Run, Spawn, HalfClose, Close)) else waiting.deadline

    def expire(self) -> None:
        """Let the deadline of the action waited on pass."""
        deadline = self.deadline
        assert deadline is not None
        self.now = deadline
        self.conn.timeout(self.now)
        self.advance()

    def take(self) -> bytes:
        """The output so far, which is then forgotten."""
        data = bytes(self.output)
        self.output.clear()
        return data


# --- the peer ----------------------------------------------------------------------------


@dataclass
class Parsed:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    informational: list[int]

    def header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k == name.lower()]
        assert len(values) <= 1, f"{name!r} appears more than once"
        return values[0] if values else None

    @property
    def closes(self) -> bool:
        """Whether a Connection field (there may be more than one) has the option `close`."""
        return b"close" in self.connection_options

    @property
    def connection_options(self) -> list[bytes]:
        return [item.strip().lower() for k, v in self.headers if k == b"connection" for item in v.split(b",")]


def parse(data: bytes, methods: Sequence[bytes] | int | None = 1) -> list[Parsed]:
    """Parse exactly these responses (one per request method) with an h11 client.

    Fails if the bytes are not valid HTTP/1.1, a response is incomplete, anything is
    left over, or a response follows one that closed the connection. `methods=None`
    parses as many responses to GET as there are.
    """
    if isinstance(methods, int):
        methods = [b"GET"] * methods
    client = h11.Connection(h11.CLIENT)
    client.receive_data(bytes(data))
    results = []
    index = 0
    while client.trailing_data[0] if methods is None else index < len(methods):
        if index:
            assert client.our_state is h11.DONE and client.their_state is h11.DONE, "a response after close"
            client.start_next_cycle()
        method = b"GET" if methods is None else methods[index]
        client.send(h11.Request(method=method, target="/", headers=[("Host", "example")]))
        client.send(h11.EndOfMessage())
        informational: list[int] = []
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        body = bytearray()
        while True:
            event = client.next_event()
            assert event is not h11.NEED_DATA, f"response {index} is incomplete"
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            else:
                assert isinstance(event, h11.EndOfMessage), event
                break
        results.append(Parsed(status, headers, bytes(body), informational))
        index += 1
    assert client.trailing_data[0] == b"", f"bytes after the responses: {client.trailing_data[0]!r}"
    return results


def parse_all(data: bytes) -> list[Parsed]:
    """Parse every response in `data`, all taken as answers to GET."""
    return parse(data, None)


def parse_one(data: bytes, method: bytes = b"GET") -> Parsed:
    return parse(data, [method])[0]
