"""The ASGI benchmark: our three transports serving an ASGI app, against uvicorn and hypercorn.

Run it with `./bench/run.sh asgi [--quick]` (which installs wrk and the peers first). Every
server serves `bench/peers/asgi_min.py` (a 3-byte body with Content-Length, two messages),
keep-alive, pinned to core 0 with wrk on core 1, round-robin over rounds as in `bench.run`,
whose helpers this reuses. Only 127.0.0.1 is contacted; every server is stopped.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path

from bench.run import (
    OURS_PY,
    PEERS_PY,
    RESULTS,
    WORK,
    Results,
    Sample,
    Scenario,
    Server,
    _cpu_ticks,
    fmt,
    free_port,
    machine_info,
    measure,
    median,
    ratio,
    running,
    wait_ready,
    wrk,
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
    port = free_port()
    print(f"  {server.name} on port {port}", flush=True)
    with running(server, port, WORK) as proc:
        if not wait_ready(proc, port):
            results.problems.append(f"{server.name} did not start (see bench/results/tmp/{server.name}.log)")
            results.add(server.name, KEEP_ALIVE.name, None)
            return
        try:
            wrk(port, KEEP_ALIVE, args.warmup)
            sample: Sample | None = measure(proc.pid, port, KEEP_ALIVE, args.duration)
        except (OSError, RuntimeError, ValueError) as exc:
            results.problems.append(f"{server.name} keep-alive: {str(exc)[:300]}")
            sample = None
        if sample and sample.errors:
            results.problems.append(f"{server.name} keep-alive: wrk errors: {sample.errors}")
        results.add(server.name, KEEP_ALIVE.name, sample)


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of short runs (about 1 minute)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per measured run (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per run (default 1)")
    parser.add_argument("--servers", default="", help="comma-separated server names (default: all)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1
    servers = [s for s in SERVERS if not args.servers or s.name in args.servers.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    os.sched_setaffinity(0, {1})
    WORK.mkdir(parents=True, exist_ok=True)
    results = Results()
    before = _cpu_ticks()
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}", flush=True)
        shift = round_ % len(servers)
        for server in servers[shift:] + servers[:shift]:
            bench_server(server, args, results)
    after = _cpu_ticks()
    total = sum(after) - sum(before)
    results.steal = (after[7] - before[7]) / total if total and len(after) > 7 else None
    text = report(results, args)
    where = WORK / "asgi-partial" if args.servers else RESULTS / "asgi-latest"
    where.with_suffix(".md").write_text(text)
    chart(results, where.with_suffix(".png"))
    print(text)
    print(f"Written: {where}.md and {where}.png", file=sys.stderr)


if __name__ == "__main__":
    main()
