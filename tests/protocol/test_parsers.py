"""Differential tests: h11 and h11-mypyc must be the same parser, byte for byte.

The same input goes to an `h11.Connection` and an `h11_mypyc.Connection`, each acting as
a server the same way, and the two transcripts must be equal: every event (type and
fields), every error (type, message, `error_status_hint`), the states after each step,
the bytes each one writes, and what the core reads beyond the public API (the bytes left
in a chunk, `trailing_data`, 100-continue). Input is random bytes, generated requests
with hostile framing (smuggling shapes, bad chunk lines, bare CR/LF, obs-fold, odd
versions and lengths), and a fixed corpus of known attacks split at every point; all of
it split into random pieces, under small and large head limits.

The core's switch itself (`protocol.parser`) is checked at the end of this module.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from protocol import PARSERS, ParserUnavailable, select_parser
from protocol import connection as core
from protocol import parser as parser_module

h11_mypyc = importlib.import_module("h11_mypyc")  # pinned in requirements-dev.txt: fail if missing
PAIR = (h11, h11_mypyc)
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def parser() -> Iterator[str]:
    """Overrides the folder's parametrised fixture: these tests name both parsers themselves."""
    select_parser("h11")
    yield "h11"


# --- one transcript per parser ---------------------------------------------------------


def _value(value: object) -> object:
    """A field value both modules' objects reduce to equally."""
    if isinstance(value, (bytearray, memoryview)):
        return ("bytes-like", type(value).__name__, bytes(value))
    if hasattr(value, "_full_items"):  # Headers: raw name, lower-case name, value
        return ("headers", [tuple(bytes(part) for part in item) for item in value._full_items])
    return value


def _event(event: object) -> object:
    if isinstance(event, type):  # NEED_DATA, PAUSED
        return event.__name__
    fields = {
        f.name: _value(getattr(event, f.name))
        for f in dataclasses.fields(event)
        if not f.name.startswith("__")
    }
    return (type(event).__name__, fields)


def _error(exc: BaseException) -> tuple[str, str, int | None]:
    return (type(exc).__name__, str(exc), getattr(exc, "error_status_hint", None))


def _state(conn: Any) -> tuple[object, ...]:
    reader = conn._reader
    return (
        conn.our_state.__name__,
        conn.their_state.__name__,
        conn.they_are_waiting_for_100_continue,
        conn.client_is_waiting_for_100_continue,
        conn.their_http_version,
        conn.trailing_data,
        getattr(reader, "__name__", type(reader).__name__),  # a reader function, or a class
        getattr(reader, "_bytes_in_chunk", None),  # read by the core (_chunk_past_limit)
    )


@dataclasses.dataclass(frozen=True)
class Script:
    """How the server side behaves: the same for both parsers."""

    limit: int
    respond_early: bool  # answer as soon as the request head is in
    body: bytes  # response body, sent with Content-Length or chunked
    chunked_response: bool
    send_continue: bool  # send 100 Continue when the client waits for one
    close: bool  # answer with Connection: close


def transcript(module: ModuleType, pieces: list[bytes], eof: bool, script: Script) -> list[object]:
    """Everything observable while `module` serves `pieces` according to `script`."""
    conn = module.Connection(module.SERVER, max_incomplete_event_size=script.limit)
    out: list[object] = []
    responded = False

    def step(name: str, call: Any) -> Any:
        try:
            result = call()
        except Exception as exc:
            out.append((name, "raised", _error(exc), _state(conn)))
            raise
        return result

    def respond(request: Any) -> None:
        nonlocal responded
        responded = True
        headers: list[tuple[bytes, bytes]] = [(b"X-Echo", request.target[:40])]
        if script.close:
            headers.append((b"Connection", b"close"))
        if not script.chunked_response:
            headers.append((b"Content-Length", b"%d" % len(script.body)))
        sent = step("send", lambda: conn.send(module.Response(status_code=200, headers=headers)))
        out.append(("sent", bytes(sent)))
        if script.body and request.method != b"HEAD":
            sent = step("send", lambda: conn.send(module.Data(data=script.body)))
            out.append(("sent", bytes(sent)))
        sent = step("send", lambda: conn.send(module.EndOfMessage()))
        out.append(("sent", bytes(sent)))

    try:
        for index, piece in enumerate([*pieces, b""] if eof else pieces):
            step("receive", lambda piece=piece: conn.receive_data(piece))
            out.append(("fed", index, _state(conn)))
            for _ in range(100):  # each piece yields a bounded number of events
                event = step("next_event", conn.next_event)
                out.append(("event", _event(event), _state(conn)))
                if isinstance(event, type) and event.__name__ == "NEED_DATA":
                    break
                if isinstance(event, type) and event.__name__ == "PAUSED":
                    if conn.our_state is module.SEND_RESPONSE and not responded:
                        raise AssertionError("paused before responding")
                    if conn.our_state is module.DONE and conn.their_state is module.DONE:
                        step("start_next_cycle", conn.start_next_cycle)
                        responded = False
                        out.append(("cycle", _state(conn)))
                        continue
                    break
                kind = type(event).__name__
                if kind == "Request":
                    if script.send_continue and conn.they_are_waiting_for_100_continue:
                        sent = step(
                            "send",
                            lambda: conn.send(
                                module.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                            ),
                        )
                        out.append(("sent", bytes(sent)))
                    if script.respond_early:
                        respond(event)
                elif kind == "EndOfMessage" and not responded:
                    respond(_last_request(out))
                elif kind == "ConnectionClosed":
                    break
    except Exception:
        pass  # recorded by step(); both must fail at the same point the same way
    return out


def _last_request(out: list[object]) -> Any:
    for item in reversed(out):
        if isinstance(item, tuple) and item[0] == "event" and isinstance(item[1], tuple):
            name, fields = item[1]
            if name == "Request":
                return _RequestView(fields["method"], fields["target"])
    raise AssertionError("EndOfMessage without a Request")


@dataclasses.dataclass
class _RequestView:
    method: bytes
    target: bytes


def assert_same(pieces: list[bytes], eof: bool, script: Script) -> list[object]:
    pure, compiled = (transcript(module, pieces, eof, script) for module in PAIR)
    for index, (a, b) in enumerate(zip(pure, compiled, strict=False)):
        assert a == b, f"first difference at step {index}:\n  h11:       {a!r}\n  h11_mypyc: {b!r}"
    assert len(pure) == len(compiled), (pure[len(compiled) :], compiled[len(pure) :])
    return pure


# --- inputs -------------------------------------------------------------------------------

CORPUS: list[bytes] = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",  # bare LFs in the head: allowed
    b"GET / HTTP/1.1\rHost: a\r\r",  # bare CRs
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://x/y HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\r\n folded\r\nHost: a\r\n\r\n",  # continuation at the start
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",  # space before the colon
    b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x7f\x01\xff\r\n\r\n",
    b"GET / HTTP/1.1\r\n: empty\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: \t v \t \r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    b"",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1;q="x"\r\nhello\r\n0\r\n\r\n',
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",  # bare LF chunks
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\nContent-Length: 9\r\n"
    b"\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",  # then EOF
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",  # a response sent to a server
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"G" * 300 + b" / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 40 + b"\r\n",
]
SCRIPTS = [
    Script(
        limit=16384, respond_early=False, body=b"ok", chunked_response=False, send_continue=True, close=False
    ),
    Script(limit=64, respond_early=True, body=b"", chunked_response=True, send_continue=False, close=True),
]


def split_everywhere(data: bytes) -> Iterator[list[bytes]]:
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]


@pytest.mark.parametrize("data", CORPUS, ids=range(len(CORPUS)))
def test_the_hostile_corpus_split_at_every_point(data: bytes) -> None:
    for script in SCRIPTS:
        for pieces in split_everywhere(data):
            for eof in (False, True):
                assert_same(pieces, eof, script)


# Each generated request breaks at most two rules (the parts named in BREAKABLE) and gets
# everything else right, so that parsing goes past the request line into headers, bodies
# and the next request; a part that is not broken takes one of its valid values.
BREAKABLE = ("method", "target", "version", "eol", "gap", "field", "host", "size", "extension", "chunk-end")
VALID = {
    "method": [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS"],
    "target": [b"/", b"/a?b=c", b"/echo/x", b"http://h/p"],
    "version": [b"1.1", b"1.1", b"1.0"],
    "eol": [b"\r\n", b"\r\n", b"\n"],
    "gap": [b": ", b":", b":  "],
    "field": [b"Accept: */*", b"X-A: a b", b"Cookie:", b"user-agent: \xe9t\xe9", b"X-B:\tv"],
    "extension": [b"", b"", b";x", b";x=1"],
}
HOSTILE = {
    "method": [b"get", b"", b"G ET", b"\xff", b"CONNECT", b"X" * 70],
    "target": [b"*", b"/\x00", b"/ /", b"", b"/\x7f", b"/\xe9"],
    "version": [b"2.0", b"1", b"1.1 ", b"0.9", b"11", b"1.x"],
    "eol": [b"\r", b"\r\r\n", b"\n\r", b"\r\n\t folded\r\n"],
    "gap": [b" : ", b":\t", b"::", b" :", b":\x0b"],
    "field": [
        *(b"X A: a", b": a", b" X: a", b"X\x00: a", b"X\xff: a", b"X-A: a\x00b", b"X-A: a\rb", b"X-A: \x01"),
        *(b"X-A: a \x7f", b"X-A: " + b"x" * 200, b"\tX: a", b"Host: b", b"Upgrade: h2c"),
        *(b"Content-Length: 3, 3", b"Content-Length: 3,4", b"Content-Length: +3", b"Content-Length: -1"),
        *(b"Content-Length: 1e3", b"Content-Length: " + b"9" * 25, b"Transfer-Encoding: identity"),
        *(
            b"Transfer-Encoding: gzip, chunked",
            b"Transfer-Encoding: chunked, gzip",
            b"Transfer-Encoding: Chunked",
        ),
        *(b"Expect: 100-Continue", b"Connection: keep-alive, Upgrade", b"Connection: close, close"),
    ],
    "size": [b"00", b"A", b"-1", b"0x3", b"f" * 20, b"", b" 3", b"3 ", b"z", b"3\t", b"1", b"30"],
    "extension": [b';x="a;b"', b"; x", b";\x00", b";" + b"e" * 100, b";x=\xff"],
    "chunk-end": [b"", b"\n", b"\r", b"XX", b"\r\r\n"],
}


@st.composite
def message(draw: st.DrawFn) -> bytes:
    """A request that breaks at most two rules."""
    broken = draw(st.sets(st.sampled_from(BREAKABLE), max_size=2))

    def part(name: str) -> bytes:
        return draw(st.sampled_from(HOSTILE[name] if name in broken else VALID[name]))

    eol = part("eol")
    head = [part("method") + b" " + part("target") + b" HTTP/" + part("version")]
    fields = [part("field") for _ in range(draw(st.integers(0, 3)))]
    if "host" not in broken:
        fields.insert(draw(st.integers(0, len(fields))), b"Host" + part("gap") + b"example")
    options = draw(st.sets(st.sampled_from(["close", "continue"]), max_size=2))
    fields += [b"Connection: close"] * ("close" in options) + [b"Expect: 100-continue"] * (
        "continue" in options
    )
    head += fields
    body = b""
    kind = draw(
        st.sampled_from(
            ["none", "length", "chunked", "both"] if "size" in broken else ["none", "length", "chunked"]
        )
    )
    if kind in ("length", "both"):
        body = draw(st.binary(max_size=40))
        head.append(b"Content-Length: %d" % (len(body) + draw(st.integers(-3, 3)) * ("size" in broken)))
    if kind in ("chunked", "both"):
        head.append(b"Transfer-Encoding: chunked")
        body = b""
        chunks = draw(st.lists(st.binary(min_size=1, max_size=45), max_size=3))
        bad = draw(st.integers(0, len(chunks)))  # the chunk whose size line or ending breaks
        for index, data in enumerate(chunks):
            size = part("size") if index == bad and "size" in broken else b"%x" % len(data)
            end = part("chunk-end") if index == bad and "chunk-end" in broken else b"\r\n"
            body += size + part("extension") + b"\r\n" + data + end
        body += b"0" + part("extension") + b"\r\n"
        body += b"".join(part("field") + b"\r\n" for _ in range(draw(st.integers(0, 2))))  # trailers
        body += b"\r\n"
    prefix = draw(st.sampled_from([b""] * 8 + [b"\r\n", b"\n"]))
    return prefix + eol.join(head) + eol + eol + body


STREAMS = st.one_of(
    st.binary(max_size=200),
    st.lists(message(), min_size=1, max_size=3).map(b"".join),
    st.lists(message(), min_size=2, max_size=3).map(b"".join),  # pipelined
    st.tuples(st.lists(message(), min_size=1, max_size=2).map(b"".join), st.binary(max_size=30)).map(
        b"".join
    ),
)


SCRIPT = st.builds(
    Script,
    limit=st.sampled_from([48, 256, 16384, 16384]),
    respond_early=st.booleans(),
    body=st.sampled_from([b"", b"x", b"response body"]),
    chunked_response=st.booleans(),
    send_continue=st.booleans(),
    close=st.booleans(),
)


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [piece for piece in pieces if piece]  # b"" would be end of input: that is `eof`'s part


@SETTINGS
@given(st.data(), STREAMS, st.booleans(), SCRIPT)
def test_random_and_hostile_streams_in_random_pieces(
    data: st.DataObject, stream: bytes, eof: bool, script: Script
) -> None:
    assert_same(data.draw(split(stream)), eof, script)


def test_the_generators_reach_both_outcomes() -> None:
    """Guard the guard: the corpus is parsed in full and refused, by both, in both ways."""
    outcomes = set()
    for data in CORPUS:
        trace = assert_same([data], True, SCRIPTS[0])
        outcomes.add(any(isinstance(item, tuple) and item[1] == "raised" for item in trace))
    assert outcomes == {True, False}


# --- the writing side: what a server may send ---------------------------------------------

HEADER_BYTES = st.binary(max_size=6) | st.sampled_from(
    [b"X-A", b"a b", b"\tv", b"v\t", b"v v", b"\x7f", b"\x80"]
)


@SETTINGS
@given(
    st.lists(st.tuples(HEADER_BYTES, HEADER_BYTES), max_size=4),
    st.integers(-5, 1100) | st.sampled_from([100, 101, 199, 200, 204, 304]),
    st.binary(max_size=6),
)
def test_responses_are_validated_and_written_the_same(
    headers: list[tuple[bytes, bytes]], status: int, reason: bytes
) -> None:
    results = []
    for module in PAIR:
        conn = module.Connection(module.SERVER)
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        conn.next_event()
        kind = module.InformationalResponse if status < 200 else module.Response
        try:
            event = kind(status_code=status, headers=headers, reason=reason)
            results.append(("sent", _event(event), conn.send(event), conn.send(module.EndOfMessage())))
        except Exception as exc:
            results.append(("refused", _error(exc), conn.our_state.__name__))
    assert results[0] == results[1]


def test_events_out_of_order_are_refused_the_same() -> None:
    for order in (["data"], ["eom"], ["response", "response"], ["response", "eom", "data"], ["cc", "data"]):
        results = []
        for module in PAIR:
            conn = module.Connection(module.SERVER)
            conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            conn.next_event()
            trace: list[object] = []
            events = {
                "data": lambda m=module: m.Data(data=b"x"),
                "eom": lambda m=module: m.EndOfMessage(),
                "response": lambda m=module: m.Response(status_code=200, headers=[]),
                "cc": lambda m=module: m.ConnectionClosed(),
            }
            for name in order:
                try:
                    trace.append(conn.send(events[name]()))
                except Exception as exc:
                    trace.append(_error(exc))
                trace.append(conn.our_state.__name__)
            results.append(trace)
        assert results[0] == results[1], order


# --- the switch in protocol.parser --------------------------------------------------------


def test_the_switch_rebinds_the_core_and_back() -> None:
    try:
        select_parser("h11-mypyc")
        assert core.h11 is h11_mypyc
        assert core._H11Headers is h11_mypyc._headers.Headers
        for value in vars(core).values():  # nothing of h11 is left in the core
            assert not parser_module._mentions(value, h11), value
        assert parser_module.current_parser() == "h11-mypyc"
    finally:
        select_parser("h11")
    assert core.h11 is h11 and type(core._END_OF_MESSAGE) is h11.EndOfMessage
    assert h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue") == core._CONTINUE


def test_the_core_uses_nothing_private_that_either_lacks() -> None:
    """The private parts the core reads: Headers(full_items) and its _full_items, and
    the chunked reader's _bytes_in_chunk."""
    for module in PAIR:
        items = [(b"X-A", b"x-a", b"1")]
        assert module._headers.Headers(items)._full_items == items
        conn = module.Connection(module.SERVER)
        conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nab")
        conn.next_event(), conn.next_event()
        assert conn._reader._bytes_in_chunk == 7, module


def test_the_compiled_parser_takes_bytes_only_which_the_core_respects() -> None:
    """h11_mypyc's receive_data refuses bytearray and memoryview (h11 takes them): the
    core hands it bytes, also when it slices a large read."""
    with pytest.raises(TypeError):
        h11_mypyc.Connection(h11_mypyc.SERVER).receive_data(memoryview(b"GET"))  # type: ignore[arg-type]
    for name in PARSERS:
        select_parser(name)
        try:
            conn = protocol.ServerConnection(
                lambda request: protocol.Response(200), protocol.Config(max_head_size=64), now=0.0
            )
            data = (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + b"\r\n" * 40) * 5  # several slices
            conn.receive_data(data, 0.0)
            sent = b""
            for _ in range(50):
                action = conn.next_action(0.0)
                if isinstance(action, protocol.Send):
                    sent += action.data
                if isinstance(action, (protocol.Receive, protocol.Close)):
                    break
            assert sent.count(b"HTTP/1.1 200 OK\r\n") == 5, (name, sent)
        finally:
            select_parser("h11")


def test_a_missing_parser_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(parser_module.PARSERS, "h11-mypyc", "h11_mypyc_not_installed")
    with pytest.raises(ParserUnavailable, match=r"h11-mypyc package.*\[fast\]"):
        select_parser("h11-mypyc")
    assert parser_module.current_parser() == "h11" and core.h11 is h11
    with pytest.raises(ValueError, match="unknown parser"):
        select_parser("httptools")


def test_a_global_the_switch_cannot_translate_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "_SOME_STATES", (h11.IDLE, h11.DONE), raising=False)
    with pytest.raises(RuntimeError, match="_SOME_STATES"):
        select_parser("h11-mypyc")
    assert core.h11 is h11, "nothing was changed"


def test_every_core_module_naming_h11_is_loaded_with_the_package() -> None:
    """The switch rebinds the modules loaded when it runs: a module of protocol/ that
    names h11 but is imported later (lazily) would keep h11 and mix the two parsers."""
    package = Path(protocol.__file__).parent
    naming = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(name.split(".")[0] == "h11" for name in names):
                naming.add(f"protocol.{path.stem}")
    assert "protocol.connection" in naming  # the reader works
    code = "import protocol, sys; print(' '.join(m for m in sys.modules if m.startswith('protocol.')))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=package.parent, capture_output=True, text=True, check=True
    )
    assert naming <= set(loaded.stdout.split()), naming - set(loaded.stdout.split())
