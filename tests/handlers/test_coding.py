"""Content coding: the Accept-Encoding table, and what text responses carry."""

from __future__ import annotations

import gzip

import pytest

from handlers import accepts_gzip, build_app, text_response
from handlers.coding import gzip as gzip_bytes

from .helpers import call, header, request

APP = build_app(None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"gzip", True),
        (b"GZIP", True),
        (b"x-gzip", True),
        (b"  gzip  ", True),
        (b"deflate, gzip, br", True),
        (b"invalid-encoding-1, gzip, invalid-encoding-2", True),
        (b"invalid-encoding", False),
        (b"invalid-encoding-1, invalid-encoding-2", False),
        (b"", False),
        (b",,,", False),
        (b"identity", False),
        (b"br, deflate", False),
        # q-values
        (b"gzip;q=0", False),
        (b"gzip; q=0.000", False),
        (b"gzip;Q=0.5", True),
        (b"gzip ; q=1.0", True),
        (b"gzip;q=0.001", True),
        (b"gzip;q=0.5, identity", False),  # identity preferred
        (b"gzip;q=0.5, identity;q=0.5", True),  # a tie goes to gzip
        (b"gzip, identity;q=0", True),
        (b"gzip;q=0, identity;q=0", False),  # nothing acceptable: sent as it is
        (b"gzip;q=0, x-gzip", True),  # the higher of the two names counts
        # invalid weights: the element is ignored
        (b"gzip;q=abc", False),
        (b"gzip;q=2", False),
        (b"gzip;q=-1", False),
        (b"gzip;q=nan", False),
        (b"gzip;q=1e0", False),
        (b"gzip;q=", False),
        (b"gzip;q=abc, x-gzip;q=0.3", True),
        (b"gzip;level=9", True),  # unknown parameters are ignored
        # the wildcard
        (b"*", True),
        (b"*;q=0", False),
        (b"*, gzip;q=0", False),  # listed explicitly: gzip's own weight counts
        (b"*;q=0, gzip", True),
        (b"*;q=0.5, identity", False),
        (b"*, identity;q=0.5", True),
        (b"deflate, *;q=0.1", True),
    ],
)
def test_accept_encoding_table(value: bytes, expected: bool) -> None:
    assert accepts_gzip(value) is expected


def test_several_accept_encoding_fields_count_together() -> None:
    req = request(b"GET", b"/echo/abc", (b"accept-encoding", b"br"), (b"accept-encoding", b"gzip"))
    assert header(call(APP, req), b"content-encoding") == b"gzip"


@pytest.mark.parametrize("body", [b"abc", b"x" * 10_000, bytes(range(256))])
def test_gzipped_echo(body: bytes) -> None:
    target = b"/echo/" + b"".join(b"%%%02X" % byte for byte in body)
    response = call(APP, request(b"GET", target, (b"accept-encoding", b"gzip")))
    assert response.status == 200
    assert header(response, b"content-type") == b"text/plain"
    assert header(response, b"content-encoding") == b"gzip"
    assert header(response, b"vary") == b"Accept-Encoding"
    assert isinstance(response.body, bytes)
    assert gzip.decompress(response.body) == body


def test_gzip_is_deterministic() -> None:
    data = b"hello world" * 10
    assert gzip_bytes(data) == gzip.compress(data, compresslevel=6, mtime=0)


@pytest.mark.parametrize("value", [None, b"invalid-encoding", b"gzip;q=0", b"identity"])
def test_without_gzip_there_is_no_content_encoding(value: bytes | None) -> None:
    headers = () if value is None else ((b"accept-encoding", value),)
    response = call(APP, request(b"GET", b"/echo/abc", *headers))
    assert response.body == b"abc"
    assert header(response, b"content-encoding") is None
    assert header(response, b"vary") == b"Accept-Encoding", "the choice depended on the field"


def test_an_empty_body_is_never_gzipped_and_does_not_vary() -> None:
    response = call(APP, request(b"GET", b"/echo/", (b"accept-encoding", b"gzip")))
    assert response.body == b""
    assert header(response, b"content-encoding") is None
    assert header(response, b"vary") is None


def test_long_values_are_parsed_without_the_cache() -> None:
    value = b"br, " * 100 + b"gzip"
    req = request(b"GET", b"/echo/abc", (b"accept-encoding", value))
    assert header(call(APP, req), b"content-encoding") == b"gzip"


def test_text_response_takes_a_status() -> None:
    response = text_response(request(b"GET", b"/"), b"teapot", 418)
    assert (response.status, response.body) == (418, b"teapot")
