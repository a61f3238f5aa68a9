"""Running out of file descriptors pauses accepting; it never crashes the server."""

from __future__ import annotations

import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import TRANSPORTS, cli_args, read_until_close

ROOT = Path(__file__).resolve().parents[2]
FD_LIMIT = 48


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_emfile_pauses_accepting_and_recovers(transport: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "transports", *cli_args(transport), "--port", "0", "--no-access-log"]
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "wb") as err:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, preexec_fn=_limit_fds
        )
    clients: list[socket.socket] = []
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        match = re.search(r":(\d+) \(", line)
        assert match, line
        port = int(match[1])
        for _ in range(FD_LIMIT + 10):  # more connections than the server has descriptors
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        deadline = time.monotonic() + 5
        while b"accept failed" not in stderr.read_bytes():
            assert time.monotonic() < deadline, stderr.read_text()
            assert process.poll() is None, stderr.read_text()
            time.sleep(0.05)
        for client in clients:
            client.close()
        clients.clear()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /echo/alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_close(sock).endswith(b"alive")
        assert process.poll() is None
        assert "Traceback" not in stderr.read_text(), stderr.read_text()
    finally:
        for client in clients:
            client.close()
        process.terminate()
        assert process.wait(10) == 0, stderr.read_text()
        if process.stdout is not None:
            process.stdout.close()
