"""The transports' side of the app actions (`Wait`, `Spawn`, `Run(watch)`, `wake`), checked
against a scripted core: each test's script is the only thing that decides, so these
pin what the transport does with each action, whatever the real core asks for."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
import trio

from protocol import Action, Close, Phase, Receive, Run, Send, Spawn, Wait
from transports import asyncio_server, thread_server, trio_server
from transports.options import ServerOptions, hooks

from .harness import TRANSPORTS, Running, read_until_close, running

pytestmark = pytest.mark.parametrize("transport", TRANSPORTS)

Script = Callable[["ScriptedCore"], Generator[Action, None, None]]


class ScriptedCore:
    """Stands in for `ServerConnection`: its `app` is a script that yields the actions, and
    reads what the transport reported from `reports`."""

    instances: list[ScriptedCore]

    def __init__(self, app: Script, config: object, *, now: float, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.wake: Callable[[], None] = kwargs["wake"]
        self.reports: list[tuple[Any, ...]] = []
        self.lost = False
        self.now = now
        self._script = app(self)
        self.instances.append(self)

    @property
    def phase(self) -> Phase:
        return Phase.CLOSED if self.lost else Phase.BODY

    def next_action(self, now: float) -> Action:
        self.now = now  # the transport's clock (trio's is not time.monotonic)
        if self.lost:
            return Close()
        try:
            return next(self._script)
        except StopIteration:
            return Close()

    def receive_data(self, data: bytes, now: float) -> None:
        self.reports.append(("data", data))

    def timeout(self, now: float) -> None:
        self.reports.append(("timeout",))

    def connection_lost(self, now: float | None = None) -> None:
        self.reports.append(("lost",))
        self.lost = True

    def shutdown(self, *, drain: bool = False) -> None:
        self.reports.append(("shutdown",))

    def last(self) -> tuple[Any, ...] | None:
        return self.reports[-1] if self.reports else None


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ScriptedCore]]:
    cores: list[ScriptedCore] = []
    monkeypatch.setattr(ScriptedCore, "instances", cores, raising=False)
    for module in (trio_server, asyncio_server, thread_server):
        monkeypatch.setattr(module, "ServerConnection", ScriptedCore)
    yield cores


def _serve(transport: str, script: Script, **options: Any) -> Any:
    return running(transport, script, options=ServerOptions(port=0, **options))  # type: ignore[arg-type]


def _until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def _later(seconds: float, function: Callable[[], None]) -> None:
    threading.Timer(seconds, function).start()


def _connect(server: Running) -> socket.socket:
    return server.connect()


def test_a_wake_from_another_thread_ends_a_wait(transport: str, scripted: list[ScriptedCore]) -> None:
    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        _later(0.2, core.wake)
        started = time.monotonic()
        yield Wait(core.now + 30)
        core.reports.append(("waited", time.monotonic() - started))
        yield Send(b"after the wake", None)

    with _serve(transport, script) as server, _connect(server) as sock:
        assert read_until_close(sock) == b"after the wake"
    (core,) = scripted
    assert core.reports[0][0] == "waited"
    assert 0.15 < core.reports[0][1] < 3


def test_a_wake_before_the_wait_begins_is_not_lost(transport: str, scripted: list[ScriptedCore]) -> None:
    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        core.wake()  # the task posted between the core's last look and the transport's wait
        yield Wait(None)
        yield Send(b"not lost", None)

    with _serve(transport, script) as server, _connect(server) as sock:
        sock.settimeout(3)
        assert read_until_close(sock) == b"not lost"


def test_a_wake_ends_a_receive_and_bytes_stay_for_the_next(
    transport: str, scripted: list[ScriptedCore]
) -> None:
    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        _later(0.2, core.wake)
        yield Receive(None)
        core.reports.append(("asked again",))
        yield Send(b"go", None)
        while core.last() != ("data", b"") and len(core.reports) < 50:
            yield Receive(core.now + 5)

    with _serve(transport, script) as server, _connect(server) as sock:
        assert sock.recv(10) == b"go"
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_close(sock) == b""
    (core,) = scripted
    assert core.reports[0] == ("asked again",)
    assert b"".join(report[1] for report in core.reports if report[0] == "data") == b"hello"


def test_a_wait_ends_at_its_deadline(transport: str, scripted: list[ScriptedCore]) -> None:
    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        yield Wait(core.now + 0.3)
        yield Send(b"timed out" if core.last() == ("timeout",) else b"?", None)

    with _serve(transport, script) as server, _connect(server) as sock:
        sock.settimeout(3)
        assert read_until_close(sock) == b"timed out"


def test_a_wait_notices_the_client_leaving(transport: str, scripted: list[ScriptedCore]) -> None:
    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        yield Receive(None)  # the request
        core.reports.append(("waiting", time.monotonic()))
        yield Wait(core.now + 30)

    with _serve(transport, script) as server:
        with _connect(server) as sock:
            sock.sendall(b"request")
            _until(lambda: len(scripted) == 1 and len(scripted[0].reports) == 2)
            time.sleep(0.1)
        left = time.monotonic()
        _until(lambda: scripted[0].lost, timeout=3)
        assert time.monotonic() - left < 1.5


def test_a_client_that_left_while_a_wait_begins_is_noticed(
    transport: str, scripted: list[ScriptedCore]
) -> None:
    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        yield Receive(None)
        time.sleep(0.3)  # the client leaves meanwhile
        yield Wait(core.now + 30)

    with _serve(transport, script) as server:
        with _connect(server) as sock:
            sock.sendall(b"request")
        _until(lambda: len(scripted) == 1 and scripted[0].lost, timeout=3)


def test_a_wait_with_a_pipelined_request_waiting_sleeps_until_woken(
    transport: str, scripted: list[ScriptedCore]
) -> None:
    """Bytes waiting are not the client leaving: the wait goes on (without spinning) until woken."""

    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        yield Receive(None)
        _later(0.5, core.wake)
        yield Wait(core.now + 30)
        yield Send(b"woken", None)
        yield Receive(core.now + 5)

    with _serve(transport, script) as server, _connect(server) as sock:
        sock.sendall(b"first")
        _until(lambda: len(scripted) == 1 and scripted[0].reports)
        sock.sendall(b"second")  # pipelined: arrives during the wait
        started = time.process_time()
        assert sock.recv(10) == b"woken"
        assert time.process_time() - started < 0.3, "the wait spun on the readable socket"
        assert read_until_close(sock) == b""
    (core,) = scripted
    assert [report for report in core.reports if report[0] == "data"][-1] == ("data", b"second")
    assert not core.lost


def test_a_receive_after_a_wait_woken_before_any_byte_still_reads(
    transport: str, scripted: list[ScriptedCore]
) -> None:
    """A Wait that `wake` ended while its read was armed, then a Receive: it reads the next
    bytes (threads: a wait for the events still armed is not armed again; once the event
    came, during a later Wait, it is armed again)."""

    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        yield Receive(None)
        _later(0.2, core.wake)
        yield Wait(core.now + 30)  # woken before any byte: its read stays armed
        yield Send(b"woken", None)
        yield Receive(core.now + 5)
        yield Send(b"again", None)
        _later(0.3, core.wake)
        yield Wait(core.now + 30)  # the next bytes come during this one
        yield Send(b"more", None)
        yield Receive(core.now + 5)
        yield Send(b"done", None)
        yield Receive(core.now + 5)

    with _serve(transport, script) as server, _connect(server) as sock:
        sock.sendall(b"first")
        assert sock.recv(10) == b"woken"
        time.sleep(0.1)  # the Receive parked
        sock.sendall(b"second")
        assert sock.recv(10) == b"again"
        sock.sendall(b"third")
        answer = b""
        while len(answer) < 8 and (piece := sock.recv(10)):
            answer += piece
        assert answer == b"moredone"
    (core,) = scripted
    data = [report[1] for report in core.reports if report[0] == "data"]
    assert data[:3] == [b"first", b"second", b"third"]


def test_a_watched_step_reports_the_client_leaving_once_it_returned(
    transport: str, scripted: list[ScriptedCore]
) -> None:
    step_over = threading.Event()
    reports_at_return: list[tuple[Any, ...]] = []

    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        def step() -> None:
            time.sleep(0.5)  # the client leaves meanwhile
            reports_at_return.extend(core.reports)
            step_over.set()

        yield Receive(None)
        yield Run(step, watch=True)
        yield Send(b"x" * 100, None)  # never reached if the loss was reported

    with _serve(transport, script) as server:
        with _connect(server) as sock:
            sock.sendall(b"request")
            time.sleep(0.1)
        assert step_over.wait(3)
        _until(lambda: scripted[0].lost, timeout=3)
    (core,) = scripted
    assert ("lost",) not in reports_at_return  # not while the step ran
    assert core.reports[-1] == ("lost",)


def test_an_unwatched_step_is_not_watched(transport: str, scripted: list[ScriptedCore]) -> None:
    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        yield Receive(None)
        yield Run(lambda: time.sleep(0.3))
        core.reports.append(("after",))

    with _serve(transport, script) as server:
        with _connect(server) as sock:
            sock.sendall(b"request")
            time.sleep(0.1)
        _until(lambda: scripted and ("after",) in scripted[0].reports)
    assert ("lost",) not in scripted[0].reports


def _running_loop() -> str:
    """Which runtime runs the calling task, and on which thread."""
    try:
        trio.lowlevel.current_trio_token()
        return f"trio on {threading.current_thread().name}"
    except RuntimeError:
        asyncio.get_running_loop()
        return f"asyncio on {threading.current_thread().name}"


def test_a_spawned_task_runs_on_the_app_loop_and_its_wake_ends_the_wait(
    transport: str, scripted: list[ScriptedCore]
) -> None:
    where: list[str] = []

    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        async def task() -> None:
            where.append(_running_loop())
            core.wake()  # from the app loop's thread

        yield Receive(None)
        yield Spawn(task)
        yield Wait(core.now + 30)
        yield Send(b"done", None)

    with _serve(transport, script) as server, _connect(server) as sock:
        sock.sendall(b"request")
        sock.settimeout(3)
        assert read_until_close(sock) == b"done"
    expected = {
        "trio": "trio on",
        "asyncio": "asyncio on",
        "threads": "asyncio on http-app-loop",
    }[transport.removesuffix("-uvloop")]
    assert where[0].startswith(expected), where
    if transport == "threads":
        assert not [t for t in threading.enumerate() if t.name == "http-app-loop"], "the app loop stopped"


def test_shutdown_waits_for_spawned_tasks_then_cancels_them_and_lets_them_clean_up(
    transport: str, scripted: list[ScriptedCore]
) -> None:
    events: list[str] = []

    def script(core: ScriptedCore) -> Generator[Action, None, None]:
        async def finishes() -> None:
            await _sleep(0.3)
            events.append("short task over")

        async def endless() -> None:
            try:
                await _sleep(60)
            finally:
                events.append("endless task cleaned up")

        yield Spawn(finishes)
        yield Spawn(endless)

    async def shutdown_hook() -> None:
        events.append("shutdown hook")

    with _serve(transport, script, shutdown_grace=0.6, lifespan=hooks(None, shutdown_hook)) as server:
        with _connect(server):
            _until(lambda: scripted)
        time.sleep(0.1)
        started = time.monotonic()
        server.stop(within=8)
        took = time.monotonic() - started
    assert events == ["short task over", "endless task cleaned up", "shutdown hook"]
    assert 0.5 < took < 4


async def _sleep(seconds: float) -> None:
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        await asyncio.sleep(seconds)
    else:
        await trio.sleep(seconds)
