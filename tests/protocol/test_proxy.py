"""Proxy headers (`protocol.proxy`): whom to believe, and what they say. No sockets."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import Config
from protocol.proxy import Address, TrustedProxies, forwarded, parse_forwarded

from .helpers import App, Driver, get

LOOPBACK = TrustedProxies.default()
PROXY: Address = ("127.0.0.1", 50000)
STRANGER: Address = ("203.0.113.7", 40000)


def resolve(
    *headers: tuple[str, str],
    peer: Address | None = PROXY,
    scheme: str = "http",
    trusted: TrustedProxies = LOOPBACK,
) -> tuple[Address | None, str]:
    return forwarded([(k.encode(), v.encode("latin-1")) for k, v in headers], peer, scheme, trusted)


# --- TrustedProxies ---------------------------------------------------------------


def test_default_trusts_loopback_and_unix_sockets_only() -> None:
    assert LOOPBACK.trusts("127.0.0.1")
    assert LOOPBACK.trusts("::1")
    assert LOOPBACK.trusts(None)  # a Unix-socket peer
    assert LOOPBACK.trusts("::ffff:127.0.0.1")  # what a dual-stack socket reports for IPv4
    assert not LOOPBACK.trusts("127.0.0.2")
    assert not LOOPBACK.trusts("10.0.0.1")
    assert not LOOPBACK.trusts("unknown")
    assert not LOOPBACK.trusts("")


def test_networks_addresses_and_star() -> None:
    trusted = TrustedProxies.parse(" 10.0.0.0/8, 192.0.2.1 ,2001:db8::/32,[::2],, 198.51.100.9/32")
    assert trusted.trusts("10.200.3.4")
    assert trusted.trusts("::ffff:10.1.1.1")
    assert trusted.trusts("192.0.2.1")
    assert trusted.trusts("2001:db8:0:0::17")  # any spelling of an address
    assert trusted.trusts("2001:DB8::1")
    assert trusted.trusts("::2")
    assert trusted.trusts("198.51.100.9")
    assert not trusted.trusts("11.0.0.1")
    assert not trusted.trusts("127.0.0.1")  # the default is replaced, not extended
    assert trusted.trusts(None)
    everyone = TrustedProxies.parse("*")
    assert everyone.trusts("198.51.100.1") and everyone.trusts("not even an address")
    assert not TrustedProxies.parse("").trusts("127.0.0.1")
    assert TrustedProxies.parse("").trusts(None)


@pytest.mark.parametrize("text", ["localhost", "10.0.0.0/33", "1.2.3", "10.0.0.0/8;", "unix:/run/x.sock"])
def test_parse_names_the_bad_item(text: str) -> None:
    with pytest.raises(ValueError, match="is not an IP"):
        TrustedProxies.parse(f"127.0.0.1,{text}")


# --- X-Forwarded-For / X-Forwarded-Proto ---------------------------------------------


def test_no_headers_keep_the_peer() -> None:
    assert resolve() == (PROXY, "http")
    assert resolve(peer=None) == (None, "http")
    assert resolve(scheme="https") == (PROXY, "https")


def test_a_trusted_proxy_names_the_client() -> None:
    assert resolve(("x-forwarded-for", "198.51.100.4")) == (("198.51.100.4", 0), "http")
    assert resolve(("x-forwarded-for", "198.51.100.4"), ("x-forwarded-proto", "https")) == (
        ("198.51.100.4", 0),
        "https",
    )
    assert resolve(("x-forwarded-for", "2001:db8::1"), peer=("::1", 1)) == (("2001:db8::1", 0), "http")
    assert resolve(("x-forwarded-for", "198.51.100.4"), peer=None) == (("198.51.100.4", 0), "http")


def test_spoofed_headers_from_an_untrusted_peer_change_nothing() -> None:
    spoof = (("x-forwarded-for", "127.0.0.1"), ("x-forwarded-proto", "https"), ("forwarded", "for=1.2.3.4"))
    assert resolve(*spoof, peer=STRANGER) == (STRANGER, "http")
    assert resolve(*spoof, peer=("127.0.0.2", 1)) == (("127.0.0.2", 1), "http")
    assert resolve(*spoof[2:], peer=STRANGER, scheme="https") == (STRANGER, "https")


def test_what_a_client_wrote_itself_is_left_of_what_the_proxy_appended() -> None:
    # The client sent "X-Forwarded-For: 127.0.0.1, 10.9.9.9" to nginx, which appended its
    # peer (the real client): the rightmost untrusted hop is the client.
    header = ("x-forwarded-for", "127.0.0.1, 10.9.9.9, 198.51.100.4")
    assert resolve(header) == (("198.51.100.4", 0), "http")


def test_trusted_hops_are_skipped_from_the_right() -> None:
    trusted = TrustedProxies.parse("127.0.0.1,10.0.0.0/8")
    header = ("x-forwarded-for", "192.0.2.99, 198.51.100.4, 10.0.0.2, 10.0.0.1")
    assert resolve(header, trusted=trusted) == (("198.51.100.4", 0), "http")


def test_every_hop_trusted_gives_the_leftmost() -> None:
    assert resolve(("x-forwarded-for", "127.0.0.1, ::1")) == (("127.0.0.1", 0), "http")
    everyone = TrustedProxies.parse("*")
    header = ("x-forwarded-for", "192.0.2.99, 198.51.100.4")
    assert resolve(header, peer=STRANGER, trusted=everyone) == (("192.0.2.99", 0), "http")


def test_repeated_fields_are_one_list_in_order() -> None:
    fields = (("x-forwarded-for", "192.0.2.1"), ("x-forwarded-for", "198.51.100.4, 127.0.0.1"))
    assert resolve(*fields) == (("198.51.100.4", 0), "http")


def test_ports_and_brackets() -> None:
    assert resolve(("x-forwarded-for", "198.51.100.4:8080")) == (("198.51.100.4", 8080), "http")
    assert resolve(("x-forwarded-for", "[2001:db8::1]:8080")) == (("2001:db8::1", 8080), "http")
    assert resolve(("x-forwarded-for", "[2001:DB8:0::1]")) == (("2001:db8::1", 0), "http")
    assert resolve(("x-forwarded-for", "::ffff:198.51.100.4")) == (("198.51.100.4", 0), "http")


@pytest.mark.parametrize(
    "value",
    [
        "unknown",
        "_hidden",
        'evil" - "GET / HTTP/1.1" 200',
        "198.51.100.4:99999",
        "198.51.100.4:http",
        "[198.51.100.4]",
        "[2001:db8::1",
        "[2001:db8::1]x",
        "example.com",
        "1.2.3.4.5",
    ],
)
def test_a_hop_that_is_not_an_address_is_an_unknown_client(value: str) -> None:
    """Never does header text become the client (it is written to logs and apps)."""
    assert resolve(("x-forwarded-for", f"127.0.0.1, {value}")) == (None, "http")


def test_an_empty_header_keeps_the_peer() -> None:
    assert resolve(("x-forwarded-for", "")) == (PROXY, "http")
    assert resolve(("x-forwarded-for", " , ,")) == (PROXY, "http")


def test_x_forwarded_proto() -> None:
    assert resolve(("x-forwarded-proto", "https")) == (PROXY, "https")
    assert resolve(("x-forwarded-proto", " HTTPS ")) == (PROXY, "https")
    assert resolve(("x-forwarded-proto", "http"), scheme="https") == (PROXY, "http")
    for junk in ("ftp", "https;", "", "javascript"):
        assert resolve(("x-forwarded-proto", junk), scheme="https") == (PROXY, "https"), junk
    assert resolve(("x-forwarded-proto", "https"), peer=STRANGER) == (STRANGER, "http")


def test_x_forwarded_proto_lists() -> None:
    trusted = TrustedProxies.parse("127.0.0.1,10.0.0.1")
    # One per hop: the client's own.
    fields = (("x-forwarded-for", "198.51.100.4, 10.0.0.1"), ("x-forwarded-proto", "https, http"))
    assert resolve(*fields, trusted=trusted) == (("198.51.100.4", 0), "https")
    # Not one per hop: the nearest proxy's word.
    fields = (("x-forwarded-for", "198.51.100.4, 10.0.0.1"), ("x-forwarded-proto", "http, https, http"))
    assert resolve(*fields, trusted=trusted) == (("198.51.100.4", 0), "http")
    assert resolve(("x-forwarded-proto", "http, https")) == (PROXY, "https")


# --- Forwarded (RFC 7239) ------------------------------------------------------------


def test_forwarded_examples_of_rfc_7239() -> None:
    assert resolve(("forwarded", 'for="_gazonk"')) == (None, "http")
    assert resolve(("forwarded", 'For="[2001:db8:cafe::17]:4711"')) == (("2001:db8:cafe::17", 4711), "http")
    assert resolve(("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")) == (
        ("192.0.2.60", 0),
        "http",
    )
    assert resolve(("forwarded", "for=192.0.2.43, for=198.51.100.17")) == (("198.51.100.17", 0), "http")
    assert resolve(("forwarded", "for=unknown;proto=https")) == (None, "https")


def test_forwarded_walks_from_the_right_with_each_hops_proto() -> None:
    trusted = TrustedProxies.parse("127.0.0.1,10.0.0.0/8")
    value = 'for=192.0.2.99;proto=http, for="198.51.100.4:5555";proto=https, for=10.0.0.2;proto=http'
    assert resolve(("forwarded", value), trusted=trusted) == (("198.51.100.4", 5555), "https")
    # A hop without proto= takes the nearest one to its right.
    value = "for=198.51.100.4, for=10.0.0.2;proto=https"
    assert resolve(("forwarded", value), trusted=trusted) == (("198.51.100.4", 0), "https")
    # Every hop trusted: the leftmost.
    value = "for=10.1.1.1;proto=https, for=10.0.0.2"
    assert resolve(("forwarded", value), trusted=trusted) == (("10.1.1.1", 0), "https")


def test_forwarded_spoofing() -> None:
    # From an untrusted peer: ignored.
    assert resolve(("forwarded", "for=127.0.0.1;proto=https"), peer=STRANGER) == (STRANGER, "http")
    # Through a trusted proxy that appended: the client's own element is never reached.
    value = 'for=127.0.0.1;proto=https, for="198.51.100.4"'
    assert resolve(("forwarded", value)) == (("198.51.100.4", 0), "http")
    # Quoted separators cannot forge an element.
    value = 'for="127.0.0.1, for=10.0.0.1";proto=https, for=198.51.100.4'
    assert resolve(("forwarded", value)) == (("198.51.100.4", 0), "http")


def test_forwarded_without_for_gives_only_the_scheme() -> None:
    assert resolve(("forwarded", "proto=https;host=example.com")) == (PROXY, "https")
    assert resolve(("forwarded", "for=198.51.100.4, proto=https")) == (PROXY, "https")


@pytest.mark.parametrize(
    "value",
    [
        'for="198.51.100.4',  # unterminated
        "for=198.51.100.4;for=10.0.0.1",  # repeated parameter
        "for",
        "=198.51.100.4",
        "for=[2001:db8::1]",  # brackets and colons must be quoted
        "for=198.51.100.4 garbage",
        'for="a\\',
    ],
)
def test_a_malformed_forwarded_means_an_unknown_client(value: str) -> None:
    assert resolve(("forwarded", value), scheme="https") == (None, "https")


def test_x_forwarded_headers_win_over_forwarded() -> None:
    fields = (("forwarded", "for=192.0.2.1;proto=https"), ("x-forwarded-for", "198.51.100.4"))
    assert resolve(*fields) == (("198.51.100.4", 0), "http")
    fields = (("forwarded", "for=192.0.2.1"), ("x-forwarded-proto", "https"))
    assert resolve(*fields) == (PROXY, "https")


def test_parse_forwarded() -> None:
    assert parse_forwarded("") == []
    assert parse_forwarded(" , ;, ") == []
    assert parse_forwarded('FOR=a;Proto=https , for="x\\"y;z,w"') == [
        {"for": "a", "proto": "https"},
        {"for": 'x"y;z,w'},
    ]
    assert parse_forwarded("for=a;;by=b,") == [{"for": "a", "by": "b"}]
    assert parse_forwarded("for = a") is None


# --- in the core: Request.client, Request.scheme and the access log ---------------------------------


def test_the_core_believes_a_trusted_proxy_with_proxy_headers(caplog: pytest.LogCaptureFixture) -> None:
    app = App()
    d = Driver(app, Config(access_log=True, proxy_headers=True), client=("127.0.0.1", 5000))
    with caplog.at_level(logging.INFO, "httpserver.access"):
        d.feed(get(b"/echo/a", b"X-Forwarded-For: 192.0.2.1, 198.51.100.4", b"X-Forwarded-Proto: https"))
        d.feed(get(b"/echo/b"))  # the next request on the connection: only what it says
    assert [(r.client, r.scheme) for r in app.requests] == [
        (("198.51.100.4", 0), "https"),
        (("127.0.0.1", 5000), "http"),
    ]
    lines = [r.getMessage() for r in caplog.records if r.name == "httpserver.access"]
    assert lines[0].startswith('198.51.100.4 - "GET /echo/a ')  # no port given: none logged
    assert lines[1].startswith('127.0.0.1:5000 - "GET /echo/b ')


@pytest.mark.parametrize(
    ("config", "client"),
    [
        (Config(proxy_headers=False), ("127.0.0.1", 5000)),  # off: nobody is believed
        (Config(proxy_headers=True), ("203.0.113.7", 5000)),  # not a trusted proxy
        (
            Config(proxy_headers=True, forwarded_allow_ips=TrustedProxies.parse("10.0.0.0/8")),
            ("127.0.0.1", 1),
        ),
    ],
)
def test_the_core_ignores_proxy_headers_otherwise(config: Config, client: Address) -> None:
    app = App()
    d = Driver(app, config, client=client)
    d.feed(get(b"/echo/a", b"X-Forwarded-For: 198.51.100.4", b"Forwarded: for=192.0.2.1;proto=https"))
    assert [(r.client, r.scheme) for r in app.requests] == [(client, "http")]


def test_a_unix_socket_peer_is_trusted_by_the_core() -> None:
    app = App()
    d = Driver(app, Config(proxy_headers=True), client=None)
    d.feed(get(b"/echo/a", b'Forwarded: for="[2001:db8::1]:4711";proto=https'))
    assert [(r.client, r.scheme) for r in app.requests] == [(("2001:db8::1", 4711), "https")]


# --- properties -----------------------------------------------------------------------

_header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)
_names = st.sampled_from([b"x-forwarded-for", b"x-forwarded-proto", b"forwarded", b"host"])
_fields = st.lists(st.tuples(_names, _header_text.map(lambda text: text.encode("latin-1"))), max_size=5)


@given(_fields, st.sampled_from(["http", "https"]))
def test_an_untrusted_peer_changes_nothing_whatever_it_sends(
    fields: list[tuple[bytes, bytes]], scheme: str
) -> None:
    assert forwarded(fields, STRANGER, scheme, LOOPBACK) == (STRANGER, scheme)


@given(_fields, st.sampled_from(["http", "https"]), st.sampled_from([PROXY, None]))
def test_the_client_is_an_address_or_unknown_never_header_text(
    fields: list[tuple[bytes, bytes]], scheme: str, peer: Address | None
) -> None:
    client, result_scheme = forwarded(fields, peer, scheme, LOOPBACK)
    assert result_scheme in ("http", "https")
    if client is not None and client != peer:
        host, port = client
        assert str(ipaddress.ip_address(host)) == host
        assert 0 <= port <= 65535


@given(_header_text, st.ip_addresses(v=4).map(str))
def test_whatever_a_client_prepends_the_hop_nginx_appends_is_the_client(prefix: str, real: str) -> None:
    if LOOPBACK.trusts(real):
        return
    # What nginx sends: the client's own X-Forwarded-For, then ", $remote_addr".
    value = f"{prefix}, {real}" if prefix else real
    assert resolve(("x-forwarded-for", value)) == ((real, 0), "http")
