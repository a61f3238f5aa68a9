"""Listening beyond --host/--port, on every transport: --uds, --fd, systemd's sockets, `--host ::`.

The real program as a subprocess, on loopback and on Unix sockets in a short temporary
directory (a Unix socket path has ~107 bytes; pytest's tmp_path can be longer).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from .client import RawClient, Response, request
from .conftest import ROOT, SERVER_MODULE, START_TIMEOUT, STOP_TIMEOUT, describe, variant_args


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="h11b-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Program:
    process: subprocess.Popen[bytes]
    line: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM; the exit status (the process is killed if it ignores it)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
                pytest.fail(f"server ignored SIGTERM; stderr:\n{self.stderr()}")
        return self.process.returncode


def launch(
    base: Path, args: Sequence[str], *, pass_fds: Sequence[int] = (), wrapper: Sequence[str] = ()
) -> Program:
    """Start the program and wait for its first stdout line (or its exit)."""
    base.mkdir(parents=True, exist_ok=True)
    out, err = base / "stdout.txt", base / "stderr.txt"
    command = [*wrapper, sys.executable, "-m", SERVER_MODULE, *args]
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, pass_fds=pass_fds
        )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        text = out.read_text(errors="replace")
        if "\n" in text:
            return Program(process, text.split("\n", 1)[0], err)
        if process.poll() is not None:
            return Program(process, "", err)
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"no start-up line; stderr:\n{err.read_text(errors='replace')}")
        time.sleep(0.01)


def exchange(client: RawClient, method: str, target: str, **kwargs: object) -> Response:
    client.send(request(method, target, **kwargs))  # type: ignore[arg-type]
    return client.read_response(method)


def check_stages(connect: object, directory: Path) -> None:
    """The challenge's stages on one keep-alive connection, then a `Connection: close`."""
    assert callable(connect)
    with connect() as client:
        assert exchange(client, "GET", "/").status == 200
        response = exchange(client, "GET", "/echo/abc")
        assert (response.status, response.body) == (200, b"abc")
        response = exchange(client, "GET", "/user-agent", headers=[("User-Agent", "listen/1")])
        assert response.body == b"listen/1"
        response = exchange(client, "POST", "/files/up", body=b"uploaded")
        assert response.status == 201
        assert (directory / "up").read_bytes() == b"uploaded"
        response = exchange(client, "GET", "/files/up")
        assert (response.status, response.body) == (200, b"uploaded")
        response = exchange(client, "GET", "/echo/zz", headers=[("Accept-Encoding", "gzip")])
        assert response.header("content-encoding") == b"gzip"
        client.send(request("GET", "/echo/bye", [("Connection", "close")]))
        response = client.read_response()
        assert (response.body, response.header("connection")) == (b"bye", b"close")
        client.assert_closed(within=2.0)


def test_unix_socket(transport: str, short_dir: Path) -> None:
    path = str(short_dir / "s.sock")
    served = short_dir / "served"
    served.mkdir()
    args = [*variant_args(transport), "--uds", path, "--uds-mode", "600", "--directory", str(served)]
    program = launch(short_dir / "run", args)
    try:
        assert program.line == f"Listening on unix:{path} {describe(transport, f'directory {served}')}"
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        check_stages(lambda: RawClient.unix(path), served)
    finally:
        code = program.stop()
    assert code == 0, program.stderr()
    assert not os.path.exists(path), "the socket file outlived the server"
    # A Unix socket's peer has no address: "-" (behind a proxy, --proxy-headers names the client).
    assert re.search(r' - - "GET /echo/abc HTTP/1.1" 200 3 ', program.stderr()), program.stderr()


@pytest.mark.parametrize("spec", ["wsgi_suite:app", "asgi_suite:app"])
def test_a_unix_socket_peer_to_apps_and_the_client_a_proxy_names(
    transport: str, short_dir: Path, spec: str
) -> None:
    """A Unix socket's peer has no address: WSGI's REMOTE_ADDR is "" (gunicorn's; CGI makes it
    a must, and apps index it) with no REMOTE_PORT, ASGI's client None (uvicorn's). Behind
    nginx (docs/deploy.md: proxy headers trusted from the socket), X-Forwarded-For names it."""
    path = str(short_dir / "s.sock")
    args = [spec, "--app-dir", str(ROOT / "tests" / "apps"), *variant_args(transport), "--uds", path]
    program = launch(short_dir / "run", [*args, "--proxy-headers"])
    route = "/environ" if spec.startswith("wsgi") else "/scope"
    try:
        with RawClient.unix(path) as client:
            direct = json.loads(exchange(client, "GET", route).body)
            named = json.loads(
                exchange(client, "GET", route, headers=[("X-Forwarded-For", "203.0.113.7")]).body
            )
    finally:
        assert program.stop() == 0, program.stderr()
    if spec.startswith("wsgi"):
        assert direct["REMOTE_ADDR"] == "" and "REMOTE_PORT" not in direct, direct
        assert named["REMOTE_ADDR"] == "203.0.113.7", named
    else:
        assert direct["client"] is None and named["client"][0] == "203.0.113.7", (direct, named)
    assert f'203.0.113.7 - "GET {route} HTTP/1.1" 200' in program.stderr()


def test_a_stale_socket_is_replaced_a_live_one_refused(short_dir: Path) -> None:
    path = str(short_dir / "s.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)  # as a killed server leaves it
    first = launch(short_dir / "first", ["--uds", path])
    try:
        assert first.line.startswith(f"Listening on unix:{path} "), first.stderr()
        second = launch(short_dir / "second", ["--uds", path, "--transport", "threads"])
        assert second.process.wait(STOP_TIMEOUT) == 1
        assert f"cannot listen on unix:{path}" in second.stderr() and "in use" in second.stderr()
        with RawClient.unix(path) as client:  # the first one still has it
            assert exchange(client, "GET", "/echo/still").body == b"still"
    finally:
        assert first.stop() == 0, first.stderr()
    assert not os.path.exists(path)


def test_workers_share_a_unix_socket(short_dir: Path) -> None:
    path = str(short_dir / "s.sock")
    program = launch(short_dir / "run", ["--uds", path, "--workers", "2", "--transport", "asyncio"])
    try:
        for _ in range(6):
            with RawClient.unix(path) as client:
                assert exchange(client, "GET", "/echo/w").body == b"w"
    finally:
        assert program.stop() == 0, program.stderr()
    assert not os.path.exists(path)


def _high_fd(fd: int) -> int:
    """A copy of `fd` numbered 50 or more: clear of 3, 4... which the child must get."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD, 50)


def test_inherited_fd(transport: str, short_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        fd = _high_fd(listener.fileno())
        try:
            program = launch(short_dir, [*variant_args(transport), "--fd", str(fd)], pass_fds=[fd])
        finally:
            os.close(fd)
    try:
        assert program.line == f"Listening on http://127.0.0.1:{port} {describe(transport, 'directory none')}"
        with RawClient("127.0.0.1", port) as client:
            assert exchange(client, "GET", "/echo/fd").body == b"fd"
    finally:
        assert program.stop() == 0, program.stderr()


def test_inherited_fd_that_is_not_listening_is_an_error(short_dir: Path) -> None:
    with socket.socket() as sock:
        fd = _high_fd(sock.fileno())
        try:
            program = launch(short_dir, ["--fd", str(fd)], pass_fds=[fd])
        finally:
            os.close(fd)
    assert program.process.wait(STOP_TIMEOUT) == 1
    assert f"cannot listen on fd {fd}: fd {fd} is not listening" in program.stderr()


def test_systemd_socket_activation(transport: str, short_dir: Path) -> None:
    """As systemd starts a service: its sockets from fd 3, LISTEN_PID and LISTEN_FDS set."""
    path = str(short_dir / "s.sock")
    with socket.create_server(("127.0.0.1", 0)) as tcp, socket.socket(socket.AF_UNIX) as unix:
        unix.bind(path)
        unix.listen()
        port = tcp.getsockname()[1]
        a, b = _high_fd(tcp.fileno()), _high_fd(unix.fileno())
        # The shell's pid is the server's after `exec`; the redirections put the sockets at 3 and 4.
        script = f'LISTEN_PID=$$ LISTEN_FDS=2 exec "$@" 3<&{a} 4<&{b} {a}<&- {b}<&-'
        try:
            program = launch(
                short_dir / "run",
                [*variant_args(transport), "--port", "1"],  # ignored: systemd's sockets replace it
                pass_fds=[a, b],
                wrapper=["bash", "-c", script, "bash"],
            )
        finally:
            os.close(a)
            os.close(b)
    try:
        expected = (
            f"Listening on http://127.0.0.1:{port}, unix:{path} {describe(transport, 'directory none')}"
        )
        assert program.line == expected, program.stderr()
        with RawClient("127.0.0.1", port) as client:
            assert exchange(client, "GET", "/echo/tcp").body == b"tcp"
        with RawClient.unix(path) as client:
            assert exchange(client, "GET", "/echo/unix").body == b"unix"
    finally:
        assert program.stop() == 0, program.stderr()
    assert os.path.exists(path), "systemd's socket file is systemd's to remove"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_host_double_colon_is_dual_stack(transport: str, short_dir: Path) -> None:
    program = launch(short_dir, [*variant_args(transport), "--host", "::", "--port", "0"])
    try:
        match = re.fullmatch(
            r"Listening on http://\[::\]:(\d+) \(transport \w+, directory none,"
            r" parser [\w-]+(?:, loop \w+)?\)",
            program.line,
        )
        assert match, (program.line, program.stderr())
        port = int(match[1])
        for host in ("127.0.0.1", "::1"):
            with RawClient(host, port) as client:
                assert exchange(client, "GET", "/echo/both").body == b"both"
    finally:
        assert program.stop() == 0, program.stderr()
    log = program.stderr()
    assert re.search(r' 127\.0\.0\.1:\d+ - "GET /echo/both ', log), log  # not ::ffff:127.0.0.1
    assert re.search(r' \[::1\]:\d+ - "GET /echo/both ', log), log
