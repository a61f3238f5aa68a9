"""WSGI (PEP 3333) apps on the core: `WSGIApp(app)` is an `App` for any transport.

    from handlers.wsgi import WSGIApp
    core_app = WSGIApp(flask_app, root_path="/api", multiprocess=False)

Each request becomes an `Exchange` with `may_block` set, so the app runs where blocking is
allowed (a worker thread of an event-loop transport, the threads transport's own worker),
never on an event loop:

- `receive()` spools the request body: in memory up to `spool_threshold` bytes, then in an
  unnamed temporary file (a 1 GiB upload costs disk, not memory). `wsgi.input` reads it
  back; it ends where the body ends, whatever its framing. `Expect: 100-continue` is the
  core's business: the app just reads its input.
- `respond()` builds `environ` as `wsgiref` does, calls the app and pulls its iterable up
  to the first non-empty piece (headers go out with it, or at the end). The response body
  is then `bytes` when it is already whole (a list or tuple, or a first piece that fills
  the app's Content-Length), a `FileBody` (sent with sendfile) for a `wsgi.file_wrapper`
  around a real file, else a `Stream` that pulls the rest one piece at a time, once the
  previous one went out (memory stays bounded however slow the client).
- The iterable's `close()` is always called: after the body, after an error, and when the
  client left (the core closes the `Stream`).
- An exception before the response started is a 500 (logged with its traceback, the
  request named by method and path only: no headers, no query, so no credentials); after
  it started, the `Stream` raises and the core cuts the connection (no terminating chunk).

`environ` (PEP 3333 and CGI): a plain dict of native strings. `PATH_INFO` is the target's
path percent-decoded and read as latin-1 (every byte survives; `*` for `OPTIONS *`; an
absolute-form target comes from the core as origin-form, its authority the Host: RFC 9112
§3.2.2); `SCRIPT_NAME` is `root_path`, which is stripped from `PATH_INFO` when the path
starts with it (a proxy that already stripped it is fine too); `QUERY_STRING` is raw.
`SERVER_NAME` and `SERVER_PORT` come from `Host` (else the socket the request came to),
`REMOTE_ADDR` and `REMOTE_PORT` from the client (a Unix socket's peer has no address:
`REMOTE_ADDR` is "", as gunicorn gives, and there is no `REMOTE_PORT`; ASGI's `client` is
None there, as uvicorn's; with trusted proxy headers both name the client the proxy
names). `HTTP_*` as in CGI, repeated fields joined with ", " (`Cookie` with "; ", as
HTTP/2 does); header names with `_` are dropped, as nginx and gunicorn do (`X_User` would
read as `X-User`). A chunked body is whole before the app runs, so its `CONTENT_LENGTH` is
given and `HTTP_TRANSFER_ENCODING` is not.

Rules from the app's side that are errors (a 500 when the response has not started):
a hop-by-hop header (`Connection`, `Keep-Alive`, `Transfer-Encoding`, `Upgrade`, `TE`,
`Trailer`, `Proxy-*`), a status whose code is not 200 to 599 (`600 X`, `103 Early Hints`),
`start_response` called twice without `exc_info`, a body piece
before `start_response`, a piece that is not bytes, headers that are not latin-1 strings.
"""

from __future__ import annotations

import contextvars
import inspect
import io
import logging
import os
import re
import stat
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, BinaryIO, Final, cast
from urllib.parse import unquote_to_bytes

from protocol import FileBody, Request, Response, cacheable
from protocol.redaction import brief_repr, redact_values

__all__ = ["FileWrapper", "WSGIApp"]

error_log: Final = logging.getLogger("httpserver.error")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApplication = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

SPOOL_THRESHOLD: Final = 1024 * 1024
"""Request bodies (and pieces given to write()) stay in memory up to this, then go to disk."""
PIECE_SIZE: Final = 256 * 1024
"""Bytes read per piece from a spool (what write() gathered before the app returned)."""

_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)
_INTERNAL_ERROR: Final = Response(500, ((b"Content-Type", b"text/plain"),), b"500 Internal Server Error\n")
_METHODS: dict[bytes, str] = {}
"""Method bytes to their native string (a handful of distinct values)."""
_HEADER_KEYS: dict[bytes, str | None] = {}
"""Header name to its environ key, None for names dropped (bounded like _METHODS)."""
_CACHE_MAX: Final = 512
_SKIP: Final = None


def _header_key(name: bytes) -> str | None:
    key = _HEADER_KEYS.get(name, "")
    if key != "":
        return key
    text = name.decode("latin-1")
    if "_" in text:
        key = _SKIP
    elif text in ("content-type", "content-length"):
        key = text.upper().replace("-", "_")
    else:
        key = "HTTP_" + text.upper().replace("-", "_")
    if len(_HEADER_KEYS) < _CACHE_MAX:
        _HEADER_KEYS[name] = key
    return key


class FileWrapper:
    """`wsgi.file_wrapper`: iterates over a file-like object in `block_size` pieces.

    Returned by an app as its whole response, wrapping a real file (one with a descriptor),
    it is sent with sendfile from the file's current position, up to the app's
    Content-Length if it gave one; anything else is read piece by piece.
    """

    __slots__ = ("block_size", "filelike")

    def __init__(self, filelike: IO[bytes], block_size: int = 8192) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.block_size)
        if data:
            return data
        raise StopIteration

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def file_body(self, content_length: int | None) -> FileBody | None:
        """The rest of the file (at most `content_length`) as a FileBody, or None when it is
        not a regular file with a descriptor, or holds less than `content_length`."""
        file = self.filelike
        try:
            info = os.fstat(file.fileno())
            offset = file.tell()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        available = max(0, info.st_size - offset)
        if content_length is None:
            length = available
        elif content_length <= available:
            length = content_length
        else:
            return None  # ends short: the Stream path lets the core cut the connection
        return FileBody(cast(BinaryIO, file), offset, length)


class _Spool:
    """Bytes written in order, read back once: in memory up to a threshold, then on disk."""

    __slots__ = ("_chunks", "_file", "_threshold", "size")

    def __init__(self, threshold: int) -> None:
        self._chunks: list[bytes] = []
        self._file: BinaryIO | None = None
        self._threshold = threshold
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        if self.size > self._threshold:
            self._file = cast(BinaryIO, tempfile.TemporaryFile())  # noqa: SIM115 (closed by close())
            self._file.writelines(self._chunks)
            self._chunks = []

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def value(self) -> bytes:
        """What was written, when it is in memory."""
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def reader(self) -> BinaryIO:
        """A file positioned at the start of what was written (the spool's own, once on disk)."""
        if self._file is None:
            return io.BytesIO(self.value())
        self._file.flush()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        self._chunks = []
        if self._file is not None:
            self._file.close()


class WSGIApp:
    """A WSGI application served by the core (an `App`). See the module docstring."""

    __slots__ = ("_base", "_root", "_targets", "app", "spool_threshold")

    def __init__(
        self,
        app: WSGIApplication,
        *,
        root_path: str = "",
        multiprocess: bool = False,
        spool_threshold: int = SPOOL_THRESHOLD,
    ) -> None:
        """`root_path`: where the app is mounted ("" or "/path", no trailing slash);
        `multiprocess`: more than one process serves it (`--workers` > 1)."""
        self.app = app
        root = root_path.rstrip("/")
        if root and not root.startswith("/"):
            raise ValueError(f"root_path must start with '/': {root_path!r}")
        self._root = root.encode("utf-8").decode("latin-1")  # as PATH_INFO is: bytes read as latin-1
        self.spool_threshold = spool_threshold
        self._base: dict[str, Any] = {
            "SCRIPT_NAME": self._root,
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
        }
        self._targets: dict[bytes, tuple[str, str]] = {}
        """Request targets to their (PATH_INFO, QUERY_STRING): clients repeat theirs (bounded)."""

    def __call__(self, request: Request) -> _Exchange:
        return _Exchange(self, request)

    def environ(self, request: Request, body: BinaryIO, body_size: int | None) -> dict[str, Any]:
        """The environ for `request`, reading its body from `body`; `body_size` is the body's
        length when it was chunked (None: as declared, if at all)."""
        method = _METHODS.get(request.method)
        if method is None:
            method = request.method.decode("latin-1")
            if len(_METHODS) < _CACHE_MAX:
                _METHODS[request.method] = method
        target = request.target
        path_and_query = self._targets.get(target)
        if path_and_query is None:
            path_and_query = self._path_and_query(target)
        version = request.http_version
        scheme = request.scheme
        environ = self._base.copy()  # a copy of a dict's table: cheaper than a display with **
        environ["REQUEST_METHOD"] = method
        environ["PATH_INFO"], environ["QUERY_STRING"] = path_and_query
        environ["SERVER_PROTOCOL"] = "HTTP/1.1" if version == b"1.1" else "HTTP/" + version.decode("latin-1")
        environ["wsgi.url_scheme"] = scheme
        environ["wsgi.input"] = body
        keys = _HEADER_KEYS
        for name, value in request.headers:
            key = keys.get(name, "")
            if key == "":
                key = _header_key(name)
            if key is None:
                continue
            if key in environ:
                environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value.decode("latin-1")
            else:
                environ[key] = value.decode("latin-1")
        # h11 lets one Host at most through: HTTP_HOST is its value (latin-1, as every byte survives).
        host: str | None = environ.get("HTTP_HOST")
        if body_size is not None:
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ["CONTENT_LENGTH"] = str(body_size)
        if host:
            name_and_port = _HOSTS.get(host)
            if name_and_port is None:
                name_and_port = _host_parts(host)
            environ["SERVER_NAME"], port = name_and_port
            environ["SERVER_PORT"] = port or ("443" if scheme == "https" else "80")
        else:
            server = request.server
            if server is not None and server[1] is not None:
                environ["SERVER_NAME"], environ["SERVER_PORT"] = server[0], str(server[1])
            else:  # HTTP/1.0 without Host on a Unix socket
                environ["SERVER_NAME"] = "localhost"
                environ["SERVER_PORT"] = "443" if scheme == "https" else "80"
        client = request.client
        if client is not None:
            environ["REMOTE_ADDR"] = client[0]
            environ["REMOTE_PORT"] = str(client[1])
        else:  # a Unix socket's peer: CGI requires the key and apps index it; "" as gunicorn
            environ["REMOTE_ADDR"] = ""
        return environ

    def _path_and_query(self, target: bytes) -> tuple[str, str]:
        """(PATH_INFO, QUERY_STRING) for a request target, remembered (see `_targets`)."""
        path, _, query = target.partition(b"?")  # origin-form or `*`: the core made it so
        path_info = (unquote_to_bytes(path) if path.find(b"%") >= 0 else path).decode("latin-1")
        root = self._root
        if root and path_info.startswith(root) and path_info[len(root) : len(root) + 1] in ("", "/"):
            path_info = path_info[len(root) :]
        result = path_info, query.decode("latin-1")
        targets = self._targets
        if len(targets) >= _CACHE_MAX:
            targets.clear()
        targets[target] = result
        return result


_HOSTS: dict[str, tuple[str, str]] = {}
"""Host values to (SERVER_NAME, the port given or "") (bounded like _METHODS)."""


def _host_parts(host: str) -> tuple[str, str]:
    if host[:1] == "[":  # an IPv6 literal
        end = host.find("]") + 1
        parts = host[:end], host[end + 1 :]
    else:
        name, _, port = host.partition(":")
        parts = name, port
    if len(_HOSTS) < _CACHE_MAX:
        _HOSTS[host] = parts
    return parts


class _Exchange:
    """One request to a WSGI app (see `protocol.Exchange`)."""

    __slots__ = ("_adapter", "_body", "_request")

    may_block = True

    def __init__(self, adapter: WSGIApp, request: Request) -> None:
        self._adapter = adapter
        self._request = request
        self._body: _Spool | None = None

    def start(self) -> None:
        return None

    def receive(self, data: bytes) -> None:
        body = self._body
        if body is None:
            body = self._body = _Spool(self._adapter.spool_threshold)
        body.write(data)

    def abort(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def respond(self) -> Response:
        # The app, its iterable's pieces (pulled in later steps, maybe in other threads) and
        # close() all run in this one Context: what the app sets in a context variable while
        # a generator is suspended (Flask's stream_with_context) is still there when it resumes.
        context = contextvars.copy_context()
        return context.run(self._respond, context)

    def _respond(self, context: contextvars.Context) -> Response:
        request = self._request
        spool = self._body
        if spool is None:
            body: BinaryIO = io.BytesIO()
            size = None
        else:
            body = spool.reader()
            size = spool.size if request.header(b"transfer-encoding") is not None else None
        adapter = self._adapter
        call = _Call(request, body, context)
        try:
            environ = adapter.environ(request, body, size)
            result = adapter.app(environ, call.start_response)
        except Exception:
            call.log_failure()
            body.close()
            return _INTERNAL_ERROR
        return call.response(result)


class _Call:
    """One call of the app: start_response, write, and turning its result into a Response."""

    __slots__ = (
        "_input",
        "_request",
        "_spool",
        "_without",
        "content_length",
        "context",
        "headers",
        "late",
        "sent",
        "status",
    )

    def __init__(self, request: Request, body: BinaryIO, context: contextvars.Context) -> None:
        self.context = context
        self._request = request
        self._input = body
        self.status = 0
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.content_length: int | None = None
        self._without: tuple[tuple[bytes, bytes], ...] = ()
        """The headers without Content-Length (the core adds its own for a whole body)."""
        self.sent = False
        """The head is out (or as good as: a first non-empty piece, or bytes given to write())."""
        self._spool: _Spool | None = None
        """Bytes given to write() before the app returned."""
        self.late: list[bytes] | None = None
        """Bytes given to write() after the app returned (while its iterable is pulled)."""

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status:
            raise RuntimeError("start_response called a second time without exc_info")
        code = _STATUSES.get(status) if type(status) is str else None
        if code is None:
            code = _status_code(status)
        try:
            converted = _CONVERTED.get(tuple(headers))
        except TypeError:  # unhashable (a list as a header): _convert says what is wrong
            converted = None
        if converted is None:
            converted = _convert(headers)
        self.status = code
        self.headers, self.content_length, self._without = converted
        return self.write

    def write(self, data: bytes) -> None:
        if not self.status:
            raise RuntimeError("write() before start_response")
        if type(data) is not bytes:
            data = _as_bytes(data)
        if not data:
            return
        self.sent = True
        if self.late is not None:
            self.late.append(data)
            return
        spool = self._spool
        if spool is None:
            spool = self._spool = _Spool(SPOOL_THRESHOLD)
        spool.write(data)

    def log_failure(self) -> None:
        """Log the exception being handled, the request's credentials replaced wherever they
        appear in its traceback (an exception message that quotes the environ, say)."""
        request = self._request
        path = request.target.partition(b"?")[0]
        error_log.error(
            "WSGI app failed for %s %s\n%s",
            request.method.decode("latin-1"),
            path.decode("latin-1"),
            redact_values(traceback.format_exc().rstrip(), request.headers),
        )

    def response(self, result: Iterable[bytes]) -> Response:
        """The Response for the app's `result`; the iterable is closed unless a Stream now owns it."""
        close: Callable[[], object] | None = getattr(result, "close", None)
        owned = False
        try:
            if type(result) is FileWrapper and self._spool is None and self.status:
                file = result.file_body(self.content_length)
                if file is not None:
                    owned = True  # the core closes the file
                    return Response(self.status, self._without, file)
            if type(result) is list or type(result) is tuple:
                whole = b"".join(result)
                if not self.status:
                    if not whole:
                        raise RuntimeError("the WSGI app returned without calling start_response")
                    raise RuntimeError("a body piece before start_response")
                if whole:
                    self.sent = True
                return self._whole(whole)
            try:
                iterator = iter(result)
            except TypeError:
                if inspect.iscoroutine(result):  # closed below, as any result is
                    raise TypeError(
                        "the app returned a coroutine: it is an ASGI app that --interface auto "
                        "took for WSGI (its __call__ is no coroutine function): use --interface asgi"
                    ) from None
                raise
            first = b""
            for piece in iterator:
                if type(piece) is not bytes:
                    piece = _as_bytes(piece)
                if piece:
                    first = piece
                    break
            if not self.status:
                raise RuntimeError(
                    "a body piece before start_response"
                    if first
                    else "the WSGI app returned without start_response"
                )
            if not first:  # the iterable ended
                return self._whole(b"")
            self.sent = True
            length = self.content_length
            if length is not None and len(first) >= length and self._spool is None:
                return self._whole(first[:length])
            owned = True
            stream = _Stream(self, iterator, close, first)
            self.late = []
            return Response(self.status, self.headers, stream)
        except Exception:  # nothing went out yet, whatever `sent` says: a 500 is still possible
            self.log_failure()
            return _INTERNAL_ERROR
        finally:
            if not owned:
                self._input.close()
                if close is not None:
                    try:
                        close()
                    except Exception:
                        self.log_failure()

    def _whole(self, body: bytes) -> Response:
        """A Response whose body is `written + body`, all known now."""
        spool = self._spool
        if spool is not None:
            if not spool.in_memory:
                owned_stream = _Stream(self, iter((body,)) if body else iter(()), None, b"")
                self.late = []
                return Response(self.status, self.headers, owned_stream)
            body = spool.value() + body
            spool.close()
            self._spool = None
        length = self.content_length
        if length is None:
            return Response(self.status, self.headers, body)
        if length == len(body):
            return Response(self.status, self._without, body)
        # Declared more (or less) than given: the core frames by the app's Content-Length.
        return Response(self.status, self.headers, _Stream(self, iter((body,)), None, b""))

    def take_written(self) -> BinaryIO | None:
        spool = self._spool
        if spool is None:
            return None
        self._spool = None
        return spool.reader()

    def close_input(self) -> None:
        self._input.close()


Converted = tuple[tuple[tuple[bytes, bytes], ...], int | None, tuple[tuple[bytes, bytes], ...]]
_CONVERTED: dict[tuple[tuple[str, str], ...], Converted] = {}
"""An app's header lists, checked and converted once (apps send the same few again and again)."""
_STATUSES: dict[str, int] = {}
_BAD_REASON: Final = re.compile("[^\t\x20-\x7e\x80-\xff]")
"""What RFC 9112's reason-phrase (HTAB, SP, VCHAR, obs-text) does not allow."""


def _status_code(status: object) -> int:
    """The code of a final response (RFC 9110 §15: 200 to 599; the server sends interim ones)."""
    if type(status) is not str or len(status) < 4 or not status[:3].isascii() or status[3] != " ":
        raise ValueError(f"WSGI status must be a str like '200 OK', not {brief_repr(status)}")
    code = int(status[:3]) if status[:3].isdigit() else 0
    if not 200 <= code <= 599:
        raise ValueError(
            f"WSGI status must be a str like '200 OK', its code from 200 to 599, not {brief_repr(status)}"
        )
    if _BAD_REASON.search(status, 4):  # not sent (the core sends its own), but a bug all the same
        raise ValueError(f"WSGI status must be latin-1 without control characters, not {brief_repr(status)}")
    if len(_STATUSES) < _CACHE_MAX and len(status) <= 64:  # not one app's endless unique reasons
        _STATUSES[status] = code
    return code


def _convert(headers: Iterable[tuple[str, str]]) -> Converted:
    """(the headers as bytes, the app's Content-Length, the headers without it), or an error
    for what PEP 3333 forbids."""
    converted = []
    length: int | None = None
    for name, value in headers:
        if type(name) is not str or type(value) is not str:
            raise TypeError(
                f"WSGI header fields must be native strings, not ({brief_repr(name)}, {brief_repr(value)})"
            )
        lower = name.lower()
        if lower in _HOP_BY_HOP or lower.startswith("proxy-"):
            raise ValueError(f"hop-by-hop header {brief_repr(name)} from a WSGI app (PEP 3333 forbids it)")
        # Whitespace around a value is not part of it (RFC 9110 §5.5), and h11 refuses it:
        # Django's WSGI handler gives every Set-Cookie value a leading space. gunicorn strips too.
        value = value.strip(" \t")
        if lower == "content-length":
            if length is not None or not value.isdigit():
                raise ValueError(f"invalid or repeated Content-Length {brief_repr(value)} from a WSGI app")
            length = int(value)
        converted.append((name.encode("latin-1"), value.encode("latin-1")))
    fields = tuple(converted)
    result = (fields, length, tuple(field for field in fields if field[0].lower() != b"content-length"))
    if cacheable(fields):  # large lists are not kept (see `cacheable`)
        try:
            key = tuple(headers)
            if len(_CONVERTED) >= _CACHE_MAX:
                _CONVERTED.clear()
            _CONVERTED[key] = result
        except TypeError:
            pass
    return result


class _Stream:
    """The rest of a WSGI response body, pulled one piece at a time (a `protocol.Stream`)."""

    __slots__ = ("_call", "_close", "_first", "_iterator", "_written")

    def __init__(
        self, call: _Call, iterator: Iterator[bytes], close: Callable[[], object] | None, first: bytes
    ) -> None:
        self._call = call
        self._written = call.take_written()
        self._first = first
        self._iterator: Iterator[bytes] | None = iterator
        self._close = close

    def next_piece(self) -> bytes | None:
        written = self._written
        if written is not None:
            data = written.read(PIECE_SIZE)
            if data:
                return data
            written.close()
            self._written = None
        if self._first:
            first, self._first = self._first, b""
            return first
        late = self._call.late
        if late:
            return late.pop(0)
        iterator = self._iterator
        if iterator is None:
            return None
        try:
            piece = self._call.context.run(next, iterator)
        except StopIteration:
            self._iterator = None
            return late.pop(0) if late else None
        if type(piece) is not bytes:
            piece = _as_bytes(piece)
        if late:  # write() ran while the piece was made: it comes first
            late.append(piece)
            return late.pop(0)
        return piece

    def close(self) -> None:
        if self._written is not None:
            self._written.close()
            self._written = None
        self._iterator = None
        self._call.close_input()
        close, self._close = self._close, None
        if close is not None:
            try:
                self._call.context.run(close)
            except Exception:
                self._call.log_failure()


def _as_bytes(piece: object) -> bytes:
    if isinstance(piece, (bytearray, memoryview)):
        return bytes(piece)
    raise TypeError(f"a WSGI body piece must be bytes, not {type(piece).__name__}")
