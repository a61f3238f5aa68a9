"""Credentials never reach a log: the values of the header fields that carry them are redacted.

`Request` and `Response` show their headers through `redacted_headers` in their repr, so a log
line such as `handler failed for %r` names the request without its credentials. `redact_text`
does the same to text already formatted (a traceback, an app's own message), for the forms in
which header fields get printed: `Name: value` lines, and (name, value) pairs in reprs of
tuples, lists and dicts, WSGI's `HTTP_NAME` keys included. The server's log formatter applies
it to every line but the access log's, which holds no header values. `redact_values` goes
further where the headers are known (an app's traceback, the core's message about a bad
response): it finds their credential values by value, whatever text surrounds them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

SENSITIVE_FIELDS: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
"""Lower-case names of the header fields whose values are never logged."""

REDACTED: Final = b"<redacted>"

_NAMES: Final = r"(?:proxy[-_]authorization|authorization|set[-_]cookie|cookie)"
_PAIR: Final = re.compile(
    rf"""(b?(['"])(?:http_)?{_NAMES}\2\s*[,:]\s*)b?(['"])(?:\\.|(?!\3).)*\3""", re.IGNORECASE
)
"""('authorization', 'x'), [b'cookie', b'x'], {'HTTP_COOKIE': 'x'}: the value is the next string."""
_LINE: Final = re.compile(
    rf"(?:(?<=\\[rn])|(?<![\w-]))({_NAMES}[ \t]*:[ \t]*)(?:(?!\\[rn])[^\r\n])+", re.IGNORECASE
)
"""`Cookie: x` up to the end of the line (a real one, or an escaped \\r or \\n in a repr)."""


def redacted_headers(headers: Sequence[tuple[bytes, bytes]]) -> Sequence[tuple[bytes, bytes]]:
    """`headers` with the values of `SENSITIVE_FIELDS` replaced by `REDACTED` (a tuple or list as given)."""
    fields = [(name, REDACTED if name.lower() in SENSITIVE_FIELDS else value) for name, value in headers]
    return tuple(fields) if isinstance(headers, tuple) else fields


SHOWN_MAX: Final = 200
"""Characters (bytes) of a long str (bytes) value that an error message shows."""


def brief_repr(value: object) -> str:
    """The repr of `value` for an error message; a long str or bytes cut to SHOWN_MAX (an app's
    megabyte header value makes no megabyte log line). The cut value is still quoted whole, so
    `redact_text` still finds it after a credential field's name."""
    if isinstance(value, str | bytes) and len(value) > SHOWN_MAX:
        return f"{value[:SHOWN_MAX]!r}... ({len(value)} long)"
    return repr(value)


def headers_repr(headers: object) -> str:
    """The repr of `headers` with credentials redacted; never raises (a handler may have given anything)."""
    try:
        return repr(redacted_headers(headers))  # type: ignore[arg-type]
    except Exception:
        return redact_text(repr(headers))


def redact_values(text: str, headers: object) -> str:
    """`text` (an error message, an app's traceback) without the values of `headers`'
    credential fields, in every form they may take there: whole (as bytes, as text, their
    reprs), a cookie's parts and their values, the credentials after an auth scheme. Then
    `redact_text`, for what names a credential field in `text` itself."""
    try:
        secrets = _secrets(headers)
    except Exception:  # not headers at all: nothing of theirs to find
        secrets = []
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return redact_text(text)


def _secrets(headers: object) -> list[str]:
    """The forms of `headers`' credential values, longest first (a repr before the text in
    it); none shorter than 4 characters, which would blank out unrelated text."""
    found: set[str] = set()
    for name, value in headers:  # type: ignore[attr-defined]
        name, value = bytes(name).lower(), bytes(value)
        if name not in SENSITIVE_FIELDS or not value:
            continue
        text = value.decode("latin-1")
        found.update((repr(value), repr(text), text))
        if name == b"cookie":
            parts = text.split(";")
        elif name == b"set-cookie":
            parts = text.split(";")[:1]  # the rest are attributes (Path, HttpOnly...)
        else:
            parts = [text.partition(" ")[2]]  # the credentials after the scheme
        for part in parts:
            found.add(part.strip())
            found.add(part.partition("=")[2].strip())
    return sorted((form for form in found if len(form) >= 4), key=len, reverse=True)


def redact_text(text: str) -> str:
    """`text` with the values of credential-carrying header fields replaced by `<redacted>`."""
    if "ookie" not in text and "uthoriz" not in text and "OOKIE" not in text and "UTHORIZ" not in text:
        return text  # the usual case, at the cost of four substring searches
    text = _PAIR.sub(r"\1'<redacted>'", text)
    return _LINE.sub(r"\1<redacted>", text)
