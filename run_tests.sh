#!/usr/bin/env bash
# The one test command: lint (ruff), types (mypy --strict), then the pytest suite.
# Extra arguments go to pytest. The first run creates .venv with the pinned dependencies.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$root/scripts/venv.sh"
venv_ensure requirements-dev.txt
cd "$root"
py="$root/.venv/bin/python"
"$py" -m ruff check protocol handlers transports examples tests bench scripts
"$py" -m ruff format --check protocol handlers transports examples tests bench scripts
"$py" -m mypy protocol handlers transports examples bench
exec "$py" -m pytest "$@"
