# Sourced by your_program.sh and run_tests.sh: make sure .venv exists and holds the
# pinned packages of the requirements file given as $1. Re-installs only when that
# file changes (its hash is recorded in the venv).
venv_ensure() {
    local root req stamp want
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    req="$root/$1"
    stamp="$root/.venv/.installed-$(basename "$req")"
    want="$(cat "$root/requirements.txt" "$req" | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    echo "Setting up $root/.venv from $(basename "$req") (first run only)..." >&2
    if [ ! -x "$root/.venv/bin/python" ]; then
        python3 -m venv "$root/.venv" >&2 || return 1
    fi
    "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2 || return 1
    echo "$want" > "$stamp"
}
