"""Content coding of in-memory responses (RFC 9110 §12.5.3): gzip when the client asks for it.

The rule, kept simple:
- `Accept-Encoding` is a comma list of codings, any case, optional spaces, each with an optional
  `;q=` weight (a decimal number from 0 to 1; missing means 1). An element whose weight is not
  such a number is ignored. Unknown codings are ignored; `x-gzip` is gzip.
- gzip's weight is its own if listed, else that of `*`, else 0. identity's is its own if listed,
  else that of `*`, else 0 (not listed: no preference stated, and identity is still acceptable).
- Send gzip when its weight is above 0 and not below identity's, and the body is not empty.
  Otherwise send the body as it is, with no Content-Encoding at all (identity is never refused:
  RFC 9110 lets a server ignore `identity;q=0` rather than answer 415).

Only in-memory text bodies are coded. File downloads are sent as stored, like nginx's default
`gzip_types` (text/html only): it keeps ranges, ETags and sendfile simple. Request bodies are
never decoded.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Final

from protocol import Request, Response

from .routing import TEXT_PLAIN

GZIP_LEVEL: Final = 6
"""zlib's default: most of level 9's ratio at a fraction of its cost."""

_PLAIN: Final = (*TEXT_PLAIN, (b"Vary", b"Accept-Encoding"))
_GZIPPED: Final = (*TEXT_PLAIN, (b"Content-Encoding", b"gzip"), (b"Vary", b"Accept-Encoding"))
_CACHED_LENGTH: Final = 200
"""Accept-Encoding values up to this length have their verdict cached (clients repeat theirs)."""


def accepts_gzip(value: bytes) -> bool:
    """Whether an Accept-Encoding value makes gzip the coding to send (see the module docstring)."""
    gzip_q: float | None = None
    identity_q: float | None = None
    star_q: float | None = None
    for element in value.split(b","):
        coding, _, parameters = element.partition(b";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = _weight(parameters)
        if q is None:
            continue
        if coding == b"gzip" or coding == b"x-gzip":
            gzip_q = q if gzip_q is None else max(gzip_q, q)
        elif coding == b"identity":
            identity_q = q
        elif coding == b"*":
            star_q = q
    if gzip_q is None:
        gzip_q = star_q or 0.0
    if identity_q is None:
        identity_q = star_q or 0.0
    return gzip_q > 0 and gzip_q >= identity_q


def _weight(parameters: bytes) -> float | None:
    """The `q` parameter's value (1 when absent), or None when it is not a valid weight."""
    for parameter in parameters.split(b";"):
        name, _, value = parameter.partition(b"=")
        if name.strip().lower() == b"q":
            value = value.strip()
            # Digits and one dot only: float() alone would take "nan", "1e0" or "1_0".
            if not value.replace(b".", b"", 1).isdigit():
                return None
            q = float(value)
            return q if q <= 1 else None
    return 1.0


_accepts_gzip_cached: Final = lru_cache(maxsize=64)(accepts_gzip)


def wants_gzip(request: Request) -> bool:
    """Whether to gzip a response to `request` (all its Accept-Encoding fields together)."""
    value = None
    for name, item in request.headers:
        if name == b"accept-encoding":
            value = item if value is None else value + b"," + item
    if value is None:
        return False
    return _accepts_gzip_cached(value) if len(value) <= _CACHED_LENGTH else accepts_gzip(value)


def text_response(request: Request, body: bytes, status: int = 200) -> Response:
    """A text/plain response carrying `body`, gzipped when the request asks for it.

    `Vary: Accept-Encoding` goes with every non-empty body, since coding it depended on that field.
    """
    if not body:
        return Response(status, TEXT_PLAIN)
    if wants_gzip(request):
        return Response(status, _GZIPPED, gzip(body))
    return Response(status, _PLAIN, body)


def gzip(data: bytes) -> bytes:
    """`data` in the gzip format, deterministic (mtime 0), as `gzip.compress(data, mtime=0)` but quicker."""
    return zlib.compress(data, GZIP_LEVEL, wbits=31)
