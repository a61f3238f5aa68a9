"""The speed extras are optional: pinned alike everywhere, never a runtime requirement."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = {"h11-mypyc", "uvloop"}


def pins(text: str) -> dict[str, str]:
    """name -> version of each `name==version` line (markers and comments dropped)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if match:
            found[match[1].lower().replace("_", "-")] = match[2]
    return found


def test_the_extras_are_pinned_alike_and_kept_out_of_the_runtime_requirements() -> None:
    fast = pins((ROOT / "requirements-fast.txt").read_text())
    dev = pins((ROOT / "requirements-dev.txt").read_text())
    runtime = pins((ROOT / "requirements.txt").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(fast) == EXTRAS
    assert {name: dev[name] for name in EXTRAS} == fast  # CI tests what users install
    assert pins("\n".join(project["optional-dependencies"]["fast"])) == fast
    assert not EXTRAS & set(runtime)
    assert not EXTRAS & set(pins("\n".join(project["dependencies"])))
