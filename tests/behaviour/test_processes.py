"""The program as an operator runs it (issue 12): paths relative to where it is started,
workers that die with their parent, SIGHUP (a reload with --workers, ignored without)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from .client import RawClient, request
from .conftest import LISTENING, ROOT, StartServer, stop, variant_args

# --- 1. relative paths are the caller's ------------------------------------------------------------


def _run_program(cwd: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """./your_program.sh with `args`, run from `cwd`, for options that make it exit at once."""
    return subprocess.run(
        [str(ROOT / "your_program.sh"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def _program(cwd: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """./your_program.sh started from `cwd`: the process, its start-up line and its stderr file."""
    stderr_path = cwd / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [str(ROOT / "your_program.sh"), "--port", "0", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().rstrip("\n")
        assert LISTENING.fullmatch(line), f"{line!r}; stderr: {stderr_path.read_text()}"
        yield process, line, stderr_path
        process.terminate()
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder of an operator's: `files/hello`, and `tls/` with a certificate for 127.0.0.1."""
    site = tmp_path / "site"
    (site / "files").mkdir(parents=True)
    (site / "files" / "hello").write_bytes(b"hello from the site")
    (site / "tls").mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(site / "tls" / "cert.pem"))
    cert.private_key_pem.write_to_path(str(site / "tls" / "key.pem"))
    ca.cert_pem.write_to_path(str(site / "tls" / "ca.pem"))
    return site


def test_relative_paths_are_relative_to_where_the_program_is_started(site: Path) -> None:
    tls = ("--certfile", "tls/cert.pem", "--keyfile", "tls/key.pem")
    with _program(site, "--directory", "files", *tls) as (_, line, _):
        assert f"(transport trio, directory {site / 'files'}, parser " in line, line
        port = int(line.rsplit(":", 1)[1].split()[0])
        context = ssl.create_default_context(cafile=str(site / "tls" / "ca.pem"))
        with RawClient("127.0.0.1", port, tls=context) as client:
            client.send(request("GET", "/files/hello"))
            assert client.read_response().body == b"hello from the site"
    with _program(site, "--directory", ".") as (_, line, _):
        assert f"directory {site}, parser " in line, line  # not the project's own source tree
        port = int(line.rsplit(":", 1)[1].split()[0])
        with RawClient("127.0.0.1", port) as client:
            client.send(request("GET", "/files/tls/ca.pem"))
            assert client.read_response().status == 400  # a name is one segment: tls/ca.pem is not one
            client.send(request("POST", "/files/upload", body=b"stored here"))
            assert client.read_response().status == 201
    assert (site / "upload").read_bytes() == b"stored here"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--directory", "nowhere"], "'nowhere' ({site}/nowhere) does not exist"),
        (["--directory", "files/hello"], "'files/hello' ({site}/files/hello) is not a directory"),
        (
            ["--certfile", "tls/missing.pem", "--keyfile", "tls/key.pem"],
            "cannot read 'tls/missing.pem' ({site}/tls/missing.pem)",
        ),
        (
            ["--certfile", "tls/key.pem", "--keyfile", "tls/key.pem"],
            "{site}/tls/key.pem holds no PEM certificate",
        ),
        (
            ["--certfile", "tls/cert.pem", "--keyfile", "tls/cert.pem"],
            "{site}/tls/cert.pem holds no PEM private key",
        ),
        (["--certfile", "tls/cert.pem", "--keyfile", "tls/other.pem"], "the key is not the certificate's"),
    ],
)
def test_errors_name_the_file(site: Path, args: list[str], named: str) -> None:
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(site / "tls" / "other.pem"))
    result = _run_program(site, *args)
    assert result.returncode == 2, result
    assert named.format(site=site) in result.stderr, result.stderr


# --- 2. workers die with their parent -------------------------------------------------------------


def _children(pid: int) -> set[int]:
    try:
        return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.02)


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class _Supervisor:
    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def workers(self) -> set[int]:
        return _children(self.process.pid)


@contextlib.contextmanager
def _supervisor(transport: str, tmp_path: Path, *args: str) -> Iterator[_Supervisor]:
    """`python -m transports --workers 2 ...` (as the behaviour suite runs the program), with 2 workers up."""
    stderr_path = tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "transports", *variant_args(transport), "--port", "0", "--workers", "2"]
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen([*command, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr)
    try:
        assert process.stdout is not None
        match = LISTENING.fullmatch(process.stdout.readline().decode().rstrip("\n"))
        assert match, stderr_path.read_text()
        supervisor = _Supervisor(process, int(match[2]), stderr_path)
        _wait_for(
            lambda: "all 2 workers serving" in supervisor.stderr() and len(supervisor.workers()) == 2,
            "workers",
        )
        yield supervisor
    finally:
        for pid in _children(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def _echo(port: int, text: str) -> bytes:
    with RawClient("127.0.0.1", port) as client:
        client.send(request("GET", f"/echo/{text}"))
        return client.read_response().body


def test_workers_die_with_their_parent(transport: str, tmp_path: Path) -> None:
    """kill -9 of the parent: the workers stop too, so the port is free for a restart."""
    with _supervisor(transport, tmp_path) as supervisor:
        workers = supervisor.workers()
        assert _echo(supervisor.port, "alive") == b"alive"
        assert not _port_is_free(supervisor.port)
        supervisor.process.kill()
        supervisor.process.wait(5)
        _wait_for(lambda: not any(_running(pid) for pid in workers), "end of the orphaned workers", 5.0)
        _wait_for(lambda: _port_is_free(supervisor.port), "free port", 5.0)
    assert "httpserver.workers: started 2 workers" in supervisor.stderr()  # named for what they are


# --- 10. SIGHUP ------------------------------------------------------------------------------------


@dataclass
class _Load:
    """Clients requesting without pause while the workers are replaced; every request must succeed."""

    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    done: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_connections(self, index: int) -> None:
        """A new connection per request (the connection closes after it)."""
        count = 0
        while not self.stop.is_set():
            count += 1
            text = f"n{index}-{count}"
            try:
                with RawClient("127.0.0.1", self.port) as client:
                    client.send(request("GET", f"/echo/{text}", [("Connection", "close")]))
                    body = client.read_response().body
            except Exception as exc:
                body = repr(exc).encode()
            self._record(text, body)

    def keep_alive(self, index: int) -> None:
        """Uploads (POST: never retried by a client or proxy) on a kept-alive connection, closed
        only when a response says `Connection: close`, with pauses that leave it idle. No retry:
        a draining worker answers the next request on an idle connection and then closes it."""
        count = 0
        client: RawClient | None = None
        while not self.stop.is_set():
            count += 1
            text = f"k{index}-{count}"
            try:
                if client is None:
                    client = RawClient("127.0.0.1", self.port)
                client.send(request("POST", f"/files/k{index}", body=text.encode()))
                response = client.read_response("POST")
                body = text.encode() if response.status == 201 else response.raw
                if response.header("connection") == b"close":
                    client.close()
                    client = None
            except Exception as exc:
                body = repr(exc).encode()
                if client is not None:
                    client.close()
                client = None
            self._record(text, body)
            time.sleep(0.01 * (count % 3))  # idle now and then, as a proxy's pooled connection is
        if client is not None:
            client.close()

    def _record(self, text: str, body: bytes) -> None:
        with self.lock:
            if body == text.encode():
                self.done += 1
            else:
                self.failures.append(f"{text}: {body[:200]!r}")

    @contextlib.contextmanager
    def running(self, clients: int = 4) -> Iterator[None]:
        threads = [threading.Thread(target=self.new_connections, args=(i,)) for i in range(clients)]
        threads += [threading.Thread(target=self.keep_alive, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(10)


def test_sighup_reloads_the_workers_with_no_failed_request(transport: str, tmp_path: Path) -> None:
    directory = tmp_path / "served"
    directory.mkdir()
    with _supervisor(transport, tmp_path, "--directory", str(directory)) as supervisor:
        load = _Load(supervisor.port)
        with load.running():
            time.sleep(0.3)
            for reload in range(2):
                old = supervisor.workers()
                supervisor.process.send_signal(signal.SIGHUP)
                _wait_for(
                    lambda old=old: len(supervisor.workers()) == 2 and not supervisor.workers() & old,  # type: ignore[misc]
                    f"reload {reload + 1}: two new workers and the old ones gone",
                )
                time.sleep(0.3)
        assert not load.failures, f"{len(load.failures)} failed of {load.done}: {load.failures[:5]}"
        assert load.done > 50, load.done
        supervisor.process.send_signal(signal.SIGTERM)
        assert supervisor.process.wait(10) == 0
    stderr = supervisor.stderr()
    assert stderr.count("httpserver.workers: SIGHUP: reloading: starting 2 new workers") == 2, stderr
    assert stderr.count("reload: 2 new workers serving; 2 old ones drain") == 2, stderr
    assert "Traceback" not in stderr, stderr


def test_a_reload_whose_workers_cannot_start_keeps_the_old_ones(tmp_path: Path) -> None:
    directory = tmp_path / "served"
    directory.mkdir()
    with _supervisor("trio", tmp_path, "--directory", str(directory)) as supervisor:
        workers = supervisor.workers()
        directory.rename(tmp_path / "moved")  # the new workers fail to build their app
        supervisor.process.send_signal(signal.SIGHUP)
        _wait_for(lambda: "reload abandoned" in supervisor.stderr(), "abandoned reload")
        _wait_for(lambda: supervisor.workers() == workers, "only the old workers")
        assert _echo(supervisor.port, "still") == b"still"
        (tmp_path / "moved").rename(directory)
        supervisor.process.send_signal(signal.SIGHUP)  # a later reload works
        _wait_for(
            lambda: len(supervisor.workers()) == 2 and not supervisor.workers() & workers, "new workers"
        )
        assert _echo(supervisor.port, "reloaded") == b"reloaded"


@pytest.mark.parametrize(
    "args", [["trio"], ["asyncio"], ["threads"], ["trio", "--workers", "1"]], ids=" ".join
)
def test_sigterm_as_soon_as_the_start_up_line_is_a_graceful_stop(args: list[str]) -> None:
    """The start-up line tells a caller it may signal: a SIGTERM at once must not find the
    default handler still in place (death by signal), but stop the server (or the
    supervisor, whatever its transport), exit 0."""
    command = [sys.executable, "-m", "transports", "--transport", *args, "--port", "0"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert LISTENING.fullmatch(process.stdout.readline().decode().rstrip("\n"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_sighup_without_workers_is_logged_and_ignored(start_server: StartServer) -> None:
    server = start_server()
    server.process.send_signal(signal.SIGHUP)
    _wait_for(lambda: "SIGHUP ignored" in server.stderr(), "log line")
    server.assert_serving()
    stop(server)


def test_sigusr1_drains_idle_connections_instead_of_closing_them(start_server: StartServer) -> None:
    """SIGUSR1: a kept-alive connection's next request is answered (Connection: close), not
    raced by our close; one that stays idle ends at its keep-alive timeout; then exit 0."""
    server = start_server("--keep-alive-timeout", "1", "--shutdown-grace", "5")
    with server.client() as busy, server.client() as idle:
        for client in (busy, idle):
            client.send(request("GET", "/echo/first"))
            assert client.read_response().body == b"first"
        started = time.monotonic()
        server.process.send_signal(signal.SIGUSR1)
        _wait_for(lambda: "draining: waiting up to 5s for 2 connections" in server.stderr(), "draining log")
        assert busy.is_open(0.2) and idle.is_open(0.01)  # not closed
        busy.send(request("POST", "/files/drained", body=b"kept"))
        response = busy.read_response("POST")
        assert (response.status, response.header("connection")) == (201, b"close")
        busy.assert_closed(within=1.0)
        idle.assert_closed(within=3.0)  # its keep-alive timeout
        assert server.process.wait(5) == 0
        assert 0.6 < time.monotonic() - started < 4.5
    server.stopped = True
    assert (server.directory / "drained").read_bytes() == b"kept"
    assert "shutdown complete" in server.stderr()


def test_sigterm_while_draining_closes_idle_connections_at_once(start_server: StartServer) -> None:
    server = start_server("--keep-alive-timeout", "30")
    with server.client() as idle:
        idle.send(request("GET", "/echo/first"))
        assert idle.read_response().body == b"first"
        server.process.send_signal(signal.SIGUSR1)
        _wait_for(lambda: "draining" in server.stderr(), "draining log")
        assert idle.is_open(0.2)
        assert stop(server) < 2.0  # SIGTERM: the idle connection closes now, not in 30 s
        idle.assert_closed(within=1.0)


_APP_SOURCE = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [VERSION]

VERSION = b"%s"
"""


def test_a_reload_imports_the_app_anew(tmp_path: Path) -> None:
    """With --workers, each worker imports APP after the fork: SIGHUP serves the new code."""
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "reloadme.py").write_text(_APP_SOURCE % "v1")
    with _supervisor("threads", tmp_path, "reloadme:app", "--app-dir", str(apps)) as supervisor:
        assert _get(supervisor.port, "/") == b"v1"
        (apps / "reloadme.py").write_text(_APP_SOURCE % "second")  # another size: no stale .pyc
        old = supervisor.workers()
        supervisor.process.send_signal(signal.SIGHUP)
        _wait_for(lambda: len(supervisor.workers()) == 2 and not supervisor.workers() & old, "new workers")
        assert _get(supervisor.port, "/") == b"second"
        (apps / "reloadme.py").write_text("raise RuntimeError('broken on purpose')\n")
        old = supervisor.workers()
        supervisor.process.send_signal(signal.SIGHUP)  # new workers cannot import it: the old ones go on
        _wait_for(lambda: "reload abandoned" in supervisor.stderr(), "abandoned reload")
        _wait_for(lambda: supervisor.workers() == old, "only the old workers")
        assert _get(supervisor.port, "/") == b"second"


def test_an_app_that_cannot_be_imported_stops_workers_before_they_listen(tmp_path: Path) -> None:
    """The supervisor tries the import once, in a throwaway process: one report, exit 1, no listening."""
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    command = [sys.executable, "-m", "transports", "--port", "0", "--workers", "2", "broken:app"]
    result = subprocess.run(
        [*command, "--app-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1, result
    assert "Listening" not in result.stdout
    assert result.stderr.count("RuntimeError: broken on purpose") == 1, result.stderr


def _get(port: int, target: str) -> bytes:
    with RawClient("127.0.0.1", port) as client:
        client.send(request("GET", target))
        return client.read_response().body
