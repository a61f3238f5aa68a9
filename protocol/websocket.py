"""WebSockets (RFC 6455, with RFC 7692's permessage-deflate) on an upgraded HTTP/1.1 connection.

The frames are wsproto's: h11's sibling by the same authors, bytes in and events out, no
I/O. This module adds what a server needs around it, still without I/O or clocks of its
own (`ServerConnection` drives it and turns what it gathers into actions):

- the opening handshake's checks (RFC 6455 §4.2.1): `wants_websocket`, `refusal`;
- the 101 response's fields (§4.2.2) and permessage-deflate's negotiation: the first offer
  we can accept wins (RFC 7692 §5: offers come in the client's order of preference);
- messages assembled from their fragments for the app task, larger than `ws_max_size`
  closed with 1009; under deflate, input goes to wsproto in slices small enough that one
  slice cannot inflate much past `ws_max_size` before the size is checked (deflate expands
  at most about 1032:1, and wsproto inflates without a limit);
- a bounded read-ahead: input is read only while the messages the task has not taken
  count for less than `READ_AHEAD`; a fragmented message is assembled as bytes (its
  pieces would cost more than their size);
- fairness: a step reads `FRAMES_PER_STEP` frames at most (fewer through wsproto), then
  the core lets the event loop run the others (`yielding`);
- a fast path for the common frames: without an extension, a whole unfragmented text or
  binary frame (and a binary one that spans reads) is unmasked and decoded here, and the
  task's messages are framed here; every other frame (control frames, fragments, anything
  invalid, a text frame still arriving) goes to wsproto whole, byte for byte as it comes,
  so that it stays the one authority on the protocol's rules. wsproto spends ~15 µs on a
  16-byte message and copies a large one about eight times; this path ~2 µs and three.
- the close handshake both ways (RFC 6455 §7), failures with wsproto's codes (1002 for a
  protocol error, 1007 for invalid UTF-8 or deflate data), and keepalive pings: a peer that
  sent nothing for `ws_ping_interval` is pinged and must answer within `ws_ping_timeout`,
  else it is closed with 1011 (as uvicorn does) and cut.
"""

from __future__ import annotations

import base64
import binascii
import enum
import struct
from collections.abc import Callable
from typing import Final

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.utilities import generate_accept_token

from .channel import Accept, Channel, Closing, Finish, Message, Outgoing
from .config import Config
from .messages import Headers, Request, Response

READ_AHEAD: Final = 1024 * 1024
"""Received messages (counted with `channel.MESSAGE_OVERHEAD` each) the task may leave
untaken before the core stops reading; it reads on once half of that is taken."""
FRAMES_PER_STEP: Final = 512
"""Frames one step reads at most (~2.5 ms with the task's share); then the core waits until
now, so the event loop runs the others (a flood of tiny frames would otherwise hold it for a
whole read: ~10,000 frames). Fewer make a stream of small messages cost more (128: +15-35%
CPU per 100-byte message, the task woken 4 times as often)."""
WSPROTO_FRAME: Final = 4
"""What a frame read by wsproto counts for in FRAMES_PER_STEP (~15 µs, the fast path's ~2)."""
CLOSE_TIMEOUT: Final = 5.0
"""After sending a close frame, the peer's reply is awaited this long, then the connection is cut."""

_OPEN: Final = ConnectionState.OPEN
_LOCAL_CLOSING: Final = ConnectionState.LOCAL_CLOSING
_REMOTE_CLOSING: Final = ConnectionState.REMOTE_CLOSING
_TEXT_PLAIN: Final = (b"Content-Type", b"text/plain")
_VERSION: Final = (b"Sec-WebSocket-Version", b"13")
_UPGRADE: Final = (b"Upgrade", b"websocket")
_OWN_FIELDS: Final = frozenset(
    {
        b"upgrade",
        b"connection",
        b"sec-websocket-accept",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"content-length",
        b"transfer-encoding",
    }
)
"""Fields of the 101 response that the core sets (or that a 101 must not have); an app's are dropped."""
_DEFLATE_PARAMETERS: Final = frozenset(
    {
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    }
)


_SMALL: Final = 512
"""Payloads up to this are unmasked with one big-int XOR; longer ones with four translates."""
_XOR_TABLES: list[bytes | None] = [None] * 256
"""bytes.translate tables: byte -> byte ^ key, made on first use of each key byte."""


def _xor_table(key: int) -> bytes:
    table = _XOR_TABLES[key]
    if table is None:
        table = _XOR_TABLES[key] = bytes(byte ^ key for byte in range(256))
    return table


MaskFunction = Callable[[memoryview, bytes], bytes]
_mask_function: MaskFunction | None = None


def use_mask_function(function: MaskFunction | None) -> None:
    """Unmask payloads longer than a few hundred bytes with `function(data, key)`: a compiled
    one, such as the `websockets` package's `speedups.apply_mask`, is ~40 times faster than
    pure Python on a large message. None: pure Python (the default; the core imports no
    such package itself: the server's start-up offers it, see handlers/asgi_ws.py)."""
    global _mask_function
    _mask_function = function


def unmask(
    data: bytes | bytearray | memoryview, start: int, length: int, key: bytes | bytearray | memoryview
) -> bytes:
    """`length` bytes of `data` from `start`, unmasked with the 4-byte `key` (RFC 6455 §5.3)."""
    if _mask_function is not None and length > _SMALL:
        return _mask_function(memoryview(data)[start : start + length], bytes(key))
    if length <= _SMALL:
        mask = (bytes(key) * ((length >> 2) + 1))[:length]
        value = int.from_bytes(data[start : start + length], "little") ^ int.from_bytes(mask, "little")
        return value.to_bytes(length, "little")
    payload = (
        data[start : start + length]
        if type(data) is bytearray
        else bytearray(memoryview(data)[start : start + length])
    )
    for offset in range(4):
        payload[offset::4] = payload[offset::4].translate(_xor_table(key[offset]))
    return bytes(payload)


def frame(opcode: int, payload: bytes) -> list[bytes]:
    """A server frame (unmasked, final) as its head and payload, to be joined with other output."""
    length = len(payload)
    if length < 126:
        return [bytes((0x80 | opcode, length)) + payload]
    if length < 1 << 16:
        return [struct.pack("!BBH", 0x80 | opcode, 126, length), payload]
    return [struct.pack("!BBQ", 0x80 | opcode, 127, length), payload]


class Deflate(PerMessageDeflate):
    """wsproto's permessage-deflate, but a control frame between the fragments of a compressed
    message leaves that message compressed (RFC 6455 §5.4 allows ping, pong and close there).

    wsproto 1.3.2 resets its per-message state on every control frame, so the continuation
    after a ping is read as uncompressed: a false 1007 for text, garbage for bytes (its open
    pull request #205). Here control frames do not touch that state at all.
    """

    _control = False

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> CloseReason | RsvBits:
        self._control = opcode.iscontrol()
        if self._control:
            return CloseReason.PROTOCOL_ERROR if rsv.rsv1 else RsvBits(True, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        return data if self._control else super().frame_inbound_payload_data(proto, data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        return None if self._control else super().frame_inbound_complete(proto, fin)


class Ending(enum.Enum):
    """How the connection ends once what is gathered went out."""

    CLOSE = enum.auto()  # close the socket at once (a clean close handshake, or a peer gone)
    LINGER = enum.auto()  # a failure: shut output, discard input a while (the close frame must arrive)


# --- the opening handshake ---------------------------------------------------------------


def wants_websocket(request: Request) -> bool:
    """Whether `request` asks to upgrade to a WebSocket: GET, HTTP/1.1, an `Upgrade` token
    `websocket` and a `Connection` token `upgrade` (any case). Other upgrade requests are
    ordinary requests (RFC 9110 §7.8 lets a server ignore Upgrade)."""
    if request.method != b"GET" or request.http_version != b"1.1":
        return False
    upgrade = connection = False
    for name, value in request.headers:
        if name == b"upgrade":
            upgrade = upgrade or _has_token(value, b"websocket")
        elif name == b"connection":
            connection = connection or _has_token(value, b"upgrade")
    return upgrade and connection


def refusal(request: Request, has_body: bool) -> Response | None:
    """The error response for a WebSocket handshake we cannot accept (RFC 6455 §4.2.1), or None.

    A version other than 13: 426 with `Sec-WebSocket-Version: 13` (400 when none is given);
    a missing, repeated or malformed `Sec-WebSocket-Key` (base64 of 16 bytes): 400; a body: 400.
    """
    keys: list[bytes] = []
    versions: list[bytes] = []
    for name, value in request.headers:
        if name == b"sec-websocket-key":
            keys.append(value)
        elif name == b"sec-websocket-version":
            versions.append(value)
    if versions != [b"13"]:
        status = 426 if versions else 400
        reason = b"426 Upgrade Required" if versions else b"400 Bad Request"
        text = b"%s: this server speaks WebSocket version 13\n" % reason
        # RFC 9110 §15.5.22: a 426 names the protocol in Upgrade, and §7.8: with its connection option.
        headers = (
            (_UPGRADE, (b"Connection", b"Upgrade"), _VERSION, _TEXT_PLAIN)
            if versions
            else (_VERSION, _TEXT_PLAIN)
        )
        return Response(status, headers, text)
    if len(keys) != 1 or not _valid_key(keys[0]):
        return Response(400, (_TEXT_PLAIN,), b"400 Bad Request: Sec-WebSocket-Key is missing or invalid\n")
    if has_body:
        return Response(400, (_TEXT_PLAIN,), b"400 Bad Request: a WebSocket handshake has no body\n")
    return None


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def _has_token(value: bytes, token: bytes) -> bool:
    return any(item.strip().lower() == token for item in value.split(b","))


def accept_fields(
    request: Request, accept: Accept, config: Config
) -> tuple[list[tuple[bytes, bytes]], PerMessageDeflate | None]:
    """The 101 response's fields for `accept` (the app's own after ours, less those we set),
    and the permessage-deflate extension agreed on, if any. Raises on a subprotocol that is
    not ASCII or headers that are not pairs of bytes (h11 checks the rest)."""
    key = request.header(b"sec-websocket-key")
    assert key is not None  # `refusal` checked it
    fields = [
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Accept", generate_accept_token(key)),
    ]
    if accept.subprotocol is not None:
        fields.append((b"Sec-WebSocket-Protocol", accept.subprotocol.encode("ascii")))
    extension = None
    if config.ws_per_message_deflate:
        agreed = negotiate_deflate(request.headers)
        if agreed is not None:
            extension, value = agreed
            fields.append((b"Sec-WebSocket-Extensions", value))
    for name, value in accept.headers:
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise TypeError(f"header names and values must be bytes, not {name!r}: {value!r}")
        if name.lower() not in _OWN_FIELDS:
            fields.append((name, value))
    return fields, extension


def negotiate_deflate(headers: Headers) -> tuple[PerMessageDeflate, bytes] | None:
    """The first permessage-deflate offer we accept: (the extension, the response's field value).

    An offer with an unknown or repeated parameter, or a window size we cannot use, is
    declined (RFC 7692 §5.1), and the next one is tried."""
    for name, value in headers:
        if name != b"sec-websocket-extensions":
            continue
        for offer in value.decode("latin-1").split(","):
            extension_name, _, parameters = offer.partition(";")
            if extension_name.strip().lower() != "permessage-deflate":
                continue
            cleaned = _deflate_parameters(parameters)
            if cleaned is None:
                continue
            extension = Deflate()
            try:
                agreed = extension.accept("; ".join(["permessage-deflate", *cleaned]))
            except ValueError:
                continue
            if agreed is None:
                continue
            text = "permessage-deflate" + (f"; {agreed}" if agreed else "")
            return extension, text.encode("ascii")
    return None


def _deflate_parameters(parameters: str) -> list[str] | None:
    """An offer's parameters as `name` or `name=value` (quotes removed), or None if invalid."""
    cleaned: list[str] = []
    seen: set[str] = set()
    for item in parameters.split(";"):
        item = item.strip()
        if not item:
            continue
        name, equals, value = item.partition("=")
        name = name.strip().lower()
        value = value.strip().strip('"')
        if name not in _DEFLATE_PARAMETERS or name in seen:
            return None
        seen.add(name)
        if name.endswith("_max_window_bits"):
            if equals:
                if not (value.isdigit() and 8 <= int(value) <= 15):
                    return None
                cleaned.append(f"{name}={int(value)}")
            elif name == "server_max_window_bits":
                return None  # RFC 7692 §7.1.2.1: it has a value
            else:
                cleaned.append(name)
        elif equals:
            return None  # the no_context_takeover parameters have none
        else:
            cleaned.append(name)
    return cleaned


# --- the open WebSocket -------------------------------------------------------------------


class WebSocket:
    """One WebSocket's protocol state, the connection's side of its Channel.

    Methods that produce frames append them to `out` (the connection's bytes to send).
    `ending` says how the connection ends once they went out.
    """

    __slots__ = (
        "_close_due",
        "_fast",
        "_fragmented",
        "_frames",
        "_input",
        "_interval",
        "_max_size",
        "_message",
        "_pending",
        "_ping_due",
        "_ping_timeout",
        "_pings",
        "_pong_due",
        "_slice",
        "_stop_sent",
        "_to_wsproto",
        "channel",
        "ending",
        "eof",
        "finished",
        "in_flight",
        "paused",
        "pieces",
        "sending",
        "ws",
        "yielding",
    )

    def __init__(self, channel: Channel, config: Config) -> None:
        self.channel = channel
        self.ws: Connection | None = None  # wsproto's, once the task accepted
        self.ending: Ending | None = None
        self.eof = False  # the peer sent its last byte
        self.finished = False  # the task is over
        self.paused = False  # reading stopped: the task's messages fill the read-ahead
        self.pieces = 0  # the task's messages gathered, not yet counted as delivered
        self.in_flight = 0  # ... in the Send handed out
        self.sending = False  # a Send is out with the transport
        self.yielding = False  # a step read its FRAMES_PER_STEP: the others' turn, then read on
        self._max_size = config.ws_max_size
        self._interval = config.ws_ping_interval or None
        self._ping_timeout = config.ws_ping_timeout or None
        self._input: bytes | memoryview = b""  # received, not yet looked at
        self._slice = 1 << 62
        self._fast = False  # no extension: the fast path frames and unframes (see the module docstring)
        self._pending = bytearray()  # the fast path: the start of a frame still arriving
        self._to_wsproto = 0  # the fast path: bytes of the current frame still due to wsproto
        self._fragmented = False  # wsproto is inside a fragmented message
        # The fragmented message being assembled, as bytes (UTF-8 for text): a list of its
        # pieces would cost ~60 bytes more per piece, outside the ws_max_size budget.
        self._message = bytearray()
        self._frames = 0  # frames read in this step (counted as FRAMES_PER_STEP counts them)
        self._ping_due: float | None = None
        self._pong_due: float | None = None
        self._pings = 0
        self._close_due: float | None = None
        self._stop_sent = False

    def open(self, data: bytes, eof: bool, extension: PerMessageDeflate | None, now: float) -> None:
        """The 101 went out: frames follow; `data` is what the peer sent after its handshake."""
        self.ws = Connection(ConnectionType.SERVER, [extension] if extension is not None else None)
        if extension is not None:
            # Deflate inflates at most ~1032:1: a slice cannot become much more than ws_max_size.
            # At most 8 KiB: a slice of tiny frames (~1,400) is still a short step (~15 ms).
            self._slice = min(8192, max(1024, self._max_size // 1024))
        else:
            self._fast = True
        self._input = data
        self.eof = eof
        if self._interval is not None:
            self._ping_due = now + self._interval

    # --- input -------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from a Receive (b"": the peer's end of input); processed by `read`."""
        if not data:
            self.eof = True
            return
        self._input = data
        if self._interval is not None and self._pong_due is None:
            self._ping_due = now + self._interval  # a peer that talks needs no ping

    def reading(self) -> bool:
        """Whether the core should read now (else wait for the task)."""
        if self.ending is not None or self.eof or self._input:
            return False
        return self.finished or self.channel.messages_buffered() < READ_AHEAD

    def read(self, out: list[bytes], now: float) -> None:
        """Process the input held (to wsproto slice by slice, or on the fast path) while the
        task's unread messages allow, FRAMES_PER_STEP frames at most (then `yielding`: the
        core gives the others a turn first, and this reads on when called after it)."""
        if self.yielding:
            return
        deadline = self.deadline()
        if deadline is not None and now >= deadline:  # input that keeps coming postpones none of ours
            self.timeout(out, now)
            if self.ending is not None:
                return
        ws = self.ws
        assert ws is not None
        channel = self.channel
        self._frames = 0
        if self._fast and self._input and self.ending is None:
            self._read_fast(ws, out, now)
        while self._input and self.ending is None and not self._fast:
            if not self.finished and channel.messages_buffered() >= READ_AHEAD:
                return
            if self._frames >= FRAMES_PER_STEP:
                self.yielding = True
                return
            data = self._input
            if len(data) > self._slice:
                view = memoryview(data)
                self._input = view[self._slice :]
                data = view[: self._slice]
            else:
                self._input = b""
            ws.receive_data(bytes(data))
            self._frames += WSPROTO_FRAME * self._events(ws, out, now)
        if self.ending is not None:
            self._input = b""
            self._pending.clear()
        elif self._input:
            return  # the read-ahead is full
        if self.eof and self.ending is None:  # the peer left without the close handshake
            channel.mark_closed(1006)
            self.ending = Ending.CLOSE

    def _read_fast(self, ws: Connection, out: list[bytes], now: float) -> None:
        """Frames from the input: the common ones decoded here, the others fed to wsproto whole
        (from the header on, as they arrive). What remains is the start of a frame (kept in
        `_pending`), or, if the task's messages fill the read-ahead, left in `_input`."""
        data: bytes | bytearray | memoryview = self._input
        self._input = b""
        pending = self._pending
        if pending:
            pending += data
            data = pending
        channel = self.channel
        end = len(data)
        pos = 0
        put = False
        while self.ending is None:
            if self._to_wsproto:  # a frame on its way to wsproto
                count = min(self._to_wsproto, end - pos)
                if not count:
                    break
                self._to_wsproto -= count
                ws.receive_data(bytes(data[pos : pos + count]))
                pos += count
                self._events(ws, out, now)
                continue
            available = end - pos
            if available < 2:
                break
            self.yielding = self._frames >= FRAMES_PER_STEP
            if self.yielding or (not self.finished and channel.messages_buffered() >= READ_AHEAD):
                self._input = bytes(data[pos:])  # read on after a turn, or once the task took some
                pos = end
                break
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            head = 2
            minimal = True
            if length == 126:
                if available < 4:
                    break
                length = data[pos + 2] << 8 | data[pos + 3]
                head = 4
                minimal = length > 125
            elif length == 127:
                if available < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
                minimal = 0xFFFF < length < 1 << 63
            opcode = first & 0x0F
            masked = second & 0x80
            total = head + 4 + length if masked else head + length
            if (
                (first & 0xF0) == 0x80  # final, no reserved bit
                and (opcode == 1 or opcode == 2)
                and masked
                and minimal
                and not self._fragmented
                and ws.state is _OPEN  # closing: wsproto's path discards data
                and not self.finished
                and (available >= total or opcode == 2)  # text arriving in pieces: wsproto fails it fast
            ):
                if length > self._max_size:
                    self._fail(out, 1009, "message too big")
                    break
                if available < total:
                    break  # the rest of a binary frame is on its way
                start = pos + head + 4
                payload = unmask(data, start, length, data[start - 4 : start])
                pos += total
                self._frames += 1
                if opcode == 2:
                    channel.put_message(payload)
                else:
                    try:
                        channel.put_message(payload.decode("utf-8"))
                    except UnicodeDecodeError:
                        self._fail(out, 1007, "invalid UTF-8")
                        break
                put = True
            else:
                self._to_wsproto = total
                self._frames += WSPROTO_FRAME
        if put:
            channel.notify()
        if pos < end:
            if self._input or self.ending is not None:
                pass
            elif data is pending:
                del pending[:pos]
            else:
                pending += data[pos:]
        elif pending:
            pending.clear()

    def _events(self, ws: Connection, out: list[bytes], now: float) -> int:
        """Act on wsproto's events; how many there were."""
        channel = self.channel
        put = False
        count = 0
        for event in ws.events():
            count += 1
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                if self.finished or ws.state is not _OPEN:
                    continue  # no one reads it, or we are closing: discarded (RFC 6455 §1.4)
                assert isinstance(event, (TextMessage, BytesMessage))
                data = event.data
                # A byte budget: text counts in UTF-8 bytes (isascii() is O(1) on a str).
                if event.message_finished and not self._fragmented:  # a whole message
                    size = len(data) if type(data) is not str or data.isascii() else len(data.encode())
                    if size > self._max_size:
                        self._fail(out, 1009, "message too big")
                        break
                else:  # a piece of one
                    message = self._message
                    message += data.encode() if isinstance(data, str) else data
                    if len(message) > self._max_size:
                        self._fail(out, 1009, "message too big")
                        break
                    self._fragmented = not event.message_finished
                    if self._fragmented:
                        continue
                    data = message.decode() if kind is TextMessage else bytes(message)
                    message.clear()
                channel.put_message(data)  # type: ignore[arg-type]  # wsproto's bytes are bytes
                put = True
            elif kind is Ping:
                assert isinstance(event, Ping)
                if ws.state is _OPEN:
                    out.append(ws.send(event.response()))
            elif kind is Pong:
                assert isinstance(event, Pong)
                if self._pong_due is not None and event.payload == b"%d" % self._pings:
                    self._pong_due = None
                    if self._interval is not None:
                        self._ping_due = now + self._interval
            else:
                assert isinstance(event, CloseConnection)
                state = ws.state
                if state is _OPEN or state is _LOCAL_CLOSING:  # wsproto's word for input it cannot parse
                    self._fail(out, event.code, event.reason or "")
                    break
                if state is _REMOTE_CLOSING:  # the peer closes: reply (RFC 6455 §5.5.1)
                    out.append(ws.send(event.response()))
                channel.mark_closed(event.code, event.reason or "")
                self.ending = Ending.CLOSE  # the server closes TCP first (§7.1.1)
                break
        if put:
            channel.notify()
        return count

    def _fail(self, out: list[bytes], code: int, reason: str) -> None:
        """Fail the WebSocket (RFC 6455 §7.1.7): a close frame with `code` if we may still send one."""
        ws = self.ws
        if ws is not None and ws.state is _OPEN:
            out.append(ws.send(CloseConnection(code, reason)))
        self.channel.mark_closed(code, reason)
        self.ending = Ending.LINGER

    # --- the task's messages ---------------------------------------------------------

    def take(self, message: Message, out: list[bytes], now: float) -> str | None:
        """Act on a message of the task after it accepted; an error to log, if it misbehaved."""
        ws = self.ws
        assert ws is not None
        kind = type(message)
        if kind is Outgoing:
            assert isinstance(message, Outgoing)
            self.pieces += 1
            if ws.state is _OPEN and self.ending is None:  # else dropped: the WebSocket is closing
                data = message.data
                if not self._fast:
                    out.append(ws.send(TextMessage(data) if type(data) is str else BytesMessage(data)))  # type: ignore[arg-type]
                elif type(data) is str:
                    out += frame(1, data.encode("utf-8"))
                elif isinstance(data, (bytes, bytearray, memoryview)):
                    out += frame(2, bytes(data))
                else:
                    raise TypeError(f"a WebSocket message is a str or bytes, not {type(data).__name__}")
            return None
        if kind is Closing:
            assert isinstance(message, Closing)
            self._close(out, message.code, message.reason, now)
            return None
        if kind is Finish:
            assert isinstance(message, Finish)
            self.finished = True
            self._close(out, 1000 if message.error is None else 1011, "", now)
            return None
        self._close(out, 1011, "", now)
        return f"app sent {kind.__name__} on a WebSocket it had accepted"

    def _close(self, out: list[bytes], code: int, reason: str, now: float) -> None:
        """Begin the close handshake, if not begun (the task's close, its end, shutdown)."""
        ws = self.ws
        assert ws is not None
        if ws.state is _OPEN and self.ending is None:
            out.append(ws.send(CloseConnection(code, reason)))
            self._close_due = now + CLOSE_TIMEOUT

    def stop(self, out: list[bytes], now: float) -> None:
        """The server is shutting down: close with 1001 (Going Away), once (once accepted)."""
        if self._stop_sent:
            return
        if not self.channel.stopping:
            self.channel.mark_stopping()
        if self.ws is None:
            return  # the task may still accept (then this closes it) or refuse
        self._stop_sent = True
        if self.ws.state is _OPEN and self.ending is None:
            self._close(out, 1001, "server shutting down", now)
            self.channel.mark_closed(1001, "server shutting down")

    # --- time --------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """When `timeout` is due: the close handshake's end, else the next ping or the pong's."""
        if self._close_due is not None or self.paused:
            return self._close_due
        ping, pong = self._ping_due, self._pong_due
        if ping is None:
            return pong
        return ping if pong is None or ping < pong else pong

    def timeout(self, out: list[bytes], now: float) -> None:
        """A deadline passed: cut a peer that did not answer our close or our ping; ping one
        that has been quiet."""
        ws = self.ws
        if ws is None or self.ending is not None:
            return
        if self._close_due is not None:
            if now >= self._close_due:
                self.channel.mark_closed(1006)
                self.ending = Ending.CLOSE
            return
        if self._pong_due is not None and now >= self._pong_due:
            self._fail(out, 1011, "keepalive ping timeout")
            self.ending = Ending.CLOSE  # it does not answer: no lingering for it
        elif self._ping_due is not None and now >= self._ping_due and ws.state is _OPEN:
            self._pings += 1
            out.append(ws.send(Ping(b"%d" % self._pings)))
            self._ping_due = None
            if self._ping_timeout is not None:
                self._pong_due = now + self._ping_timeout

    def pause(self) -> bool:
        """Reading stops for the task: the peer is clearly alive; no ping is due meanwhile.
        False if the task took enough messages meanwhile (read on: see `Channel.pause_reading`)."""
        self.paused = True
        self._ping_due = self._pong_due = None
        return self.channel.pause_reading(READ_AHEAD // 2)

    def lingers(self) -> bool:
        """The connection ends after a failure: the close frame must get through (`Ending.LINGER`)."""
        return self.ending is Ending.LINGER

    def resume(self, now: float) -> None:
        self.paused = False
        if self._interval is not None:
            self._ping_due = now + self._interval
