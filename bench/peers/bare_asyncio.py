"""A bare asyncio.Protocol + h11 echo server: the asyncio ceiling."""

from __future__ import annotations

import asyncio

import h11

from bench.peers.bare import port_from_argv, process


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn = h11.Connection(h11.SERVER)

    def data_received(self, data: bytes) -> None:
        out, close = process(self.conn, data)
        if out:
            self.transport.write(out)
        if close:
            self.transport.close()

    def eof_received(self) -> bool:
        self.data_received(b"")
        return False


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(port_from_argv()))
