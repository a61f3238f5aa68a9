"""The WSGI benchmark: our three transports serving a WSGI app, against waitress, gunicorn and hypercorn.

Run it with `./bench/run.sh wsgi [--quick]` (which installs wrk and the peers first). Every
server serves `bench/peers/wsgi_app.py` (a 3-byte body with Content-Length; `/stream` for a
1 GiB response), pinned to core 0, the client on core 1, round-robin over rounds as in
`bench.run`, whose helpers this reuses. Only 127.0.0.1 is contacted; every server is stopped.
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path

from bench.run import (
    OURS_PY,
    PEERS_PY,
    WORK,
    Results,
    Scenario,
    Server,
    arguments,
    chosen,
    fmt,
    in_rounds,
    machine_info,
    median,
    publish,
    ratio,
    serving,
    take_sample,
)

APP = "bench.peers.wsgi_app:app"
STREAM_SIZE = 1 << 30
KEEP_ALIVE = Scenario("keep-alive", "keep-alive GET / (3-byte body)", "/")
WAITRESS, GUNICORN, HYPERCORN = "waitress", "gunicorn-gthread", "hypercorn-wsgi-asyncio"


def _ours(transport: str, *, fast: bool = False) -> Server:
    """Ours; `fast`: with the compiled parser (docs/speed.md; a WSGI app runs on no event loop,
    so `--loop uvloop`, the other speed extra, would change nothing here)."""
    extra = ["--parser", "h11-mypyc"] if fast else []

    def argv(port: int, directory: Path) -> list[str]:
        return [
            OURS_PY,
            "-m",
            "transports",
            APP,
            "--transport",
            transport,
            *extra,
            "--port",
            str(port),
            "--no-access-log",
        ]

    return Server(f"ours-{transport}{'-fast' if fast else ''}", transport, True, argv)


def _waitress(port: int, directory: Path) -> list[str]:
    return [PEERS_PY, "-m", "waitress", "--host=127.0.0.1", f"--port={port}", APP]


def _gunicorn(port: int, directory: Path) -> list[str]:
    flags = ["-k", "gthread", "-w", "1", "--threads", "16", "-b", f"127.0.0.1:{port}"]
    return [PEERS_PY, "-m", "gunicorn", *flags, APP]


def _hypercorn(port: int, directory: Path) -> list[str]:
    return [PEERS_PY, "-m", "hypercorn", "-k", "asyncio", "-b", f"127.0.0.1:{port}", APP]


SERVERS = [
    _ours("asyncio"),
    _ours("trio"),
    _ours("threads"),
    _ours("threads", fast=True),
    Server(WAITRESS, "threads", False, _waitress),
    Server(GUNICORN, "threads", False, _gunicorn),
    Server(HYPERCORN, "asyncio", False, _hypercorn),
]
STREAMERS = {"ours-asyncio", "ours-trio", "ours-threads", WAITRESS, GUNICORN}
"""hypercorn's WSGI wrapper holds a whole response in memory (16 MiB at most): no 1 GiB stream."""


def stream(port: int, size: int) -> float:
    """Seconds to receive a `size`-byte response (Content-Length) on one connection."""
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(f"GET /stream?size={size} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            count = sock.recv_into(buffer)
            if not count:
                raise ConnectionError("closed before the head")
            head += bytes(view[:count])
        header, _, rest = head.partition(b"\r\n\r\n")
        if b" 200 " not in header.split(b"\r\n")[0]:
            raise RuntimeError(f"unexpected head {header[:200]!r}")
        received = len(rest)
        while received < size:
            count = sock.recv_into(buffer)
            if not count:
                raise ConnectionError(f"closed after {received} bytes")
            received += count
        return time.monotonic() - started


def bench_server(
    server: Server, args: argparse.Namespace, results: Results, streams: dict[str, list[float]]
) -> None:
    with serving(server, WORK, results.problems) as started:
        if started is None:
            results.add(server.name, KEEP_ALIVE.name, None)  # keeps the rounds aligned
            return
        take_sample(server, *started, KEEP_ALIVE, args, results)
        if server.name in STREAMERS and args.stream:
            try:
                seconds = stream(started[1], args.stream_size)
                streams.setdefault(server.name, []).append(args.stream_size / seconds / 1e9)
            except (OSError, RuntimeError) as exc:
                results.problems.append(f"{server.name} stream: {exc!r}")


def report(results: Results, args: argparse.Namespace, streams: dict[str, list[float]]) -> str:
    lines = [
        "# WSGI benchmark results",
        "",
        machine_info(results),
        f"- Rounds: {args.rounds}, {args.duration} s per run after a {args.warmup} s warm-up; medians over "
        "rounds; ratios are of req/s measured in the same round",
        "- 'by CPU time': the reference's CPU time per request over the server's, which other load on "
        "a shared machine disturbs far less than req/s",
        "- Peers: waitress 3.0 (its defaults: 4 threads), gunicorn 27 gthread (1 worker, 16 threads), "
        "hypercorn 0.18's WSGI on asyncio; ours: `python -m transports bench.peers.wsgi_app:app` "
        "(defaults: 16 threads on the threads transport), and `ours-threads-fast` with the compiled parser "
        "(`--parser h11-mypyc`); access logs off everywhere",
        "",
        f"## {KEEP_ALIVE.title}",
        "",
        f"| server | req/s | vs {WAITRESS} | vs {GUNICORN} | vs {HYPERCORN} | p50 ms | p99 ms | CPU µs/req "
        f"| {args.stream_size >> 30} GiB stream GB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server in SERVERS:
        samples = [s for s in results.runs.get((server.name, KEEP_ALIVE.name), []) if s]
        if not samples:
            continue
        cells = [
            f"**{server.name}**" if server.ours else server.name,
            fmt(median([s.rps for s in samples]), ".0f"),
            fmt(ratio(results, server.name, WAITRESS, KEEP_ALIVE.name)),
            fmt(ratio(results, server.name, GUNICORN, KEEP_ALIVE.name)),
            fmt(ratio(results, server.name, HYPERCORN, KEEP_ALIVE.name)),
            fmt(median([s.p50_ms for s in samples])),
            fmt(median([s.p99_ms for s in samples])),
            fmt(median([s.cpu_us for s in samples]), ".0f"),
            fmt(median(streams.get(server.name, []))),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Targets (issue 9)", ""]

    def check(label: str, value: float | None, want: float) -> None:
        mark = "✓" if value is not None and value >= want else "✗"
        lines.append(f"- {mark} {label}: {fmt(value)} (want ≥ {want:g})")

    def faster(name: str, ref: str, want: float) -> None:
        by_cpu = fmt(ratio(results, name, ref, KEEP_ALIVE.name, cpu=True))
        check(
            f"{name} req/s vs {ref} (by CPU time: {by_cpu})", ratio(results, name, ref, KEEP_ALIVE.name), want
        )

    faster("ours-threads", WAITRESS, 1.0)
    faster("ours-threads", GUNICORN, 1.5)
    for name in ("ours-trio", "ours-asyncio"):
        faster(name, HYPERCORN, 2.0)
    for name in ("ours-asyncio", "ours-trio", "ours-threads"):
        check(f"{name} {args.stream_size >> 30} GiB stream, GB/s", median(streams.get(name, [])), 1.0)
    lines += ["", "## Targets (issue 13: the speed extras)", ""]
    faster("ours-threads-fast", WAITRESS, 1.5)
    if results.problems:
        lines += ["", "## Problems", "", *(f"- {p}" for p in results.problems)]
    return "\n".join(lines) + "\n"


def chart(results: Results, streams: dict[str, list[float]], path: Path) -> None:
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    names = [s.name for s in SERVERS if any(results.runs.get((s.name, KEEP_ALIVE.name), []))]
    rps = [median([x.rps for x in results.runs[(n, KEEP_ALIVE.name)] if x]) or 0.0 for n in names]
    colors = ["#1f77b4" if n.startswith("ours") else "#d62728" for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    drawn = left.barh(names, rps, color=colors, edgecolor="black", linewidth=0.4)
    left.bar_label(drawn, labels=[f"{v:.0f}" for v in rps], fontsize=8, padding=2)
    left.invert_yaxis()
    left.set_xlabel("req/s, keep-alive, 3-byte body (server on one core)")
    left.set_title("Minimal WSGI app (higher is better)")
    streamed = [n for n in names if streams.get(n)]
    rates = [median(streams[n]) or 0.0 for n in streamed]
    drawn = right.barh(
        streamed, rates, color=["#1f77b4" if n.startswith("ours") else "#d62728" for n in streamed]
    )
    right.bar_label(drawn, labels=[f"{v:.2f}" for v in rates], fontsize=8, padding=2)
    right.invert_yaxis()
    right.set_xlabel("GB/s")
    right.set_title("1 GiB streamed response, one connection")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = arguments(__doc__, "about 2 minutes")
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="skip the 1 GiB stream")
    parser.add_argument("--stream-size", type=int, default=STREAM_SIZE, help="bytes of the streamed response")
    args = parser.parse_args()
    servers = chosen(args, SERVERS)
    results, streams = Results(), dict[str, list[float]]()
    results.steal = in_rounds(
        servers, args.rounds, lambda server: bench_server(server, args, results, streams)
    )
    publish(
        report(results, args, streams), "wsgi", bool(args.servers), lambda path: chart(results, streams, path)
    )


if __name__ == "__main__":
    main()
