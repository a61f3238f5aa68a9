"""A bare trio + h11 echo server: the trio ceiling."""

from __future__ import annotations

from functools import partial

import h11
import trio

from bench.peers.bare import port_from_argv, process


async def handle(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            try:
                data = await stream.receive_some(65536)
                out, close = process(conn, data)
                if out:
                    await stream.send_all(out)
            except trio.BrokenResourceError:
                return
            if close:
                return


if __name__ == "__main__":
    trio.run(partial(trio.serve_tcp, handle, port_from_argv(), host="127.0.0.1", backlog=1024))
