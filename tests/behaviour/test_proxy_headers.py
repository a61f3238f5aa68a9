"""--proxy-headers, end to end: the access log names the client a trusted proxy names, and
a header from anyone else changes nothing. The rules themselves: tests/protocol/test_proxy.py."""

from __future__ import annotations

import re
import time

from .conftest import Server, StartServer


def access_line(server: Server, marker: str, timeout: float = 2.0) -> str:
    """The access-log line of the request whose target contains `marker`."""
    deadline = time.monotonic() + timeout
    while True:
        for line in server.stderr().splitlines():
            if marker in line and '"GET ' in line:
                return line
        assert time.monotonic() < deadline, f"no access-log line for {marker}:\n{server.stderr()}"
        time.sleep(0.02)


def get_forwarded(server: Server, marker: str, headers: list[tuple[str, str]]) -> str:
    response = server.get(f"/echo/{marker}", headers)
    assert response.status == 200
    return access_line(server, marker)


SPOOF = [("X-Forwarded-For", "198.51.100.4"), ("X-Forwarded-Proto", "https"), ("Forwarded", "for=192.0.2.9")]


def test_a_trusted_proxy_names_the_client(start_server: StartServer) -> None:
    server = start_server("--proxy-headers")  # the test's 127.0.0.1 is trusted by default
    line = get_forwarded(server, "xff", [("X-Forwarded-For", "203.0.113.9, 198.51.100.4")])
    # The proxy names no port: the address alone, as nginx's $remote_addr (not ":0")
    assert re.search(r" 198\.51\.100\.4 - ", line) and "127.0.0.1" not in line, line
    line = get_forwarded(server, "fwd", [("Forwarded", 'for="[2001:db8::7]:4711";proto=https')])
    assert "2001:db8::7" in line, line


def test_headers_from_an_untrusted_peer_change_nothing(start_server: StartServer) -> None:
    server = start_server("--proxy-headers", "--forwarded-allow-ips", "192.0.2.1,10.0.0.0/8")
    line = get_forwarded(server, "spoof", SPOOF)
    assert re.search(r" 127\.0\.0\.1:\d+ - ", line) and "198.51.100.4" not in line, line


def test_without_proxy_headers_nothing_is_believed(start_server: StartServer) -> None:
    server = start_server()
    line = get_forwarded(server, "plain", SPOOF)
    assert re.search(r" 127\.0\.0\.1:\d+ - ", line) and "198.51.100.4" not in line, line
