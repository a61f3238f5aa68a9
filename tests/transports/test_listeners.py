"""Making listening sockets: Unix sockets, inherited ones, systemd's, dual-stack IPv6.

In-process, loopback and short temporary paths only (a Unix socket path has ~107 bytes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.proxy import TrustedProxies
from transports.cli import parser
from transports.common import bind, format_peer, ports, url
from transports.listeners import bind_unix, describe, inherited, inherited_all, systemd_fds
from transports.options import ServerOptions


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="h11l-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")


# --- Unix sockets ----------------------------------------------------------------------


def test_bind_unix_listens_with_the_mode_and_removes_its_file(short_dir: Path) -> None:
    path = str(short_dir / "s.sock")
    listeners = bind_unix(path, mode=0o660, backlog=8)
    try:
        (sock,) = listeners.sockets
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
        assert not sock.getblocking()
        assert describe(sock, tls=False) == f"unix:{path}" == url(listeners.sockets, tls=True)
        assert ports(listeners.sockets) == []
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    finally:
        listeners.close()
    assert not os.path.exists(path)


def test_a_stale_socket_file_is_replaced(short_dir: Path) -> None:
    path = str(short_dir / "s.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)  # never listened on, like one a killed server left
    listeners = bind_unix(path)
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    finally:
        listeners.close()


def test_a_live_socket_is_not_taken_over(short_dir: Path) -> None:
    path = str(short_dir / "s.sock")
    first = bind_unix(path)
    try:
        with pytest.raises(OSError, match="in use"):
            bind_unix(path)
        assert os.path.exists(path)
    finally:
        first.close()


def test_a_path_that_is_not_a_socket_is_left_alone(short_dir: Path) -> None:
    path = short_dir / "data.txt"
    path.write_text("keep me")
    with pytest.raises(OSError, match="not a socket"):
        bind_unix(str(path))
    assert path.read_text() == "keep me"


def test_a_socket_file_replaced_by_a_newer_server_is_not_removed(short_dir: Path) -> None:
    path = str(short_dir / "s.sock")
    old = bind_unix(path)
    os.unlink(path)  # what a newer server does to a stale file, before binding its own
    new = bind_unix(path)
    try:
        old.close()
        assert os.path.exists(path)
    finally:
        new.close()
    assert not os.path.exists(path)


def test_unix_peers_are_logged_as_unix() -> None:
    assert format_peer("") == "unix:"
    assert format_peer("/run/client.sock") == "unix:/run/client.sock"
    assert format_peer(b"\0abstract") == "unix:@abstract"
    assert format_peer(("127.0.0.1", 5)) == "127.0.0.1:5"
    assert format_peer(("::1", 5, 0, 0)) == "[::1]:5"
    assert format_peer(("::ffff:192.0.2.1", 5, 0, 0)) == "192.0.2.1:5"  # a dual-stack socket's IPv4 client
    assert format_peer(None) == "-"


# --- inherited sockets -------------------------------------------------------------------


def test_inherited_takes_a_listening_socket_of_any_family(short_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as tcp:
        fd = os.dup(tcp.fileno())
        sock = inherited(fd)
        try:
            assert sock.family == socket.AF_INET and not sock.getblocking()
            assert not os.get_inheritable(fd)
            assert describe(sock, tls=False) == f"http://127.0.0.1:{tcp.getsockname()[1]}"
        finally:
            sock.close()


@pytest.mark.parametrize("kind", ["not listening", "datagram", "pipe", "closed"])
def test_inherited_refuses_what_is_not_a_listening_stream_socket(kind: str) -> None:
    with contextlib.ExitStack() as stack:
        if kind == "not listening":
            sock = stack.enter_context(socket.socket())
            fd, message = sock.fileno(), "not listening"
        elif kind == "datagram":
            sock = stack.enter_context(socket.socket(type=socket.SOCK_DGRAM))
            fd, message = sock.fileno(), "not a stream socket"
        elif kind == "pipe":
            fd, other = os.pipe()
            stack.callback(os.close, fd)
            stack.callback(os.close, other)
            message = "not a socket"
        else:
            fd, other = os.pipe()
            os.close(fd)
            os.close(other)
            message = "not a socket"
        with pytest.raises(OSError, match=message):
            inherited_all([fd])
        if kind != "closed":
            os.fstat(fd)  # still open: the caller's to close


def test_systemd_fds_reads_and_removes_the_variables() -> None:
    env = {"LISTEN_PID": "1234", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "PATH": "/bin"}
    assert systemd_fds(env, pid=1234) == [3, 4]
    assert env == {"PATH": "/bin"}
    env = {"LISTEN_PID": "99", "LISTEN_FDS": "2"}
    assert systemd_fds(env, pid=1234) == []  # meant for another process (our parent)
    assert env == {}
    assert systemd_fds({"LISTEN_FDS": "1"}, pid=1) == []
    assert systemd_fds({}, pid=1) == []
    with pytest.raises(OSError, match="not numbers"):
        systemd_fds({"LISTEN_PID": "1", "LISTEN_FDS": "x"}, pid=1)


# --- TCP ---------------------------------------------------------------------------------


@needs_ipv6
def test_host_double_colon_is_one_dual_stack_socket() -> None:
    sockets = bind(ServerOptions(host="::", port=0))
    try:
        (sock,) = sockets
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        assert url(sockets, tls=False) == f"http://[::]:{port}"
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, port), timeout=5):
                pass
    finally:
        for sock in sockets:
            sock.close()


@needs_ipv6
def test_a_host_with_both_families_gets_a_v6_only_socket_beside_the_v4_one() -> None:
    sockets = bind(ServerOptions(host="", port=0))  # every address: 0.0.0.0 and ::
    try:
        families = sorted(sock.family for sock in sockets)
        assert families == [socket.AF_INET, socket.AF_INET6]
        v6 = next(sock for sock in sockets if sock.family == socket.AF_INET6)
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert len(ports(sockets)) == 1
    finally:
        for sock in sockets:
            sock.close()


# --- command line -----------------------------------------------------------------------------


def test_listening_and_proxy_options() -> None:
    args = parser().parse_args([])
    assert (args.uds, args.fd, args.uds_mode, args.proxy_headers) == (None, None, 0o666, False)
    assert args.forwarded_allow_ips == TrustedProxies.parse("127.0.0.1,::1")
    args = parser().parse_args(
        [
            "--uds",
            "/run/x.sock",
            "--uds-mode",
            "660",
            "--proxy-headers",
            "--forwarded-allow-ips",
            "10.0.0.0/8,*",
        ]
    )
    assert (args.uds, args.uds_mode, args.proxy_headers) == ("/run/x.sock", 0o660, True)
    assert args.forwarded_allow_ips.everyone


@pytest.mark.parametrize(
    "argv",
    [
        ["--uds", "/tmp/x.sock", "--fd", "3"],
        ["--uds-mode", "999"],
        ["--uds-mode", "rw"],
        ["--fd", "-1"],
        ["--forwarded-allow-ips", "10.0.0.0/8,proxy.local"],
    ],
)
def test_bad_listening_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        parser().parse_args(argv)
    assert exit.value.code == 2
    assert "error:" in capsys.readouterr().err
