"""Run an example as a program (`python -m examples.NAME --port 0`) and stop it by a signal.

The program prints `Listening on http://HOST:PORT` once it accepts connections; stdout and
stderr go to files (a pipe could fill up and block it). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.behaviour.client import RawClient

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
LISTENING = re.compile(r"Listening on http://([^\s:/]+):(\d+)\n")
"""The first line of every example (the newline: the whole line has arrived)."""


@dataclass
class Program:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    stdout_path: Path
    stderr_path: Path

    def client(self, timeout: float = 5.0) -> RawClient:
        return RawClient(self.host, self.port, timeout)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGINT) -> None:
        """Send `signum`; fail unless the program exits 0 within STOP_TIMEOUT."""
        self.process.send_signal(signum)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill(self.process)
            pytest.fail(f"the program ignored signal {signum}; stderr:\n{self.stderr()}")
        assert self.process.returncode == 0, self.stderr()


@contextlib.contextmanager
def running(example: str, tmp_path: Path, *args: str) -> Iterator[Program]:
    """`examples/<example>.py` listening on a free loopback port; killed if the test did not stop it."""
    stdout_path, stderr_path = tmp_path / f"{example}.out", tmp_path / f"{example}.err"
    command = [sys.executable, "-m", f"examples.{example}", "--host", "127.0.0.1", "--port", "0", *args]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while (match := LISTENING.match(stdout_path.read_text(errors="replace"))) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{command} did not start; stderr:\n{stderr_path.read_text(errors='replace')}")
            time.sleep(0.01)
        yield Program(process, match[1], int(match[2]), stdout_path, stderr_path)
    finally:
        _kill(process)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(STOP_TIMEOUT)
