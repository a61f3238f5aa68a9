"""`--workers N`: the parent replaces a worker that dies, and SIGTERM stops them all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import read_until_close

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _echo(port: int, text: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET /echo/{text} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return read_until_close(sock)


@pytest.mark.parametrize("transport", ["trio", "threads"])
def test_a_dead_worker_is_replaced_and_sigterm_stops_all(transport: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "transports", "--transport", transport, "--port", "0", "--workers", "2"]
    with open(tmp_path / "stderr.txt", "wb") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err)
    try:
        assert process.stdout is not None
        match = re.search(r":(\d+) \(", process.stdout.readline().decode())
        assert match
        port = int(match[1])
        _wait_for(lambda: len(_children(process.pid)) == 2)
        first = _children(process.pid)
        assert _echo(port, "one").endswith(b"one")
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: len(_children(process.pid) - first) == 1 and len(_children(process.pid)) == 2)
        assert _echo(port, "two").endswith(b"two")
        workers = _children(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        for pid in workers:
            assert (
                not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
            )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_first_workers_that_cannot_start_stop_the_supervisor() -> None:
    """A worker of the first generation that exits before it serves would only fail again: exit 1."""
    code = (
        "import logging, sys; logging.basicConfig();"
        "from transports.workers import supervise;"
        "sys.exit(supervise(2, lambda ready: 1 / 0))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=20, text=True
    )
    assert result.returncode == 1, result
    assert "before it served; stopping" in result.stderr, result.stderr


def test_a_worker_that_served_then_died_is_replaced_not_fatal(tmp_path: Path) -> None:
    """Only a worker that never served stops the server; one that served is replaced."""
    marker = tmp_path / "died"
    replaced = tmp_path / "replaced"  # written by the replacement: the first one has exited by then
    code = (
        "import os, sys, time;"
        "from transports.workers import supervise;"
        f"marker, replaced = {str(marker)!r}, {str(replaced)!r}\n"
        "def work(ready):\n"
        "    ready()\n"
        "    if not os.path.exists(marker):\n"
        "        open(marker, 'w').close(); os._exit(3)\n"
        "    open(replaced, 'w').close()\n"
        "    time.sleep(60)\n"
        "sys.exit(supervise(1, work))"
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: replaced.exists() and len(_children(process.pid)) == 1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stderr is not None
        assert "exited (status 3); replacing it" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


_LIFESPAN_PROGRAM = """
import contextlib, functools, os, sys
from handlers import build_app
from protocol import Config
from transports.cli import run
from transports.common import bind, ports
from transports.options import ServerOptions
from transports.workers import supervise

transport, log = sys.argv[1], sys.argv[2]

@contextlib.asynccontextmanager
async def lifespan():
    with open(log, "a") as file:
        file.write(f"startup {os.getpid()}\\n")
    yield
    with open(log, "a") as file:
        file.write(f"shutdown {os.getpid()}\\n")

options = ServerOptions(port=0, workers=2, handle_signals=True, lifespan=lifespan)
sockets = bind(options)
print(ports(sockets)[0], flush=True)
supervise(2, lambda ready: run(transport, build_app(None), Config(), options, sockets, started=ready))
"""


@pytest.mark.parametrize("transport", ["trio", "asyncio", "threads"])
def test_each_worker_runs_its_own_lifespan(transport: str, tmp_path: Path) -> None:
    log = tmp_path / "lifespan.txt"
    command = [sys.executable, "-c", _LIFESPAN_PROGRAM, transport, str(log)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        _wait_for(lambda: log.exists() and log.read_text().count("startup") == 2)
        assert _echo(port, "up").endswith(b"up")
        workers = _children(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    lines = log.read_text().split()
    assert sorted(lines[0::2]) == ["shutdown", "shutdown", "startup", "startup"]
    started = {int(pid) for event, pid in zip(lines[0::2], lines[1::2], strict=True) if event == "startup"}
    stopped = {int(pid) for event, pid in zip(lines[0::2], lines[1::2], strict=True) if event == "shutdown"}
    assert started == stopped == workers
