"""The public API is small, typed and documented, and the examples need nothing else.

Public: `protocol` (the core), `handlers` (Handler, Route, Router, build_app, helpers),
and per transport one `serve(app, config, options, *, sockets=None, ...)` with its server
object (`ports`, `shutdown()`), configured by `transports.options.ServerOptions`.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from types import ModuleType

import pytest

import handlers
import protocol
from transports import options

ROOT = Path(__file__).resolve().parents[2]
TRANSPORT_MODULES = ("transports.trio_server", "transports.asyncio_server", "transports.thread_server")
PUBLIC_MODULES = frozenset({"protocol", "handlers", "transports.options", *TRANSPORT_MODULES})
UNDOCUMENTED_FOR_NOW: frozenset[str] = frozenset()
"""Known gaps, reported to their owners; remove a name once its docstring is in."""


def documented(obj: object) -> bool:
    """Has a docstring of its own (a dataclass's generated signature does not count)."""
    doc = inspect.getdoc(obj)
    return doc is not None and doc != "" and not doc.startswith(f"{getattr(obj, '__name__', '')}(")


@pytest.mark.parametrize("module", [protocol, handlers, options], ids=lambda m: m.__name__)
def test_every_public_class_and_function_is_documented(module: ModuleType) -> None:
    missing = []
    for name in getattr(module, "__all__", ["ServerOptions"]):
        obj = getattr(module, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not documented(obj):
            missing.append(f"{module.__name__}.{name}")
    assert sorted(set(missing) - UNDOCUMENTED_FOR_NOW) == []


@pytest.mark.parametrize("name", TRANSPORT_MODULES)
def test_each_transport_has_one_typed_documented_serve(name: str) -> None:
    module = importlib.import_module(name)
    serve = module.serve
    assert documented(serve)
    signature = inspect.signature(serve)
    assert list(signature.parameters)[:4] == ["app", "config", "options", "sockets"]
    assert signature.return_annotation != inspect.Signature.empty
    assert all(p.annotation != inspect.Parameter.empty for p in signature.parameters.values())
    servers = [c for c in vars(module).values() if inspect.isclass(c) and c.__name__.endswith("Server")]
    assert len(servers) == 1, servers  # the object `serve` hands out once listening
    assert documented(servers[0]) and documented(getattr(servers[0], "shutdown", None))


def test_the_examples_use_only_the_public_api() -> None:
    used = set()
    for path in sorted((ROOT / "examples").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:  # `from transports import trio_server` imports a module
                    submodule = f"{node.module}.{alias.name}"
                    is_module = (ROOT / submodule.replace(".", "/")).with_suffix(".py").exists()
                    used.add(submodule if is_module else node.module)
            elif isinstance(node, ast.Import):
                used.update(alias.name for alias in node.names)
    ours = {m for m in used if m.split(".")[0] in ("protocol", "handlers", "transports")}
    assert ours, "the reader found no imports"
    assert ours <= PUBLIC_MODULES
