"""docs/deploy.md, proven: nginx in front of two instances on different transports.

nginx runs as the test's own process (its own prefix, configuration and logs in a
temporary directory, `daemon off`), on a loopback port, in front of two instances
listening on Unix sockets and sharing one directory. Its `upstream` and `server` blocks
are read from docs/deploy.md, so the page and the test cannot drift apart. Every
request loop is bounded in count and time; nginx and the instances are stopped by the
test. Without an nginx binary (`.ci/run` installs Debian's), the tests are skipped.

Select them with `-m deploy`.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.behaviour.client import RawClient, Response, request

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"
DOC_SOCKETS = "/run/h11-server/"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
TIMEOUT = 5.0


def _nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


NGINX = _nginx_binary()
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs Debian's nginx-light when it can)"
)


def doc_nginx_config() -> str:
    """The ```nginx block of docs/deploy.md: an `upstream` and a `server` for Debian's http { }."""
    blocks = re.findall(r"```nginx\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, "docs/deploy.md should have exactly one ```nginx block"
    return str(blocks[0])


# --- processes ------------------------------------------------------------------------------


@dataclass
class Instance:
    name: str
    transport: str
    socket_path: str
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def workers(self) -> set[int]:
        """The pids of this instance's child processes (--workers)."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return {int(pid) for pid in path.read_text().split()}
        except OSError:
            return set()

    def connections(self) -> int:
        """Open sockets of the instance and its workers (the listener and wake-up pairs included)."""
        count = 0
        for pid in (self.process.pid, *self.workers()):
            try:
                names = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for name in names:
                with contextlib.suppress(OSError):  # closed meanwhile
                    count += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
        return count

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
                return None
        return self.process.returncode


def _start_instances(
    base: Path, files: Path, specs: Sequence[tuple[str, str, Sequence[str]]]
) -> list[Instance]:
    """Start every instance at once (name, transport, extra options), then wait for each."""
    instances = []
    for name, transport, extra in specs:
        path = str(base / f"{name}.sock")
        out, err = base / f"{name}.out", base / f"{name}.err"
        command = [sys.executable, "-m", "transports", "--transport", transport, "--uds", path]
        command += ["--directory", str(files), "--proxy-headers", "--keep-alive-timeout", "5", *extra]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            process = subprocess.Popen(
                command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )
        instances.append(Instance(name, transport, path, process, err))
    deadline = time.monotonic() + START_TIMEOUT
    for instance in instances:
        out = base / f"{instance.name}.out"
        while not out.read_text().endswith("\n"):
            if instance.process.poll() is not None or time.monotonic() > deadline:
                for other in instances:
                    other.stop()
                pytest.fail(f"instance {instance.name} did not start:\n{instance.stderr()}")
            time.sleep(0.01)
        assert out.read_text().startswith(f"Listening on unix:{instance.socket_path} "), out.read_text()
    return instances


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_config(base: Path, port: int, sockets: Sequence[str]) -> str:
    """docs/deploy.md's blocks in a minimal nginx.conf of the test's own (Debian's http settings)."""
    snippet = doc_nginx_config()
    assert snippet.count(DOC_SOCKETS) == len(sockets) == 2, "the page's upstream should list two sockets"
    for name, path in zip(("a", "b"), sockets, strict=True):
        assert f"unix:{DOC_SOCKETS}{name}.sock" in snippet
        snippet = snippet.replace(f"unix:{DOC_SOCKETS}{name}.sock", f"unix:{path}")
    assert "listen 80;" in snippet
    snippet = snippet.replace("listen 80;", f"listen 127.0.0.1:{port};")
    user = "user root;" if os.geteuid() == 0 else ""  # workers as root: they reach the sockets in our tmp
    temp = base / "tmp"
    return f"""
daemon off;
worker_processes 1;
{user}
pid {base}/nginx.pid;
error_log {base}/error.log notice;
events {{ worker_connections 512; }}
http {{
    sendfile on;
    tcp_nopush on;
    gzip on;
    default_type application/octet-stream;
    log_format upstream
        '$request_method $request_uri $status $body_bytes_sent "$upstream_addr" "$upstream_status"';
    access_log {base}/access.log upstream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{snippet}
}}
"""


@dataclass
class LogLine:
    method: str
    target: str
    status: int
    upstreams: list[str]
    """The instances tried, in order (more than one: nginx retried)."""
    upstream_statuses: list[str]


@dataclass
class Cluster:
    base: Path
    files: Path
    port: int
    instances: list[Instance]
    nginx: subprocess.Popen[bytes]

    def client(self) -> RawClient:
        return RawClient("127.0.0.1", self.port, TIMEOUT)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def log(self) -> list[LogLine]:
        """nginx's access log so far (it writes each line as the request ends)."""
        lines = []
        pattern = re.compile(r'(\S+) (\S+) (\d+) \d+ "([^"]*)" "([^"]*)"')
        for text in (self.base / "access.log").read_text().splitlines():
            match = pattern.fullmatch(text)
            assert match, text
            # "unix:/a.sock, unix:/b.sock" (retried); a " : " separates internal redirects.
            upstreams = [part for part in re.split(r",\s|\s:\s", match[4]) if part not in ("", "-")]
            statuses = [part for part in re.split(r",\s|\s:\s", match[5]) if part]
            lines.append(LogLine(match[1], match[2], int(match[3]), upstreams, statuses))
        return lines

    def nginx_errors(self) -> str:
        return (self.base / "error.log").read_text(errors="replace")


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    """Start nginx in front of two instances: `make_cluster(("trio", "threads"), a_options=[...])`."""
    if NGINX is None:
        pytest.skip("nginx is not installed")
    base = Path(tempfile.mkdtemp(prefix="h11n-", dir="/tmp"))  # short: Unix socket paths
    started: list[Cluster] = []
    instances: list[Instance] = []
    nginx: subprocess.Popen[bytes] | None = None

    def make(
        transports: tuple[str, str], a_options: Sequence[str] = (), options: Sequence[str] = ()
    ) -> Cluster:
        nonlocal nginx
        files = base / "files"
        files.mkdir()
        (base / "tmp").mkdir()
        specs = [("a", transports[0], [*options, *a_options]), ("b", transports[1], options)]
        instances.extend(_start_instances(base, files, specs))
        for attempt in range(3):  # the free port may be taken meanwhile: try another
            port = _free_port()
            config = base / "nginx.conf"
            config.write_text(nginx_config(base, port, [i.socket_path for i in instances]))
            with open(base / "nginx.out", "wb") as out:
                nginx = subprocess.Popen(
                    [str(NGINX), "-p", str(base), "-c", str(config), "-e", str(base / "error.log")],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            if _wait_for_port(port, nginx):
                cluster = Cluster(base, files, port, instances, nginx)
                started.append(cluster)
                return cluster
            nginx.wait(STOP_TIMEOUT)
            text = (base / "nginx.out").read_text(errors="replace") + _read(base / "error.log")
            if "Address already in use" not in text or attempt == 2:
                pytest.fail(f"nginx did not start:\n{text}")
        raise AssertionError("unreachable")

    try:
        yield make
    finally:
        try:
            if nginx is not None and nginx.poll() is None:
                nginx.send_signal(signal.SIGQUIT)  # graceful
                try:
                    nginx.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    nginx.kill()
                    nginx.wait(STOP_TIMEOUT)
            codes = {i.name: i.stop() for i in instances}
            for instance in instances:
                assert "Traceback" not in instance.stderr(), instance.stderr()
            killed = {i.name for i in instances if i.process.returncode == -signal.SIGKILL}
            assert all(code == 0 for name, code in codes.items() if name not in killed), (
                codes,
                [i.stderr() for i in instances],
            )
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def send(client: RawClient, method: str, target: str, **kwargs: object) -> Response:
    client.send(request(method, target, **kwargs))  # type: ignore[arg-type]
    return client.read_response(method)


# --- load ------------------------------------------------------------------------------------


@dataclass
class Load:
    """Client threads sending requests through nginx until told to stop (or a bound is hit)."""

    cluster: Cluster
    make_request: Callable[[int, int], tuple[str, str, bytes, Callable[[int, bytes], bool]]]
    """(thread, n) -> (method, target, body, check(status, body))"""
    threads: int = 4
    max_requests: int = 400
    """Per thread."""
    max_seconds: float = 20.0
    done: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        deadline = time.monotonic() + self.max_seconds
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, args=(index, deadline), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def _run(self, index: int, deadline: float) -> None:
        connection = self.cluster.connection()
        try:
            for n in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                method, target, body, check = self.make_request(index, n)
                try:
                    connection.request(method, target, body=body or None)
                    response = connection.getresponse()
                    data = response.read()
                    if not check(response.status, data):
                        self._error(f"{method} {target}: {response.status} {data[:80]!r}")
                except (OSError, http.client.HTTPException) as exc:
                    self._error(f"{method} {target}: {exc!r}")
                    connection.close()
                    connection = self.cluster.connection()
                with self._lock:
                    self.done += 1
        finally:
            connection.close()

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.done < count:
            assert time.monotonic() < deadline, f"only {self.done} requests done"
            time.sleep(0.005)

    def finish(self) -> None:
        """Stop (after the requests in progress) and wait for the threads."""
        self._stop.set()
        for thread in self._workers:
            thread.join(self.max_seconds + TIMEOUT)
            assert not thread.is_alive(), "a load thread hung"


# --- tests ------------------------------------------------------------------------------------


@needs_nginx
def test_the_challenges_stages_through_nginx(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(("trio", "threads"))
    a, b = cluster.instances
    idle = {i.name: i.connections() for i in cluster.instances}
    with cluster.client() as client:  # one keep-alive connection to nginx for all of it
        response = send(client, "GET", "/")
        assert (response.status, response.body) == (200, b"")
        response = send(client, "GET", "/echo/abc")
        assert (response.status, response.body) == (200, b"abc")
        assert response.header("content-type") == b"text/plain"
        response = send(client, "GET", "/user-agent", headers=[("User-Agent", "nginx-test/1.0")])
        assert (response.status, response.body) == (200, b"nginx-test/1.0")
        response = send(client, "GET", "/files/missing")
        assert response.status == 404
        body = bytes(range(256)) * 300  # 75 KiB: past nginx's in-memory body buffer
        response = send(client, "POST", "/files/up.bin", body=body)
        assert response.status == 201
        assert (cluster.files / "up.bin").read_bytes() == body
        for _ in range(2):  # both instances, round-robin
            response = send(client, "GET", "/files/up.bin")
            assert (response.status, response.body) == (200, body)
            assert response.header("content-type") == b"application/octet-stream"
        response = send(client, "GET", "/echo/zipped", headers=[("Accept-Encoding", "gzip")])
        assert response.header("content-encoding") == b"gzip"
        assert gzip.decompress(response.body) == b"zipped"
        response = send(client, "HEAD", "/echo/head")
        assert (response.status, response.body, response.header("content-length")) == (200, b"", b"4")
        for n in range(16):
            assert send(client, "GET", f"/echo/{n}").body == str(n).encode()
        client.send(request("GET", "/echo/bye", [("Connection", "close")]))
        response = client.read_response()
        assert (response.body, response.header("connection")) == (b"bye", b"close")
        client.assert_closed(within=2.0)

    log = cluster.log()
    assert len(log) == 26, log
    assert {line.upstreams[0] for line in log} == {f"unix:{a.socket_path}", f"unix:{b.socket_path}"}
    assert all(len(line.upstreams) == 1 for line in log), "nginx retried without a failure"
    # Upstream keep-alive: nginx kept its connection to each instance (one worker, one at a
    # time: one idle connection each), instead of one connection per request.
    for instance in cluster.instances:
        kept = instance.connections() - idle[instance.name]
        assert 1 <= kept <= 2, (instance.name, kept)


@needs_nginx
def test_an_instance_killed_mid_load_costs_no_request(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(("asyncio", "trio"))
    a, b = cluster.instances
    (cluster.files / "small").write_bytes(os.urandom(4096))

    # Responses that go out in one write: a response the killed instance had begun (a
    # file's head sent, its body not yet) cannot be retried by any proxy, and is cut.
    def make_request(thread: int, n: int) -> tuple[str, str, bytes, Callable[[int, bytes], bool]]:
        if n % 3 == 2:
            return "HEAD", "/files/small", b"", lambda status, body: (status, body) == (200, b"")
        word = f"t{thread}n{n}"
        return "GET", f"/echo/{word}", b"", lambda status, body: (status, body) == (200, word.encode())

    load = Load(cluster, make_request, threads=4, max_requests=150).start()
    try:
        load.wait_for(150)
        b.process.kill()  # SIGKILL: no goodbye, connections cut mid-request
        b.process.wait(STOP_TIMEOUT)
        load.wait_for(600, timeout=20)
    finally:
        load.finish()
    assert load.errors == [], load.errors[:10]
    assert load.done == 600
    log = cluster.log()
    assert len(log) == 600
    assert all(line.status == 200 for line in log)
    retried = [line for line in log if len(line.upstreams) > 1]
    assert retried, "the kill should have made nginx retry a request on the other instance"
    assert all(line.upstreams[-1] == f"unix:{a.socket_path}" for line in retried), retried
    served_by_b = sum(line.upstreams == [f"unix:{b.socket_path}"] for line in log)
    assert served_by_b >= 50, "b should have served its share before the kill"


@needs_nginx
def test_uploads_through_nginx_are_atomic_in_the_shared_directory(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(("threads", "asyncio"))
    size = 256 * 1024
    versions = [(f"version {i:02d} " * (size // 11 + 1)).encode()[:size] for i in range(8)]
    valid = set(versions)
    writes_done = threading.Event()
    errors: list[str] = []
    reads = {"ok": 0, "absent": 0}
    lock = threading.Lock()

    def writer(indices: list[int]) -> None:
        connection = cluster.connection()
        try:
            for i in indices:
                connection.request("POST", "/files/shared.txt", body=versions[i])
                response = connection.getresponse()
                response.read()
                if response.status != 201:
                    errors.append(f"upload {i}: {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"upload: {exc!r}")
        finally:
            connection.close()

    def reader() -> None:
        connection = cluster.connection()
        try:
            for _ in range(300):
                if writes_done.is_set():
                    return
                connection.request("GET", "/files/shared.txt")
                response = connection.getresponse()
                body = response.read()
                with lock:
                    if response.status == 404 and not body.startswith(b"version"):
                        reads["absent"] += 1
                    elif response.status == 200 and body in valid:
                        reads["ok"] += 1
                    else:
                        errors.append(f"read: {response.status}, {len(body)} bytes, {body[:20]!r}...")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"read: {exc!r}")
        finally:
            connection.close()

    readers = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(list(range(k, 8, 2)),), daemon=True) for k in range(2)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join(30)
    writes_done.set()
    for thread in readers:
        thread.join(30)
    assert not any(thread.is_alive() for thread in readers + writers)
    assert errors == [], errors[:10]
    assert reads["ok"] > 0, reads
    assert os.listdir(cluster.files) == ["shared.txt"], "a temporary file was left behind"
    assert (cluster.files / "shared.txt").read_bytes() in valid
    posts = [line for line in cluster.log() if line.method == "POST"]
    assert len(posts) == 8 and len({line.upstreams[0] for line in posts}) == 2, posts


def _reload_exists() -> bool:
    return "SIGHUP" in (ROOT / "transports" / "workers.py").read_text()


needs_reload = pytest.mark.skipif(
    not _reload_exists(),
    reason="SIGHUP reload with --workers (issue 12, item 10) is not in this tree yet",
)


def _reload_under_load(cluster: Cluster, uploads: bool) -> Load:
    """SIGHUP instance a (--workers 2) under load; returns the finished load."""
    a = cluster.instances[0]
    deadline = time.monotonic() + 10
    while len(a.workers()) < 2:
        assert time.monotonic() < deadline, "a's workers did not start"
        time.sleep(0.02)
    old = a.workers()

    def make_request(thread: int, n: int) -> tuple[str, str, bytes, Callable[[int, bytes], bool]]:
        if uploads:  # never retried by nginx: any failure shows
            body = f"upload {thread} {n}".encode()
            return "POST", f"/files/r{thread}-{n % 4}", body, lambda status, _: status == 201
        if n % 3 == 2:
            return "HEAD", "/files/small", b"", lambda status, body: (status, body) == (200, b"")
        word = f"t{thread}n{n}"
        return "GET", f"/echo/{word}", b"", lambda status, body: (status, body) == (200, word.encode())

    (cluster.files / "small").write_bytes(b"x" * 4096)
    load = Load(cluster, make_request, threads=3, max_requests=2000, max_seconds=20).start()
    try:
        load.wait_for(100)
        a.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while True:  # until the old workers are gone and two new ones serve
            now = a.workers()
            if len(now) == 2 and not now & old:
                break
            assert a.process.poll() is None, f"SIGHUP ended the instance:\n{a.stderr()}"
            assert time.monotonic() < deadline, f"no reload: workers {old} -> {now}\n{a.stderr()}"
            time.sleep(0.02)
        load.wait_for(load.done + 100)
    finally:
        load.finish()
    assert a.process.poll() is None
    assert sum(line.upstreams[0] == f"unix:{a.socket_path}" for line in cluster.log()) >= 30
    return load


@needs_nginx
@needs_reload
def test_a_sighup_reload_under_load_fails_no_request(make_cluster: Callable[..., Cluster]) -> None:
    """New workers start, the old ones leave, the instance stays up, and no client sees a failure."""
    cluster = make_cluster(("trio", "asyncio"), a_options=["--workers", "2"])
    load = _reload_under_load(cluster, uploads=False)
    assert load.errors == [], load.errors[:10]
    assert all(line.status == 200 for line in cluster.log())


@needs_nginx
@needs_reload
@pytest.mark.xfail(
    strict=False,
    reason="known (issue 12): an old worker closes its idle keep-alive connections at once when it "
    "leaves; a request nginx has just sent on one is reset. nginx retries a GET (above), not a POST: "
    "the client gets 502. Needs draining that answers the next request on an idle connection "
    "with Connection: close (HAProxy's idle-close-on-response) instead of closing it",
)
def test_a_sighup_reload_under_upload_load_fails_no_upload(make_cluster: Callable[..., Cluster]) -> None:
    """The stricter form: no upload fails, and nginx never even has to retry."""
    cluster = make_cluster(("trio", "asyncio"), a_options=["--workers", "2"])
    load = _reload_under_load(cluster, uploads=True)
    assert load.errors == [], (load.errors[:10], cluster.nginx_errors()[-2000:])
    assert [line for line in cluster.log() if len(line.upstreams) > 1] == [], cluster.nginx_errors()[-2000:]


@needs_nginx
def test_the_access_log_names_the_client_behind_nginx(make_cluster: Callable[..., Cluster]) -> None:
    # The test's client is on 127.0.0.1, a trusted proxy by default: it would be believed.
    # Here it is an ordinary client; nginx, a Unix socket's peer, is trusted all the same.
    cluster = make_cluster(("asyncio", "threads"), options=["--forwarded-allow-ips", "192.0.2.1"])
    for n in range(2):  # one to each instance
        with cluster.client() as client:
            # A client's own X-Forwarded-For is on the left of what nginx appends: not believed.
            response = send(client, "GET", f"/echo/who{n}", headers=[("X-Forwarded-For", "192.0.2.66")])
            assert response.status == 200
    deadline = time.monotonic() + 2
    for instance in cluster.instances:
        while "/echo/who" not in instance.stderr():
            assert time.monotonic() < deadline, instance.stderr()
            time.sleep(0.02)
        line = next(line for line in instance.stderr().splitlines() if "/echo/who" in line)
        assert re.search(r"\b127\.0\.0\.1\b", line) and "192.0.2.66" not in line, line
