"""The program's logging: the access log is its own switch, and no credential reaches a line."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest

from protocol import Request, Response
from transports import logs

from .harness import TRANSPORTS, read_until_close, running

SECRET = "Basic c2VjcmV0OnNlY3JldA=="


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    access = logging.getLogger(logs.ACCESS)
    saved = (root.handlers[:], root.level, access.level)
    try:
        yield
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        access.setLevel(saved[2])


@pytest.mark.usefixtures("restored_logging")
def test_the_access_log_does_not_follow_the_log_level() -> None:
    logs.configure("warning", access_log=True, process_ids=False)
    assert logging.getLogger(logs.ACCESS).isEnabledFor(logging.INFO)
    assert not logging.getLogger("httpserver.server").isEnabledFor(logging.INFO)
    logs.configure("debug", access_log=False, process_ids=False)
    assert not logging.getLogger(logs.ACCESS).isEnabledFor(logging.INFO)
    assert logging.getLogger("httpserver.server").isEnabledFor(logging.DEBUG)


def test_the_formatter_redacts_messages_and_tracebacks() -> None:
    formatter = logs.RedactingFormatter("%(name)s: %(message)s")
    try:
        raise ValueError(f"bad headers [(b'authorization', b'{SECRET}')] and Cookie: s3cr3t")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "app", logging.ERROR, __file__, 1, "saw %s", (f"Authorization: {SECRET}",), exc_info
    )
    text = formatter.format(record)
    assert "Traceback" in text and SECRET not in text and "s3cr3t" not in text, text
    access = logging.LogRecord(logs.ACCESS, logging.INFO, __file__, 1, '"GET /a?cookie:x" 200', (), None)
    assert formatter.format(access) == f'{logs.ACCESS}: "GET /a?cookie:x" 200'  # left as it is


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_failing_app_logs_no_credential(transport: str) -> None:
    """`handler failed for Request(...)` and the traceback of an app that quotes its headers."""

    def app(request: Request) -> Response:
        raise RuntimeError(f"cannot serve {request.headers}")

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.RedactingFormatter("%(message)s"))
    error_log = logging.getLogger("httpserver.error")
    error_log.addHandler(handler)
    try:
        with running(transport, app) as server, server.connect() as sock:
            sock.sendall(
                f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\nCookie: id=s3cr3t\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            assert read_until_close(sock).startswith(b"HTTP/1.1 500 ")
    finally:
        error_log.removeHandler(handler)
    text = stream.getvalue()
    assert "handler failed for Request(" in text and "RuntimeError: cannot serve" in text, text
    assert SECRET not in text and "s3cr3t" not in text, text
