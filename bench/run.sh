#!/usr/bin/env bash
# The benchmark: ./bench/run.sh [--quick] [--rounds N] [--duration S] [--servers a,b]
# The WSGI and ASGI benchmarks: ./bench/run.sh wsgi|asgi [--quick] [--rounds N] ... (bench/wsgi.py, bench/asgi.py)
# The WebSocket benchmark: ./bench/run.sh ws [--quick] [--rounds N] ... (bench/ws.py)
# Installs wrk (Debian's package) when missing and the peers (hypercorn, uvicorn with httptools
# and uvloop, matplotlib) in bench/.venv-peers, never in the project's .venv, which gets our own
# speed extras (requirements-fast.txt) for the "-fast" rows; then runs bench/run.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
venv_ensure requirements.txt  # the project's own venv, which runs our server
venv_ensure requirements-fast.txt  # h11-mypyc and uvloop, for our "-fast" rows

if ! command -v wrk >/dev/null; then
    echo "Installing wrk..." >&2
    apt-get update -qq >&2 && apt-get install -y -qq wrk >&2
fi

peers="$root/bench/.venv-peers"
req="$root/bench/requirements-peers.txt"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -f "$peers/.installed" ] || [ "$(cat "$peers/.installed")" != "$want" ]; then
    echo "Setting up $peers (first run only)..." >&2
    # The same interpreter as the project's venv, so that every server runs on one Python.
    [ -x "$peers/bin/python" ] || "$root/.venv/bin/python" -m venv "$peers" >&2
    "$peers/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
    echo "$want" > "$peers/.installed"
fi

cd "$root"
module=bench.run
if [ "${1:-}" = wsgi ] || [ "${1:-}" = asgi ]; then
    module="bench.$1"
    shift
elif [ "${1:-}" = ws ]; then
    module=bench.ws
    shift
fi
exec "$peers/bin/python" -m "$module" "$@"
