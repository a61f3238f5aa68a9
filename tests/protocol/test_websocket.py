"""WebSockets in the core, without sockets: wsproto's own client is the peer.

The app tasks are plain coroutines that pause (see test_sessions); the Driver plays the
transport and the event loop. Frames are fed in odd fragment sizes; raw frames (built by
`frame`) cover what a well-behaved client never sends. The Autobahn|Testsuite's case
groups are the checklist: framing (1), pings (2), reserved bits (3), opcodes (4),
fragmentation (5), UTF-8 (6), close (7), large messages (9), permessage-deflate (12, 13).
"""

from __future__ import annotations

import base64
import os
import struct
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable, Sequence

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import (
    Request as WSRequest,
)
from wsproto.extensions import PerMessageDeflate

from protocol import Channel, Close, Config, HalfClose, Receive, Request, Response, Send, Wait
from protocol.websocket import CLOSE_TIMEOUT, FRAMES_PER_STEP, READ_AHEAD, WSPROTO_FRAME

from .helpers import FRAGMENT_SIZES, Driver, fragments, get, parse_one
from .test_sessions import pause, sent


def config(**changes: object) -> Config:
    values: dict[str, object] = {"access_log": False, "websocket": True}
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


# --- the app side -------------------------------------------------------------------------


async def receive(channel: Channel) -> str | bytes | None:
    """The next message, or None once the WebSocket is closed for the task."""
    while True:
        closed = channel.close_code is not None
        got = channel.receive_message()
        if got is not None:
            return got
        if closed:
            return None
        await pause()


Script = Callable[[Channel], Awaitable[None]]


class WSApp:
    """Answers every request with a session running `script`; keeps requests and channels."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Request] = []
        self.channels: list[Channel] = []
        self.received: list[str | bytes] = []

    def __call__(self, request: Request) -> WSApp.Session:
        self.requests.append(request)
        return WSApp.Session(self)

    class Session:
        def __init__(self, app: WSApp) -> None:
            self.app = app

        def run(self, channel: Channel) -> Awaitable[None]:
            self.app.channels.append(channel)
            return self.app.script(channel)

    @property
    def channel(self) -> Channel:
        return self.channels[-1]


def echo(subprotocol: str | None = None) -> Script:
    async def script(channel: Channel) -> None:
        channel.accept(subprotocol, [(b"x-hello", b"1")])
        while (message := await receive(channel)) is not None:
            await sent(channel, channel.send_message(message))
        channel.finish()

    return script


async def idle(channel: Channel) -> None:
    """Accepts, then only waits for the end."""
    channel.accept()
    while channel.close_code is None:
        await pause()
    channel.finish()


# --- the peer -------------------------------------------------------------------------------


class Peer:
    """wsproto's client with a Driver: handshake, send, and the events the core's bytes make."""

    def __init__(
        self,
        script: Script,
        cfg: Config | None = None,
        *,
        subprotocols: Sequence[str] = (),
        deflate: bool = False,
        size: int = 1 << 20,
    ) -> None:
        self.app = WSApp(script)
        self.driver = Driver(self.app, cfg or config())
        self.client = WSConnection(ConnectionType.CLIENT)
        self.size = size
        extensions = [PerMessageDeflate()] if deflate else []
        request = WSRequest(
            host="example", target="/chat", subprotocols=list(subprotocols), extensions=extensions
        )
        self.driver.feed(self.client.send(request), size)
        self.accepted = self.events()

    def events(self) -> list[Event]:
        data = self.driver.take()
        if data:
            self.client.receive_data(data)
        return list(self.client.events())

    def send(self, *events: Event) -> list[Event]:
        data = b"".join(self.client.send(event) for event in events)
        self.driver.feed(data, self.size)
        return self.events()

    def raw(self, data: bytes) -> list[Event]:
        self.driver.feed(data, self.size)
        return self.events()


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    """One client frame, as written, whatever the rules say."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def messages(events: list[Event]) -> list[str | bytes]:
    return [e.data for e in events if isinstance(e, Message)]


def close_of(events: list[Event]) -> CloseConnection:
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert len(closes) == 1, events
    return closes[0]


def handshake(*lines: bytes) -> bytes:
    return get(b"/chat", b"Upgrade: websocket", b"Connection: Upgrade", *lines)


KEY = b"Sec-WebSocket-Key: " + base64.b64encode(b"0123456789abcdef")


# --- the opening handshake ----------------------------------------------------------------


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
def test_a_valid_handshake_is_accepted_with_101_in_any_fragments(size: int) -> None:
    peer = Peer(echo(), size=size)
    assert [type(e) for e in peer.accepted] == [AcceptConnection]
    accepted = peer.accepted[0]
    assert isinstance(accepted, AcceptConnection)
    assert (b"x-hello", b"1") in accepted.extra_headers
    request = peer.app.requests[0]
    assert request.websocket and request.target == b"/chat"
    assert messages(peer.send(TextMessage("hello"), BytesMessage(b"\x00\xff"))) == ["hello", b"\x00\xff"]


def test_the_101_carries_rfc_6455s_accept_token() -> None:
    d = Driver(WSApp(echo()), config())
    d.feed(handshake(KEY, b"Sec-WebSocket-Version: 13"))
    head = bytes(d.output)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    # RFC 6455 §1.3's example key and answer
    d = Driver(WSApp(echo()), config())
    d.feed(handshake(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13"))
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in bytes(d.output)
    assert b"\r\nUpgrade: websocket\r\n" in bytes(d.output)
    assert b"\r\nConnection: Upgrade\r\n" in bytes(d.output)


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        ((b"Sec-WebSocket-Version: 13",), 400),  # no key
        ((b"Sec-WebSocket-Key: c2hvcnQ=", b"Sec-WebSocket-Version: 13"), 400),  # not 16 bytes
        ((b"Sec-WebSocket-Key: !!!notbase64!!!!!!!!!!==", b"Sec-WebSocket-Version: 13"), 400),
        ((KEY, KEY, b"Sec-WebSocket-Version: 13"), 400),  # two keys
        ((KEY,), 400),  # no version
        ((KEY, b"Sec-WebSocket-Version: 8"), 426),
        ((KEY, b"Sec-WebSocket-Version: 13", b"Content-Length: 2"), 400),  # a body
    ],
)
def test_a_bad_handshake_is_refused_before_the_app_sees_it(lines: tuple[bytes, ...], status: int) -> None:
    app = WSApp(echo())
    d = Driver(app, config())
    d.feed(handshake(*lines) + (b"hi" if b"Content-Length: 2" in lines else b""))
    response = parse_one(bytes(d.output))
    assert response.status == status
    assert response.closes and d.closed
    assert app.requests == []
    if status == 426 or lines == (KEY,):
        assert response.header(b"sec-websocket-version") == b"13"
    if status == 426:  # RFC 9110 §15.5.22, §7.8: Upgrade, and with it its connection option
        assert response.header(b"upgrade") == b"websocket"
        assert b"upgrade" in response.connection_options


@pytest.mark.parametrize(
    "request_bytes",
    [
        handshake(KEY, b"Sec-WebSocket-Version: 13").replace(b"GET", b"POST", 1),
        handshake(KEY, b"Sec-WebSocket-Version: 13").replace(b": Upgrade", b": keep-alive"),
        get(b"/chat", b"Upgrade: h2c", b"Connection: Upgrade"),
    ],
)
def test_other_upgrade_requests_are_ordinary_requests(request_bytes: bytes) -> None:
    seen: list[Request] = []

    def app(request: Request) -> Response:
        seen.append(request)
        return Response(200, body=b"plain")

    d = Driver(app, config())
    d.feed(request_bytes)
    assert not seen[0].websocket
    assert b"200 OK" in bytes(d.output)


def test_without_the_websocket_option_a_handshake_is_an_ordinary_request() -> None:
    """The built-in routes (Config.websocket off) see an upgrade request as any other."""
    seen: list[Request] = []

    def app(request: Request) -> Response:
        seen.append(request)
        return Response(404, body=b"not found")

    d = Driver(app, Config(access_log=False))
    d.feed(handshake(b"Sec-WebSocket-Version: 8"))  # invalid, but not our business then
    assert not seen[0].websocket
    assert parse_one(bytes(d.output)).status == 404


def test_the_chosen_subprotocol_is_sent_back() -> None:
    peer = Peer(echo("superchat"), subprotocols=["chat", "superchat"])
    accepted = peer.accepted[0]
    assert isinstance(accepted, AcceptConnection)
    assert accepted.subprotocol == "superchat"
    assert peer.app.requests[0].header(b"sec-websocket-protocol") == b"chat, superchat"


def test_a_task_that_closes_before_accepting_gets_403() -> None:
    async def refuse(channel: Channel) -> None:
        channel.close(1000)
        channel.finish()

    peer = Peer(refuse)
    assert isinstance(peer.accepted[0], RejectConnection)
    assert peer.accepted[0].status_code == 403
    assert peer.driver.closed
    assert peer.app.channel.close_code == 1000 and peer.app.channel.gone


def test_a_task_may_deny_with_a_response_of_its_own() -> None:
    async def deny(channel: Channel) -> None:
        channel.start(Response(401, [(b"www-authenticate", b"Basic")]))
        await sent(channel, channel.send(b"who are you?", more=False))
        channel.finish()

    peer = Peer(deny)
    reject = peer.accepted[0]
    assert isinstance(reject, RejectConnection)
    assert reject.status_code == 401 and (b"www-authenticate", b"Basic") in reject.headers
    assert b"".join(e.data for e in peer.accepted if isinstance(e, RejectData)) == b"who are you?"
    assert peer.driver.closed


@pytest.mark.parametrize("fails", [False, True])
def test_a_task_that_ends_without_accepting_gets_500(fails: bool, caplog: pytest.LogCaptureFixture) -> None:
    async def leave(channel: Channel) -> None:
        channel.finish(RuntimeError("boom") if fails else None)

    peer = Peer(leave)
    reject = peer.accepted[0]
    assert isinstance(reject, RejectConnection) and reject.status_code == 500
    assert peer.driver.closed


def test_a_message_before_accepting_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    async def early(channel: Channel) -> None:
        channel.send_message("too early")
        channel.finish()

    peer = Peer(early)
    assert isinstance(peer.accepted[0], RejectConnection) and peer.accepted[0].status_code == 500
    assert "before accepting" in caplog.text


def test_invalid_accept_headers_are_a_500(caplog: pytest.LogCaptureFixture) -> None:
    async def bad(channel: Channel) -> None:
        channel.accept(None, [(b"bad header", b"x")])
        channel.finish()

    peer = Peer(bad)
    assert isinstance(peer.accepted[0], RejectConnection) and peer.accepted[0].status_code == 500
    assert peer.app.channel.gone


def test_frames_sent_with_the_handshake_are_read_after_accepting() -> None:
    """A client may not send before the 101, but bytes already read must not be lost."""
    client = WSConnection(ConnectionType.CLIENT)
    data = client.send(WSRequest(host="example", target="/chat"))
    app = WSApp(echo())
    d = Driver(app, config())
    d.feed(data + frame(0x1, b"early"))
    client.receive_data(d.take())
    assert messages(list(client.events())) == ["early"]


def test_the_task_waits_without_deadline_before_accepting_and_sees_the_peer_leave() -> None:
    async def slow(channel: Channel) -> None:
        while channel.close_code is None:
            await pause()
        channel.finish()

    app = WSApp(slow)
    d = Driver(app, config())
    d.feed(handshake(KEY, b"Sec-WebSocket-Version: 13"))
    assert isinstance(d.waiting, Wait) and d.waiting.deadline is None
    d.conn.connection_lost()
    d.run_tasks()
    assert app.channel.close_code == 1006 and app.channel.gone


# --- messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
def test_fragmented_messages_with_pings_between_are_reassembled(size: int) -> None:
    """Autobahn 5: fragments, control frames interleaved; 2: a ping gets its payload back."""
    peer = Peer(echo(), size=size)
    events = peer.send(
        TextMessage("Hel", message_finished=False),
        Ping(b"in between"),
        TextMessage("lo, ", message_finished=False),
        TextMessage("wörld", message_finished=True),
        BytesMessage(b"\x01", message_finished=False),
        BytesMessage(b"\x02\x03", message_finished=True),
    )
    assert [e.payload for e in events if isinstance(e, Pong)] == [b"in between"]
    assert messages(events) == ["Hello, wörld", b"\x01\x02\x03"]


def test_utf8_split_across_fragments_is_valid() -> None:
    """Autobahn 6.2: a character's bytes in two frames."""
    peer = Peer(echo())
    euro = "€".encode()
    events = peer.raw(frame(0x1, b"a" + euro[:1], fin=False) + frame(0x0, euro[1:] + b"b"))
    assert messages(events) == ["a€b"]


def test_empty_messages_and_frames() -> None:
    """Autobahn 1.1.1, 1.2.1, 5.x with empty fragments."""
    peer = Peer(echo())
    events = peer.raw(frame(0x1) + frame(0x2) + frame(0x1, b"", fin=False) + frame(0x0, b"x"))
    assert messages(events) == ["", b"", "x"]


@pytest.mark.parametrize("length", [125, 126, 127, 128, 65535, 65536, 1 << 20])
def test_payload_lengths_of_every_encoding(length: int) -> None:
    """Autobahn 1.1/1.2 and 9: 7-bit, 16-bit and 64-bit lengths, at their edges."""
    peer = Peer(echo(), size=4093)
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    assert messages(peer.send(BytesMessage(payload))) == [payload]


def test_a_message_over_the_limit_closes_with_1009() -> None:
    peer = Peer(echo(), config(ws_max_size=10))
    assert messages(peer.send(TextMessage("0123456789"))) == ["0123456789"]  # at the limit
    events = peer.send(TextMessage("0123456789!"))
    assert close_of(events).code == 1009
    assert peer.app.channel.close_code == 1009
    assert any(isinstance(a, HalfClose) for a in peer.driver.actions)


def test_the_limit_counts_text_in_utf8_bytes() -> None:
    peer = Peer(echo(), config(ws_max_size=10))
    assert messages(peer.send(TextMessage("ééééé"))) == ["ééééé"]  # 10 bytes
    assert close_of(peer.send(TextMessage("éééééé"))).code == 1009  # 12 bytes, 6 characters


def test_a_frame_announced_over_the_limit_closes_with_1009_at_its_header() -> None:
    peer = Peer(echo(), config(ws_max_size=1000))
    head = frame(0x2, b"x" * 1001)[:8]  # the length and the mask key, no payload yet
    assert close_of(peer.raw(head)).code == 1009


@pytest.mark.parser_agnostic
@pytest.mark.parametrize("deflate", [False, True])
@pytest.mark.parametrize("size", [1, 5, 1 << 20])
def test_both_paths_agree_on_a_mixed_stream(deflate: bool, size: int) -> None:
    """The fast path (no extension) and wsproto's (deflate) give the same messages for the
    same stream: whole frames, fragments, control frames between, big and small."""
    peer = Peer(echo(), deflate=deflate, size=size)
    big = bytes(range(256)) * 257  # just over 65535 bytes: the 8-byte length
    events = peer.send(
        TextMessage("a"),
        BytesMessage(big),
        TextMessage("frag", message_finished=False),
        Ping(b"p"),
        TextMessage("ment€", message_finished=True),
        BytesMessage(b""),
        TextMessage("z" * 70_000),
    )
    assert messages(events) == ["a", big, "fragment€", b"", "z" * 70_000]
    assert [e.payload for e in events if isinstance(e, Pong)] == [b"p"]


def test_a_fragmented_message_over_the_limit_closes_with_1009_before_it_ends() -> None:
    peer = Peer(echo(), config(ws_max_size=100))
    events = peer.raw(frame(0x2, b"x" * 60, fin=False) + frame(0x0, b"x" * 60, fin=False))
    assert close_of(events).code == 1009
    assert peer.app.received == []


def test_a_message_in_many_small_fragments_holds_memory_near_its_size() -> None:
    """A message of 3,000 fragments of 2 bytes (6 KB) must not cost ~60 bytes a fragment:
    else a 16 MiB message in 2-byte fragments would hold ~500 MB (only its bytes count
    against ws_max_size)."""
    received: list[str | bytes] = []

    async def keep(channel: Channel) -> None:
        channel.accept()
        while (message := await receive(channel)) is not None:
            received.append(message)
        channel.finish()

    peer = Peer(keep)
    fragments = frame(0x1, b"ab", fin=False) + frame(0x0, b"ab", fin=False) * 2998
    tracemalloc.start()
    try:
        peer.driver.feed(fragments, 64 * 1024)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    peer.driver.feed(frame(0x0, b"ab"))
    assert received == ["ab" * 3000]
    assert held < 40_000, f"{held} bytes held for a 6 KB message"


@pytest.mark.parametrize(
    ("deflate", "unit"),
    [
        pytest.param(False, frame(0x2, b"m"), id="tiny messages"),
        pytest.param(False, frame(0x9, b"p"), id="pings"),
        pytest.param(False, frame(0x0, b"", fin=False), id="empty fragments"),
        pytest.param(True, frame(0x0, b"", fin=False), id="empty fragments, deflate"),
    ],
)
def test_a_read_of_many_tiny_frames_is_served_a_bounded_number_per_step(deflate: bool, unit: bytes) -> None:
    """A 64 KiB read of 6-byte frames is ~10,000 frames: ~0.2 s of CPU on wsproto's path,
    seconds with an app task taking the messages, all that time holding the event loop. A
    step takes FRAMES_PER_STEP at most (a frame through wsproto counts WSPROTO_FRAME), then
    the core waits until now (the event loop runs the others), then goes on. (Here a 16 KiB
    read.)"""
    batches: list[int] = []

    async def batched(channel: Channel) -> None:
        channel.accept()
        while channel.close_code is None:
            count = 0
            while channel.receive_message() is not None:
                count += 1
            if count:
                batches.append(count)
            await pause()
        channel.finish()

    peer = Peer(batched, deflate=deflate)
    d = peer.driver
    start = frame(0x2, b"", fin=False) if unit[0] == 0x00 else b""
    count = 16 * 1024 // len(unit)
    d.actions.clear()
    d.feed(start + unit * count)
    turns = [a for a in d.actions if isinstance(a, Wait) and a.deadline == d.now]
    if deflate:  # a step feeds wsproto a slice of 8 KiB (~1,400 frames) at most
        assert len(turns) >= 16 * 1024 // 8192 - 1
    else:
        cost = 1 if unit[0] == 0x82 else WSPROTO_FRAME  # the fast path's, or wsproto's
        assert len(turns) >= count * cost // FRAMES_PER_STEP - 1, len(turns)
    assert isinstance(d.waiting, Receive)  # all read in the end
    if unit[0] == 0x82:
        assert sum(batches) == count and max(batches) <= FRAMES_PER_STEP
    if unit[0] == 0x89:
        assert len([e for e in peer.events() if isinstance(e, Pong)]) == count


# --- protocol errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(0x1, b"x", rsv=1), id="reserved bit 1 without deflate (Autobahn 3)"),
        pytest.param(frame(0x1, b"x", rsv=2), id="reserved bit 2 (Autobahn 3)"),
        pytest.param(frame(0x1, b"x", rsv=4), id="reserved bit 3 (Autobahn 3)"),
        pytest.param(frame(0x3, b"x"), id="reserved data opcode (Autobahn 4.1)"),
        pytest.param(frame(0xB, b"x"), id="reserved control opcode (Autobahn 4.2)"),
        pytest.param(frame(0x9, b"x", fin=False), id="fragmented ping (Autobahn 5.1)"),
        pytest.param(frame(0x9, b"x" * 126), id="control frame over 125 bytes (Autobahn 2.5)"),
        pytest.param(frame(0x0, b"x"), id="continuation with nothing to continue (Autobahn 5.9)"),
        pytest.param(frame(0x1, b"a", fin=False) + frame(0x1, b"b"), id="text inside a text (Autobahn 5.18)"),
        pytest.param(frame(0x1, b"x", mask=False), id="unmasked client frame"),
        pytest.param(frame(0x8, b"\x03"), id="close with a 1-byte payload (Autobahn 7.3.2)"),
        pytest.param(frame(0x8, struct.pack("!H", 999)), id="close code 999 (Autobahn 7.9)"),
        pytest.param(frame(0x8, struct.pack("!H", 1005)), id="close code 1005 (Autobahn 7.9)"),
        pytest.param(frame(0x8, struct.pack("!H", 2000)), id="close code 2000 (Autobahn 7.9)"),
        pytest.param(frame(0x8, struct.pack("!H", 5000)), id="close code 5000 (Autobahn 7.9)"),
    ],
)
def test_a_protocol_error_closes_with_1002(data: bytes) -> None:
    peer = Peer(echo(), size=3)
    events = peer.raw(frame(0x1, b"before") + data + frame(0x1, b"after"))
    assert messages(events) == ["before"]
    assert close_of(events).code == 1002
    assert peer.app.channel.close_code == 1002
    d = peer.driver
    assert any(isinstance(a, HalfClose) for a in d.actions)  # the close frame is not reset away
    d.eof()
    assert d.closed


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(0x1, b"\xff"), id="invalid byte (Autobahn 6.3)"),
        pytest.param(frame(0x1, b"\xed\xa0\x80"), id="a surrogate (Autobahn 6.x)"),
        pytest.param(frame(0x1, "€".encode()[:2]), id="a truncated character at the end"),
        pytest.param(frame(0x1, b"ok", fin=False) + frame(0x0, b"\xc0\xaf"), id="overlong, in a fragment"),
        pytest.param(frame(0x8, struct.pack("!H", 1000) + b"\xff"), id="close reason (Autobahn 7.5.1)"),
    ],
)
@pytest.mark.parametrize("size", [1, 1 << 20])  # in pieces (wsproto's way), whole (the fast path)
def test_invalid_utf8_closes_with_1007(data: bytes, size: int) -> None:
    peer = Peer(echo(), size=size)
    events = peer.raw(data)
    assert close_of(events).code == 1007
    assert peer.app.channel.close_code == 1007


def test_an_invalid_utf8_fragment_fails_fast_before_the_message_ends() -> None:
    """Autobahn 6.4: the error is noticed in the first bad fragment, not at the end."""
    peer = Peer(echo())
    events = peer.raw(frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80", fin=False))
    assert close_of(events).code == 1007


# --- closing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", FRAGMENT_SIZES)
def test_the_peers_close_is_answered_and_the_server_closes_tcp(size: int) -> None:
    peer = Peer(echo(), size=size)
    events = peer.send(TextMessage("last"), CloseConnection(4001, "bye"))
    # The echo goes out only if the task ran before the close came: the reply is at once.
    assert messages(events) == (["last"] if size < 20 else [])
    assert (close_of(events).code, close_of(events).reason) == (4001, "bye")
    d = peer.driver
    assert d.closed and not d.half_closed  # RFC 6455 §7.1.1: the server closes first
    d.run_tasks()
    channel = peer.app.channel
    assert (channel.close_code, channel.close_reason) == (4001, "bye")


def test_a_close_without_code_is_1005_for_the_task() -> None:
    """Autobahn 7.3.1: an empty close; the reply is empty too."""
    peer = Peer(echo())
    events = peer.raw(frame(0x8))
    assert close_of(events).code == 1005
    assert peer.app.channel.close_code == 1005
    assert peer.driver.closed


def test_the_tasks_close_waits_for_the_peers_reply() -> None:
    async def close_soon(channel: Channel) -> None:
        channel.accept()
        assert await receive(channel) == "please close"
        channel.close(4000, "done")
        channel.finish()

    peer = Peer(close_soon)
    events = peer.send(TextMessage("please close"))
    assert (close_of(events).code, close_of(events).reason) == (4000, "done")
    d = peer.driver
    assert not d.closed and isinstance(d.waiting, Receive)
    assert d.waiting.deadline == d.now + CLOSE_TIMEOUT
    assert peer.raw(frame(0x1, b"ignored now")) == []  # after our close, data is discarded
    assert peer.app.channel.messages_buffered() == 0
    peer.send(CloseConnection(4000, "done"))  # wsproto's client replies as the RFC says
    assert d.closed


def test_a_peer_that_never_answers_our_close_is_cut() -> None:
    peer = Peer(echo())
    peer.app.channel.close(1000)
    d = peer.driver
    d.run_tasks()
    d.advance()
    assert close_of(peer.events()).code == 1000
    d.expire()
    assert d.closed
    d.run_tasks()
    assert peer.app.channel.close_code == 1006


def test_a_peer_that_sends_on_instead_of_answering_our_close_is_cut_in_time() -> None:
    """Input that keeps coming (say, one big frame after another) postpones no deadline of
    ours: after CLOSE_TIMEOUT the connection is cut."""
    peer = Peer(echo())
    peer.app.channel.close(1000)
    d = peer.driver
    d.run_tasks()
    d.advance()
    assert close_of(peer.events()).code == 1000
    data = frame(0x2, b"x" * 1000)
    for _ in range(int(CLOSE_TIMEOUT) + 2):
        if d.closed:
            break
        d.now += 1
        d.feed(data)
    assert d.closed and d.now <= CLOSE_TIMEOUT + 1
    assert peer.app.channel.close_code == 1006


def test_the_peers_close_code_reaches_the_task_as_an_int() -> None:
    """Not wsproto's CloseReason enum: ASGI's `code` is an int (a repr or a JSON dump shows 1000)."""
    peer = Peer(echo())
    peer.send(CloseConnection(1000))
    assert type(peer.app.channel.close_code) is int


@pytest.mark.parametrize(("error", "code"), [(None, 1000), (RuntimeError("bug"), 1011)])
def test_a_task_ending_unclosed_closes_with_1000_or_1011(error: Exception | None, code: int) -> None:
    async def leave(channel: Channel) -> None:
        channel.accept()
        channel.finish(error)

    peer = Peer(leave)
    assert close_of(peer.accepted).code == code


def test_a_peer_that_vanishes_is_1006_for_the_task() -> None:
    peer = Peer(idle)
    peer.driver.eof()
    assert peer.driver.closed
    peer.driver.run_tasks()
    assert peer.app.channel.close_code == 1006
    assert peer.app.channel.gone


def test_a_connection_lost_is_1006_and_sends_are_dropped() -> None:
    peer = Peer(idle)
    channel = peer.app.channel
    peer.driver.conn.connection_lost()
    assert channel.close_code == 1006 and channel.gone
    channel.send_message("nobody hears this")


def test_shutdown_closes_with_1001_and_tells_the_task() -> None:
    peer = Peer(echo())
    d = peer.driver
    d.conn.shutdown()
    assert d.woken  # the transport gives its wait up: the core has a close frame to send
    d.advance()
    assert close_of(peer.events()).code == 1001
    assert peer.app.channel.close_code == 1001 and peer.app.channel.stopping
    peer.send(CloseConnection(1001))
    assert d.closed


def test_shutdown_before_accepting_closes_with_1001_once_accepted() -> None:
    async def late(channel: Channel) -> None:
        while not channel.stopping:
            await pause()
        channel.accept()
        while channel.close_code is None:
            await pause()
        channel.finish()

    app = WSApp(late)
    d = Driver(app, config())
    client = WSConnection(ConnectionType.CLIENT)
    d.feed(client.send(WSRequest(host="example", target="/")))
    d.conn.shutdown()
    d.advance()
    client.receive_data(d.take())
    events = list(client.events())
    assert isinstance(events[0], AcceptConnection)
    assert close_of(events).code == 1001


# --- keepalive --------------------------------------------------------------------------------


def test_a_quiet_peer_is_pinged_and_its_pong_keeps_it() -> None:
    peer = Peer(echo(), config(ws_ping_interval=20.0, ws_ping_timeout=5.0))
    d = peer.driver
    assert isinstance(d.waiting, Receive) and d.waiting.deadline == 20.0
    d.now = 10.0
    peer.send(TextMessage("talk"))  # talking postpones the ping
    assert d.deadline == 30.0
    d.expire()
    pings = [e for e in peer.events() if isinstance(e, Ping)]
    assert len(pings) == 1
    assert d.deadline == 35.0  # the pong is due
    peer.send(pings[0].response())
    assert d.deadline == 50.0  # the next ping
    assert not d.closed


def test_a_peer_that_does_not_answer_a_ping_is_closed_with_1011() -> None:
    peer = Peer(echo(), config(ws_ping_interval=20.0, ws_ping_timeout=5.0))
    d = peer.driver
    d.expire()
    assert any(isinstance(e, Ping) for e in peer.events())
    d.now = 24.0
    peer.send(TextMessage("data is not a pong"))
    d.expire()
    assert d.now == 25.0
    assert close_of(peer.events()).code == 1011
    assert d.closed and not d.half_closed
    d.run_tasks()
    assert peer.app.channel.close_code == 1011


def test_without_ping_interval_an_open_websocket_waits_without_deadline() -> None:
    peer = Peer(echo(), config(ws_ping_interval=None))
    assert isinstance(peer.driver.waiting, Receive) and peer.driver.waiting.deadline is None


# --- flow control -------------------------------------------------------------------------------


def test_reading_stops_while_the_tasks_unread_messages_fill_the_read_ahead() -> None:
    taken: list[str | bytes] = []
    start_reading = False

    async def slow(channel: Channel) -> None:
        channel.accept()
        while not start_reading:
            await pause()
        while (message := await receive(channel)) is not None:
            taken.append(message)
        channel.finish()

    peer = Peer(slow, size=64 * 1024)
    d = peer.driver
    message = b"m" * 1000
    count = 3 * READ_AHEAD // 1000
    data = b"".join(peer.client.send(BytesMessage(message)) for _ in range(count))
    sent_bytes = 0
    for piece in fragments(data, 64 * 1024):
        if not isinstance(d.waiting, Receive):
            break
        d.feed(piece)
        sent_bytes += len(piece)
    assert isinstance(d.waiting, Wait)  # the core stopped reading
    assert peer.app.channel.messages_buffered() <= READ_AHEAD + 70 * 1024
    assert sent_bytes < len(data) // 2
    start_reading = True
    d.run_tasks()
    d.advance()
    assert isinstance(d.waiting, Receive)  # reading again once the task took its messages
    d.feed(data[sent_bytes:], 64 * 1024)
    d.run_tasks()
    assert len(taken) == count


def test_a_message_counts_as_delivered_only_once_its_send_completed() -> None:
    seen: list[int] = []

    async def speak(channel: Channel) -> None:
        channel.accept()
        ticket = channel.send_message(b"x" * 100_000)
        seen.append(channel.delivered)
        await sent(channel, ticket)
        seen.append(channel.delivered)
        channel.close()
        channel.finish()

    app = WSApp(speak)
    d = Driver(app, config())
    client = WSConnection(ConnectionType.CLIENT)
    d.conn.receive_data(client.send(WSRequest(host="example", target="/")), d.now)
    sends = []
    while True:
        action = d.advance(stop_at=(Send,))
        if not isinstance(action, Send):
            break
        sends.append(action.data)
        assert app.channel.delivered == len(sends) - 1 if len(sends) > 1 else True
        d.output += action.data
    assert seen == [0, 1]
    client.receive_data(d.take())
    events = list(client.events())
    assert messages(events) == [b"x" * 100_000]


def test_a_message_leaving_wakes_the_task_only_if_it_waits_for_that() -> None:
    """An echo's task waits for the next message, not for its last one to leave: waking it
    for that costs a wake-up per message (a thread hop under the threads transport)."""
    notified: list[int] = []

    async def speak(channel: Channel) -> None:
        channel.notify = lambda: notified.append(channel.delivered)
        channel.accept()
        await sent(channel, channel.send_message("one"))
        channel.delivery_wanted = True
        await sent(channel, channel.send_message("two"))
        channel.delivery_wanted = False
        while channel.close_code is None:
            await pause()
        channel.finish()

    peer = Peer(speak)
    assert messages(peer.accepted) == ["one", "two"]
    assert notified == [2]  # "one" left unannounced; "two" while the task waited for it


# --- permessage-deflate (Autobahn 12, 13) ---------------------------------------------------------


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_deflate_is_negotiated_and_messages_go_both_ways_compressed(size: int) -> None:
    peer = Peer(echo(), deflate=True, size=size)
    accepted = peer.accepted[0]
    assert isinstance(accepted, AcceptConnection)
    assert [e.name for e in accepted.extensions] == ["permessage-deflate"]
    text = "compress me " * 1000
    before = len(peer.driver.output)
    events = peer.send(TextMessage(text), BytesMessage(b"\x00" * 50_000), TextMessage(text))
    assert messages(events) == [text, b"\x00" * 50_000, text]
    assert before == 0


def test_deflate_output_is_compressed_on_the_wire() -> None:
    peer = Peer(echo(), deflate=True)
    peer.driver.feed(peer.client.send(TextMessage("a" * 10_000)))
    wire = bytes(peer.driver.output)
    assert len(wire) < 200 and wire[0] & 0x40  # RSV1: a compressed message
    peer.client.receive_data(peer.driver.take())
    assert messages(list(peer.client.events())) == ["a" * 10_000]


def test_deflate_off_declines_the_offer() -> None:
    peer = Peer(echo(), config(ws_per_message_deflate=False), deflate=True)
    accepted = peer.accepted[0]
    assert isinstance(accepted, AcceptConnection) and accepted.extensions == []
    assert messages(peer.send(TextMessage("plain"))) == ["plain"]


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        (b"permessage-deflate", b"permessage-deflate"),
        (b"permessage-deflate; client_max_window_bits", b"permessage-deflate; client_max_window_bits=15"),
        (
            b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            b"permessage-deflate; client_no_context_takeover; server_no_context_takeover",
        ),
        (
            b'permessage-deflate; server_max_window_bits="10"',
            b"permessage-deflate; server_max_window_bits=10",
        ),
        (b"permessage-deflate; server_max_window_bits=8, permessage-deflate", b"permessage-deflate"),
        (
            b"permessage-deflate; unknown=1, permessage-deflate; server_max_window_bits=9",
            b"permessage-deflate; server_max_window_bits=9",
        ),
        (b"x-webkit-deflate-frame", None),
        (b"permessage-deflate; server_max_window_bits", None),
        (b"permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
    ],
)
def test_deflate_offers_are_negotiated_per_rfc_7692(offer: bytes, answer: bytes | None) -> None:
    d = Driver(WSApp(echo()), config())
    d.feed(handshake(KEY, b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Extensions: " + offer))
    head = bytes(d.output).split(b"\r\n\r\n")[0]
    client = h11.Connection(h11.CLIENT)
    upgrade = [("Host", "x"), ("Connection", "upgrade"), ("Upgrade", "websocket")]
    client.send(h11.Request(method="GET", target="/", headers=upgrade))
    client.send(h11.EndOfMessage())
    client.receive_data(head + b"\r\n\r\n")
    response = client.next_event()
    assert isinstance(response, h11.InformationalResponse) and response.status_code == 101
    assert dict(response.headers).get(b"sec-websocket-extensions") == answer


@pytest.mark.parser_agnostic
def test_a_deflate_bomb_is_stopped_near_the_size_limit() -> None:
    """A small compressed message that inflates past ws_max_size closes with 1009 without
    inflating it all (input is fed to wsproto in slices under deflate)."""
    peer = Peer(echo(), config(ws_max_size=1 << 20), deflate=True)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(bytes(64 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 100_000
    events = peer.raw(frame(0x2, bomb, rsv=4))
    assert close_of(events).code == 1009


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(0x9, b"x", rsv=4), id="compressed ping"),
        pytest.param(frame(0x1, b"x", fin=False) + frame(0x0, b"y", rsv=4), id="compressed continuation"),
    ],
)
def test_rsv1_where_deflate_forbids_it_closes_with_1002(data: bytes) -> None:
    """RFC 7692 §6.1: RSV1 only on a data message's first frame."""
    peer = Peer(echo(), deflate=True)
    assert close_of(peer.raw(data)).code == 1002


def test_invalid_deflate_data_closes_with_1007() -> None:
    peer = Peer(echo(), deflate=True)
    events = peer.raw(frame(0x2, b"\xff\xff\xff\xff", rsv=4))
    assert close_of(events).code == 1007


def test_the_tasks_invalid_message_closes_with_1011(caplog: pytest.LogCaptureFixture) -> None:
    async def bad(channel: Channel) -> None:
        channel.accept()
        channel.send_message(42)  # type: ignore[arg-type]
        while channel.close_code is None:
            await pause()
        channel.finish()

    peer = Peer(bad)
    assert close_of(peer.accepted).code == 1011
    assert "invalid WebSocket message" in caplog.text


@pytest.mark.parametrize("length", [0, 1, 3, 4, 5, 511, 512, 513, 4096, 65537])
def test_unmask_pure_and_compiled_agree(length: int) -> None:
    from websockets.speedups import apply_mask

    from protocol import websocket

    data = os.urandom(length + 7)
    key = os.urandom(4)
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(data[7:]))
    try:
        websocket.use_mask_function(None)
        assert websocket.unmask(data, 7, length, key) == expected
        assert websocket.unmask(bytearray(data), 7, length, bytearray(key)) == expected
        websocket.use_mask_function(apply_mask)
        assert websocket.unmask(data, 7, length, key) == expected
    finally:
        websocket.use_mask_function(None)


def test_access_log_has_the_101(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "httpserver.access")
    Peer(echo(), config(access_log=True))
    assert '"GET /chat HTTP/1.1" 101' in caplog.text


@pytest.mark.parametrize("end", ["connection lost", "send failed", "failure, then reset while lingering"])
def test_a_websocket_cut_later_has_only_its_101_line(end: str, caplog: pytest.LogCaptureFixture) -> None:
    """The access line is written at the 101; a WebSocket cut later is no unfinished request
    (no second line with 499, nginx's "client closed request")."""
    caplog.set_level("INFO", "httpserver.access")
    peer = Peer(echo(), config(access_log=True))
    d = peer.driver
    if end == "connection lost":
        d.conn.connection_lost()
    elif end == "send failed":
        d.conn.receive_data(frame(0x1, b"hi"), d.now)
        assert isinstance(d.advance(stop_at=(Send,)), Send)
        d.conn.timeout(d.now + 60)
    else:
        d.feed(frame(0x3))  # a reserved opcode: close 1002, then linger
        assert d.half_closed
        d.conn.connection_lost()
    assert d.conn.next_action(d.now) == Close()
    lines = [r.getMessage() for r in caplog.records if r.name == "httpserver.access"]
    assert len(lines) == 1 and '"GET /chat HTTP/1.1" 101' in lines[0], lines


def test_close_is_the_last_action() -> None:
    peer = Peer(echo())
    peer.send(CloseConnection(1000))
    assert isinstance(peer.driver.actions[-1], Close)


# --- properties -------------------------------------------------------------------------------

MESSAGE = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    st.binary(min_size=600, max_size=3000),
    st.text(alphabet="ab€😀", min_size=100, max_size=1000),
)


@pytest.mark.parser_agnostic
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(st.tuples(MESSAGE, st.integers(1, 4), st.booleans()), min_size=1, max_size=8),
    cuts=st.lists(st.integers(1, 700), min_size=1, max_size=20),
    deflate=st.booleans(),
)
def test_any_stream_cut_anywhere_gives_the_task_its_messages(
    plan: list[tuple[str | bytes, int, bool]], cuts: list[int], deflate: bool
) -> None:
    """Messages sent whole or in 1-4 fragments, a ping after some, the bytes cut at random
    places, deflate or not: the task gets exactly the messages, each ping its pong."""
    received: list[str | bytes] = []

    async def keep(channel: Channel) -> None:
        channel.accept()
        while (message := await receive(channel)) is not None:
            received.append(message)
        channel.finish()

    peer = Peer(keep, deflate=deflate)
    data = bytearray()
    pings = 0
    for message, parts, ping in plan:
        size = max(1, -(-len(message) // parts))
        pieces = [message[i : i + size] for i in range(0, len(message), size)] or [message]
        kind = TextMessage if isinstance(message, str) else BytesMessage
        for index, piece in enumerate(pieces):
            data += peer.client.send(kind(piece, message_finished=index == len(pieces) - 1))  # type: ignore[arg-type]
            if ping and index == 0:
                data += peer.client.send(Ping(b"%d" % pings))
                pings += 1
    position = 0
    d = peer.driver
    for cut in cuts * (len(data) // sum(cuts) + 1):
        if position >= len(data):
            break
        d.feed(bytes(data[position : position + cut]))
        position += cut
    d.run_tasks()
    assert received == [message for message, _, _ in plan]
    pongs = [e.payload for e in peer.events() if isinstance(e, Pong)]
    assert pongs == [b"%d" % i for i in range(pings)]
    assert not d.closed


@pytest.mark.parser_agnostic
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    garbage=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from(
                [frame(0x1, b"ok"), frame(0x9, b"p"), frame(0x1, b"a", fin=False), frame(0x0, b"b")]
            ),
            st.builds(
                lambda op, rsv, fin, payload: frame(op, payload, fin=fin, rsv=rsv),
                st.integers(0, 15),
                st.integers(0, 7),
                st.booleans(),
                st.binary(max_size=130),
            ),
        ),
        max_size=12,
    ),
    cut=st.integers(1, 50),
    deflate=st.booleans(),
)
def test_garbage_after_the_handshake_never_raises(garbage: list[bytes], cut: int, deflate: bool) -> None:
    """Whatever frames or bytes come, the core answers with valid frames only, and if it
    fails the WebSocket it says why with a close code the RFC allows."""
    peer = Peer(echo(), config(ws_max_size=100), deflate=deflate)
    peer.driver.feed(b"".join(garbage), cut)
    peer.driver.run_tasks()
    events = peer.events()  # wsproto's client parses all the server sent (it would fail on bad frames)
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert len(closes) <= 1
    if closes:
        # a failure's code, or the peer's own close echoed (1005: it gave none)
        assert closes[0].code in (1002, 1007, 1009, 1005) or 1000 <= closes[0].code < 5000
        # a close frame the server sent, not the client's own parse failure (which leaves it open)
        assert peer.client.state is ConnectionState.REMOTE_CLOSING
