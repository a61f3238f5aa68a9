"""Start the real server as a subprocess, once per transport, and stop it cleanly.

Each server serves `<tmp>/outside/served/`; `<tmp>/outside/` holds a secret file so tests
can check that nothing outside the served directory is read, written or created. The
server's stderr (access log, errors) goes to a file: a pipe would fill up and block it.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .client import RawClient, Response, fetch, request

ROOT = Path(__file__).resolve().parents[2]
VARIANTS: dict[str, list[str]] = {
    "trio": ["--transport", "trio"],
    "asyncio": ["--transport", "asyncio"],
    "threads": ["--transport", "threads"],
    # The accelerated set-ups the benchmark measures (the speed extras), for the modules in
    # ACCELERATED_MODULES: the hostile tests, the challenge's stages and the apps, with the
    # compiled parser, and asyncio on uvloop. (The core's own tests run on both parsers.)
    "asyncio-fast": ["--transport", "asyncio", "--loop", "uvloop", "--parser", "h11-mypyc"],
    "trio-mypyc": ["--transport", "trio", "--parser", "h11-mypyc"],
}
"""Each transport id the suite runs against, and the options that start it."""
TRANSPORTS = list(VARIANTS)
ACCELERATED: dict[str, frozenset[str]] = {
    "asyncio-fast": frozenset({"test_hostile", "test_stages", "test_asgi", "test_wsgi"}),
    "trio-mypyc": frozenset({"test_hostile", "test_stages"}),
}
"""The modules each accelerated set-up runs (all of them would double CI's time)."""
PARSER_ONLY = "trio-mypyc"
"""The set-up that differs from another ("trio") by its parser alone: it skips the tests marked
`parser_agnostic` (timeouts, slow readers, signals, fds), which read only plain requests, so its
run would repeat trio's. Both parsers get the same hostile input in tests/protocol."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the accelerated set-ups' runs of modules outside ACCELERATED, and the
    parser-only set-up's runs of tests marked `parser_agnostic`."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        transport = callspec.params.get("transport") if callspec is not None else None
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        if (transport in ACCELERATED and module not in ACCELERATED[transport]) or (
            transport == PARSER_ONLY and item.get_closest_marker("parser_agnostic") is not None
        ):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


SERVER_MODULE = os.environ.get("BEHAVIOUR_SERVER_MODULE", "transports")
"""`python -m SERVER_MODULE` is the server under test; override to try another build."""
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
SECRET = b"top secret, outside the served directory\n"
LISTENING = re.compile(
    r"Listening on https?://(\[[^\]]+\]|[^\s:/]+):(\d+) "
    r"\(transport (\w+), (?:directory (.*?)|(\w+) app (.*?)),"
    r" parser (?P<parser>[\w-]+)(?:, loop (?P<loop>\w+))?\)"
)
"""The start-up line: the built-in routes with their directory, or an app (interface, spec);
then the parser, and the event loop (asyncio and threads)."""
APPS = ROOT / "tests" / "apps"
"""Test apps, served with `app_args(SPEC)` (their directory as --app-dir)."""


def app_args(spec: str, *args: str) -> list[str]:
    """The command-line arguments serving the test app `spec` (module:attribute in tests/apps)."""
    return [spec, "--app-dir", str(APPS), *args]


def variant_args(transport: str) -> list[str]:
    """The command-line options that start the transport id `transport`."""
    return list(VARIANTS[transport])


def describe(transport: str, serving: str) -> str:
    """The start-up line's parenthesis for the transport id `transport` serving `serving`
    (say "directory none")."""
    kind, parser, loop = _expected(transport)
    return f"(transport {kind}, {serving}, parser {parser}{'' if loop is None else f', loop {loop}'})"


def _expected(transport: str) -> tuple[str, str, str | None]:
    """(transport, parser, loop) that the start-up line of `transport` must name."""
    args = dict(zip(VARIANTS[transport][::2], VARIANTS[transport][1::2], strict=True))
    kind = args["--transport"]
    return kind, args.get("--parser", "h11"), args.get("--loop", "asyncio") if kind != "trio" else None


@dataclass
class Server:
    transport: str
    host: str
    port: int
    directory: Path
    """The served directory (exists even when the server was started without one)."""
    outside: Path
    """The directory's parent: holds `secret.txt`, must gain no other entries."""
    process: subprocess.Popen[bytes]
    stderr_path: Path
    stdout_line: str
    stopped: bool = False
    """Set once `stop` succeeded, so teardown does not mistake it for a crash."""

    def client(self, timeout: float = 5.0) -> RawClient:
        return RawClient(self.host, self.port, timeout)

    def fetch(self, data: bytes, method: str = "GET") -> Response:
        return fetch(self.host, self.port, data, method)

    def get(self, target: str, headers: list[tuple[str, str]] | None = None) -> Response:
        return self.fetch(request("GET", target, headers))

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def status(self, field: str) -> int:
        """A number from /proc/PID/status, e.g. `VmHWM` (peak RSS, KiB) or `Threads`."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def settled_fd_count(self, steady: float = 0.3, timeout: float = 5.0) -> int:
        """The fd count once it stopped changing for `steady` seconds (closed clients are gone)."""
        deadline = time.monotonic() + timeout
        count, since = self.fd_count(), time.monotonic()
        while time.monotonic() - since < steady and time.monotonic() < deadline:
            time.sleep(0.02)
            now = self.fd_count()
            if now != count:
                count, since = now, time.monotonic()
        return count

    def assert_serving(self) -> None:
        """A normal request still gets a normal answer (used after every bad request)."""
        name = uuid.uuid4().hex[:8]
        response = self.get(f"/echo/{name}")
        assert (response.status, response.body) == (200, name.encode()), response.raw

    def outside_entries(self) -> set[str]:
        return set(os.listdir(self.outside))

    def directory_entries(self) -> set[str]:
        return set(os.listdir(self.directory))


def unique(prefix: str = "f") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _start(
    transport: str,
    base: Path,
    args: list[str],
    *,
    directory: bool,
    trailing_slash: bool,
    max_fds: int | None = None,
    max_file_size: int | None = None,
) -> Server:
    base.mkdir(parents=True, exist_ok=True)
    outside = base / "outside"
    served = outside / "served"
    served.mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET)
    stdout_path = base / "stdout.txt"
    stderr_path = base / "stderr.txt"
    command = [sys.executable, "-m", SERVER_MODULE, *variant_args(transport), "--host", "127.0.0.1"]
    command += ["--port", "0"]
    if directory:
        command += ["--directory", str(served) + ("/" if trailing_slash else "")]
    command += args

    def limit_fds() -> None:
        if max_fds is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))
        if max_file_size is not None:  # writes past it fail with EFBIG (Python ignores SIGXFSZ)
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_size, max_file_size))

    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err, preexec_fn=limit_fds
        )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        text = stdout_path.read_text(errors="replace")
        if "\n" in text:
            line = text.split("\n", 1)[0]
            match = LISTENING.fullmatch(line)
            if match is None:
                _kill(process)
                pytest.fail(f"unexpected start-up line {line!r}; stderr:\n{stderr_path.read_text()}")
            host, port = match[1].strip("[]"), int(match[2])
            assert (match[3], match["parser"], match["loop"]) == _expected(transport), line
            return Server(transport, host, port, served, outside, process, stderr_path, line)
        if process.poll() is not None or time.monotonic() > deadline:
            _kill(process)
            pytest.fail(
                f"{' '.join(command)} did not print its listening line (exit {process.returncode});"
                f" stdout {text!r}; stderr:\n{stderr_path.read_text(errors='replace')}"
            )
        time.sleep(0.01)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(STOP_TIMEOUT)


def stop(server: Server, timeout: float = STOP_TIMEOUT) -> float:
    """SIGTERM the server; fail unless it exits 0 within `timeout`. Returns the time it took."""
    process = server.process
    if process.poll() is not None:
        server.stopped = True
        pytest.fail(f"server had already exited with {process.returncode}; stderr:\n{server.stderr()}")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill(process)
        server.stopped = True  # reported here; teardown need not report it again
        pytest.fail(f"server ignored SIGTERM for {timeout}s; stderr:\n{server.stderr()}")
    elapsed = time.monotonic() - started
    server.stopped = True
    if process.returncode != 0:
        pytest.fail(f"server exited with {process.returncode} on SIGTERM; stderr:\n{server.stderr()}")
    return elapsed


@contextlib.contextmanager
def running_server(
    transport: str,
    base: Path,
    *args: str,
    directory: bool = True,
    trailing_slash: bool = False,
    max_fds: int | None = None,
    max_file_size: int | None = None,
) -> Iterator[Server]:
    server = _start(
        transport,
        base,
        list(args),
        directory=directory,
        trailing_slash=trailing_slash,
        max_fds=max_fds,
        max_file_size=max_file_size,
    )
    try:
        yield server
    finally:
        if server.process.poll() is None:
            stop(server)
        elif not server.stopped:
            pytest.fail(f"server died (exit {server.process.returncode}); stderr:\n{server.stderr()}")


@pytest.fixture(scope="session", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class _SharedServer:
    """One long-lived server per transport; restarted if a test managed to kill it."""

    def __init__(
        self, transport: str, base: Path, args: tuple[str, ...] = (), directory: bool = True
    ) -> None:
        self.transport = transport
        self.base = base
        self.args = list(args)
        self.directory = directory
        self.generation = 0
        self.server: Server | None = None

    def get(self) -> Server:
        if self.server is None or self.server.process.poll() is not None:
            self.generation += 1
            self.server = _start(
                self.transport,
                self.base / str(self.generation),
                self.args,
                directory=self.directory,
                trailing_slash=False,
            )
        return self.server

    def stop(self) -> None:
        if self.server is not None and self.server.process.poll() is None:
            stop(self.server)


@pytest.fixture(scope="session")
def _shared(transport: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_SharedServer]:
    shared = _SharedServer(transport, tmp_path_factory.mktemp(f"shared-{transport}"))
    yield shared
    if shared.server is not None and shared.server.process.poll() is None:
        stop(shared.server)


@pytest.fixture
def server(_shared: _SharedServer) -> Iterator[Server]:
    """The shared server of this transport (default options, a directory). Must survive the test."""
    current = _shared.get()
    yield current
    if current.process.poll() is not None:
        pytest.fail(
            f"the server died during this test (exit {current.process.returncode}):\n{current.stderr()}"
        )


StartServer = Callable[..., Server]


@pytest.fixture
def start_server(transport: str, tmp_path: Path) -> Iterator[StartServer]:
    """Start a server of this transport with extra CLI options; it is stopped (exit 0) after the test."""
    stack = contextlib.ExitStack()
    count = 0

    def start(
        *args: str,
        directory: bool = True,
        trailing_slash: bool = False,
        max_fds: int | None = None,
        max_file_size: int | None = None,
    ) -> Server:
        nonlocal count
        count += 1
        base = tmp_path / f"server{count}"
        return stack.enter_context(
            running_server(
                transport,
                base,
                *args,
                directory=directory,
                trailing_slash=trailing_slash,
                max_fds=max_fds,
                max_file_size=max_file_size,
            )
        )

    with stack:
        yield start


class SharedApps:
    """Long-lived app servers of one transport, one per set of arguments, started on first use."""

    def __init__(self, transport: str, base: Path) -> None:
        self.transport = transport
        self.base = base
        self.servers: dict[tuple[str, ...], _SharedServer] = {}

    def get(self, *args: str) -> Server:
        shared = self.servers.get(args)
        if shared is None:
            name = f"app{len(self.servers)}"
            shared = self.servers[args] = _SharedServer(
                self.transport, self.base / name, args, directory=False
            )
        return shared.get()

    def stop_all(self) -> None:
        for shared in self.servers.values():
            shared.stop()


@pytest.fixture(scope="session")
def shared_apps(transport: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedApps]:
    """App servers shared by the tests of a transport: `shared_apps.get(*app_args("m:app"))`.

    A test must leave its server alive and serving (the next test gets the same one)."""
    apps = SharedApps(transport, tmp_path_factory.mktemp(f"apps-{transport}"))
    yield apps
    apps.stop_all()
