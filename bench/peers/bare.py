"""What the bare h11 loops share: one echo answer and the event loop over h11's events.

No features, no limits, no timeouts: these loops are the ceiling a server of that
runtime can reach with h11, the reference our transports are measured against.
"""

from __future__ import annotations

import argparse

import h11


def answer(conn: h11.Connection, request: h11.Request) -> bytes:
    """The whole response to `request`: `/echo/{s}` echoes `s`, anything else is 404."""
    target = request.target
    if target.startswith(b"/echo/"):
        status, reason, body = 200, b"OK", target[6:]
    else:
        status, reason, body = 404, b"Not Found", b""
    headers = [(b"Content-Type", b"text/plain"), (b"Content-Length", b"%d" % len(body))]
    return (
        conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
        + conn.send(h11.Data(data=body))
        + conn.send(h11.EndOfMessage())
    )


def process(conn: h11.Connection, data: bytes) -> tuple[bytes, bool]:
    """Feed `data` (b"" at end of input); return the bytes to send and whether to close after."""
    conn.receive_data(data)
    out = b""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return out, True
        if event is h11.NEED_DATA:
            return out, False
        if type(event) is h11.Request:
            out += answer(conn, event)
        elif type(event) is h11.EndOfMessage:
            if conn.our_state is not h11.DONE:
                return out, True
            conn.start_next_cycle()
        elif type(event) is h11.ConnectionClosed:
            return out, True


def port_from_argv() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    return int(parser.parse_args().port)
