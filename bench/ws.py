"""The WebSocket benchmark: our three transports against uvicorn (websockets, wsproto) and hypercorn.

Run it with `./bench/run.sh ws [--quick]`. Every server serves `bench/peers/ws_app.py` (an
ASGI echo), pinned to core 0; the load client below runs in this process on core 1, on
asyncio with raw sockets (a few µs per message, far below any server's cost):

- echo: 50 connections, each sending a 16-byte text message and waiting for its echo, again
  and again: messages per second, latency, server CPU µs per message;
- big: 4 connections echoing 1 MiB binary messages back to back: MB/s of echoed payload.

The client offers no compression (every server then frames plainly) and masks with a zero
key (valid framing; servers do not check the key's randomness), so its frames are built
once. It answers pings. Only 127.0.0.1 is contacted; every server is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import os
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.run import (
    FAST,
    OURS_PY,
    PEERS_PY,
    WORK,
    Results,
    Server,
    arguments,
    chosen,
    cpu_seconds,
    fmt,
    in_rounds,
    machine_info,
    median,
    process_tree,
    publish,
    serving,
)

APP = "bench.peers.ws_app:app"
ECHO_CONNECTIONS, ECHO_SIZE = 50, 16
BIG_CONNECTIONS, BIG_SIZE = 4, 1 << 20
UVICORN_WEBSOCKETS, UVICORN_WSPROTO = "uvicorn-websockets", "uvicorn-wsproto"
HYPERCORN_ASYNCIO, HYPERCORN_TRIO = "hypercorn-asyncio", "hypercorn-trio"


def _ours(transport: str, *, fast: bool = False) -> Server:
    def argv(port: int, directory: Path) -> list[str]:
        cmd = [OURS_PY, "-m", "transports", APP, "--transport", transport, "--port", str(port)]
        return [*cmd, "--no-access-log", *(FAST[transport] if fast else [])]

    return Server(f"ours-{transport}{'-fast' if fast else ''}", transport, True, argv)


def _uvicorn(ws: str) -> Server:
    def argv(port: int, directory: Path) -> list[str]:
        flags = ["--http", "h11", "--ws", ws, "--loop", "asyncio", "--no-access-log", "--lifespan", "off"]
        return [PEERS_PY, "-m", "uvicorn", APP, *flags, "--host", "127.0.0.1", "--port", str(port)]

    return Server(f"uvicorn-{ws}", "asyncio", False, argv)


def _hypercorn(worker: str) -> Server:
    def argv(port: int, directory: Path) -> list[str]:
        return [PEERS_PY, "-m", "hypercorn", "-k", worker, "-b", f"127.0.0.1:{port}", APP]

    return Server(f"hypercorn-{worker}", worker, False, argv)


SERVERS = [
    _ours("asyncio"),
    _ours("trio"),
    _ours("threads"),
    _ours("asyncio", fast=True),
    _uvicorn("websockets"),
    _uvicorn("wsproto"),
    _hypercorn("asyncio"),
    _hypercorn("trio"),
]


# --- the load client -------------------------------------------------------------------------


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame masked with a zero key (XOR with zeros: the payload as it is)."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + b"\0\0\0\0" + payload


@dataclass
class Load:
    """What the connections of one run share."""

    frame: bytes
    running: bool = True
    messages: int = 0
    measuring: bool = False
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class EchoClient(asyncio.Protocol):
    """One connection: the handshake, then one message in flight, sent again on each echo."""

    def __init__(self, load: Load, ready: asyncio.Future[None]) -> None:
        self.load = load
        self.ready = ready
        self.buffer = bytearray()
        self.handshaking = True
        self.skip = 0  # payload bytes of the current data frame still to come
        self.fin = False
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        transport.write(
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key
        )

    def send_next(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.load.frame)

    def data_received(self, data: bytes) -> None:
        if self.skip >= len(data) and not self.buffer:  # the middle of a big payload: count only
            self.skip -= len(data)
            if not self.skip and self.fin:
                self.message()
            return
        self.buffer += data
        if self.handshaking:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self.load.errors.append(bytes(self.buffer[:60]).decode("latin-1"))
                self.ready.set_result(None)
                return
            del self.buffer[: end + 4]
            self.handshaking = False
            self.ready.set_result(None)
        self.parse()

    def parse(self) -> None:
        buffer = self.buffer
        pos = 0
        while True:
            if self.skip:
                taken = min(self.skip, len(buffer) - pos)
                self.skip -= taken
                pos += taken
                if self.skip:
                    break
                if self.fin:
                    self.message()
                continue
            if len(buffer) - pos < 2:
                break
            first, second = buffer[pos], buffer[pos + 1]
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if len(buffer) - pos < 4:
                    break
                length = struct.unpack_from("!H", buffer, pos + 2)[0]
                start = pos + 4
            elif length == 127:
                if len(buffer) - pos < 10:
                    break
                length = struct.unpack_from("!Q", buffer, pos + 2)[0]
                start = pos + 10
            opcode = first & 0x0F
            if opcode >= 8:  # control: wait for its whole payload
                if len(buffer) - start < length:
                    break
                if opcode == 9 and self.transport is not None:  # ping: pong
                    self.transport.write(client_frame(0xA, bytes(buffer[start : start + length])))
                pos = start + length
                continue
            pos = start
            self.fin = bool(first & 0x80)
            self.skip = length
            if not length and self.fin:
                self.message()
        del buffer[:pos]

    def message(self) -> None:
        load = self.load
        if load.measuring:
            load.messages += 1
            load.latencies.append(time.perf_counter() - self.sent_at)
        if load.running:
            self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.load.running:
            self.load.errors.append(f"connection lost: {exc!r}")
        if not self.ready.done():
            self.ready.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(0x8, struct.pack("!H", 1000)))
            self.transport.close()


@dataclass
class Run:
    rate: float  # messages per second
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU per message
    errors: list[str]


async def run_load(port: int, pid: int, size: int, connections: int, warmup: float, seconds: float) -> Run:
    loop = asyncio.get_running_loop()
    load = Load(client_frame(0x2 if size >= 1024 else 0x1, b"m" * size))
    clients: list[EchoClient] = []
    for _ in range(connections):
        ready: asyncio.Future[None] = loop.create_future()
        _, client = await loop.create_connection(
            functools.partial(EchoClient, load, ready), "127.0.0.1", port
        )
        clients.append(client)
        await asyncio.wait_for(ready, 10)
    if load.errors:
        raise RuntimeError(f"handshake failed: {load.errors[0]!r}")
    for client in clients:
        client.send_next()
    await asyncio.sleep(warmup)
    pids = process_tree(pid)
    cpu = cpu_seconds(pids)
    load.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    load.measuring = False
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pids) - cpu
    load.running = False
    for client in clients:
        client.close()
    await asyncio.sleep(0.2)
    latencies = sorted(load.latencies) or [0.0]
    count = max(load.messages, 1)
    return Run(
        rate=load.messages / elapsed,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        cpu_us=cpu / count * 1e6,
        errors=load.errors,
    )


# --- the runner --------------------------------------------------------------------------------


@dataclass
class WSResults:
    echo: dict[str, list[Run]] = field(default_factory=dict)
    big: dict[str, list[Run]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    steal: float | None = None


def bench_server(server: Server, args: argparse.Namespace, results: WSResults) -> None:
    with serving(server, WORK, results.problems) as started:
        if started is None:
            return
        pid, port = started
        for name, size, connections, store in (
            ("echo", ECHO_SIZE, ECHO_CONNECTIONS, results.echo),
            ("big", BIG_SIZE, BIG_CONNECTIONS, results.big),
        ):
            try:
                run = asyncio.run(run_load(port, pid, size, connections, args.warmup, args.duration))
            except (OSError, RuntimeError, TimeoutError) as exc:
                results.problems.append(f"{server.name} {name}: {str(exc)[:300]}")
                continue
            if run.errors:
                results.problems.append(
                    f"{server.name} {name}: {len(run.errors)} errors, e.g. {run.errors[0]}"
                )
            store.setdefault(server.name, []).append(run)
            time.sleep(0.3)


def ratio(store: dict[str, list[Run]], name: str, ref: str, *, cpu: bool = False) -> float | None:
    """The median over rounds of name's rate over ref's rate in the same round; with `cpu`,
    of ref's CPU time per message over name's (above 1: `name` needs less CPU)."""
    ours, theirs = store.get(name, []), store.get(ref, [])
    if cpu:
        return median([b.cpu_us / a.cpu_us for a, b in zip(ours, theirs, strict=False) if a.cpu_us])
    return median([a.rate / b.rate for a, b in zip(ours, theirs, strict=False) if b.rate])


def _masking() -> str:
    """How our server unmasks large messages, as its start-up decides (handlers.asgi_ws.accelerate)."""
    probe = subprocess.run([OURS_PY, "-c", "import websockets.speedups"], capture_output=True)
    if probe.returncode == 0:
        return "the `websockets` package's compiled `apply_mask` (installed in the project's venv)"
    return "pure Python (the `websockets` package is not installed in the project's venv)"


def report(results: WSResults, args: argparse.Namespace, servers: list[Server]) -> str:
    info = Results()
    info.steal = results.steal
    lines = [
        "# WebSocket benchmark results",
        "",
        machine_info(info).replace("wrk on core 1 (1 thread, 50 connections)", "the load client on core 1"),
        f"- Rounds: {args.rounds}, {args.duration} s per run after a {args.warmup} s warm-up; medians over "
        "rounds; ratios are of rates measured in the same round",
        "- Peers: uvicorn 0.54 `--http h11 --loop asyncio` with `--ws websockets` (websockets 17) and "
        "`--ws wsproto` (wsproto 1.3), hypercorn 0.18 (asyncio and trio workers, wsproto); ours: "
        "`python -m transports bench.peers.ws_app:app` (`-fast`: uvloop and h11-mypyc, the speed "
        "extras); access logs off; no compression offered",
        f"- Ours unmasks large messages with {_masking()}",
        "",
        f"## Echo: {ECHO_SIZE}-byte text messages, {ECHO_CONNECTIONS} connections, one in flight each",
        "",
        f"| server | msg/s | vs {UVICORN_WSPROTO} | vs {UVICORN_WEBSOCKETS} | p50 ms | p99 ms | CPU µs/msg "
        f"| CPU vs {UVICORN_WSPROTO} | CPU vs {UVICORN_WEBSOCKETS} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server in servers:
        runs = results.echo.get(server.name)
        if not runs:
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    f"**{server.name}**" if server.ours else server.name,
                    fmt(median([r.rate for r in runs]), ".0f"),
                    fmt(ratio(results.echo, server.name, UVICORN_WSPROTO)),
                    fmt(ratio(results.echo, server.name, UVICORN_WEBSOCKETS)),
                    fmt(median([r.p50_ms for r in runs])),
                    fmt(median([r.p99_ms for r in runs])),
                    fmt(median([r.cpu_us for r in runs]), ".0f"),
                    fmt(ratio(results.echo, server.name, UVICORN_WSPROTO, cpu=True)),
                    fmt(ratio(results.echo, server.name, UVICORN_WEBSOCKETS, cpu=True)),
                ]
            )
            + " |"
        )
    lines += [
        "",
        f"## Big: 1 MiB binary messages echoed, {BIG_CONNECTIONS} connections",
        "",
        f"| server | MB/s | vs {UVICORN_WSPROTO} | vs {UVICORN_WEBSOCKETS} | CPU ms/msg "
        f"| CPU vs {UVICORN_WSPROTO} | CPU vs {UVICORN_WEBSOCKETS} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for server in servers:
        runs = results.big.get(server.name)
        if not runs:
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    f"**{server.name}**" if server.ours else server.name,
                    fmt(median([r.rate * BIG_SIZE / 1e6 for r in runs]), ".0f"),
                    fmt(ratio(results.big, server.name, UVICORN_WSPROTO)),
                    fmt(ratio(results.big, server.name, UVICORN_WEBSOCKETS)),
                    fmt(median([r.cpu_us / 1000 for r in runs])),
                    fmt(ratio(results.big, server.name, UVICORN_WSPROTO, cpu=True)),
                    fmt(ratio(results.big, server.name, UVICORN_WEBSOCKETS, cpu=True)),
                ]
            )
            + " |"
        )
    lines += ["", "## Targets (issue 11)", ""]

    lines.append("Each line: the ratio of rates, then of CPU time per message (which other load on a shared")
    lines.append("machine disturbs far less).")
    lines.append("")

    def check(label: str, store: dict[str, list[Run]], name: str, ref: str) -> None:
        value, cpu = ratio(store, name, ref), ratio(store, name, ref, cpu=True)
        mark = "✓" if value is not None and value >= 1.0 else "✗"
        lines.append(f"- {mark} {name} {label} vs {ref}: {fmt(value)} (CPU: {fmt(cpu)}; want ≥ 1)")

    for name in ("ours-asyncio", "ours-trio", "ours-threads"):
        check("echo", results.echo, name, UVICORN_WSPROTO)
        check("MB/s", results.big, name, UVICORN_WSPROTO)
    check("echo", results.echo, "ours-asyncio", UVICORN_WEBSOCKETS)
    check("MB/s", results.big, "ours-asyncio", UVICORN_WEBSOCKETS)
    if results.problems:
        lines += ["", "## Problems", "", *(f"- {p}" for p in results.problems)]
    return "\n".join(lines) + "\n"


def chart(results: WSResults, servers: list[Server], path: Path) -> None:
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, store, scale, label, title in (
        (axes[0], results.echo, 1.0, "messages/s", f"{ECHO_SIZE}-byte echo, {ECHO_CONNECTIONS} connections"),
        (
            axes[1],
            results.big,
            BIG_SIZE / 1e6,
            "MB/s",
            f"1 MiB messages echoed, {BIG_CONNECTIONS} connections",
        ),
    ):
        names = [s.name for s in servers if store.get(s.name)]
        values = [(median([r.rate for r in store[n]]) or 0.0) * scale for n in names]
        colors = ["#1f77b4" if n.startswith("ours") else "#d62728" for n in names]
        drawn = axis.barh(names, values, color=colors, edgecolor="black", linewidth=0.4)
        axis.bar_label(drawn, labels=[f"{v:.0f}" for v in values], fontsize=8, padding=2)
        axis.invert_yaxis()
        axis.set_xlabel(f"{label} (server on one core; higher is better)")
        axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = arguments(__doc__, "about 2 minutes").parse_args()
    servers = chosen(args, SERVERS)
    results = WSResults()
    results.steal = in_rounds(servers, args.rounds, lambda server: bench_server(server, args, results))
    publish(
        report(results, args, servers), "ws", bool(args.servers), lambda path: chart(results, servers, path)
    )


if __name__ == "__main__":
    main()
