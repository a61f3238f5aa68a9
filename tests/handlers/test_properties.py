"""Properties over arbitrary input: the parsers never raise, and names never leave the directory."""

from __future__ import annotations

import os
from urllib.parse import quote

from hypothesis import example, given
from hypothesis import strategies as st

from handlers import accepts_gzip, build_app
from handlers.files import TEMP_PREFIX, file_name, parse_range
from handlers.routing import remove_dot_segments
from protocol import Request, Response

ROOT = "/srv/files"
SEGMENTS = st.lists(
    st.sampled_from([b".", b"..", b"/", b"\\", b"%", b"2e", b"2f", b"5c", b"25", b"00", b"a", b"\x00", b"~"]),
    max_size=12,
).map(b"".join)


@given(st.one_of(st.binary(max_size=40), SEGMENTS))
@example(b"%2e%2e")
@example(b"%252e%252e%252f")
def test_a_file_name_is_one_plain_segment(rest: bytes) -> None:
    name = file_name(rest)
    if name is None:
        return
    path = os.path.join(ROOT, name)
    assert os.path.dirname(path) == ROOT
    assert os.path.normpath(path) == path
    assert name not in ("", ".", "..")
    assert not name.startswith(TEMP_PREFIX)
    assert not any(c in name for c in "/\\\x00")


NAMES = st.characters(min_codepoint=0x20, blacklist_categories=("Cs",), blacklist_characters="/\\\x7f")


@given(st.text(NAMES, min_size=1, max_size=30))
@example("a%25b")
@example("%2e%2e%2f")
def test_a_file_name_is_decoded_exactly_once(name: str) -> None:
    expected = None if name in (".", "..") or name.startswith(TEMP_PREFIX) else name
    assert file_name(quote(name, safe="").encode()) == expected


@given(st.binary(max_size=60))
def test_accept_encoding_never_raises(value: bytes) -> None:
    assert accepts_gzip(value) in (True, False)


@given(
    st.one_of(
        st.binary(max_size=30),
        st.builds(
            lambda a, b: b"bytes=%s-%s" % (a, b),
            st.sampled_from([b"", b"0", b"1", b"5", b"9", b"10", b"99", b"x"]),
            st.sampled_from([b"", b"0", b"1", b"5", b"9", b"10", b"99", b"x"]),
        ),
    ),
    st.integers(0, 20),
)
def test_a_range_is_within_the_file_or_empty(value: bytes, size: int) -> None:
    result = parse_range(value, size)
    if result is not None:
        start, end = result
        assert 0 <= start <= end <= size
        assert start < end or start == end == size, "a part of the file, or unsatisfiable"


@given(st.binary(min_size=0, max_size=30), st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"get"]))
def test_the_app_answers_any_target_without_raising(target: bytes, method: bytes) -> None:
    app = build_app(None)
    reply = app(Request(method, target, ()))
    assert isinstance(reply, Response), "without a directory, nothing needs an exchange"
    assert 200 <= reply.status < 600


def rfc_remove_dot_segments(path: bytes) -> bytes | None:
    """RFC 3986 §5.2.4's algorithm rule by rule, on strings; None when a `..` finds no segment."""
    buffer, output = path, b""
    while buffer:
        if buffer.startswith((b"../", b"./")):  # A
            buffer = buffer[buffer.index(b"/") + 1 :]
        elif buffer.startswith(b"/./") or buffer == b"/.":  # B
            buffer = b"/" + buffer[3:]
        elif buffer.startswith(b"/../") or buffer == b"/..":  # C
            if not output:
                return None
            buffer = b"/" + buffer[4:]
            output = output[: max(output.rfind(b"/"), 0)]
        elif buffer in (b".", b".."):  # D
            buffer = b""
        else:  # E
            end = buffer.find(b"/", 1)
            end = len(buffer) if end < 0 else end
            output, buffer = output + buffer[:end], buffer[end:]
    return output


PATHS = st.lists(st.sampled_from([b".", b"..", b"", b"a", b"b", b".a", b"...", b"%2e"]), max_size=10).map(
    lambda segments: b"/" + b"/".join(segments)
)


@given(PATHS)
@example(b"/a/../..")
@example(b"//..")
def test_dot_segments_are_removed_as_rfc_3986_says(path: bytes) -> None:
    resolved = remove_dot_segments(path)
    assert resolved == rfc_remove_dot_segments(path)
    if resolved is not None:
        assert resolved[:1] == b"/"
        assert not {b".", b".."} & set(resolved.split(b"/"))
