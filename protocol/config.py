"""Limits and timeouts of the HTTP core. Times are in seconds, sizes in bytes."""

from __future__ import annotations

from dataclasses import dataclass

from .proxy import LOOPBACK, TrustedProxies


@dataclass(frozen=True, slots=True)
class Config:
    """The core's limits, timeouts and response options; frozen, so one instance serves every connection."""

    max_head_size: int = 16 * 1024
    """Request line plus header fields; larger heads get 431 (414 when the request line alone is)."""
    max_target_length: int = 8 * 1024
    """Request target; longer targets get 414."""
    max_header_count: int = 100
    """Header fields in one request (and trailer fields of a chunked body); more get 431."""
    max_body_size: int = 100 * 1024 * 1024
    """Request body, declared or chunked; larger bodies get 413."""
    keep_alive_timeout: float = 5.0
    """An idle connection (no byte of a next request) is closed silently after this. 0: no
    keep-alive, as in nginx (every response closes its connection; the first request gets
    head_timeout to arrive)."""
    head_timeout: float = 10.0
    """A whole request head must arrive within this from its first byte, else 408."""
    body_timeout: float = 30.0
    """The request body must make progress at least this often, else 408."""
    send_timeout: float = 30.0
    """A response's writes must make progress this often: a client that takes no byte of it
    for this long is dropped (nginx's send_timeout); a slow but steady one is served whole."""
    linger_timeout: float = 2.0
    """After a closing response, unread input is discarded for at most this long."""
    send_chunk_size: int = 1024 * 1024
    """File bodies are sent in pieces of at most this size."""
    date_header: bool = False
    """Add a Date header to every response."""
    server_header: bytes = b""
    """When not empty, the value of a Server header added to every response."""
    access_log: bool = True
    """Log one line per response to the `httpserver.access` logger."""
    proxy_headers: bool = False
    """Believe `X-Forwarded-For` / `X-Forwarded-Proto` and `Forwarded` from the peers in
    `forwarded_allow_ips`: they name the real client and scheme (see `protocol.proxy`)."""
    forwarded_allow_ips: TrustedProxies = LOOPBACK
    """The peers whose proxy headers are believed (`TrustedProxies.parse("10.0.0.0/8,::1")`);
    by default the loopback addresses. Unix-socket peers always are."""
    websocket: bool = False
    """Serve WebSocket handshakes (RFC 6455) to apps that answer them with a `Session`:
    a valid one is flagged `Request.websocket`, an invalid one gets 400 or 426. Off, an
    upgrade request is an ordinary request (the built-in routes)."""
    ws_max_size: int = 16 * 1024 * 1024
    """A WebSocket message larger than this (in bytes; UTF-8 bytes for text) closes with 1009."""
    ws_ping_interval: float | None = 20.0
    """Ping a WebSocket peer that sent nothing for this long (None or 0: never)."""
    ws_ping_timeout: float | None = 20.0
    """A pinged WebSocket peer must answer within this, else it is closed with 1011 (None or 0: no limit)."""
    ws_per_message_deflate: bool = True
    """Accept the permessage-deflate extension (RFC 7692) when a WebSocket client offers it."""

    def __post_init__(self) -> None:
        """Refuse values that would make every connection fail or hang, at start-up."""
        for name in ("max_head_size", "max_target_length", "max_header_count", "send_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.ws_max_size < 1:
            raise ValueError("ws_max_size must be at least 1")
        for name in ("ws_ping_interval", "ws_ping_timeout"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_body_size < 0:
            raise ValueError("max_body_size must not be negative")
        for name in ("head_timeout", "body_timeout", "send_timeout", "linger_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if not self.keep_alive_timeout >= 0:
            raise ValueError("keep_alive_timeout must not be negative")
        # The core sends it without asking h11 to check it again (see connection.py), so
        # this is h11's rule: no control characters but tab, no surrounding whitespace.
        value = self.server_header
        if value.strip() != value or any((byte < 0x20 and byte != 0x09) or byte == 0x7F for byte in value):
            raise ValueError("server_header must be a valid header value")
