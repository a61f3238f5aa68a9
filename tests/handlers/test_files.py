"""`/files/{name}`: name safety, nginx-like downloads, atomic uploads."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
from email.utils import formatdate
from pathlib import Path

import pytest

from handlers import Files, build_app
from handlers.files import TEMP_PREFIX, parse_range
from protocol import FileBody, Response

from .helpers import body_bytes, call, close_body, header, request

DIGITS = b"0123456789"


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """tmp_path/served is the directory served; tmp_path/secret.txt and tmp_path/outside/ are not."""
    directory = tmp_path / "served"
    directory.mkdir()
    (directory / "digits").write_bytes(DIGITS)
    (directory / "empty").write_bytes(b"")
    (directory / "sub").mkdir()
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (tmp_path / "outside").mkdir()
    return directory


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under `root`, with the contents of regular files (symlinks not followed)."""
    entries: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        regular = path.is_file() and not path.is_symlink()
        entries[str(path.relative_to(root))] = path.read_bytes() if regular else None
    return entries


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- names ------------------------------------------------------------------------------------

UNSAFE_NAMES = [
    b"",
    b".",
    b"..",
    b"%2e",
    b"%2e%2e",
    b"%2E%2E",
    b"../secret.txt",
    b"..%2fsecret.txt",
    b"..%2Fsecret.txt",
    b"%2e%2e%2fsecret.txt",
    b"%2e%2e/secret.txt",
    b"..%5csecret.txt",
    b"..\\secret.txt",
    b"%2fetc%2fpasswd",
    b"/etc/passwd",
    b"sub/../../secret.txt",
    b"digits%00",
    b"a%0ab",
    b"a%7fb",
    b"%ff%fe",  # not UTF-8
    b"a" * 256,
    TEMP_PREFIX.encode() + b"abc",
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"POST"])
def test_unsafe_names_are_refused_without_touching_the_disk(
    served: Path, tmp_path: Path, method: bytes, name: bytes
) -> None:
    """The handler's own check, whatever rest a route hands it (the router resolves dot
    segments before: see `test_dot_segments_never_lead_out_of_the_directory`)."""
    files = Files(served)
    before = snapshot(tmp_path)
    response = call(lambda req: files(req, name), request(method, b"/files/" + name), [b"evil"])
    assert response.status == 400
    assert type(response.body) is bytes
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("rest", "name"),
    [
        (b"a b", "a b"),
        (b"%61", "a"),
        (b"caf%C3%A9", "caf\u00e9"),
        (b"..a", "..a"),
        (b"a..", "a.."),
        (b".hidden", ".hidden"),
        (b"a" * 255, "a" * 255),
        (b"a%25b", "a%b"),
        (b"a%2525b", "a%25b"),  # decoded once: the file is `a%25b`, never `a%b`
        (b"100%", "100%"),  # a stray % is not an escape
        (b"%252e%252e%252fsecret.txt", "%2e%2e%2fsecret.txt"),  # a literal name inside
        (b"%252e%252e", "%2e%2e"),
    ],
)
def test_unusual_but_safe_names_work(served: Path, tmp_path: Path, rest: bytes, name: str) -> None:
    app = build_app(served)
    outside = set(os.listdir(tmp_path))
    assert call(app, request(b"POST", b"/files/" + rest), [b"ok"]).status == 201
    assert (served / name).read_bytes() == b"ok"
    assert set(os.listdir(served)) == {"digits", "empty", "sub", name}
    assert set(os.listdir(tmp_path)) == outside
    assert body_bytes(call(app, request(b"GET", b"/files/" + rest))) == b"ok"


@pytest.mark.parametrize(
    ("target", "read_status", "write_status"),
    [
        (b"/files/..", 200, 405),  # the root, `/`
        (b"/files/../secret.txt", 404, 404),  # `/secret.txt`: no such route
        (b"/files/sub/../../secret.txt", 404, 404),
        (b"/files/../../secret.txt", 400, 400),  # above the root
        (b"/files/sub/../../../secret.txt", 400, 400),
        (b"/files/.", 400, 400),  # `/files/`: no name
        (b"/files/%2e%2e/secret.txt", 400, 400),  # not resolved; decoded, not one segment
    ],
)
def test_dot_segments_never_lead_out_of_the_directory(
    served: Path, tmp_path: Path, target: bytes, read_status: int, write_status: int
) -> None:
    app = build_app(served)
    before = snapshot(tmp_path)
    for method, status in ((b"GET", read_status), (b"HEAD", read_status), (b"POST", write_status)):
        response = call(app, request(method, target), [b"evil"])
        assert response.status == status, method
        assert b"secret" not in body_bytes(response)
    assert snapshot(tmp_path) == before


def test_dot_segments_inside_the_directory_are_resolved(served: Path) -> None:
    app = build_app(served)
    assert body_bytes(call(app, request(b"GET", b"/files/sub/../digits"))) == DIGITS
    assert body_bytes(call(app, request(b"GET", b"/x/../files/./digits"))) == DIGITS
    assert call(app, request(b"POST", b"/files/sub/./../new"), [b"new"]).status == 201
    assert (served / "new").read_bytes() == b"new"


def test_symlinks_out_of_the_directory_are_refused(served: Path, tmp_path: Path) -> None:
    (served / "out").symlink_to(tmp_path / "secret.txt")
    (served / "outdir").symlink_to(tmp_path / "outside")
    (served / "dangling").symlink_to(tmp_path / "outside" / "new.txt")
    (served / "relative").symlink_to("../secret.txt")
    before = snapshot(tmp_path)
    app = build_app(served)
    for name in (b"out", b"outdir", b"dangling", b"relative"):
        assert call(app, request(b"GET", b"/files/" + name)).status == 404
        assert call(app, request(b"POST", b"/files/" + name), [b"evil"]).status == 403
    assert snapshot(tmp_path) == before


def test_symlinks_inside_the_directory_are_followed_to_read_and_replaced_to_write(served: Path) -> None:
    (served / "link").symlink_to("digits")
    app = build_app(served)
    assert body_bytes(call(app, request(b"GET", b"/files/link"))) == DIGITS
    assert call(app, request(b"POST", b"/files/link"), [b"new"]).status == 201
    assert not (served / "link").is_symlink()
    assert (served / "link").read_bytes() == b"new"
    assert (served / "digits").read_bytes() == DIGITS


def test_the_served_directory_may_itself_be_a_symlink(served: Path, tmp_path: Path) -> None:
    (tmp_path / "alias").symlink_to(served)
    app = build_app(tmp_path / "alias")
    assert body_bytes(call(app, request(b"GET", b"/files/digits"))) == DIGITS


def test_build_app_refuses_a_directory_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        build_app(tmp_path / "missing")


# --- downloads --------------------------------------------------------------------------------


def test_download(served: Path) -> None:
    app = build_app(served)
    reply = app(request(b"GET", b"/files/digits"))
    assert not isinstance(reply, Response), "disk work happens in an exchange"
    response = call(app, request(b"GET", b"/files/digits"))
    mtime_ns = (served / "digits").stat().st_mtime_ns
    mtime = mtime_ns // 10**9
    assert response.status == 200
    assert header(response, b"content-type") == b"application/octet-stream"
    assert header(response, b"accept-ranges") == b"bytes"
    assert header(response, b"etag") == b'"%x-a"' % mtime_ns
    assert header(response, b"last-modified") == formatdate(mtime, usegmt=True).encode()
    assert header(response, b"content-encoding") is None
    assert isinstance(response.body, FileBody), "streamed, never read whole"
    assert (response.body.offset, response.body.length) == (0, 10)
    assert body_bytes(response) == DIGITS


def test_etag_tells_apart_files_of_one_size_changed_within_a_second(served: Path) -> None:
    app = build_app(served)
    etags = []
    for content, mtime_ns in [(b"aaaa", 1_700_000_000_100_000_000), (b"bbbb", 1_700_000_000_101_000_000)]:
        (served / "f").write_bytes(content)
        os.utime(served / "f", ns=(mtime_ns, mtime_ns))
        response = call(app, request(b"GET", b"/files/f"))
        close_body(response)
        etags.append(header(response, b"etag"))
    assert etags[0] != etags[1]


def test_downloads_are_never_gzipped(served: Path) -> None:
    response = call(build_app(served), request(b"GET", b"/files/digits", (b"accept-encoding", b"gzip")))
    assert header(response, b"content-encoding") is None
    assert body_bytes(response) == DIGITS


def test_head_of_a_file_has_the_get_headers(served: Path) -> None:
    app = build_app(served)
    get = call(app, request(b"GET", b"/files/digits"))
    head = call(app, request(b"HEAD", b"/files/digits"))
    assert (head.status, head.headers) == (get.status, get.headers)
    assert isinstance(head.body, FileBody) and head.body.length == 10  # the core sends no body
    close_body(get)
    close_body(head)


def test_empty_file(served: Path) -> None:
    response = call(build_app(served), request(b"GET", b"/files/empty"))
    assert response.status == 200
    assert body_bytes(response) == b""


def test_absent_files_and_directories_are_404(served: Path) -> None:
    app = build_app(served)
    reply = app(request(b"GET", b"/files/missing"))
    assert not isinstance(reply, Response), "the app itself does not even stat"
    for name in (b"missing", b"sub"):
        response = call(app, request(b"GET", b"/files/" + name))
        assert response.status == 404
        assert header(response, b"content-type") == b"text/plain"


def test_special_files_are_404_and_never_block(served: Path) -> None:
    os.mkfifo(served / "fifo")  # opening it for reading would wait for a writer
    assert call(build_app(served), request(b"GET", b"/files/fifo")).status == 404


def test_without_a_directory_file_routes_say_so(served: Path) -> None:
    app = build_app(None)
    for method in (b"GET", b"HEAD", b"POST"):
        response = call(app, request(method, b"/files/digits"))
        assert response.status == 404
        assert b"no directory" in body_bytes(response)


def test_file_route_methods(served: Path) -> None:
    app = build_app(served)
    for method in (b"PATCH", b"OPTIONS", b"DELETE"):
        response = call(app, request(method, b"/files/digits"))
        assert response.status == 405
        assert header(response, b"allow") == b"GET, HEAD, POST, PUT"


# --- conditional requests ---------------------------------------------------------------------


def conditional(served: Path, *headers: tuple[bytes, bytes]) -> Response:
    return call(build_app(served), request(b"GET", b"/files/digits", *headers))


def test_if_none_match(served: Path) -> None:
    etag = header(conditional(served), b"etag")
    assert etag is not None
    for value in (etag, b"W/" + etag, b'"x", ' + etag, b"*", b" " + etag + b" "):
        response = conditional(served, (b"if-none-match", value))
        assert response.status == 304, value
        assert response.body == b""
        assert header(response, b"etag") == etag
    for value in (b'"x"', etag[:-2] + b'"', etag.strip(b'"')):
        response = conditional(served, (b"if-none-match", value))
        assert response.status == 200, value
        close_body(response)


def test_if_modified_since(served: Path) -> None:
    mtime = int((served / "digits").stat().st_mtime)
    for since, status in [
        (mtime, 304),
        (mtime + 3600, 304),
        (mtime - 1, 200),
    ]:
        response = conditional(served, (b"if-modified-since", formatdate(since, usegmt=True).encode()))
        assert response.status == status
        close_body(response)
    for value in (b"yesterday", b"", b"Mon, 99 Foo 2020 25:00:00 GMT"):
        response = conditional(served, (b"if-modified-since", value))
        assert response.status == 200
        close_body(response)


def test_if_none_match_decides_over_if_modified_since(served: Path) -> None:
    mtime = int((served / "digits").stat().st_mtime)
    date = formatdate(mtime, usegmt=True).encode()
    response = conditional(served, (b"if-none-match", b'"other"'), (b"if-modified-since", date))
    assert response.status == 200
    close_body(response)


def digits_etag(served: Path) -> bytes:
    etag = header(conditional(served), b"etag")
    assert etag is not None
    return etag


def test_if_match(served: Path) -> None:
    etag = digits_etag(served)
    for value in (etag, b'"x", ' + etag, b"*", b" " + etag + b" "):
        for method in (b"GET", b"HEAD"):
            response = call(build_app(served), request(method, b"/files/digits", (b"if-match", value)))
            assert response.status == 200, value
            assert body_bytes(response) == DIGITS
    for value in (b'"x"', b"W/" + etag, etag.strip(b'"'), etag[:-2] + b'"', b""):  # strong comparison
        for method in (b"GET", b"HEAD"):
            response = call(build_app(served), request(method, b"/files/digits", (b"if-match", value)))
            assert response.status == 412, value
            assert response.body == b"Precondition Failed\n"
            assert header(response, b"content-type") == b"text/plain"


def test_if_match_on_a_missing_file_is_404(served: Path) -> None:
    """RFC 9110 §13.2.1: preconditions are ignored when the answer without them is not 2xx."""
    for value in (b"*", b'"x"'):
        assert call(build_app(served), request(b"GET", b"/files/missing", (b"if-match", value))).status == 404


def test_if_unmodified_since(served: Path) -> None:
    mtime = int((served / "digits").stat().st_mtime)
    for since, status in [(mtime, 200), (mtime + 3600, 200), (mtime - 1, 412)]:
        response = conditional(served, (b"if-unmodified-since", formatdate(since, usegmt=True).encode()))
        assert response.status == status
        close_body(response)
    for value in (b"yesterday", b"", b"Mon, 99 Foo 2020 25:00:00 GMT"):  # not a date: ignored
        response = conditional(served, (b"if-unmodified-since", value))
        assert response.status == 200
        close_body(response)


def test_preconditions_are_evaluated_in_the_rfc_order(served: Path) -> None:
    """RFC 9110 §13.2.2: If-Match, else If-Unmodified-Since; then If-None-Match, else
    If-Modified-Since; then If-Range."""
    etag = digits_etag(served)
    mtime = int((served / "digits").stat().st_mtime)
    before, after = (formatdate(t, usegmt=True).encode() for t in (mtime - 1, mtime))
    cases: list[tuple[list[tuple[bytes, bytes]], int]] = [
        ([(b"if-match", etag), (b"if-unmodified-since", before)], 200),  # If-Match present: IUS ignored
        ([(b"if-match", b'"x"'), (b"if-unmodified-since", after)], 412),
        ([(b"if-match", b'"x"'), (b"if-none-match", etag)], 412),  # 412 before 304
        ([(b"if-unmodified-since", before), (b"if-none-match", b"*")], 412),
        ([(b"if-match", etag), (b"if-none-match", etag)], 304),
        ([(b"if-unmodified-since", after), (b"if-modified-since", after)], 304),
        ([(b"if-match", b'"x"'), (b"range", b"bytes=0-1")], 412),  # before ranges
        ([(b"if-match", b'"x"'), (b"range", b"bytes=50-")], 412),  # ...even an unsatisfiable one
        ([(b"if-match", etag), (b"range", b"bytes=0-1"), (b"if-range", etag)], 206),
    ]
    for headers, status in cases:
        response = conditional(served, *headers)
        assert response.status == status, headers
        close_body(response)


# --- ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"bytes=0-0", (0, 1)),
        (b"bytes=2-4", (2, 5)),
        (b"bytes=5-", (5, 10)),
        (b"bytes=-3", (7, 10)),
        (b"bytes=-20", (0, 10)),
        (b"bytes=8-100", (8, 10)),
        (b"BYTES=1-1", (1, 2)),
        (b"bytes= 1-1 ", (1, 2)),
        (b"bytes=10-", (10, 10)),  # unsatisfiable
        (b"bytes=10-20", (10, 10)),
        (b"bytes=-0", (10, 10)),
        (b"bytes=5-2", None),  # invalid: ignored
        (b"bytes=0-1,3-4", None),  # several: the whole file
        (b"items=0-1", None),
        (b"bytes=abc", None),
        (b"bytes=-", None),
        (b"bytes=1", None),
        (b"bytes=+1-2", None),
        (b"bytes=1-2-3", None),
        (b"0-1", None),
        (b"bytes=" + b"9" * 5000 + b"-", None),
    ],
)
def test_parse_range(value: bytes, expected: tuple[int, int] | None) -> None:
    assert parse_range(value, 10) == expected


def test_parse_range_of_an_empty_file() -> None:
    assert parse_range(b"bytes=0-", 0) == (0, 0)  # unsatisfiable: 416
    assert parse_range(b"bytes=-0", 0) == (0, 0)
    # RFC 9110 §14.1.1: a non-zero suffix is satisfiable, but no 206 can describe it: 200.
    assert parse_range(b"bytes=-5", 0) is None


@pytest.mark.parametrize(
    ("value", "content_range", "body"),
    [
        (b"bytes=2-4", b"bytes 2-4/10", b"234"),
        (b"bytes=-3", b"bytes 7-9/10", b"789"),
        (b"bytes=8-", b"bytes 8-9/10", b"89"),
    ],
)
def test_range_is_206(served: Path, value: bytes, content_range: bytes, body: bytes) -> None:
    response = conditional(served, (b"range", value), (b"accept-encoding", b"gzip"))
    assert response.status == 206
    assert header(response, b"content-range") == content_range
    assert header(response, b"content-encoding") is None
    assert isinstance(response.body, FileBody)
    assert body_bytes(response) == body


@pytest.mark.parametrize(("name", "size"), [(b"digits", 10), (b"empty", 0)])
def test_unsatisfiable_range_is_416(served: Path, name: bytes, size: int) -> None:
    response = call(build_app(served), request(b"GET", b"/files/" + name, (b"range", b"bytes=10-")))
    assert response.status == 416
    assert header(response, b"content-range") == b"bytes */%d" % size


@pytest.mark.parametrize("value", [b"bytes=0-1,3-4", b"bytes=5-2", b"lines=1-2"])
def test_ranges_we_do_not_serve_give_the_whole_file(served: Path, value: bytes) -> None:
    response = conditional(served, (b"range", value))
    assert response.status == 200
    assert body_bytes(response) == DIGITS


def test_if_range(served: Path) -> None:
    mtime = int((served / "digits").stat().st_mtime)
    etag = header(conditional(served), b"etag")
    assert etag is not None
    for if_range, status in [
        (etag, 206),
        (b"W/" + etag, 200),  # weak validators never match If-Range
        (b'"other"', 200),
        (formatdate(mtime, usegmt=True).encode(), 206),
        (formatdate(mtime + 1, usegmt=True).encode(), 200),
        (b"nonsense", 200),
    ]:
        response = conditional(served, (b"range", b"bytes=0-1"), (b"if-range", if_range))
        assert response.status == status, if_range
        assert body_bytes(response) == (b"01" if status == 206 else DIGITS)


def test_no_file_is_left_open_by_answers_without_a_body(served: Path) -> None:
    etag = header(conditional(served), b"etag")
    assert etag is not None
    before = open_fds()
    for _ in range(20):
        conditional(served, (b"if-none-match", etag))
        conditional(served, (b"range", b"bytes=50-"))
        call(build_app(served), request(b"GET", b"/files/sub"))
    assert open_fds() == before


# --- uploads ----------------------------------------------------------------------------------


def temp_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX)]


def test_upload(served: Path) -> None:
    app = build_app(served)
    exchange = app(request(b"POST", b"/files/new", (b"content-length", b"11")))
    assert not isinstance(exchange, Response)
    assert exchange.may_block
    assert not (served / "new").exists() and not temp_files(served), "the app itself writes nothing"
    assert exchange.start() is None
    exchange.receive(b"hello ")
    exchange.receive(b"world")
    assert not (served / "new").exists(), "nothing visible before the body is complete"
    assert len(temp_files(served)) == 1
    response = exchange.respond()
    assert response.status == 201
    assert (served / "new").read_bytes() == b"hello world"
    assert not temp_files(served)
    umask = os.umask(0o022)
    os.umask(umask)
    assert (served / "new").stat().st_mode & 0o777 == 0o666 & ~umask


def test_upload_replaces_atomically(served: Path) -> None:
    exchange = build_app(served)(request(b"POST", b"/files/digits"))
    assert not isinstance(exchange, Response)
    assert exchange.start() is None
    exchange.receive(b"new content")
    assert (served / "digits").read_bytes() == DIGITS, "readers see the old file until the end"
    with (served / "digits").open("rb") as reader:
        assert exchange.respond().status == 201
        assert reader.read() == DIGITS, "an open reader keeps the old file whole"
    assert (served / "digits").read_bytes() == b"new content"
    assert not temp_files(served)


def test_empty_upload_creates_an_empty_file(served: Path) -> None:
    assert call(build_app(served), request(b"POST", b"/files/nothing")).status == 201
    assert (served / "nothing").read_bytes() == b""
    assert not temp_files(served)


def test_large_upload_in_many_chunks(served: Path) -> None:
    chunks = [bytes([i]) * 65536 for i in range(64)]
    assert call(build_app(served), request(b"POST", b"/files/big"), chunks).status == 201
    assert (served / "big").read_bytes() == b"".join(chunks)


@pytest.mark.parametrize("received", [[], [b"partial"], [b"a", b"b"]])
@pytest.mark.parametrize("existing", [True, False])
def test_aborted_upload_leaves_nothing(served: Path, received: list[bytes], existing: bool) -> None:
    name = "digits" if existing else "new"
    before = snapshot(served)
    exchange = build_app(served)(request(b"POST", b"/files/" + name.encode()))
    assert not isinstance(exchange, Response)
    assert exchange.start() is None
    for chunk in received:
        exchange.receive(chunk)
    exchange.abort()
    assert snapshot(served) == before
    assert not temp_files(served)


def test_abort_after_a_failed_respond_removes_the_temporary_file(served: Path) -> None:
    exchange = build_app(served)(request(b"POST", b"/files/new"))
    assert not isinstance(exchange, Response)
    assert exchange.start() is None
    exchange.receive(b"data")
    (served / "new").mkdir()  # appears meanwhile: the rename fails
    (served / "new" / "keep").write_bytes(b"")
    with pytest.raises(OSError):
        exchange.respond()
    exchange.abort()
    assert not temp_files(served)
    assert (served / "new").is_dir()


def test_upload_into_a_directory_we_may_not_write_to_is_403(
    served: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")  # what a read-only directory gives, even as root

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    response = call(build_app(served), request(b"POST", b"/files/new"), [b"data"])
    assert response.status == 403
    assert not (served / "new").exists()


def test_upload_onto_a_directory_is_409(served: Path) -> None:
    before = snapshot(served)
    response = call(build_app(served), request(b"POST", b"/files/sub"), [b"data"])
    assert response.status == 409
    assert snapshot(served) == before


def test_upload_request_bodies_are_stored_as_sent(served: Path) -> None:
    gzipped = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03KLJ\x06\x00\xc2A$5\x03\x00\x00\x00"
    headers = ((b"content-encoding", b"gzip"),)
    assert call(build_app(served), request(b"POST", b"/files/z", *headers), [gzipped]).status == 201
    assert (served / "z").read_bytes() == gzipped


# --- conditional uploads ----------------------------------------------------------------------


def upload(served: Path, name: bytes, body: list[bytes], *headers: tuple[bytes, bytes]) -> Response:
    return call(build_app(served), request(b"POST", b"/files/" + name, *headers), body)


@pytest.mark.parametrize("body", [[], [b"new"], [b"n", b"e", b"w"]])
def test_if_none_match_star_creates_only(served: Path, body: list[bytes]) -> None:
    assert upload(served, b"fresh", body, (b"if-none-match", b"*")).status == 201
    assert (served / "fresh").read_bytes() == b"".join(body)
    before = snapshot(served)
    for name in (b"fresh", b"digits", b"empty"):
        response = upload(served, name, [b"overwrite"], (b"if-none-match", b"*"))
        assert response.status == 412
        assert response.body == b"Precondition Failed\n"
    assert snapshot(served) == before, "nothing replaced, no temporary file left"


@pytest.mark.parametrize(
    ("name", "headers", "status"),
    [
        (b"digits", ((b"if-none-match", b"*"),), 412),
        (b"digits", ((b"if-match", b'"other"'),), 412),
        (b"missing", ((b"if-match", b"*"),), 412),
        (b"sub", (), 409),
        (b"escape", (), 403),
    ],
)
def test_an_upload_is_refused_before_its_body(
    served: Path, name: bytes, headers: tuple[tuple[bytes, bytes], ...], status: int
) -> None:
    """start() answers, so a client waiting for 100 Continue never sends the body."""
    (served / "escape").symlink_to(served.parent / "secret.txt")
    before = snapshot(served)
    exchange = build_app(served)(request(b"POST", b"/files/" + name, *headers))
    assert not isinstance(exchange, Response)
    refusal = exchange.start()
    assert refusal is not None and refusal.status == status
    assert snapshot(served) == before and not temp_files(served)


def test_if_none_match_star_is_exact_when_the_file_appears_during_the_upload(served: Path) -> None:
    exchange = build_app(served)(request(b"POST", b"/files/racy", (b"if-none-match", b"*")))
    assert not isinstance(exchange, Response)
    assert exchange.start() is None
    exchange.receive(b"mine")
    (served / "racy").write_bytes(b"theirs")  # another client created it meanwhile
    assert exchange.respond().status == 412
    assert (served / "racy").read_bytes() == b"theirs"
    assert not temp_files(served)


def test_if_none_match_star_without_hard_links(served: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some file systems (FAT, some FUSE ones) have no hard links: check, then rename."""

    def no_links(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    assert upload(served, b"fresh", [b"new"], (b"if-none-match", b"*")).status == 201
    assert (served / "fresh").read_bytes() == b"new"
    assert upload(served, b"fresh", [b"again"], (b"if-none-match", b"*")).status == 412
    assert (served / "fresh").read_bytes() == b"new"
    assert not temp_files(served)


def test_if_match_on_upload(served: Path) -> None:
    etag = digits_etag(served)
    before = snapshot(served)
    for value in (b'"x"', b"W/" + etag, etag.strip(b'"')):
        assert upload(served, b"digits", [b"stale"], (b"if-match", value)).status == 412, value
    assert upload(served, b"missing", [b"x"], (b"if-match", b"*")).status == 412, "no file: no match"
    assert snapshot(served) == before
    assert upload(served, b"digits", [b"v2"], (b"if-match", b'"x", ' + etag)).status == 201
    assert (served / "digits").read_bytes() == b"v2"
    assert upload(served, b"digits", [b"v3"], (b"if-match", b"*")).status == 201
    assert (served / "digits").read_bytes() == b"v3"
    assert upload(served, b"digits", [b"v4"], (b"if-match", etag)).status == 412, "the ETag changed"
    assert (served / "digits").read_bytes() == b"v3"
    assert not temp_files(served)


def test_if_match_is_checked_again_when_the_body_is_complete(served: Path) -> None:
    etag = digits_etag(served)
    exchange = build_app(served)(request(b"POST", b"/files/digits", (b"if-match", etag)))
    assert not isinstance(exchange, Response)
    assert exchange.start() is None
    exchange.receive(b"mine")
    (served / "digits").write_bytes(b"theirs, and longer")  # replaced meanwhile: a new ETag
    assert exchange.respond().status == 412
    assert (served / "digits").read_bytes() == b"theirs, and longer"
    assert not temp_files(served)


@pytest.mark.parametrize("conditional", [True, False])
def test_an_upload_checks_and_renames_under_the_directory_lock(served: Path, conditional: bool) -> None:
    """Another upload (here: the test, holding the lock) cannot land between check and rename."""
    etag = digits_etag(served)
    headers = ((b"if-match", etag),) if conditional else ()
    exchange = build_app(served)(request(b"POST", b"/files/digits", *headers))
    assert not isinstance(exchange, Response)
    assert exchange.start() is None
    exchange.receive(b"mine")
    statuses: list[int] = []
    committer = threading.Thread(target=lambda: statuses.append(exchange.respond().status))
    lock = os.open(served, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        committer.start()
        committer.join(0.3)
        assert committer.is_alive(), "waits for the lock"
        (served / "digits").write_bytes(b"theirs, and longer")  # another upload: a new ETag
    finally:
        os.close(lock)
    committer.join(5)
    assert statuses == [412 if conditional else 201]
    assert (served / "digits").read_bytes() == (b"theirs, and longer" if conditional else b"mine")
    assert not temp_files(served)


def test_an_upload_on_a_file_system_without_flock(served: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_locks(*args: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    etag = digits_etag(served)
    assert upload(served, b"digits", [b"v2"], (b"if-match", etag)).status == 201
    assert upload(served, b"digits", [b"v3"], (b"if-match", etag)).status == 412
    assert (served / "digits").read_bytes() == b"v2"
    assert not temp_files(served)


def test_if_unmodified_since_on_upload(served: Path) -> None:
    mtime = int((served / "digits").stat().st_mtime)
    before, after = (formatdate(t, usegmt=True).encode() for t in (mtime - 1, mtime))
    assert upload(served, b"digits", [b"late"], (b"if-unmodified-since", before)).status == 412
    assert (served / "digits").read_bytes() == DIGITS
    assert upload(served, b"new", [b"x"], (b"if-unmodified-since", before)).status == 201, "no file: ignored"
    assert upload(served, b"digits", [b"v2"], (b"if-unmodified-since", b"nonsense")).status == 201
    os.utime(served / "digits", (mtime, mtime))
    assert upload(served, b"digits", [b"v3"], (b"if-unmodified-since", after)).status == 201
    assert (served / "digits").read_bytes() == b"v3"


def test_if_none_match_with_tags_on_upload(served: Path) -> None:
    etag = digits_etag(served)
    for value in (etag, b"W/" + etag, b'"x", ' + etag):  # weak comparison
        assert upload(served, b"digits", [b"no"], (b"if-none-match", value)).status == 412, value
    assert (served / "digits").read_bytes() == DIGITS
    assert upload(served, b"digits", [b"yes"], (b"if-none-match", b'"x"')).status == 201
    assert upload(served, b"absent", [b"yes"], (b"if-none-match", etag)).status == 201


def test_other_refusals_come_before_preconditions(served: Path) -> None:
    """RFC 9110 §13.2.1: a 4xx the request gets anyway wins over 412."""
    assert upload(served, b"sub", [b"x"], (b"if-match", b'"x"')).status == 409
    assert upload(served, b"..", [b"x"], (b"if-none-match", b"*")).status == 405  # `/`
    assert upload(served, b"a%00", [b"x"], (b"if-none-match", b"*")).status == 400
