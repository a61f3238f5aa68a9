"""Property tests: generated requests, garbage, fragmentations and events fed to the core.

Whatever arrives, no exception escapes, every byte sent parses as HTTP/1.1 responses
with an h11 client, responses match the complete requests in number and order, every
exchange ends exactly once and every file is closed.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol import Close, Config, Phase, Receive, Send, SendFile

from .helpers import App, Driver, Parsed, chunked, fragments, get, parse, parse_all

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CORE_ERRORS = frozenset({400, 408, 413, 414, 431, 501, 505})
WORDS = st.binary(min_size=0, max_size=12).map(lambda b: b.hex().encode())


@dataclass(frozen=True)
class Expected:
    method: bytes
    status: int
    body: bytes
    closes: bool


@st.composite
def requests(draw: st.DrawFn, *, head: bool = True) -> tuple[bytes, Expected]:
    """One valid request and the response it must get."""
    kinds = [
        "echo",
        "root",
        "missing",
        "upload",
        "blocking",
        "ignored-body",
        "memfile",
        "refuse",
        "blocking-refuse",
    ]
    kind = draw(st.sampled_from([*kinds, "head"] if head else kinds))
    word = draw(WORDS)
    version = draw(st.sampled_from([b"1.1"] * 6 + [b"1.0"]))
    close = draw(st.sampled_from([False] * 6 + [True]))
    extra = [b"Connection: close"] if close else []
    closes = close or version == b"1.0"
    if kind in ("upload", "blocking", "ignored-body", "refuse", "blocking-refuse"):
        body = draw(st.binary(max_size=300))
        target = b"/echo/" + word if kind == "ignored-body" else b"/" + kind.encode()
        if version == b"1.1" and draw(st.booleans()):
            pieces = draw(st.lists(st.binary(min_size=1, max_size=100), max_size=4))
            body = b"".join(pieces)
            data = get(target, b"Transfer-Encoding: chunked", *extra, method=b"POST") + chunked(*pieces)
        else:
            data = get(target, b"Content-Length: %d" % len(body), *extra, method=b"POST", version=version)
            data += body
        if kind == "ignored-body":
            return data, Expected(b"POST", 200, word, closes)
        if kind.endswith("refuse"):  # refused by start(): the body is drained, unread
            return data, Expected(b"POST", 403, b"refused", closes)
        return data, Expected(b"POST", 201, b"got %d" % len(body), closes)
    method = b"HEAD" if kind == "head" else b"GET"
    targets = {"root": b"/", "missing": b"/missing/" + word, "memfile": b"/memfile"}
    target = targets.get(kind, b"/echo/" + word)
    response_body = {"root": b"", "missing": b"not found", "memfile": (bytes(range(256)) * 2)[3:303]}
    body = b"" if kind == "head" else response_body.get(kind, word)
    status = 404 if kind == "missing" else 200
    return get(target, *extra, method=method, version=version), Expected(method, status, body, closes)


def answered(expected: list[Expected]) -> list[Expected]:
    """The responses due: up to and including the first request that closes."""
    for index, item in enumerate(expected):
        if item.closes:
            return expected[: index + 1]
    return expected


def feed_in_pieces(d: Driver[App], data: bytes, sizes: list[int]) -> None:
    pieces = []
    start = index = 0
    while start < len(data):
        size = sizes[index % len(sizes)]
        pieces.append(data[start : start + size])
        start += size
        index += 1
    for piece in pieces:
        if d.closed:
            return
        d.feed(piece)


def finish(d: Driver[App]) -> None:
    """End the input and let deadlines pass until the core closes."""
    if not d.closed:
        d.eof()
    for _ in range(5):
        if d.closed:
            break
        d.expire()
    assert d.closed
    assert d.conn.next_action(d.now) == Close()
    waits = [a for a in d.actions if isinstance(a, (Receive, Send, SendFile))]
    assert all(a.deadline is not None for a in waits), "every wait has a deadline"


def check_endings(app: App) -> None:
    for exchange in app.exchanges:
        ends = [call for call in exchange.calls if call != "receive"]
        if exchange.refusal is None:
            assert ends in (["start", "respond"], ["start", "abort"], []), exchange.calls
        else:  # the Response from start() ended it, or it was dropped before its first step
            assert exchange.calls in (["start"], []), exchange.calls
    assert all(f.closed for f in app.files)


SIZES = st.lists(st.integers(1, 80) | st.sampled_from([600, 1 << 20]), min_size=1, max_size=6)
APP_CONFIG = Config(send_chunk_size=100, max_head_size=512, access_log=False)
"""Small pieces for files and h11's input slices (max_head_size), so large reads are sliced."""


@SETTINGS
@given(st.lists(requests(), min_size=1, max_size=8), SIZES)
def test_valid_requests_get_their_responses_in_order(
    items: list[tuple[bytes, Expected]], sizes: list[int]
) -> None:
    app = App(memfile_size=300)
    d = Driver(app, APP_CONFIG)
    feed_in_pieces(d, b"".join(data for data, _ in items), sizes)
    due = answered([expected for _, expected in items])
    responses = parse(d.take(), [e.method for e in due])
    for response, expected in zip(responses, due, strict=True):
        assert (response.status, response.body) == (expected.status, expected.body)
        assert response.closes == expected.closes
    if due[-1].closes:
        assert d.closed or d.half_closed
    finish(d)
    assert not d.output
    check_endings(app)


FIELD_NAMES = [b"Host", b"Content-Length", b"Transfer-Encoding", b"Expect", b"Connection", b"Upgrade", b"X"]
FIELD_VALUES = [b"", b"0", b"5", b"5, 5", b"5, 6", b"-1", b"chunked", b"gzip", b"gzip, chunked", b"close"]
FIELD_VALUES += [
    b"keep-alive",
    b"upgrade",
    b"100-continue",
    b"websocket",
    b"h2c",
    b"x\x00y",
    b"99999999999999999999",
]


@st.composite
def header_soup(draw: st.DrawFn) -> bytes:
    """A request line and fields drawn from the ones that change framing, plus a body.

    No HEAD: `parse_all` reads every response as one to GET.
    """
    method = draw(st.sampled_from([b"GET", b"POST", b"CONNECT", b"OPTIONS", b"get", b"PRI"]))
    target = draw(st.sampled_from([b"/", b"/upload", b"/blocking", b"/echo/x", b"*", b"example.com:443"]))
    version = draw(st.sampled_from([b"1.1", b"1.0", b"2.0", b"0.9"]))
    fields = draw(
        st.lists(st.tuples(st.sampled_from(FIELD_NAMES), st.sampled_from(FIELD_VALUES)), max_size=5)
    )
    head = b"%s %s HTTP/%s\r\n" % (method, target, version)
    head += b"".join(b"%s: %s\r\n" % field for field in fields)
    return head + b"\r\n" + draw(st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n"]))


GARBAGE = st.one_of(
    st.binary(min_size=1, max_size=40),
    header_soup(),
    st.sampled_from(
        [
            b"\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /echo/x HTTP/1.1\r\nHost: x\r\nX: \x00\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        ]
    ),
)


@SETTINGS
@given(
    st.lists(st.one_of(requests(head=False), GARBAGE), min_size=1, max_size=8),
    SIZES,
)
def test_garbage_anywhere_never_escapes_and_output_stays_valid(
    items: list[tuple[bytes, Expected] | bytes], sizes: list[int]
) -> None:
    app = App(memfile_size=300)
    d = Driver(app, Config(send_chunk_size=100, max_head_size=512, max_body_size=500, access_log=False))
    stream = b"".join(item if isinstance(item, bytes) else item[0] for item in items)
    assume(b"HEAD" not in stream)  # parse_all reads every response as one to GET
    feed_in_pieces(d, stream, sizes)
    finish(d)
    responses = parse_all(d.take())
    # Before the first garbage, each request gets exactly its response.
    prefix: list[Expected] = []
    for item in items:
        if isinstance(item, bytes):
            break
        prefix.append(item[1])
    due = answered(prefix)
    assert len(responses) >= len(due)
    for response, expected in zip(responses, due, strict=False):
        assert (response.status, response.body) == (expected.status, expected.body)
    check_invariants(app, responses)


def check_invariants(app: App, responses: list[Parsed]) -> None:
    """One response per request the app saw, at most one error after them, and it closes.

    Only the last request may go unanswered: the input ended in its body.
    """
    errors = [i for i, r in enumerate(responses) if r.status in CORE_ERRORS]
    assert errors in ([], [len(responses) - 1])
    if errors:
        assert responses[-1].closes
    assert len(app.requests) - 1 <= len(responses) <= len(app.requests) + 1
    check_endings(app)


Event = tuple[str, int, float]
EVENTS: st.SearchStrategy[list[Event]] = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.integers(1, 120) | st.just(2000), st.floats(0, 3)),
        st.sampled_from([("expire", 0, 0.0), ("eof", 0, 0.0), ("shutdown", 0, 0.0), ("lost", 0, 0.0)]),
    ),
    max_size=30,
)


@SETTINGS
@given(st.lists(requests(head=False), min_size=1, max_size=6), EVENTS)
def test_any_sequence_of_events_ends_cleanly(
    items: list[tuple[bytes, Expected]], events: list[Event]
) -> None:
    """Data, deadlines, end of input, shutdown and failures in any order."""
    app = App(memfile_size=300)
    config = Config(
        send_chunk_size=100,
        max_head_size=512,
        keep_alive_timeout=5,
        head_timeout=4,
        body_timeout=3,
        access_log=False,
    )
    d = Driver(app, config)
    stream = b"".join(data for data, _ in items)
    lost = False
    for kind, size, delay in events:
        if d.closed:
            break
        if kind == "data" and stream:
            deadline = d.deadline
            d.now = d.now + delay if deadline is None else min(d.now + delay, deadline)
            piece, stream = stream[:size], stream[size:]
            d.feed(piece)
        elif kind == "expire" and d.deadline is not None:
            d.expire()
        elif kind == "eof":
            d.eof()
            stream = b""
        elif kind == "shutdown":
            d.conn.shutdown()
            if d.conn.phase is Phase.IDLE:  # the transport abandons an idle Receive
                d.advance()
        elif kind == "lost":
            d.conn.connection_lost()
            d.advance()
            lost = True
    finish(d)
    responses = parse_all(d.take())
    due = answered([expected for _, expected in items])
    for response, expected in zip(responses, due, strict=False):
        if response.status in CORE_ERRORS:  # 408 from a deadline, then nothing more
            break
        assert (response.status, response.body) == (expected.status, expected.body)
    if not lost:
        check_invariants(app, responses)
    check_endings(app)


def test_fragments_cover_the_data() -> None:
    data = bytes(range(50))
    for size in (1, 3, 7, 100):
        assert b"".join(fragments(data, size)) == data
