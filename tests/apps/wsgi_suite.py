"""Raw WSGI apps for the behavioural suite (tests/behaviour/test_wsgi.py), one per path.

Served as `wsgi_suite:app` with `--app-dir tests/apps`. Every route runs inside the stdlib's
`wsgiref.validate.validator`, with its warnings turned into errors: a server that breaks
PEP 3333 turns the request into a 500 (and the test fails). The validator's own complaint
about an iterable that was never closed is printed by the garbage collector as "Exception
ignored": the tests check the server's stderr for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]
Route = Callable[[Environ, StartResponse], Iterable[bytes]]

ROUTES: dict[str, Route] = {}
CLOSED: dict[str, float] = {}
"""Ids of iterables whose close() ran (the `track` query parameter), for /closed."""
_lock = threading.Lock()


def route(path: str, *, raw: str = "") -> Callable[[Route], Route]:
    """Register `func` at `path` inside the validator, and at `raw` (if given) without it."""

    def register(func: Route) -> Route:
        ROUTES[path] = validator(func)
        if raw:
            ROUTES[raw] = func
        return func

    return register


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    handler = ROUTES.get(environ["PATH_INFO"])
    if handler is None:
        handler = ROUTES["/environ"] if environ["PATH_INFO"].startswith("/environ/") else _not_found
    return handler(environ, start_response)


def _not_found(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"not found\n"]


def query(environ: Environ) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(environ["QUERY_STRING"]).items()}


def json_response(start_response: StartResponse, data: object, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class Tracked:
    """An iterable whose close() is recorded under `name` (for /closed), and appended to the
    file `record` names if given (for a test whose server is gone by then)."""

    def __init__(self, pieces: Iterator[bytes], name: str, record: str = "") -> None:
        self.pieces = pieces
        self.name = name
        self.record = record

    def __iter__(self) -> Iterator[bytes]:
        return self.pieces

    def close(self) -> None:
        with _lock:
            CLOSED[self.name] = time.time()
        if self.record:
            with open(self.record, "a") as record:
                record.write(f"closed {self.name}\n")


@route("/environ")
def environ_route(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Every CGI value, and the types of the wsgi.* ones."""
    data = {key: value for key, value in environ.items() if type(value) is str}
    data["types"] = {key: type(value).__name__ for key, value in environ.items()}
    data["wsgi.version"] = list(environ["wsgi.version"])
    data["flags"] = {
        key: environ[key]
        for key in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.input_terminated")
    }
    data["url_scheme"] = environ["wsgi.url_scheme"]
    data["file_wrapper"] = environ["wsgi.file_wrapper"].__name__
    data["pid"] = os.getpid()
    return json_response(start_response, data)


@route("/upload")
def upload(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Reads the body in pieces (bounded memory); answers its size, sha256 and how it was read."""
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    size = 0
    mode = query(environ).get("mode", "read")
    if mode == "lines":
        for line in stream:
            digest.update(line)
            size += len(line)
    else:
        while piece := stream.read(65536):
            digest.update(piece)
            size += len(piece)
    extra = stream.read(10)
    return json_response(
        start_response,
        {
            "size": size,
            "sha256": digest.hexdigest(),
            "extra": extra.decode("latin-1"),
            "content_length": environ.get("CONTENT_LENGTH"),
        },
    )


@route("/stream")
def stream(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """`count` pieces of `size` bytes, `delay` seconds apart; no Content-Length (chunked);
    `length` set: Content-Length (when it is less than the whole, the body ends short)."""
    q = query(environ)
    count, size, delay = int(q.get("count", "3")), int(q.get("size", "5")), float(q.get("delay", "0"))
    headers = [("Content-Type", "application/octet-stream")]
    if "length" in q:
        headers.append(("Content-Length", q["length"]))
    start_response("200 OK", headers)
    piece = b"p" * size

    def pieces() -> Iterator[bytes]:
        for index in range(count):
            if index and delay:
                time.sleep(delay)
            yield piece

    return Tracked(pieces(), q.get("track", ""))


@route("/endless")
def endless(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Pieces for ever, `delay` apart; its close() is recorded under `track`."""
    q = query(environ)
    size, delay = int(q.get("size", "1024")), float(q.get("delay", "0.05"))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def pieces() -> Iterator[bytes]:
        piece = b"e" * size
        while True:
            yield piece
            time.sleep(delay)

    return Tracked(pieces(), q["track"], q.get("record", ""))


@route("/closed")
def closed(environ: Environ, start_response: StartResponse) -> list[bytes]:
    with _lock:
        return json_response(start_response, {"closed": query(environ)["track"] in CLOSED})


@route("/short")
def short(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Declares 10 bytes, gives 5 in two pieces: the client must see an incomplete body."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return Tracked(iter([b"abc", b"de"]), query(environ).get("track", ""))


@route("/long")
def long(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Declares 4 bytes, gives 8: never more than declared goes out."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return iter([b"ab", b"cdefgh"])


@route("/head")
def head(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """The same headers for GET and HEAD, as werkzeug does (empty body for HEAD)."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
    return [] if environ["REQUEST_METHOD"] == "HEAD" else [b"hello world"]


@route("/write")
def write(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """write() before returning, then the iterable."""
    size = int(query(environ).get("size", "5"))
    write_ = start_response("200 OK", [("Content-Type", "text/plain")])
    write_(b"w" * size)
    write_(b"|")
    return [b"iterable"]


@route("/exc-info")
def exc_info(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Starts a 200, fails, replaces it with a 503 before anything went out."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
    try:
        raise LookupError("replaced")
    except LookupError:
        headers = [("Content-Type", "text/plain"), ("X-Second", "1"), ("Content-Length", "8")]
        start_response("503 Service Unavailable", headers, sys.exc_info())
    return [b"replaced"]


@route("/error-before")
def error_before(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise RuntimeError("error before the start (expected by the test)")


@route("/error-after")
def error_after(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])

    def pieces() -> Iterator[bytes]:
        yield b"first piece"
        raise RuntimeError("error after the start (expected by the test)")

    return Tracked(pieces(), query(environ).get("track", ""))


@route("/hop-by-hop")
def hop_by_hop(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Connection", "keep-alive")])
    return [b"never"]


@route("/file-validated", raw="/file")
def file(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A temporary file of `size` bytes (0..255 repeated) through wsgi.file_wrapper, from `skip`,
    with Content-Length `length` when given. Inside the validator (which wraps the iterable) it
    is read piece by piece; without it (/file), sent with sendfile."""
    q = query(environ)
    size, skip = int(q.get("size", "100000")), int(q.get("skip", "0"))
    handle = tempfile.TemporaryFile()  # noqa: SIM115 (the server closes it)
    handle.write(bytes(range(256)) * (size // 256) + bytes(range(size % 256)))
    handle.seek(skip)
    headers = [("Content-Type", "application/octet-stream")]
    if "length" in q:
        headers.append(("Content-Length", q["length"]))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](handle, 65536)  # type: ignore[no-any-return]


@route("/huge")
def huge(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """`size` bytes in pieces of 256 KiB (the same object: the app itself holds one piece)."""
    size = int(query(environ)["size"])
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    piece = b"h" * (256 * 1024)

    def pieces() -> Iterator[bytes]:
        left = size
        while left > 0:
            yield piece if left >= len(piece) else piece[:left]
            left -= len(piece)

    return pieces()


@route("/sleep")
def sleep(environ: Environ, start_response: StartResponse) -> list[bytes]:
    time.sleep(float(query(environ).get("seconds", "1")))
    return json_response(start_response, {"slept": True})
