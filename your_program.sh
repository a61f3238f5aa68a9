#!/usr/bin/env bash
# Start the server. The first run creates .venv with the pinned dependencies.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$root/scripts/venv.sh"
venv_ensure requirements.txt
cd "$root"
exec "$root/.venv/bin/python" -m transports "$@"
