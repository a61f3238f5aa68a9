"""`/files/{name}`: files of one directory, downloaded (GET, HEAD) and uploaded (POST, PUT).

Names: `{name}` is one path segment, percent-decoded exactly once, UTF-8: `a%25b` is the file
`a%b`, `a%2525b` the file `a%25b`. Refused with 400 without touching the disk: empty, `.`, `..`,
longer than 255 bytes, or containing `/`, `\\`, NUL or another control character, and names
starting with `TEMP_PREFIX` (uploads in progress). Before any read or write, DIR/name is resolved
with its symlinks; if that leads out of the directory, the request is refused (404 to read, 403
to write).

Downloads, as nginx serves static files: streamed as a `FileBody` (never read whole), not
content-coded (see `coding`), `application/octet-stream` (with `mime_types`, the type the name
suggests in Python's `mimetypes` table, without a charset, as nginx does), with `ETag`
(`"<mtime hex>-<size hex>"`, nginx's form but with the mtime in nanoseconds: two uploads of one
size within a second still differ), `Last-Modified` and `Accept-Ranges: bytes`. Preconditions
are evaluated in RFC 9110 §13.2.2's order: `If-Match` (strong comparison, `*` for any file), else
`If-Unmodified-Since` (an invalid date is ignored), answer 412 when false; then `If-None-Match`
(weak comparison), else `If-Modified-Since`, answer 304. One byte range answers 206 with
`Content-Range`, an unsatisfiable one 416 with `Content-Range: bytes */size`; several ranges, an
invalid `Range`, or an `If-Range` that does not match (strong ETag or exact date) answer 200 with
the whole file. Not a regular file: 404, whatever the preconditions (§13.2.1: they only turn a 2xx
into 412 or 304).

Uploads: the body goes to a temporary file in the directory (`TEMP_PREFIX...`), which is then
fsync'd, given the usual permissions (0666 less the umask) and renamed over DIR/name, and the
directory fsync'd: 201 then means the whole file is durably in place, and a reader sees the old
file or the new one, never a part. An aborted upload leaves nothing behind. POST answers 201
Created; PUT (RFC 9110 §9.3.4) 201 when the name was new and 204 No Content when it replaced a
file. A 201 carries `Location`. A name that is a directory answers 409. A PUT with
`Content-Range` answers 400 before its body (RFC 9110 §14.5: partial PUTs are not supported).
Storage errors are the client's answer, with one log line (`httpserver.error`) and nothing left
behind: a directory or file system we may not write to (EACCES, EPERM, EROFS) 403, a full disk or
quota (ENOSPC, EDQUOT) 507 at once (the rest of the body is discarded), a file too large for the
file system (EFBIG) 413.

Conditional uploads answer 412 and store nothing when a precondition is false: `If-Match` (strong
comparison with the current file's ETag; `*` needs a file to exist), else `If-Unmodified-Since`,
then `If-None-Match` (`*`: create only; tags: weak comparison). They are checked before the body
(with the name's checks: 403, 409; a client that sent `Expect: 100-continue` gets the refusal
instead of `100 Continue` and never sends the body), and again once the body is complete.
The check and the rename are exact against the other uploads of this server, in all its processes:
every upload holds an exclusive flock(2) on the directory from its last check to its rename (a few
system calls; the body's write and fsync come before). `If-None-Match: *` is also exact against
other programs: the file is hard-linked into place, which fails if the name exists (on a file
system without hard links: checked, then renamed). Other programs writing to the directory take
no such lock, and a file system without flock goes on unlocked.

All disk access happens in the `Exchange`, whose `may_block` is true: the core runs it where
blocking is allowed, never on the event loop.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mimetypes
import os
import stat
import tempfile
from contextlib import suppress
from email.utils import formatdate, mktime_tz, parsedate_tz
from pathlib import Path
from typing import Final
from urllib.parse import unquote_to_bytes

from protocol import Exchange, FileBody, Request, Response

from .routing import NOT_FOUND, field_value, text

TEMP_PREFIX: Final = ".upload-"
"""Temporary files of uploads in progress start with this; such names are never served."""

_NAME_MAX: Final = 255
_FORBIDDEN_BYTES: Final = bytes(range(0x20)) + b"/\\\x7f"
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

NO_DIRECTORY: Final = text(404, b"Not Found: this server serves no directory.\n")
BAD_NAME: Final = text(400, b"Bad Request: not a valid file name.\n")
PARTIAL_PUT: Final = text(400, b"Bad Request: a PUT with Content-Range (part of a file) is not supported.\n")
FORBIDDEN: Final = text(403, b"Forbidden\n")
IS_A_DIRECTORY: Final = text(409, b"Conflict: that name is a directory.\n")
NOT_SATISFIABLE_MESSAGE: Final = b"Range Not Satisfiable\n"
PRECONDITION_FAILED: Final = text(412, b"Precondition Failed\n")
INSUFFICIENT_STORAGE: Final = text(507, b"Insufficient Storage: there is no room for this file now.\n")
FILE_TOO_LARGE: Final = text(413, b"Content Too Large: the file system takes no file this large.\n")
REPLACED: Final = Response(204)
_OCTET_STREAM: Final = (b"Content-Type", b"application/octet-stream")
_STORAGE_ERRORS: Final = {
    errno.EACCES: FORBIDDEN,
    errno.EPERM: FORBIDDEN,
    errno.EROFS: FORBIDDEN,
    errno.ENOSPC: INSUFFICIENT_STORAGE,
    errno.EDQUOT: INSUFFICIENT_STORAGE,
    errno.EFBIG: FILE_TOO_LARGE,
}
"""Errors of the file system that are the client's answer (with one log line), not a 500."""
_COMPRESSED_TYPES: Final = {
    "gzip": b"application/gzip",
    "bzip2": b"application/x-bzip2",
    "xz": b"application/x-xz",
}
"""Types of names like `x.tar.gz`: the file is sent as stored, so its type is the compression's."""

error_log: Final = logging.getLogger("httpserver.error")
_ACCEPT_RANGES: Final = (b"Accept-Ranges", b"bytes")
_UPLOAD_CONDITIONS: Final = frozenset({b"if-match", b"if-unmodified-since", b"if-none-match"})


def file_name(rest: bytes) -> str | None:
    """The file name a `/files/` path's rest stands for, or None when it is not a safe one."""
    raw = unquote_to_bytes(rest) if b"%" in rest else rest
    if raw in (b"", b".", b"..") or len(raw) > _NAME_MAX:
        return None
    if len(raw.translate(None, _FORBIDDEN_BYTES)) != len(raw):
        return None
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        return None
    return None if name.startswith(TEMP_PREFIX) else name


class Files:
    """The handler of `/files/{name}`: serves `directory`, or with None answers 404 to all.

    `mime_types`: downloads get the Content-Type their name suggests (else all are
    application/octet-stream). `mount`: the route's path, for the Location of a created file.
    """

    def __init__(
        self, directory: Path | None, *, mime_types: bool = False, mount: bytes = b"/files/"
    ) -> None:
        self.mount = mount
        self._types = mimetypes.MimeTypes() if mime_types else None  # Python's table, not /etc's
        self.root: str | None = None
        self._inside = ""  # the root with a trailing separator: what every path inside starts with
        if directory is not None:
            root = os.path.realpath(directory)
            if not os.path.isdir(root):
                raise NotADirectoryError(f"not a directory: {directory}")
            self.root = root
            self._inside = os.path.join(root, "")
        # The umask is process-wide and can only be read by setting it: do it once, here.
        umask = os.umask(0o022)
        os.umask(umask)
        self.mode: Final = 0o666 & ~umask
        """Permissions of uploaded files, as `open()` would give them."""

    def __call__(self, request: Request, rest: bytes) -> Response | Exchange:
        if self.root is None:
            return NO_DIRECTORY
        name = file_name(rest)
        if name is None:
            return BAD_NAME
        if request.method == b"POST" or request.method == b"PUT":
            if request.method == b"PUT" and request.header(b"content-range") is not None:
                return PARTIAL_PUT  # RFC 9110 §14.5: a MUST, lest a part be stored as the whole
            return _Upload(self, self.root, name, request, rest)
        return _Download(self, request, name)

    def content_type(self, name: str) -> tuple[bytes, bytes]:
        """The Content-Type header for the file `name`."""
        if self._types is None:
            return _OCTET_STREAM
        kind, encoding = self._types.guess_type("/" + name, strict=False)  # "/": never a URL scheme
        if encoding is not None:
            value = _COMPRESSED_TYPES.get(encoding, _OCTET_STREAM[1])
        elif kind is None:
            return _OCTET_STREAM
        else:
            value = kind.encode("ascii")
        return (b"Content-Type", value)

    def resolve(self, name: str) -> str | None:
        """DIR/name with all symlinks resolved, or None when that is outside DIR. May block."""
        assert self.root is not None
        path = os.path.join(self.root, name)
        real = os.path.realpath(path)
        return real if real == path or real.startswith(self._inside) else None


class _Download:
    """GET or HEAD of one file; all of its work is in `respond`."""

    may_block = True

    def __init__(self, files: Files, request: Request, name: str) -> None:
        self._files = files
        self._request = request
        self._name = name

    def start(self) -> None:
        """All the work is in `respond`: preconditions and ranges need the file's state then."""

    def receive(self, data: bytes) -> None:
        """A GET body has no meaning here; it is dropped."""

    def respond(self) -> Response:
        path = self._files.resolve(self._name)
        if path is None:
            return NOT_FOUND
        try:
            fd = os.open(path, _READ_FLAGS)
        except PermissionError as exc:
            error_log.error("cannot read %s: %s (403)", path, exc.strerror)
            return FORBIDDEN
        except OSError:  # absent, a symlink swapped in since resolving it, a name too long...
            return NOT_FOUND
        try:
            info = os.fstat(fd)
            regular = stat.S_ISREG(info.st_mode)
            content_type = self._files.content_type(self._name)
            answer = (
                file_answer(self._request, info.st_size, info.st_mtime_ns, content_type)
                if regular
                else NOT_FOUND
            )
        except BaseException:
            os.close(fd)
            raise
        if isinstance(answer, Response):
            os.close(fd)
            return answer
        status, headers, offset, length = answer
        file = open(fd, "rb", buffering=0)  # noqa: SIM115 - the core closes it after sending
        return Response(status, headers, FileBody(file, offset, length))

    def abort(self) -> None:
        pass


Part = tuple[int, tuple[tuple[bytes, bytes], ...], int, int]
"""Status, headers, offset and length of a response that sends (part of) the file."""


def file_answer(
    request: Request, size: int, mtime_ns: int, content_type: tuple[bytes, bytes] = _OCTET_STREAM
) -> Response | Part:
    """How to answer a GET or HEAD of a file of `size` bytes modified at `mtime_ns` (epoch
    nanoseconds): a complete response without the file (304, 416), or the `Part` of it to send."""
    etag = _etag(size, mtime_ns)
    mtime = mtime_ns // 1_000_000_000  # HTTP dates have whole seconds
    if not _preconditions_hold(request, etag, mtime):
        return PRECONDITION_FAILED
    last_modified = (b"Last-Modified", formatdate(mtime, usegmt=True).encode())
    if _not_modified(request, etag, mtime):
        return Response(304, ((b"ETag", etag), last_modified))
    headers = (content_type, _ACCEPT_RANGES, (b"ETag", etag), last_modified)
    range_value = request.header(b"range")
    if range_value is not None:
        if_range = request.header(b"if-range")
        if if_range is None or _if_range_matches(if_range, etag, mtime):
            byte_range = parse_range(range_value, size)
            if byte_range is not None:
                start, end = byte_range
                if start >= end:
                    content_range = (b"Content-Range", b"bytes */%d" % size)
                    return text(416, NOT_SATISFIABLE_MESSAGE, (_ACCEPT_RANGES, content_range))
                content_range = (b"Content-Range", b"bytes %d-%d/%d" % (start, end - 1, size))
                return 206, (*headers, content_range), start, end - start
    return 200, headers, 0, size


def _etag(size: int, mtime_ns: int) -> bytes:
    return b'"%x-%x"' % (mtime_ns, size)


def _matches(value: bytes, etag: bytes, *, weak: bool) -> bool:
    """Whether an `If-Match` / `If-None-Match` value is `*` or lists `etag` (RFC 9110 §8.8.3.2).

    Ours is strong, so the weak comparison only drops the W/ of theirs; the strong one never
    matches a weak tag."""
    if value.strip() == b"*":
        return True
    for tag in value.split(b","):
        tag = tag.strip()
        if (tag.removeprefix(b"W/") if weak else tag) == etag:
            return True
    return False


def _preconditions_hold(request: Request, etag: bytes | None, mtime: int | None) -> bool:
    """RFC 9110 §13.2.2's first steps: If-Match when present, else If-Unmodified-Since.

    `etag` and `mtime` (epoch seconds) are the current file's; None when there is none."""
    if_match = field_value(request, b"if-match")
    if if_match is not None:
        return etag is not None and _matches(if_match, etag, weak=False)
    if_unmodified_since = request.header(b"if-unmodified-since")
    if if_unmodified_since is None or mtime is None:
        return True
    since = _http_date(if_unmodified_since)
    return since is None or mtime <= since


def _write_allowed(request: Request, path: str) -> bool:
    """Whether the preconditions of an upload hold for the file at `path` now. May block.

    If-Match, else If-Unmodified-Since, then If-None-Match (RFC 9110 §13.2.2). The current file
    is what a GET would serve: symlinks followed, only a regular file."""
    try:
        info = os.stat(path)
    except OSError:  # absent, a dangling symlink...: no current file
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        etag = mtime = None
    else:
        etag, mtime = _etag(info.st_size, info.st_mtime_ns), info.st_mtime_ns // 1_000_000_000
    if not _preconditions_hold(request, etag, mtime):
        return False
    if_none_match = field_value(request, b"if-none-match")
    return if_none_match is None or etag is None or not _matches(if_none_match, etag, weak=True)


def _not_modified(request: Request, etag: bytes, mtime: int) -> bool:
    """RFC 9110 §13.2.2: If-None-Match decides when present, else If-Modified-Since."""
    if_none_match = field_value(request, b"if-none-match")
    if if_none_match is not None:
        return _matches(if_none_match, etag, weak=True)
    if_modified_since = request.header(b"if-modified-since")
    if if_modified_since is None:
        return False
    since = _http_date(if_modified_since)
    return since is not None and mtime <= since


def _if_range_matches(value: bytes, etag: bytes, mtime: int) -> bool:
    """RFC 9110 §13.1.5: a strong ETag match, or exactly the Last-Modified date."""
    value = value.strip()
    if value[:1] == b'"' or value[:2] == b"W/":
        return value == etag
    return _http_date(value) == mtime


def _http_date(value: bytes) -> int | None:
    """An HTTP date as epoch seconds, or None when it is not one."""
    try:
        parsed = parsedate_tz(value.decode("latin-1"))
        return None if parsed is None else mktime_tz(parsed)
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


def parse_range(value: bytes, size: int) -> tuple[int, int] | None:
    """A `Range` value as `(start, end)` (end exclusive) within a file of `size` bytes.

    None: ignore the field and send the whole file (not bytes, invalid, or several ranges; or
    a suffix range of an empty file, which is satisfiable but has no `Content-Range` to say it
    with: nginx, too, answers 200). An empty range (start >= end): not satisfiable (416).
    """
    unit, equals, spec = value.partition(b"=")
    if not equals or unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first, dash, last = spec.strip().partition(b"-")
    if not dash or not (first or last) or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    try:
        if not first:  # the last `last` bytes
            suffix = int(last)
            if suffix and not size:  # satisfiable (RFC 9110 §14.1.1), yet no 206 can say so
                return None
            return (max(size - suffix, 0), size) if suffix else (size, size)
        start = int(first)
        if not last:
            return (start, size) if start < size else (size, size)
        stop = int(last) + 1
    except ValueError:  # more digits than int() takes: not a range worth reading
        return None
    if stop <= start:
        return None
    return (start, min(stop, size)) if start < size else (size, size)


class _Upload:
    """POST or PUT of one file: written to a temporary file beside it, renamed into place when complete."""

    may_block = True

    def __init__(self, files: Files, root: str, name: str, request: Request, rest: bytes) -> None:
        self._files = files
        self._root = root
        self._name = name
        self._put = request.method == b"PUT"
        self._location = files.mount + rest  # still percent-encoded, as the client sent it
        # The request when it has preconditions (see the module docstring), else None.
        conditional = any(key in _UPLOAD_CONDITIONS for key, _ in request.headers)
        self._conditions = request if conditional else None
        if_none_match = field_value(request, b"if-none-match") if conditional else None
        self._create_only = if_none_match is not None and if_none_match.strip() == b"*"
        self._target = ""  # DIR/name with its symlinks resolved
        self._fd = -1
        self._temp: str | None = None

    def start(self) -> Response | None:
        """Check the target and create the temporary file, before any body byte arrives."""
        target = self._files.resolve(self._name)
        if target is None:
            return FORBIDDEN
        if os.path.isdir(target):
            return IS_A_DIRECTORY
        if self._conditions is not None and not _write_allowed(self._conditions, target):
            return PRECONDITION_FAILED
        self._target = target
        try:
            self._fd, self._temp = tempfile.mkstemp(dir=self._root, prefix=TEMP_PREFIX)
        except OSError as exc:  # say, a directory we may not write to
            return self._storage_error(exc)
        return None

    def receive(self, data: bytes) -> Response | None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:  # say, the disk is full: answered now, not after the whole body
            return self._storage_error(exc)
        return None

    def respond(self) -> Response:
        try:
            return self._store()
        except OSError as exc:
            return self._storage_error(exc)

    def _storage_error(self, exc: OSError) -> Response:
        """The answer to a storage error, logged in one line, once the upload is undone; else raise."""
        response = _STORAGE_ERRORS.get(exc.errno or 0)
        if response is None:
            raise exc
        self.abort()
        error_log.error(
            "cannot store %s: %s (%d)", os.path.join(self._root, self._name), exc.strerror, response.status
        )
        return response

    def _store(self) -> Response:
        fd = self._fd
        temp = self._temp
        assert temp is not None
        os.fchmod(fd, self._files.mode)
        os.fsync(fd)
        self._fd = -1
        os.close(fd)
        path = os.path.join(self._root, self._name)
        directory = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # Every upload's check and rename hold the directory's lock: no other upload of
            # this server (any of its processes) lands between a precondition and the rename.
            locked = _lock(directory)
            replaced = False
            if self._conditions is not None:  # checked again, now that the body is in
                allowed = _write_allowed(self._conditions, self._target)
                if allowed and self._create_only:
                    allowed = _create(temp, path)  # exact, and done when it succeeds
                if not allowed:
                    self.abort()  # removes the temporary file
                    return PRECONDITION_FAILED
            if not self._create_only:
                replaced = os.path.lexists(path)  # exact: other uploads wait for the lock
                # The entry DIR/name itself is replaced (a symlink inside DIR is replaced, not followed).
                os.replace(temp, path)
            self._temp = None
            if locked:  # the fsync needs no lock: other uploads go on meanwhile
                fcntl.flock(directory, fcntl.LOCK_UN)
            os.fsync(directory)
        finally:
            os.close(directory)  # also releases the lock on the way out of a failure
        if replaced and self._put:
            return REPLACED
        return Response(201, ((b"Location", self._location),))

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._temp is not None:
            with suppress(FileNotFoundError):
                os.unlink(self._temp)
            self._temp = None


def _lock(directory: int) -> bool:
    """Take an exclusive flock(2) on the open `directory`, held until unlocked or closed. May block.

    False on a file system without flock (some network ones): then check, then rename."""
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        return False
    return True


def _create(temp: str, path: str) -> bool:
    """Move the file `temp` to `path` unless `path` exists (then False). May block.

    A hard link is exact: link(2) never replaces an entry. A file system without hard links gets
    a check then a rename: exact against our uploads (the caller holds the directory's lock),
    not against another program writing there."""
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):
            raise
        if os.path.lexists(path):
            return False
        os.replace(temp, path)
        return True
    os.unlink(temp)
    return True
