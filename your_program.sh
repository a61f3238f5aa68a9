#!/usr/bin/env bash
# Start the server. The first run creates .venv with the pinned dependencies.
# It runs in the directory it was started from: an APP (module:attribute) is imported from
# there (or --app-dir), and relative paths are the user's.
# With a virtual environment active (VIRTUAL_ENV; docs/wsgi.md, "Loading"): its own Python
# runs the server when it holds the server's pinned runtime (h11, trio: say, after
# `pip install /path/to/checkout`); else .venv's Python runs it and imports the active
# environment's packages after its own. Nothing is ever installed into the active environment.
# The optional speed extras (requirements-fast.txt) go into .venv only when an option asks
# for them (--parser h11-mypyc, --loop uvloop).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$root/scripts/venv.sh"
py=""
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ] &&
    "$VIRTUAL_ENV/bin/python" "$root/scripts/has_runtime.py" "$root/requirements.txt" 2>/dev/null; then
    py="$VIRTUAL_ENV/bin/python"
fi
if [ -z "$py" ]; then
    venv_ensure requirements.txt
    previous=""
    for arg in "$@"; do
        case "$previous $arg" in
            "--parser h11-mypyc" | *" --parser=h11-mypyc" | "--loop uvloop" | *" --loop=uvloop")
                venv_ensure requirements-fast.txt
                break
                ;;
        esac
        previous="$arg"
    done
    py="$root/.venv/bin/python"
fi
exec "$py" "$root/scripts/serve.py" "$@"
