"""Proxy headers: who the client really is, and which scheme it used, behind a proxy.

Pure functions, no I/O. A request that comes through a reverse proxy arrives from the
proxy's address; the proxy names the client in `X-Forwarded-For` (and the scheme in
`X-Forwarded-Proto`) or in RFC 7239's `Forwarded`. Anyone can send those headers, so
they are believed only from a peer in `TrustedProxies` (`--forwarded-allow-ips`,
uvicorn's and gunicorn's name; by default the loopback addresses, and Unix-socket
peers always, as gunicorn does: only local processes that may open the socket file
reach those).

The rules, for `forwarded(headers, peer, scheme, trusted)`:

- From an untrusted peer nothing changes: the client is the peer, the scheme the
  connection's. A spoofed header from anyone else changes nothing.
- Each proxy appends the address it got the request from, so the list is read from the
  right: past every trusted hop, the first untrusted one is the client (uvicorn's rule,
  and nginx's `real_ip_recursive on`). If every hop is trusted, the leftmost is. What a
  client writes itself is on the left of what its first trusted proxy appends, so it is
  never reached unless that proxy is trusted to speak for it.
- The hop found must be an IP address (with a port or not); `unknown`, an obfuscated
  identifier (`_hidden`) or anything unreadable means the client is not known: None.
  Never does arbitrary header text become the client (it goes into logs).
- The scheme is that hop's: `Forwarded`'s `proto=` in the same element (or the nearest
  one to its right that has one), `X-Forwarded-Proto`'s element at the same position
  when it lists as many as `X-Forwarded-For`, else its last one (the nearest proxy's).
  Only `http` and `https` are taken; anything else leaves the scheme as it was.
- A request with `X-Forwarded-For` or `X-Forwarded-Proto` is read by those, and its
  `Forwarded` is ignored; `Forwarded` is read only without them. A proxy must set one
  family and drop the other from what clients send (nginx's `proxy_set_header`
  replaces a header, which does that for the ones it sets).
- Repeated header fields are one comma-separated list, in order (RFC 9110 §5.3).

IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`, what a dual-stack socket reports for
an IPv4 client) count as their IPv4 address, in trust and in the result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

Address = tuple[str, int]
"""(host, port) of a client; port 0 when the proxy did not say."""

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOW: Final = "127.0.0.1,::1"
"""`--forwarded-allow-ips`'s default: the loopback addresses (Unix-socket peers are always trusted)."""

_SCHEMES: Final = {"http": "http", "https": "https"}


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `text` names (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The peers whose proxy headers are believed. Build one with `parse`.

    Unix-socket peers (`None`) are always trusted; `everyone` trusts every peer (`*`).
    """

    addresses: frozenset[str] = frozenset()
    """Single addresses, in their normal form (`str(ipaddress.ip_address(...))`)."""
    networks: tuple[_Network, ...] = ()
    everyone: bool = False
    text: str = field(default="", compare=False)
    """The option as given, for messages."""

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """From a comma-separated list of addresses, CIDR networks (`10.0.0.0/8`) and `*`.

        Raises ValueError naming the first item that is none of these.
        """
        addresses: set[str] = set()
        networks: list[_Network] = []
        everyone = False
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            if item == "*":
                everyone = True
            elif "/" in item:
                try:
                    network = ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"{item!r} is not an IP network") from None
                if network.num_addresses == 1:
                    addresses.add(str(_ip(str(network.network_address))))
                else:
                    networks.append(network)
            else:
                ip = _ip(item.strip("[]"))
                if ip is None:
                    raise ValueError(f"{item!r} is not an IP address or network") from None
                addresses.add(str(ip))
        return cls(frozenset(addresses), tuple(networks), everyone, text)

    @classmethod
    def default(cls) -> TrustedProxies:
        return cls.parse(DEFAULT_ALLOW)

    def trusts(self, peer_host: str | None) -> bool:
        """Whether proxy headers from `peer_host` are believed (None: a Unix-socket peer)."""
        if peer_host is None or self.everyone or peer_host in self.addresses:
            return True
        ip = _ip(peer_host)
        if ip is None:
            return False
        return str(ip) in self.addresses or any(ip in network for network in self.networks)


LOOPBACK: Final = TrustedProxies.parse(DEFAULT_ALLOW)
"""The default trusted proxies: 127.0.0.1 and ::1 (and Unix-socket peers)."""


def forwarded(
    headers: Sequence[tuple[bytes, bytes]],
    peer: Address | None,
    scheme: str,
    trusted: TrustedProxies,
) -> tuple[Address | None, str]:
    """The client and scheme of a request from `peer` (None: a Unix socket) over `scheme`.

    `headers` are (lower-case name, value) pairs. See the module's docstring for the rules.
    """
    if not trusted.trusts(None if peer is None else peer[0]):
        return peer, scheme
    fors: list[bytes] = []
    protos: list[bytes] = []
    forwarded_values: list[bytes] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            fors.append(value)
        elif name == b"x-forwarded-proto":
            protos.append(value)
        elif name == b"forwarded":
            forwarded_values.append(value)
    if fors or protos:
        return _x_forwarded(fors, protos, peer, scheme, trusted)
    if forwarded_values:
        return _forwarded(forwarded_values, peer, scheme, trusted)
    return peer, scheme


def _list(values: list[bytes]) -> list[str]:
    """The elements of a comma-separated header list, empty ones dropped."""
    joined = b",".join(values).decode("latin-1")
    return [item for item in (part.strip() for part in joined.split(",")) if item]


def _x_forwarded(
    fors: list[bytes], protos: list[bytes], peer: Address | None, scheme: str, trusted: TrustedProxies
) -> tuple[Address | None, str]:
    hops = _list(fors)
    schemes = [_SCHEMES.get(item.lower()) for item in _list(protos)]
    if len(schemes) != len(hops):  # not one per hop: the nearest proxy's word
        scheme = (schemes[-1] if schemes else None) or scheme
        schemes = []
    client = peer
    for index in range(len(hops) - 1, -1, -1):
        if schemes:
            scheme = schemes[index] or scheme
        client = _node(hops[index])
        if client is None or not trusted.trusts(client[0]):
            break
    return client, scheme


def _node(text: str) -> Address | None:
    """An X-Forwarded-For element or a Forwarded `for=` value as an address, or None.

    Accepted: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`;
    a port that is not a number (RFC 7239's obfuscated `_port`) counts as none (0).
    """
    host, port = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if rest[0] != ":":
                return None
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    ip = _ip(host)
    if ip is None or ("[" in text and ip.version == 4):
        return None
    if port.isdigit() and port.isascii() and len(port) <= 5 and int(port) <= 65535:
        number = int(port)
    elif not port or (port[0] == "_" and _is_obfuscated(port)):
        number = 0
    else:
        return None
    return str(ip), number


_OBFUSCATED_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _is_obfuscated(text: str) -> bool:
    return len(text) > 1 and text[0] == "_" and all(char in _OBFUSCATED_CHARS for char in text[1:])


def _forwarded(
    values: list[bytes], peer: Address | None, scheme: str, trusted: TrustedProxies
) -> tuple[Address | None, str]:
    elements = parse_forwarded(b",".join(values).decode("latin-1"))
    if elements is None:
        return None, scheme  # a trusted proxy said something unreadable: the client is not known
    client = peer
    for element in reversed(elements):
        proto = _SCHEMES.get(element.get("proto", "").lower())
        if proto:
            scheme = proto
        node = element.get("for")
        if node is None:
            break  # this hop did not say whom it got the request from: the last one known stays
        client = _node(node)
        if client is None or not trusted.trusts(client[0]):
            break
    return client, scheme


_TCHARS: Final = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_forwarded(text: str) -> list[dict[str, str]] | None:
    """RFC 7239's `Forwarded` value as its elements, each {lower-case name: value}; None if malformed.

    `for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8::1]:4711"` gives
    `[{"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}, {"for": "[2001:db8::1]:4711"}]`.
    Quoted strings may hold commas and semicolons, and backslash escapes. A parameter
    repeated within an element is malformed (§4); empty elements are skipped.
    """
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] not in ",;":
            start = i
            while i < n and text[i] in _TCHARS:
                i += 1
            name = text[start:i].lower()
            if not name or i >= n or text[i] != "=":
                return None
            i += 1
            if i < n and text[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and text[i] != '"':
                    if text[i] == "\\":
                        i += 1
                        if i >= n:
                            return None
                    chars.append(text[i])
                    i += 1
                if i >= n:
                    return None  # an unterminated quoted string
                i += 1
                value = "".join(chars)
            else:
                start = i
                while i < n and text[i] in _TCHARS:
                    i += 1
                value = text[start:i]
                if not value:
                    return None
            if name in element:
                return None
            element[name] = value
            while i < n and text[i] in " \t":
                i += 1
        if i >= n or text[i] == ",":
            if element:
                elements.append(element)
                element = {}
            if i >= n:
                return elements
        elif text[i] != ";":
            return None
        i += 1
