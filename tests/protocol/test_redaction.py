"""Credentials never reach a log line: request and response reprs, and any formatted text."""

from __future__ import annotations

import logging

import pytest

from protocol import Config, Request, Response
from protocol.redaction import redact_text

from .helpers import App, Driver, get

SECRETS = (b"Basic dXNlcjpzZWNyZXQ=", b"session=s3cr3t", b"Bearer proxy-t0ken", b"id=cookie-value")


def test_a_request_repr_redacts_credentials() -> None:
    request = Request(
        b"GET",
        b"/x",
        [
            (b"host", b"a"),
            (b"authorization", SECRETS[0]),
            (b"cookie", SECRETS[1]),
            (b"proxy-authorization", SECRETS[2]),
            (b"user-agent", b"curl"),
        ],
    )
    text = repr(request)
    assert not any(secret.decode() in text for secret in SECRETS), text
    assert "(b'cookie', b'<redacted>')" in text
    assert "b'curl'" in text and "b'/x'" in text


def test_a_response_repr_redacts_set_cookie() -> None:
    response = Response(200, ((b"Set-Cookie", SECRETS[3]), (b"X-Other", b"visible")), b"body")
    text = repr(response)
    assert SECRETS[3].decode() not in text and "visible" in text and "<redacted>" in text
    assert repr(Response(200, "not headers")) == "Response(status=200, headers='not headers', body=b'')"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Basic dXNlcjpzZWNyZXQ=",
        "b'GET / HTTP/1.1\\r\\nCookie: session=s3cr3t\\r\\nHost: x\\r\\n'",
        "headers=[(b'authorization', b'Basic dXNlcjpzZWNyZXQ=')]",
        "[[b'cookie', b'session=s3cr3t'], [b'host', b'x']]",
        "{'HTTP_COOKIE': 'session=s3cr3t', 'HTTP_AUTHORIZATION': \"Basic dXNlcjpzZWNyZXQ=\"}",
        "PROXY-AUTHORIZATION: Bearer proxy-t0ken",
        "(b'cookie', b'session=s3cr3t \\'quoted\\' more')",
    ],
)
def test_redact_text_finds_the_usual_forms(text: str) -> None:
    redacted = redact_text(text)
    assert not any(secret.decode() in redacted for secret in SECRETS[:3]), redacted
    assert "<redacted>" in redacted


def test_redact_text_leaves_other_text_alone() -> None:
    for text in ("GET /echo/abc", "handler failed for Request(method=b'GET')", "a cookie jar"):
        assert redact_text(text) == text


def test_a_failing_handler_is_logged_without_credentials(caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(App(), Config(access_log=False))
    with caplog.at_level(logging.ERROR, "httpserver.error"):
        d.feed(get(b"/boom", b"Authorization: " + SECRETS[0], b"Cookie: " + SECRETS[1]))
    [record] = caplog.records
    assert "handler failed for Request(" in record.getMessage()
    assert not any(secret.decode() in record.getMessage() for secret in SECRETS)


def test_an_invalid_response_is_logged_without_the_credential_it_quotes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """h11's message quotes the invalid value: a Set-Cookie with a line break, say."""
    bad = Response(200, ((b"Set-Cookie", b"session=s3cr3t\r\nX: y"),), b"x" * 1000)
    d = Driver(lambda request: bad, Config(access_log=False))
    with caplog.at_level(logging.ERROR, "httpserver.error"):
        d.feed(get(b"/"))
    [record] = caplog.records
    message = record.getMessage()
    assert "invalid response" in message and "s3cr3t" not in message, message
    assert record.exc_info is None and len(message) < 500  # one line, the body cut short
