"""The dependency rule, read from the source with `ast`.

transports -> protocol, handlers;  handlers -> protocol;  protocol -> h11, wsproto + pure stdlib.
(h11 or h11_mypyc, its compiled fork: `protocol.parser` picks one; no other layer names either.)

wsproto is h11's sans-IO sibling for WebSocket frames (same authors, same shape: bytes in,
events out); the core drives it after an upgrade as it drives h11 before.

"Pure" means the core computes and nothing else: it may use any standard-library
module except those that do I/O, run code concurrently or reach the operating system
(`FORBIDDEN_IN_CORE`). `time` (wall clock for the Date header) and `logging` (the
access log; handlers are configured by the application) stay allowed. `os` is
forbidden: the core has no need for it, and transports send files, not the core.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "handlers", "transports")

FORBIDDEN_IN_CORE = frozenset(
    {
        "_thread",
        "asyncio",
        "concurrent",
        "ctypes",
        "fcntl",
        "glob",
        "io",
        "mmap",
        "multiprocessing",
        "os",
        "pathlib",
        "select",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "socketserver",
        "ssl",
        "subprocess",
        "sys",
        "tempfile",
        "threading",
        "urllib",
    }
)
"""Standard-library modules `protocol/` must not import (top-level names)."""

FORBIDDEN_SUBMODULES_IN_CORE = frozenset({"http.client", "http.server", "email.message"})


def imports(package: str) -> list[tuple[str, str]]:
    """(file, absolute module name) for every import in `package`."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        parts = path.relative_to(ROOT).with_suffix("").parts
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(str(path), alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative: resolve against the importing module's package
                    base = parts[: len(parts) - node.level]
                    module = ".".join([*base, module] if module else base)
                found.append((str(path), module))
    return found


def top(module: str) -> str:
    return module.split(".")[0]


def test_protocol_imports_only_h11_wsproto_and_the_pure_stdlib() -> None:
    bad = []
    for path, module in imports("protocol"):
        name = top(module)
        if name in ("protocol", "h11", "h11_mypyc", "wsproto", "__future__"):
            continue
        if name not in sys.stdlib_module_names:
            bad.append((path, module, "not the stdlib"))
        elif name in FORBIDDEN_IN_CORE or module in FORBIDDEN_SUBMODULES_IN_CORE:
            bad.append((path, module, "does I/O or runs code concurrently"))
    assert not bad


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("transports", {"h11", "h11_mypyc", "wsproto"}),
        ("handlers", {"h11", "h11_mypyc", "wsproto", "transports"}),
        ("protocol", {"handlers", "transports"}),
    ],
)
def test_layer_does_not_import(package: str, forbidden: set[str]) -> None:
    assert [(path, m) for path, m in imports(package) if top(m) in forbidden] == []


def test_the_reader_finds_and_resolves_imports() -> None:
    """Guard the guard: imports are found, and `from .x import y` in protocol/ counts as protocol.x."""
    modules = [m for _, m in imports("protocol")]
    assert "protocol.connection" in modules or "protocol.actions" in modules
    assert not any(m.startswith(".") or m == "" for m in modules)
