"""Routing: the fixed routes, and the statuses the router decides by itself."""

from __future__ import annotations

import gzip

import pytest

from handlers import Route, Router, build_app, text_response
from handlers.routing import remove_dot_segments
from protocol import Exchange, Request, Response

from .helpers import body_bytes, call, header, request

APP = build_app(None)


def test_root_is_200_with_nothing_but_the_status() -> None:
    response = call(APP, request(b"GET", b"/"))
    assert (response.status, tuple(response.headers), response.body) == (200, (), b"")


@pytest.mark.parametrize(
    ("target", "body"),
    [
        (b"/echo/abc", b"abc"),
        (b"/echo/", b""),
        (b"/echo/a%20b%2Fc", b"a b/c"),
        (b"/echo/abc?x=1&y=2", b"abc"),
        (b"/echo/a/b/c", b"a/b/c"),
        (b"/echo/%E2%82%AC", "€".encode()),
        (b"/echo/100%", b"100%"),  # a stray % is not an escape
    ],
)
def test_echo(target: bytes, body: bytes) -> None:
    response = call(APP, request(b"GET", target))
    assert response.status == 200
    assert response.body == body
    if body:
        assert header(response, b"content-type") == b"text/plain"
        assert header(response, b"vary") == b"Accept-Encoding"
    assert header(response, b"content-encoding") is None


def test_echo_and_user_agent_answer_at_once_without_an_exchange() -> None:
    for target in (b"/echo/x", b"/user-agent"):
        assert type(APP(request(b"GET", target))) is Response


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (((b"user-agent", b"curl/8.5.0"),), b"curl/8.5.0"),
        ((), b""),
        (((b"user-agent", b""),), b""),
    ],
)
def test_user_agent(headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> None:
    response = call(APP, request(b"GET", b"/user-agent", *headers))
    assert (response.status, response.body) == (200, body)
    assert header(response, b"content-type") == b"text/plain"


def test_user_agent_gzipped_on_request() -> None:
    req = request(b"GET", b"/user-agent", (b"user-agent", b"ua/1"), (b"accept-encoding", b"gzip"))
    response = call(APP, req)
    assert header(response, b"content-encoding") == b"gzip"
    assert gzip.decompress(body_bytes(response)) == b"ua/1"


@pytest.mark.parametrize("target", [b"/", b"/echo/abc", b"/user-agent", b"/files/x"])
def test_head_is_allowed_wherever_get_is(target: bytes) -> None:
    get = call(APP, request(b"GET", target))
    head = call(APP, request(b"HEAD", target))
    assert head == get  # the core drops the body of a HEAD response


@pytest.mark.parametrize(
    "target", [b"/nope", b"/echo", b"/Echo/abc", b"/user-agent/", b"/files", b"//", b"/%65cho/x", b"/nope?/"]
)
def test_unknown_paths_are_404(target: bytes) -> None:
    response = call(APP, request(b"GET", target))
    assert response.status == 404
    assert header(response, b"content-type") == b"text/plain"


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        (b"POST", b"/", b"GET, HEAD"),
        (b"POST", b"/echo/abc", b"GET, HEAD"),
        (b"POST", b"/user-agent", b"GET, HEAD"),
    ],
)
def test_a_method_the_path_does_not_allow_is_405(method: bytes, target: bytes, allow: bytes) -> None:
    response = call(APP, request(method, target))
    assert response.status == 405
    assert header(response, b"allow") == allow


@pytest.mark.parametrize("method", [b"get", b"Get", b"CONNECT", b"BREW"])
def test_unrecognised_methods_are_501(method: bytes) -> None:
    for target in (b"/", b"/nope", b"/files/x"):
        assert call(APP, request(method, target)).status == 501


@pytest.mark.parametrize("method", [b"DELETE", b"PATCH", b"OPTIONS", b"TRACE"])
def test_standard_methods_no_route_has_are_405_on_known_paths(method: bytes) -> None:
    for target, allow in ((b"/", b"GET, HEAD"), (b"/files/x", b"GET, HEAD, POST, PUT")):
        response = call(APP, request(method, target))
        assert response.status == 405
        assert header(response, b"allow") == allow
    assert call(APP, request(method, b"/nope")).status == 404


def test_asterisk_target() -> None:
    response = call(APP, request(b"OPTIONS", b"*"))
    assert response.status == 200
    assert header(response, b"allow") == b"GET, HEAD, POST, PUT"
    assert call(APP, request(b"GET", b"*")).status == 400


@pytest.mark.parametrize("target", [b"echo/abc", b"http://host/echo/x", b"example.com:80"])
def test_targets_not_origin_form_are_400(target: bytes) -> None:
    """The core gives origin-form or `*` (absolute-form made origin-form): anything else is 400."""
    assert call(APP, request(b"GET", target)).status == 400


def test_the_root_with_a_query() -> None:
    response = call(APP, request(b"GET", b"/?x=1"))
    assert (response.status, response.body) == (200, b"")


def test_an_embedder_adds_routes() -> None:
    seen: list[bytes] = []

    def hello(req: Request, rest: bytes) -> Response | Exchange:
        seen.append(rest)
        return text_response(req, b"hello " + rest)

    app = build_app(None)
    app.add(Route(b"/hello/", hello, frozenset({b"GET", b"PUT"}), prefix=True))
    app.add(Route(b"/hello/exact", hello))
    assert call(app, request(b"PUT", b"/hello/you?x")).body == b"hello you"
    assert call(app, request(b"GET", b"/hello/exact")).body == b"hello "  # exact wins
    assert seen == [b"you", b""]
    assert header(call(app, request(b"PUT", b"/")), b"allow") == b"GET, HEAD"  # PUT is now known: 405
    assert header(call(app, request(b"POST", b"/hello/x")), b"allow") == b"GET, HEAD, PUT"
    assert header(call(app, request(b"OPTIONS", b"*")), b"allow") == b"GET, HEAD, POST, PUT"


def test_longest_prefix_wins_and_a_route_replaces_one_for_the_same_path() -> None:
    app = Router(
        [
            Route(b"/a/", lambda req, rest: Response(200, (), b"a:" + rest), prefix=True),
            Route(b"/a/b/", lambda req, rest: Response(200, (), b"ab:" + rest), prefix=True),
        ]
    )
    assert call(app, request(b"GET", b"/a/b/c")).body == b"ab:c"
    assert call(app, request(b"GET", b"/a/c")).body == b"a:c"
    app.add(Route(b"/a/", lambda req, rest: Response(200, (), b"new:" + rest), prefix=True))
    assert call(app, request(b"GET", b"/a/c")).body == b"new:c"


def test_an_empty_router_finds_nothing() -> None:
    assert call(Router(), request(b"GET", b"/")).status == 404
    assert call(Router(), request(b"BREW", b"/")).status == 501


# --- dot segments (RFC 3986 §5.2.4, as nginx resolves them) -----------------------------------


@pytest.mark.parametrize(
    ("target", "body"),
    [
        (b"/echo/../echo/x", b"x"),
        (b"/a/../echo/x", b"x"),
        (b"/./echo/x", b"x"),
        (b"/echo/./x", b"x"),
        (b"/echo/a/./b/../c", b"a/c"),
        (b"/echo/a/b/..", b"a/"),
        (b"/echo/a/.", b"a/"),
        (b"/echo/a//../b", b"a/b"),  # `..` removes the empty segment before it
        (b"/echo/x/../../echo/y", b"y"),
        (b"/echo/x?q=/../y", b"x"),  # the query is not a path
        (b"/echo/x?/..", b"x"),
        (b"/echo/.x/..y/...", b".x/..y/..."),  # not dot segments
        (b"/echo/%2e%2e/x", b"../x"),  # percent-encoded dots are data, not resolved
        (b"/echo/.%2e/x", b"../x"),
    ],
)
def test_dot_segments_are_resolved_before_matching(target: bytes, body: bytes) -> None:
    response = call(APP, request(b"GET", target))
    assert (response.status, response.body) == (200, body)


@pytest.mark.parametrize("target", [b"/.", b"/..x/..", b"/echo/..", b"/echo/x/../.."])
def test_dot_segments_can_lead_to_the_root(target: bytes) -> None:
    response = call(APP, request(b"GET", target))
    assert (response.status, tuple(response.headers), response.body) == (200, (), b"")


@pytest.mark.parametrize(
    "target",
    [
        b"/..",
        b"/../",
        b"/../echo/x",
        b"/echo/../../echo/x",
        b"/a/b/../../../c",
        b"/./..",
        b"http://host/../x",
    ],
)
def test_a_path_climbing_above_the_root_is_400(target: bytes) -> None:
    for method in (b"GET", b"POST"):
        response = call(APP, request(method, target))
        assert response.status == 400
        assert header(response, b"content-type") == b"text/plain"


def test_a_route_gets_the_resolved_rest_and_the_request_as_sent() -> None:
    seen: list[tuple[bytes, bytes]] = []

    def record(req: Request, rest: bytes) -> Response:
        seen.append((req.target, rest))
        return Response(200)

    app = Router([Route(b"/p/", record, prefix=True), Route(b"/exact", record)])
    call(app, request(b"GET", b"/p/a/../b/./c?x=/../"))
    call(app, request(b"GET", b"/p/../exact"))
    assert seen == [(b"/p/a/../b/./c?x=/../", b"b/c"), (b"/p/../exact", b"")]


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        (b"/", b"/"),
        (b"/a/b/c/./../../g", b"/a/g"),  # RFC 3986 §5.2.4's example
        (b"/a/./b", b"/a/b"),
        (b"/a/b/..", b"/a/"),
        (b"/a/b/.", b"/a/b/"),
        (b"/..", None),
        (b"/a/../..", None),
        (b"/a/../../b", None),
    ],
)
def test_remove_dot_segments(path: bytes, resolved: bytes | None) -> None:
    assert remove_dot_segments(path) == resolved
