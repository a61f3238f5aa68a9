"""The ASGI benchmark: our three transports serving an ASGI app, against uvicorn and hypercorn.

Run it with `./bench/run.sh asgi [--quick]` (which installs wrk and the peers first). Every
server serves `bench/peers/asgi_min.py` (a 3-byte body with Content-Length, two messages),
keep-alive, pinned to core 0 with wrk on core 1, round-robin over rounds as in `bench.run`,
whose helpers this reuses. Only 127.0.0.1 is contacted; every server is stopped.
"""

from __future__ import annotations

import argparse
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

APP = "bench.peers.asgi_min:app"
KEEP_ALIVE = Scenario("keep-alive", "keep-alive GET / (3-byte body)", "/")
UVICORN, UVICORN_FAST = "uvicorn-h11", "uvicorn-httptools-uvloop"
HYPERCORN_ASYNCIO, HYPERCORN_TRIO = "hypercorn-asyncio", "hypercorn-trio"


def _ours(transport: str, *, fast: bool = False) -> Server:
    """Ours; `fast`: with the speed extras (docs/speed.md), h11-mypyc and, on asyncio, uvloop."""
    extra = ["--parser", "h11-mypyc"] if fast else []
    if fast and transport == "asyncio":
        extra += ["--loop", "uvloop"]

    def argv(port: int, directory: Path) -> list[str]:
        flags = ["--transport", transport, *extra, "--port", str(port), "--no-access-log"]
        return [OURS_PY, "-m", "transports", APP, *flags]

    return Server(f"ours-{transport}{'-fast' if fast else ''}", transport, True, argv)


def _uvicorn(http: str, loop: str) -> Server:
    def argv(port: int, directory: Path) -> list[str]:
        flags = ["--http", http, "--loop", loop, "--no-access-log"]
        return [PEERS_PY, "-m", "uvicorn", APP, *flags, "--host", "127.0.0.1", "--port", str(port)]

    return Server(UVICORN if http == "h11" else UVICORN_FAST, "asyncio", False, argv)


def _hypercorn(worker: str) -> Server:
    def argv(port: int, directory: Path) -> list[str]:
        return [PEERS_PY, "-m", "hypercorn", "-k", worker, "-b", f"127.0.0.1:{port}", APP]

    return Server(f"hypercorn-{worker}", worker, False, argv)


SERVERS = [
    _ours("asyncio"),
    _ours("trio"),
    _ours("threads"),
    _ours("asyncio", fast=True),
    _uvicorn("h11", "asyncio"),
    _hypercorn("asyncio"),
    _hypercorn("trio"),
    _uvicorn("httptools", "uvloop"),
]


def bench_server(server: Server, args: argparse.Namespace, results: Results) -> None:
    with serving(server, WORK, results.problems) as started:
        if started is None:
            results.add(server.name, KEEP_ALIVE.name, None)  # keeps the rounds aligned
        else:
            take_sample(server, *started, KEEP_ALIVE, args, results)


def report(results: Results, args: argparse.Namespace) -> str:
    lines = [
        "# ASGI benchmark results",
        "",
        machine_info(results),
        f"- Rounds: {args.rounds}, {args.duration} s per run after a {args.warmup} s warm-up; medians over "
        "rounds; ratios are of req/s measured in the same round",
        "- Peers: uvicorn 0.54 `--http h11 --loop asyncio` and `--http httptools --loop uvloop`, hypercorn "
        "0.18 with its asyncio and trio workers; ours: `python -m transports bench.peers.asgi_min:app` "
        "(lifespan auto), and `ours-asyncio-fast` with the speed extras (`--parser h11-mypyc --loop "
        "uvloop`); access logs off everywhere",
        "",
        f"## {KEEP_ALIVE.title}",
        "",
        f"| server | req/s | vs {UVICORN} | vs {HYPERCORN_TRIO} | vs {UVICORN_FAST} | p50 ms | p99 ms "
        "| CPU µs/req | CPU vs uvicorn-h11 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    uvicorn_cpu = median([s.cpu_us for s in results.runs.get((UVICORN, KEEP_ALIVE.name), []) if s])
    for server in SERVERS:
        samples = [s for s in results.runs.get((server.name, KEEP_ALIVE.name), []) if s]
        if not samples:
            continue
        cpu = median([s.cpu_us for s in samples])
        cells = [
            f"**{server.name}**" if server.ours else server.name,
            fmt(median([s.rps for s in samples]), ".0f"),
            fmt(ratio(results, server.name, UVICORN, KEEP_ALIVE.name)),
            fmt(ratio(results, server.name, HYPERCORN_TRIO, KEEP_ALIVE.name)),
            fmt(ratio(results, server.name, UVICORN_FAST, KEEP_ALIVE.name)),
            fmt(median([s.p50_ms for s in samples])),
            fmt(median([s.p99_ms for s in samples])),
            fmt(cpu, ".0f"),
            fmt(uvicorn_cpu / cpu if uvicorn_cpu and cpu else None),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Targets (issue 10)", ""]

    def check(label: str, value: float | None, want: float, at_most: bool = False) -> None:
        ok = value is not None and (value <= want if at_most else value >= want)
        sign = "≤" if at_most else "≥"
        lines.append(f"- {'✓' if ok else '✗'} {label}: {fmt(value)} (want {sign} {want:g})")

    def faster(name: str, ref: str, want: float) -> None:
        by_cpu = fmt(ratio(results, name, ref, KEEP_ALIVE.name, cpu=True))
        check(f"{name} vs {ref} (by CPU time: {by_cpu})", ratio(results, name, ref, KEEP_ALIVE.name), want)

    def p99(name: str) -> float | None:
        return median([s.p99_ms for s in results.runs.get((name, KEEP_ALIVE.name), []) if s])

    faster("ours-asyncio", UVICORN, 1.25)
    faster("ours-trio", UVICORN, 1.1)
    faster("ours-trio", HYPERCORN_TRIO, 3.0)
    faster("ours-threads", UVICORN, 1.0)
    uvicorn_p99 = p99(UVICORN)
    for name in ("ours-asyncio", "ours-trio", "ours-threads"):
        check(f"{name} p99 ms ({UVICORN}'s: {fmt(uvicorn_p99)})", p99(name), uvicorn_p99 or 0.0, at_most=True)
    lines += ["", "## Targets (issue 13: the speed extras, h11-mypyc and uvloop)", ""]
    faster("ours-asyncio-fast", UVICORN_FAST, 0.7)
    pure_p99 = p99("ours-asyncio")
    check(
        f"ours-asyncio-fast p99 ms (ours-asyncio's: {fmt(pure_p99)})",
        p99("ours-asyncio-fast"),
        pure_p99 or 0.0,
        at_most=True,
    )
    if results.problems:
        lines += ["", "## Problems", "", *(f"- {p}" for p in results.problems)]
    return "\n".join(lines) + "\n"


def chart(results: Results, path: Path) -> None:
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    names = [s.name for s in SERVERS if any(results.runs.get((s.name, KEEP_ALIVE.name), []))]
    rps = [median([x.rps for x in results.runs[(n, KEEP_ALIVE.name)] if x]) or 0.0 for n in names]
    colors = ["#1f77b4" if n.startswith("ours") else "#d62728" for n in names]
    fig, axis = plt.subplots(figsize=(8, 4))
    drawn = axis.barh(names, rps, color=colors, edgecolor="black", linewidth=0.4)
    axis.bar_label(drawn, labels=[f"{v:.0f}" for v in rps], fontsize=8, padding=2)
    axis.invert_yaxis()
    axis.set_xlabel("req/s, keep-alive, 3-byte body (server on one core)")
    axis.set_title("Minimal ASGI app (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = arguments(__doc__, "about 1 minute").parse_args()
    servers = chosen(args, SERVERS)
    results = Results()
    results.steal = in_rounds(servers, args.rounds, lambda server: bench_server(server, args, results))
    publish(report(results, args), "asgi", bool(args.servers), lambda path: chart(results, path))


if __name__ == "__main__":
    main()
