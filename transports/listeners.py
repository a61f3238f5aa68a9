"""Where the server listens, beyond `--host`/`--port`: a Unix socket, inherited sockets.

- `--uds PATH`: a Unix socket, chmod'ed to `--uds-mode` (0o666 by default, as uvicorn
  and systemd's `SocketMode=` do; restrict access with the directory it is in). A stale
  socket file (one nobody listens on, left by a killed server) is replaced; a live one,
  or a path that is not a socket, is an error. The file is removed at exit if it is
  still the one this server made.
- `--fd N`: a listening socket the server inherited, of any family (a supervisor, or
  `systemd-socket-activate`, bound it).
- systemd socket activation: `LISTEN_PID` is this process and `LISTEN_FDS` counts the
  sockets passed from fd 3 on (`sd_listen_fds(3)`). The variables are removed from the
  environment once read, so that no subprocess takes the sockets for its own.

The transports serve any listening stream socket they are given (`sockets=`); these
helpers only make them. TCP binding (`common.bind`) stays with the transports.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Final

UDS_MODE: Final = 0o666
"""`--uds-mode`'s default."""


@dataclass
class Listeners:
    """The listening sockets of a server, and the socket files to remove when it is done."""

    sockets: list[socket.socket]
    origin: str = "bound"
    """How they came: "bound" (here), "fd" (--fd) or "systemd" (socket activation)."""
    _files: list[tuple[str, int, int]] = field(default_factory=list)
    """(path, st_dev, st_ino) of each Unix socket file made here."""

    def close(self) -> None:
        """Close every socket; remove the socket files made here, if they are still ours."""
        for sock in self.sockets:
            sock.close()
        for path, device, inode in self._files:
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) == (device, inode):  # not a newer server's
                    os.unlink(path)
        self._files.clear()


def bind_unix(path: str, *, mode: int = UDS_MODE, backlog: int = 1024) -> Listeners:
    """A listening Unix socket at `path` (a stale socket file there is replaced).

    Raises OSError (with `path` in its message) if the path is in use, is not a socket,
    or cannot be bound.
    """
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listeners = Listeners([sock])
    try:
        sock.bind(path)
        info = os.lstat(path)
        listeners._files.append((path, info.st_dev, info.st_ino))
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        listeners.close()
        raise
    return listeners


def _remove_stale(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:  # nobody listens: left by a server that was killed
        os.unlink(path)
        return
    except OSError as exc:
        raise OSError(f"{path}: cannot tell whether a server listens on it ({exc})") from None
    finally:
        probe.close()
    raise OSError(f"{path} is in use: another server listens on it")


def inherited(fd: int) -> socket.socket:
    """The listening stream socket at descriptor `fd` (any family), non-blocking.

    Raises OSError saying what is wrong if `fd` is not open, not a socket, not a stream
    socket or not listening.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise OSError(f"fd {fd} is not a socket ({exc.strerror or exc})") from None
    try:
        if sock.type != socket.SOCK_STREAM:
            raise OSError(f"fd {fd} is not a stream socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise OSError(f"fd {fd} is not listening")
        sock.set_inheritable(False)
        sock.setblocking(False)
    except BaseException:
        sock.detach()  # the descriptor is the caller's until it is ours
        raise
    return sock


def inherited_all(fds: Sequence[int], origin: str = "fd") -> Listeners:
    """`inherited` for each of `fds`; on a failure, the ones taken are closed."""
    sockets: list[socket.socket] = []
    try:
        for fd in fds:
            sockets.append(inherited(fd))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return Listeners(sockets, origin)


SD_LISTEN_FDS_START: Final = 3


def systemd_fds(environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> list[int]:
    """The descriptors systemd passed to this process (socket activation), or [].

    As `sd_listen_fds(1)`: only when `LISTEN_PID` is this process; the variables are
    removed from `environ` (default `os.environ`) either way once they were set.
    """
    environ = os.environ if environ is None else environ
    count = environ.pop("LISTEN_FDS", None)
    owner = environ.pop("LISTEN_PID", None)
    environ.pop("LISTEN_FDNAMES", None)
    if count is None or owner is None:
        return []
    try:
        if int(owner) != (os.getpid() if pid is None else pid):
            return []
        number = int(count)
    except ValueError:
        raise OSError(f"LISTEN_PID={owner!r} LISTEN_FDS={count!r} are not numbers") from None
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(number, 0)))


def describe(sock: socket.socket, *, tls: bool) -> str:
    """Where `sock` listens: `http://127.0.0.1:4221`, `https://[::]:443`, `unix:/run/app.sock`."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(address, bytes):  # Linux's abstract namespace: a leading NUL
            return "unix:@" + address[1:].decode(errors="replace")
        return f"unix:{address}"
    host, port = address[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"
