"""Small, strict HTTP clients for the behavioural suite.

`RawClient` speaks raw bytes over one socket and parses whatever comes back with a real
h11 client connection, keeping the exact bytes of every response for byte-level checks.
Every socket has a timeout, so a server that stays silent fails a test instead of hanging it.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field

import h11

TIMEOUT = 5.0
"""Default socket timeout: generous for a loaded 2-core machine, short enough to never hang."""


@dataclass
class Response:
    status: int
    reason: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]
    """Lower-case names, values as sent, in order."""
    body: bytes
    raw: bytes
    """The exact bytes of this response (informational responses excluded)."""
    informational: list[int] = field(default_factory=list)

    @property
    def status_line(self) -> bytes:
        return self.raw.split(b"\r\n", 1)[0]

    def header(self, name: str) -> bytes | None:
        """The single value of header `name`; fails the test if it appears twice."""
        values = self.all(name)
        assert len(values) <= 1, f"header {name} repeated: {values}"
        return values[0] if values else None

    def all(self, name: str) -> list[bytes]:
        key = name.lower().encode()
        return [value for header, value in self.headers if header == key]

    def has(self, name: str) -> bool:
        return bool(self.all(name))


def request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: bool = True,
    version: str = "1.1",
) -> bytes:
    """Raw request bytes. Adds Host and, for a body, Content-Length unless given."""
    lines = [f"{method} {target} HTTP/{version}"]
    given = {name.lower() for name, _ in headers or []}
    if host and "host" not in given:
        lines.append("Host: localhost")
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body and "content-length" not in given and "transfer-encoding" not in given:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes) -> bytes:
    """A chunked body made of `pieces`, with the final empty chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece) + b"0\r\n\r\n"


class RawClient:
    """One connection: send bytes, read responses one at a time (pipelining works)."""

    def __init__(
        self, host: str, port: int, timeout: float = TIMEOUT, tls: ssl.SSLContext | None = None
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        self.sock = tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
        self.sock.settimeout(timeout)
        self._buffer = b""
        self._eof = False

    @classmethod
    def unix(cls, path: str, timeout: float = TIMEOUT) -> RawClient:
        """One connection to the Unix socket at `path`."""
        client = cls.__new__(cls)
        client.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.sock.settimeout(timeout)
        client.sock.connect(path)
        client._buffer = b""
        client._eof = False
        return client

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def unread(self) -> bytes:
        """Bytes received but not yet parsed as a response."""
        return self._buffer

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            return b""

    def read_response(self, method: str = "GET") -> Response:
        """The next complete final response; `method` tells whether a body follows."""
        conn = h11.Connection(h11.CLIENT)
        # Put the h11 client into "request sent" so that it parses a response.
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        fed = bytearray(self._buffer)  # bytearray: appending stays linear for big bodies
        if fed:  # h11 takes b"" as end of input
            conn.receive_data(bytes(fed))
        informational: list[int] = []
        head: h11.Response | None = None
        body: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if self._eof:
                    raise AssertionError(f"connection closed mid-response after {bytes(fed[-2000:])!r}")
                data = self._recv()
                if not data:
                    self._eof = True
                fed += data
                conn.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected event {event!r} after {bytes(fed[-2000:])!r}")
        assert head is not None
        trailing = conn.trailing_data[0]
        self._buffer = bytes(trailing)
        raw = bytes(fed[: len(fed) - len(trailing)])
        for _ in informational:  # keep only the final response's bytes in `raw`
            raw = raw.split(b"\r\n\r\n", 1)[1]
        return Response(
            status=head.status_code,
            reason=bytes(head.reason),
            http_version=bytes(head.http_version),
            headers=[(bytes(name), bytes(value)) for name, value in head.headers],
            body=b"".join(body),
            raw=raw,
            informational=informational,
        )

    def receive_some(self) -> None:
        """Read what has arrived (at least one byte) into the buffer, to parse later."""
        data = self._recv()
        assert data, "connection closed"
        self._buffer += data

    def read_informational(self) -> bytes:
        """Read just an informational response head (e.g. `100 Continue`) and return it."""
        while b"\r\n\r\n" not in self._buffer:
            data = self._recv()
            assert data, f"connection closed while waiting for a 1xx, got {self._buffer!r}"
            self._buffer += data
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        return head + b"\r\n\r\n"

    def read_until_close(self, timeout: float = TIMEOUT) -> bytes:
        """Everything the server sends until it closes; fails if it stays open past `timeout`."""
        deadline = time.monotonic() + timeout
        data = self._buffer
        self._buffer = b""
        while not self._eof:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"server kept the connection open; got {data!r}"
            self.sock.settimeout(remaining)
            try:
                chunk = self._recv()
            except TimeoutError:
                raise AssertionError(f"server kept the connection open; got {data!r}") from None
            if not chunk:
                self._eof = True
            data += chunk
        return data

    def assert_closed(self, within: float = 0.1) -> None:
        """The server closed the connection (EOF or RST) within `within` seconds, sending nothing more."""
        extra = self.read_until_close(within)
        assert extra == b"", f"unexpected bytes before close: {extra!r}"

    def is_open(self, wait: float = 0.05) -> bool:
        """True if nothing arrived and no EOF within `wait` seconds."""
        if self._eof:
            return False
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        except ConnectionResetError:
            data = b""
        finally:
            self.sock.settimeout(TIMEOUT)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True


def fetch(host: str, port: int, data: bytes, method: str = "GET") -> Response:
    """Send `data` on a new connection and read one response."""
    with RawClient(host, port) as client:
        client.send(data)
        return client.read_response(method)
