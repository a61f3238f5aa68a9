"""The route table: which handler answers a request, and the statuses routing itself decides.

A `Router` is an `App`. It answers by itself, before any handler runs:
- `*` as the target: 200 with `Allow` for `OPTIONS *`, else 400;
- a method it does not recognise (`CONNECT`, `get`, unknown tokens): 501; RFC 9110's other
  standard methods and those of any route are recognised;
- a target that is not origin-form (`/p?q`) nor `*`: 400 (the core turns absolute-form,
  `http://host/p`, into origin-form and answers other targets 400 before any handler);
- a path whose `..` segments climb above the root (`/../x`): 400;
- a path that no route matches: 404; a matched route without that method: 405 with `Allow`.

Paths are matched without the query, with their `.` and `..` segments resolved as nginx does
(RFC 3986 §5.2.4: `/a/./b/../c` is `/a/c`), and still percent-encoded: `%2e` is not a dot.
Methods are case-sensitive; a route that allows GET also allows HEAD (the core drops the body).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from protocol import Exchange, Request, Response

Handler = Callable[[Request, bytes], "Response | Exchange"]
"""Answers one request: called with the request and the rest of its path after the route's
prefix (dot segments resolved, query removed, still percent-encoded; b"" for an exact route).
It runs on the event loop, so it must be quick and never block: work that touches the disk
goes into an `Exchange` whose `may_block` is true."""

TEXT_PLAIN: Final = ((b"Content-Type", b"text/plain"),)


def text(status: int, message: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Response:
    """A short text/plain response, such as an error message."""
    return Response(status, (*TEXT_PLAIN, *headers), message)


BAD_REQUEST: Final = text(400, b"Bad Request\n")
NOT_FOUND: Final = text(404, b"Not Found\n")
NOT_IMPLEMENTED: Final = text(501, b"Not Implemented\n")

GET: Final = b"GET"
HEAD: Final = b"HEAD"
_METHOD_ORDER: Final = (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")
_STANDARD_METHODS: Final = frozenset({*_METHOD_ORDER, b"TRACE"})
"""RFC 9110's methods but CONNECT: a known path answers them 405, not 501."""


def allow_value(methods: Iterable[bytes]) -> bytes:
    """An `Allow` header value: the usual methods in their usual order, then the rest sorted."""
    listed = set(methods)
    ordered = [m for m in _METHOD_ORDER if m in listed] + sorted(listed.difference(_METHOD_ORDER))
    return b", ".join(ordered)


@dataclass(frozen=True, slots=True)
class Route:
    """`path` answered by `handler` for `methods` (GET implies HEAD).

    With `prefix=True` the route matches every path that starts with `path` (which then
    usually ends with "/"), and the handler gets the rest of the path.
    """

    path: bytes
    handler: Handler
    methods: frozenset[bytes] = frozenset({GET, HEAD})
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class _Entry:
    handler: Handler
    methods: frozenset[bytes]
    not_allowed: Response


class Router:
    """Dispatches requests to routes; an `App`. Exact paths win over prefixes, longer prefixes
    over shorter ones; adding a route for a path already routed replaces it."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._exact: dict[bytes, _Entry] = {}
        self._prefixes: dict[bytes, _Entry] = {}
        self._ordered_prefixes: tuple[tuple[bytes, _Entry], ...] = ()
        self._recognised: frozenset[bytes] = _STANDARD_METHODS
        self._options: Response = Response(200)
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        """Add `route`. Call it while setting up, before serving."""
        methods = route.methods | {HEAD} if GET in route.methods else route.methods
        allow = ((b"Allow", allow_value(methods)),)
        entry = _Entry(route.handler, methods, text(405, b"Method Not Allowed\n", allow))
        (self._prefixes if route.prefix else self._exact)[route.path] = entry
        self._ordered_prefixes = tuple(sorted(self._prefixes.items(), key=lambda item: -len(item[0])))
        every = [*self._exact.values(), *self._prefixes.values()]
        routed = frozenset().union(*(e.methods for e in every))
        self._recognised = _STANDARD_METHODS | routed
        self._options = Response(200, ((b"Allow", allow_value(routed)),))

    def __call__(self, request: Request) -> Response | Exchange:
        method = request.method
        path = request.target
        if path[:1] != b"/":  # `*`
            return self._options if method == b"OPTIONS" and path == b"*" else BAD_REQUEST
        if method not in self._recognised:
            return NOT_IMPLEMENTED
        query = path.find(b"?")
        if query >= 0:
            path = path[:query]
        if path.find(b"/.") >= 0:  # not `in`: bytes `in` raises and clears a TypeError first
            resolved = remove_dot_segments(path)
            if resolved is None:
                return BAD_REQUEST
            path = resolved
        rest = b""
        entry = self._exact.get(path)
        if entry is None:
            for prefix, candidate in self._ordered_prefixes:
                if path.startswith(prefix):
                    entry = candidate
                    rest = path[len(prefix) :]
                    break
            else:
                return NOT_FOUND
        if method not in entry.methods:
            return entry.not_allowed
        return entry.handler(request, rest)


def remove_dot_segments(path: bytes) -> bytes | None:
    """An absolute path without its `.` and `..` segments (RFC 3986 §5.2.4), or None when a
    `..` would climb above the root (nginx answers such a path 400)."""
    segments = path.split(b"/")
    resolved: list[bytes] = []
    for segment in segments[1:]:
        if segment == b"..":
            if not resolved:
                return None
            resolved.pop()
        elif segment != b".":
            resolved.append(segment)
    if segments[-1] in (b".", b".."):  # `/a/b/..` is the directory `/a/`
        resolved.append(b"")
    return b"/" + b"/".join(resolved)


def field_value(request: Request, name: bytes) -> bytes | None:
    """All values of the list-valued header `name` (lower-case), joined by commas, or None."""
    value = None
    for key, item in request.headers:
        if key == name:
            value = item if value is None else value + b", " + item
    return value
