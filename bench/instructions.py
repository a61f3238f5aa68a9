"""Instructions per keep-alive request, counted by callgrind: a measure load does not move.

    bench/.venv-peers/bin/python -m bench.instructions ours-asyncio-fast uvicorn-httptools ...
    bench/.venv-peers/bin/python -m bench.instructions --asgi ours-asyncio-fast uvicorn-httptools-uvloop
    bench/.venv-peers/bin/python -m bench.instructions --wsgi ours-threads-fast waitress

(after `./bench/run.sh` has installed the peers; needs valgrind). On a shared machine
req/s and even CPU time per request move with other people's load; the number of
instructions a server runs per request does not. Each server runs under callgrind twice,
serving 50 keep-alive connections `--rounds` and 3x`--rounds` requests each (`GET
/echo/abc`, one request in flight per connection, as wrk sends them; with `--asgi` or
`--wsgi`, the servers of bench/asgi.py or bench/wsgi.py, whose apps answer any path but
/stream with 3 bytes); the difference over
the difference in requests is the cost of a request without start-up and shutdown.
Instructions are not time (C code retires more of them per cycle than the interpreter),
so read it beside `bench.run`'s CPU time, not instead of it.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.run import ROOT, SERVERS, WORK, Server, free_port, get

CONNECTIONS = 50
REQUEST = b"GET /echo/abc HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def serve_rounds(port: int, rounds: int) -> None:
    """`rounds` requests on each of CONNECTIONS keep-alive connections, one in flight on each."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(CONNECTIONS)]
    try:
        for _ in range(rounds):
            for sock in socks:
                sock.sendall(REQUEST)
            for sock in socks:
                _read_response(sock)
    finally:
        for sock in socks:
            sock.close()


def _read_response(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += sock.recv(65536)


def instructions(server: Server, rounds: int) -> int:
    """Instructions `server` ran from start to exit, serving `rounds` rounds."""
    name = server.name
    port = free_port()
    log = WORK / f"callgrind-{name}-{rounds}.log"
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", f"--log-file={log}"]
    directory = WORK / "files"
    directory.mkdir(parents=True, exist_ok=True)
    env = {"BENCH_DIRECTORY": str(directory), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [*argv, *server.argv(port, directory)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:  # started: one request answered (the same in both runs)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                    get(sock)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start under valgrind (see {log})") from None
                time.sleep(0.5)
        serve_rounds(port, rounds)
        proc.send_signal(signal.SIGTERM)
        proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    match = re.search(r"Collected : (\d+)", Path(log).read_text())
    if match is None:
        raise RuntimeError(f"no instruction count in {log}")
    return int(match[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("servers", nargs="+", help="server names (bench/run.py's, or --asgi/--wsgi's)")
    parser.add_argument("--rounds", type=int, default=20, help="requests per connection in the short run")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--asgi", action="store_true", help="the ASGI benchmark's servers (bench/asgi.py)")
    kind.add_argument("--wsgi", action="store_true", help="the WSGI benchmark's servers (bench/wsgi.py)")
    args = parser.parse_args()
    servers = SERVERS
    if args.asgi:
        from bench.asgi import SERVERS as servers
    elif args.wsgi:
        from bench.wsgi import SERVERS as servers
    known = {s.name: s for s in servers}
    unknown = [name for name in args.servers if name not in known]
    if unknown:
        parser.error(f"unknown servers {', '.join(unknown)}; choose from {', '.join(known)}")
    WORK.mkdir(parents=True, exist_ok=True)
    short, long = args.rounds, 3 * args.rounds
    per_request = {}
    for name in args.servers:
        first, second = instructions(known[name], short), instructions(known[name], long)
        per_request[name] = (second - first) / ((long - short) * CONNECTIONS)
        print(f"{name}: {per_request[name] / 1000:.0f}k instructions per request", flush=True)
    reference = args.servers[-1]
    print(f"\nrelative to {reference} (higher is faster):")
    for name, value in per_request.items():
        print(f"  {name}: {per_request[reference] / value:.2f}")


if __name__ == "__main__":
    main()
