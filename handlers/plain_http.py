"""The answer to plain HTTP sent to a TLS port: 400, saying so in plain text, as nginx does.

A transport serving TLS looks at the first byte a client sends before the handshake (a TLS
record starts with 0x16, a handshake). Anything else is a client speaking plain HTTP to the
HTTPS port, and the transport serves that connection without TLS with `plain_http_app`: the
core reads the request and answers every one with this 400 and `Connection: close`, then closes
(lingering, so the client reads the answer). A head that is not HTTP at all gets the core's own 400.
"""

from __future__ import annotations

from typing import Final

from protocol import Request, Response

PLAIN_HTTP_ON_TLS_PORT: Final = Response(
    400,
    ((b"Content-Type", b"text/plain"), (b"Connection", b"close")),
    b"400 Bad Request: the plain HTTP request was sent to an HTTPS port; use https://\n",
)


def plain_http_app(request: Request) -> Response:
    """An `App` for a plain-HTTP connection to a TLS port: 400, and the connection closes."""
    return PLAIN_HTTP_ON_TLS_PORT
