"""Where a server spends its CPU under load: py-spy samples it while wrk runs keep-alive echo.

    bench/.venv-peers/bin/python -m bench.profile ours-trio [--seconds 8] [--path /echo/abc]
    bench/.venv-peers/bin/python -m bench.profile --wsgi ours-trio --path /     # bench/wsgi.py's servers
    bench/.venv-peers/bin/python -m bench.profile --asgi ours-trio --path /     # bench/asgi.py's servers

(after `./bench/run.sh` has installed wrk and py-spy). Prints each layer's share of the
samples (h11, our core, handlers, transports, the runtime, the rest) and the functions
with the most self time outside h11, which is what our own code can still win.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import tempfile
import time
from pathlib import Path

from bench.run import BENCH, CLIENT_CORE, SERVERS, WORK, free_port, running, wait_ready

LAYERS = {
    "h11": "h11",
    "h11_mypyc": "h11",
    "protocol": "core (protocol/)",
    "handlers": "handlers/",
    "transports": "transports/",
    "trio": "trio",
    "asyncio": "asyncio",
    "bench": "bench peers",
}


def layer(frame: str) -> str:
    """The layer of a py-spy frame such as `send (h11/_connection.py:512)`."""
    path = frame.rpartition("(")[2]
    for part in path.split("/")[:-1]:
        if part in LAYERS:
            return LAYERS[part]
    return "other (stdlib: selectors, socket, ...)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("server")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--path", default="/echo/abc")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--wsgi", action="store_true", help="the WSGI benchmark's servers (bench/wsgi.py)")
    parser.add_argument("--asgi", action="store_true", help="the ASGI benchmark's servers (bench/asgi.py)")
    args = parser.parse_args()
    if args.wsgi:
        from bench.wsgi import SERVERS as WSGI_SERVERS

        servers = WSGI_SERVERS
    elif args.asgi:
        from bench.asgi import SERVERS as ASGI_SERVERS

        servers = ASGI_SERVERS
    else:
        servers = SERVERS
    names = [s.name for s in servers]
    if args.server not in names:
        parser.error(f"server must be one of {', '.join(names)}")
    server = next(s for s in servers if s.name == args.server)
    WORK.mkdir(parents=True, exist_ok=True)
    port = free_port()
    raw = Path(tempfile.mkstemp(suffix=".txt", dir=WORK)[1])
    with running(server, port, WORK) as proc:
        if not wait_ready(proc, port):
            raise SystemExit(f"{server.name} did not start")
        wrk = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", "-c50", f"-d{args.seconds + 2}s"]
        load = subprocess.Popen([*wrk, f"http://127.0.0.1:{port}{args.path}"], stdout=subprocess.DEVNULL)
        try:
            time.sleep(1)
            spy = [
                str(BENCH / ".venv-peers" / "bin" / "py-spy"),
                "record",
                "--nonblocking",
                "--function",
                "--gil",
            ]
            spy += ["-r", "250", "-d", str(args.seconds), "-f", "raw", "-o", str(raw), "-p", str(proc.pid)]
            subprocess.run(
                [*spy, "--subprocesses"], check=True, capture_output=True, timeout=args.seconds + 30
            )
        finally:
            load.wait(args.seconds + 10)
    report(raw, args.top)


def report(raw: Path, top: int) -> None:
    self_time: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    under_h11 = total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        self_time[leaf] += count
        layers[layer(leaf)] += count
        under_h11 += count * any(layer(frame) == "h11" for frame in frames)
    print(f"{total} samples; inside h11 (inclusive): {100 * under_h11 / max(total, 1):.0f}%\n")
    print("Self time by layer:")
    for name, count in layers.most_common():
        print(f"  {100 * count / total:5.1f}%  {name}")
    print(f"\nTop {top} functions by self time outside h11:")
    shown = 0
    for frame, count in self_time.most_common():
        if layer(frame) == "h11":
            continue
        print(f"  {100 * count / total:5.1f}%  {frame}")
        shown += 1
        if shown == top:
            break


if __name__ == "__main__":
    main()
