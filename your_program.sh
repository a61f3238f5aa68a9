#!/usr/bin/env bash
# Start the server. The first run creates .venv with the pinned dependencies.
# The working directory stays the caller's, so relative paths given as options
# (--directory ., --certfile tls/cert.pem) mean what they say; the code is found on
# PYTHONPATH, and -P keeps the caller's folder itself off sys.path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$root/scripts/venv.sh"
venv_ensure requirements.txt
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$root/.venv/bin/python" -P -m transports "$@"
