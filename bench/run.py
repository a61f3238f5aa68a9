"""The benchmark: our three transports against hypercorn, uvicorn and bare h11 loops, in one run.

Our asyncio and trio transports run twice: pure (h11) and with the speed extras ("-fast":
h11-mypyc, and uvloop for asyncio), next to uvicorn with httptools and uvloop.

Run it with `./bench/run.sh [--quick]` (it installs wrk and the peers first). Each server in
turn runs pinned to core 0 and wrk to core 1; servers are visited round-robin for N rounds
so that drift (thermal, noisy neighbours) hits every server alike, and the report gives
medians over rounds and ratios of figures measured in the same round. Only 127.0.0.1 is
ever contacted, every step is bounded in time, and every server is stopped (its whole
process group) whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
WORK = RESULTS / "tmp"
OURS_PY = str(ROOT / ".venv" / "bin" / "python")
PEERS_PY = str(BENCH / ".venv-peers" / "bin" / "python")
SERVER_CORE, CLIENT_CORE = "0", "1"
FILE_NAME = "bench-1MiB.bin"
ECHO_10K = ("The quick brown fox jumps over the lazy dog " * 240)[:10240].replace(" ", "-")
IDLE_CONNECTIONS = 1000

# Reference servers for the ratio columns, and the bare loop of each runtime.
HYPERCORN, UVICORN = "hypercorn-asyncio", "uvicorn-h11"
UVICORN_FAST = "uvicorn-httptools"
FAST = {"asyncio": ["--parser", "h11-mypyc", "--loop", "uvloop"], "trio": ["--parser", "h11-mypyc"]}
"""The options of our accelerated rows (the speed extras, requirements-fast.txt)."""
BARE = {"asyncio": "bare-asyncio", "trio": "bare-trio", "threads": "bare-threads"}


@dataclass(frozen=True)
class Server:
    name: str
    runtime: str
    ours: bool
    argv: Callable[[int, Path], list[str]]
    full: bool = True  # serves gzip and files; the bare loops only echo


def _ours(transport: str, *, fast: bool = False) -> Server:
    extra = FAST[transport] if fast else []

    def argv(port: int, directory: Path) -> list[str]:
        cmd = [OURS_PY, "-m", "transports", "--transport", transport, *extra, "--port", str(port)]
        # The peers take targets up to h11's 16 KiB head limit; ours stops at 8 KiB by default.
        return [*cmd, "--no-access-log", "--directory", str(directory), "--max-target-length", "16384"]

    return Server(f"ours-{transport}{'-fast' if fast else ''}", transport, True, argv)


def _hypercorn(worker: str) -> Server:
    def argv(port: int, directory: Path) -> list[str]:
        app = "bench.peers.asgi_app:app"
        return [PEERS_PY, "-m", "hypercorn", "-k", worker, "-b", f"127.0.0.1:{port}", app]

    return Server(f"hypercorn-{worker}", worker, False, argv)


def _uvicorn(http: str, loop: str) -> Callable[[int, Path], list[str]]:
    def argv(port: int, directory: Path) -> list[str]:
        app = "bench.peers.asgi_app:app"
        flags = ["--http", http, "--loop", loop, "--no-access-log", "--lifespan", "off"]
        return [PEERS_PY, "-m", "uvicorn", app, *flags, "--host", "127.0.0.1", "--port", str(port)]

    return argv


def _bare(runtime: str) -> Server:
    def argv(port: int, directory: Path) -> list[str]:
        return [PEERS_PY, "-m", f"bench.peers.bare_{runtime}", "--port", str(port)]

    return Server(f"bare-{runtime}", runtime, False, argv, full=False)


SERVERS = [
    _ours("asyncio"),
    _ours("trio"),
    _ours("threads"),
    _ours("asyncio", fast=True),
    _ours("trio", fast=True),
    _hypercorn("asyncio"),
    _hypercorn("trio"),
    Server(UVICORN, "asyncio", False, _uvicorn("h11", "asyncio")),
    Server(UVICORN_FAST, "asyncio", False, _uvicorn("httptools", "uvloop")),
    _bare("asyncio"),
    _bare("trio"),
    _bare("threads"),
]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    path: str
    headers: tuple[str, ...] = ()
    full_only: bool = False  # needs gzip or files, which the bare loops lack


SCENARIOS = [
    Scenario("keep-alive", "keep-alive GET /echo/abc", "/echo/abc"),
    Scenario("close", "Connection: close", "/echo/abc", ("Connection: close",)),
    Scenario("gzip", "10 KiB echo, gzip", "/echo/" + ECHO_10K, ("Accept-Encoding: gzip",), True),
    Scenario("file", "1 MiB file download", "/files/" + FILE_NAME, (), True),
]


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU time per request
    mib_s: float
    errors: str  # wrk's error counts by kind, "" when none


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Sample | None]] = field(default_factory=dict)  # None: a failed run
    idle: dict[str, list[float]] = field(default_factory=dict)  # KiB per idle connection
    problems: list[str] = field(default_factory=list)
    steal: float | None = None  # share of CPU time the hypervisor gave to other guests

    def add(self, server: str, scenario: str, sample: Sample | None) -> None:
        self.runs.setdefault((server, scenario), []).append(sample)


# --- processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (hypercorn runs its worker in a child process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


@contextlib.contextmanager
def running(server: Server, port: int, directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start `server` on core 0 in its own process group; always stop the whole group."""
    log = open(WORK / f"{server.name}.log", "ab")  # noqa: SIM115 - closed in finally
    env = {**os.environ, "BENCH_DIRECTORY": str(directory), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *server.argv(port, directory)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group
        log.close()


# --- a small client for readiness and idle connections -------------------------------


def get(sock: socket.socket, path: str = "/echo/abc") -> bytes:
    """One keep-alive GET on `sock`; returns the status line."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response body")
        body += chunk
    return head.split(b"\r\n")[0]


def wait_ready(proc: subprocess.Popen[bytes], port: int, limit: float = 15.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                if b" 200 " in get(sock):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def idle_kib_per_connection(root: int, port: int) -> float:
    """Server RSS growth per idle keep-alive connection (each served one request first)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        for _ in range(200):
            get(sock)
    time.sleep(0.3)
    pids = process_tree(root)
    before = rss_kib(pids)
    socks: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(IDLE_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
            socks.append(sock)
            get(sock)
        if time.monotonic() - started > 3.0:  # the peers' keep-alive timeouts are 5 s
            print("  warning: opening the idle connections took over 3 s", file=sys.stderr)
        time.sleep(0.5)
        after = rss_kib(process_tree(root))
    finally:
        for sock in socks:
            sock.close()
    return (after - before) / IDLE_CONNECTIONS


# --- wrk -----------------------------------------------------------------------------


def wrk(port: int, scenario: Scenario, seconds: int) -> dict[str, int]:
    """Run wrk on core 1 with 50 connections; its summary from bench/wrk/bench.lua."""
    argv = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", "-c50", f"-d{seconds}s", "--latency"]
    argv += ["-s", str(BENCH / "wrk" / "bench.lua"), f"http://127.0.0.1:{port}{scenario.path}"]
    if scenario.headers:
        argv += ["--", *scenario.headers]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            return dict(json.loads(line[6:]))
    raise RuntimeError(f"wrk exited with {done.returncode}: {(done.stdout + done.stderr)[-300:]!r}")


def measure(root: int, port: int, scenario: Scenario, seconds: int) -> Sample:
    pids = process_tree(root)
    cpu = cpu_seconds(pids)
    s = wrk(port, scenario, seconds)
    cpu = cpu_seconds(pids) - cpu
    requests = max(s["requests"], 1)
    duration = s["duration_us"] / 1e6
    kinds = ("connect", "read", "write", "timeout", "status")  # status: responses not 2xx or 3xx
    errors = ", ".join(f"{s[kind]} {kind}" for kind in kinds if s[kind])
    return Sample(
        rps=s["requests"] / duration,
        p50_ms=s["p50_us"] / 1000,
        p99_ms=s["p99_us"] / 1000,
        cpu_us=cpu / requests * 1e6,
        mib_s=s["bytes"] / duration / 2**20,
        errors=errors,
    )


# --- one server, one round -----------------------------------------------------------


@contextlib.contextmanager
def serving(server: Server, directory: Path, problems: list[str]) -> Iterator[tuple[int, int] | None]:
    """Start `server` on a free port: (its pid, the port) once it answers, or None (said in
    `problems`) if it never did. It is stopped when the block ends, whatever happens."""
    port = free_port()
    print(f"  {server.name} on port {port}", flush=True)
    with running(server, port, directory) as proc:
        if wait_ready(proc, port):
            yield proc.pid, port
        else:
            problems.append(f"{server.name} did not start (see bench/results/tmp/{server.name}.log)")
            yield None


def take_sample(
    server: Server, pid: int, port: int, scenario: Scenario, args: argparse.Namespace, results: Results
) -> None:
    """Warm up, then measure `scenario`; its sample (None if it failed) goes to `results`."""
    sample: Sample | None = None
    try:
        wrk(port, scenario, args.warmup)
        sample = measure(pid, port, scenario, args.duration)
    except (subprocess.SubprocessError, RuntimeError, OSError, ValueError) as exc:
        results.problems.append(f"{server.name} {scenario.name}: {str(exc)[:300]}")
    if sample and sample.errors:
        results.problems.append(f"{server.name} {scenario.name}: wrk errors: {sample.errors}")
    results.add(server.name, scenario.name, sample)
    time.sleep(0.3)  # let closed connections settle before the next run


def bench_server(server: Server, directory: Path, args: argparse.Namespace, results: Results) -> None:
    with serving(server, directory, results.problems) as started:
        if started is None:
            for scenario in SCENARIOS:
                results.add(server.name, scenario.name, None)  # keeps the rounds aligned
            return
        pid, port = started
        try:
            if args.idle:
                results.idle.setdefault(server.name, []).append(idle_kib_per_connection(pid, port))
        except OSError as exc:
            results.problems.append(f"{server.name}: idle connections failed: {exc!r}")
        for scenario in args.scenario_list:
            if not scenario.full_only or server.full:
                take_sample(server, pid, port, scenario, args, results)


# --- report --------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(results: Results, server: str, ref: str, scenario: str, *, cpu: bool = False) -> float | None:
    """Median over rounds of server/ref req/s, each pair measured in the same round.

    With `cpu`, the ratio of CPU time per request, ref/server: the speed-up the server would
    show with a core to itself, which other load on the machine disturbs far less than req/s.
    """
    ours = results.runs.get((server, scenario), [])
    refs = results.runs.get((ref, scenario), [])
    pairs = [
        (b.cpu_us / a.cpu_us if cpu else a.rps / b.rps)
        for a, b in zip(ours, refs, strict=False)
        if a and b and a.cpu_us and b.rps
    ]
    return median(pairs)


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def machine_info(results: Results) -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(" [")[0]
    steal = results.steal
    return (
        f"- Machine: {model}, {os.cpu_count()} cores, Linux {platform.release()}\n"
        f"- Python {platform.python_version()}, {wrk_version}; server on core {SERVER_CORE}, "
        f"wrk on core {CLIENT_CORE} (1 thread, 50 connections)\n"
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; CPU time stolen by the hypervisor during "
        f"the run: {fmt(None if steal is None else steal * 100, '.1f')}% (above a few per cent, "
        "other guests shared the cores: trust ratios and CPU time, not absolute req/s)"
    )


def report(results: Results, args: argparse.Namespace, servers: list[Server]) -> str:
    lines = [
        "# Benchmark results",
        "",
        machine_info(results),
        f"- Rounds: {args.rounds}, {args.duration} s per run after a {args.warmup} s warm-up; "
        "medians over rounds; ratios are of req/s measured in the same round; "
        "'CPU vs hypercorn-asyncio' is hypercorn's CPU time per request over the server's (higher is better)",
        "",
    ]
    for scenario in args.scenario_list:
        lines += [
            f"## {scenario.title}",
            "",
            "| server | req/s | vs hypercorn-asyncio | vs uvicorn-h11 | vs uvicorn-httptools | vs bare loop "
            "| p50 ms | p99 ms | CPU µs/req | CPU vs hypercorn-asyncio | MiB/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for server in servers:
            samples = [s for s in results.runs.get((server.name, scenario.name), []) if s]
            if not samples:
                continue
            bare = BARE[server.runtime] if not scenario.full_only else None
            cells = [
                f"**{server.name}**" if server.ours else server.name,
                fmt(median([s.rps for s in samples]), ".0f"),
                fmt(ratio(results, server.name, HYPERCORN, scenario.name)),
                fmt(ratio(results, server.name, UVICORN, scenario.name)),
                fmt(ratio(results, server.name, UVICORN_FAST, scenario.name)),
                fmt(ratio(results, server.name, bare, scenario.name) if bare else None),
                fmt(median([s.p50_ms for s in samples])),
                fmt(median([s.p99_ms for s in samples])),
                fmt(median([s.cpu_us for s in samples]), ".0f"),
                fmt(ratio(results, server.name, HYPERCORN, scenario.name, cpu=True)),
                fmt(median([s.mib_s for s in samples]), ".1f"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += (
        []
        if not results.idle
        else [
            f"## {IDLE_CONNECTIONS} idle keep-alive connections",
            "",
            "| server | KiB RSS per connection |",
            "|---|---:|",
        ]
    )
    for server in servers:
        if server.name in results.idle:
            lines.append(f"| {server.name} | {fmt(median(results.idle[server.name]), '.1f')} |")
    lines += ["", *targets(results), ""]
    if results.problems:
        lines += ["## Problems", "", *(f"- {p}" for p in results.problems), ""]
    return "\n".join(lines)


def targets(results: Results) -> list[str]:
    """Issue 4's targets for our transports, and issue 13's for the speed extras, in this run."""
    lines = ["## Targets (issue 4)", ""]

    def check(label: str, value: float | None, want: float, above: bool = True) -> None:
        ok = value is not None and (value >= want if above else value <= want)
        mark, sign = ("✓" if ok else "✗"), ("≥" if above else "≤")
        lines.append(f"- {mark} {label}: {fmt(value)} (want {sign} {want:g})")

    def faster(name: str, ref: str, want: float, scenario: str = "keep-alive") -> None:
        by_cpu = fmt(ratio(results, name, ref, scenario, cpu=True))
        check(
            f"{name} {scenario} req/s vs {ref} (by CPU time: {by_cpu})",
            ratio(results, name, ref, scenario),
            want,
        )

    def p99(name: str) -> float | None:
        return median([s.p99_ms for s in results.runs.get((name, "keep-alive"), []) if s])

    minimum = {"asyncio": (2.0, 1.25), "trio": (1.6, 1.0), "threads": (1.8, 1.1)}
    for runtime, (vs_hypercorn, vs_uvicorn) in minimum.items():
        name = f"ours-{runtime}"
        if not any(results.runs.get((name, "keep-alive"), [])):
            lines.append(f"- ✗ {name}: not measured")
            continue
        faster(name, HYPERCORN, vs_hypercorn)
        faster(name, UVICORN, vs_uvicorn)
        faster(name, BARE[runtime], 0.9)
        if runtime == "trio":
            faster(name, "hypercorn-trio", 4.0)
        faster(name, HYPERCORN, 2.0, "file")
        reference = p99(HYPERCORN)
        if reference is not None:
            check(
                f"{name} keep-alive p99 ms (hypercorn-asyncio's is {reference:.2f})",
                p99(name),
                reference,
                False,
            )
        if runtime != "threads":
            check(f"{name} KiB per idle connection", median(results.idle.get(name, [])), 8.0, False)
    lines += ["", "## Targets (issue 13: the speed extras, built-in echo route)", ""]
    faster("ours-asyncio-fast", UVICORN_FAST, 0.8)
    faster("ours-trio-fast", "ours-trio", 1.9)
    for runtime in FAST:
        pure, fast = f"ours-{runtime}", f"ours-{runtime}-fast"
        check(f"{fast} keep-alive p99 ms ({pure}'s is {fmt(p99(pure))})", p99(fast), p99(pure) or 0.0, False)
        idle = median(results.idle.get(pure, [])) or 0.0
        check(
            f"{fast} KiB per idle connection ({pure}'s is {idle:.2f})",
            median(results.idle.get(fast, [])),
            idle,
            False,
        )
    return lines


COLORS = {
    "ours-asyncio": "#1f77b4",
    "ours-trio": "#2ca02c",
    "ours-threads": "#9467bd",
    "ours-asyncio-fast": "#0b3d66",
    "ours-trio-fast": "#145214",
    "hypercorn-asyncio": "#d62728",
    "hypercorn-trio": "#ff9896",
    "uvicorn-h11": "#ff7f0e",
    "uvicorn-httptools": "#8c4a00",
    "bare-asyncio": "#aec7e8",
    "bare-trio": "#98df8a",
    "bare-threads": "#c5b0d5",
}
"""Ours saturated; each bare loop a pale shade of the transport of its runtime; peers warm."""


def chart(results: Results, servers: list[Server], scenarios: list[Scenario], path: Path) -> None:
    # matplotlib lives in bench/.venv-peers only; the project's mypy does not see it.
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    fig, (bars, idle) = plt.subplots(1, 2, figsize=(17, 6), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(servers)
    for i, server in enumerate(servers):
        values = [ratio(results, server.name, HYPERCORN, sc.name) or 0.0 for sc in scenarios]
        xs = [j + (i - len(servers) / 2 + 0.5) * width for j in range(len(scenarios))]
        drawn = bars.bar(
            xs,
            values,
            width,
            label=server.name,
            color=COLORS.get(server.name, "gray"),
            hatch="//" if server.name.startswith("bare") else None,
            edgecolor="black",
            linewidth=1.2 if server.ours else 0.4,
        )
        if server.ours:
            labels = [f"{v:.1f}" if v else "" for v in values]
            bars.bar_label(drawn, labels=labels, fontsize=7, padding=1)
    bars.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    bars.set_xticks(range(len(scenarios)), [sc.title for sc in scenarios])
    bars.set_ylabel("req/s relative to hypercorn-asyncio (same round)")
    bars.set_title("Throughput, server on one core (higher is better)")
    bars.legend(fontsize=8, ncol=4)
    names = [s.name for s in servers if s.name in results.idle]
    idle.barh(
        names,
        [median(results.idle[n]) or 0.0 for n in names],
        color=[COLORS.get(n, "gray") for n in names],
        edgecolor="black",
        linewidth=0.4,
    )
    idle.invert_yaxis()
    idle.set_xlabel(f"KiB RSS per connection, {IDLE_CONNECTIONS} open")
    idle.set_title("Idle keep-alive memory (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ----------------------------------------------------------------------------


def _cpu_ticks() -> list[int]:
    """The machine's CPU time counters from /proc/stat (user, nice, system, idle, ..., steal, ...)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def arguments(doc: str, quick: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; `quick`: how long `--quick` takes."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"1 round of short runs ({quick})")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per measured run (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per run (default 1)")
    parser.add_argument("--servers", default="", help="comma-separated server names (default: all)")
    return parser


def chosen(args: argparse.Namespace, servers: list[Server]) -> list[Server]:
    """The servers `--servers` names (all by default); `--quick` shortens the runs."""
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1
    return [s for s in servers if not args.servers or s.name in args.servers.split(",")]


def in_rounds(servers: list[Server], rounds: int, visit: Callable[[Server], None]) -> float | None:
    """Visit each server once a round, in an order shifted every round so that drift (thermal,
    noisy neighbours) hits all alike. Returns the share of the machine's CPU time that the
    hypervisor stole meanwhile (None if the kernel does not say)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    os.sched_setaffinity(0, {int(CLIENT_CORE)})  # this process's clients stay off the server's core
    WORK.mkdir(parents=True, exist_ok=True)
    before = _cpu_ticks()
    for round_ in range(rounds):
        print(f"round {round_ + 1}/{rounds}", flush=True)
        shift = round_ % len(servers)
        for server in servers[shift:] + servers[:shift]:
            visit(server)
    after = _cpu_ticks()
    total = sum(after) - sum(before)
    return (after[7] - before[7]) / total if total and len(after) > 7 else None


def publish(text: str, stem: str, partial: bool, draw: Callable[[Path], None]) -> None:
    """Write the report and its chart (`draw`): a run over everything replaces the published
    results (bench/results/STEM-latest.*), a partial one goes to tmp/ (STEM-partial.*)."""
    prefix = f"{stem}-" if stem else ""
    where = WORK / f"{prefix}partial" if partial else RESULTS / f"{prefix}latest"
    where.with_suffix(".md").write_text(text.rstrip("\n") + "\n")
    draw(where.with_suffix(".png"))
    print(text)
    print(f"Written: {where}.md and {where}.png", file=sys.stderr)


def main() -> None:
    parser = arguments(__doc__, "about 4 minutes")
    parser.add_argument(
        "--scenarios", default="", help="comma-separated: keep-alive,close,gzip,file,idle (default: all)"
    )
    args = parser.parse_args()
    wanted = args.scenarios.split(",") if args.scenarios else [sc.name for sc in SCENARIOS] + ["idle"]
    args.scenario_list = [sc for sc in SCENARIOS if sc.name in wanted]
    args.idle = "idle" in wanted
    servers = chosen(args, SERVERS)
    directory = WORK / "files"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / FILE_NAME).write_bytes(os.urandom(2**20))
    results = Results()
    results.steal = in_rounds(
        servers, args.rounds, lambda server: bench_server(server, directory, args, results)
    )
    publish(
        report(results, args, servers),
        "",
        bool(args.servers or args.scenarios),
        lambda path: chart(results, servers, args.scenario_list, path),
    )


if __name__ == "__main__":
    main()
