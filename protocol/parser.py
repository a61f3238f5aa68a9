"""Which h11 the core parses and writes HTTP with: h11 itself, or h11-mypyc.

h11-mypyc is a fork of h11 whose annotations let mypyc compile it, about twice as fast; it
installs as the module `h11_mypyc`, beside h11. Both offer one API, h11 0.16's, which the
core is written, typed (mypy reads h11) and tested against. Nothing outside this package
knows which module answers: a program calls `select_parser(name)` once, before it makes
any connection, and the core's modules use that module from then on.

How: every module of this package names h11 as a global (`import h11`, a class of it such
as `h11._headers.Headers`, an event built once such as `h11.EndOfMessage()`); the switch
rebinds each such global to the other module's equivalent, so the hot path pays nothing
for the choice. A global it cannot translate (a container of h11 objects, say) stops the
switch with an error naming it, rather than mixing the two (each refuses the other's
events). Connections made before a switch keep the module they started with.

Where the compiled module is stricter, the core keeps to the narrower contract: its
`receive_data` takes `bytes` only (h11 takes any bytes-like object), and its event
classes are its own. `tests/protocol` runs on both; `tests/protocol/test_parsers.py`
feeds both the same hostile input and requires the same events, errors and status hints.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from types import ModuleType
from typing import Final

PARSERS: Final = {"h11": "h11", "h11-mypyc": "h11_mypyc"}
"""Parser names (as on the command line) and the module each one is."""

_DISTRIBUTIONS: Final = {"h11": "h11", "h11-mypyc": "h11-mypyc"}
_INSTALL_HINT: Final = "pip install '.[fast]' or pip install -r requirements-fast.txt"

_current = "h11"


class ParserUnavailable(ImportError):
    """The parser asked for is not installed; the message says what to install."""


def current_parser() -> str:
    """The name of the parser the core uses now ("h11" until `select_parser` says otherwise)."""
    return _current


def parser_available(name: str) -> bool:
    """Whether the parser `name` (a key of `PARSERS`) can be imported, without importing it."""
    return importlib.util.find_spec(PARSERS[name]) is not None


def select_parser(name: str) -> None:
    """Make the core parse with `name` ("h11" or "h11-mypyc"), process-wide.

    Call it before making connections. Raises `ValueError` for an unknown name and
    `ParserUnavailable` when the module is not installed (nothing changes then).
    """
    global _current
    if name not in PARSERS:
        raise ValueError(f"unknown parser {name!r}; choose one of {', '.join(PARSERS)}")
    if name == _current:
        return
    try:
        new = importlib.import_module(PARSERS[name])
    except ImportError as exc:
        raise ParserUnavailable(
            f"--parser {name} needs the {_DISTRIBUTIONS[name]} package, which is not installed"
            f" ({_INSTALL_HINT})"
        ) from exc
    old = importlib.import_module(PARSERS[_current])
    plans = [(namespace, _plan(namespace, old, new)) for namespace in _namespaces()]
    for namespace, changes in plans:  # all translated before any is changed
        namespace.update(changes)
    _current = name


def _namespaces() -> list[dict[str, object]]:
    """The globals of every module of this package imported so far (the core's users of h11)."""
    package = importlib.import_module(__package__ or "protocol")
    found = [vars(package)]
    for value in list(vars(package).values()):
        if isinstance(value, ModuleType) and value.__name__.startswith(package.__name__ + "."):
            found.append(vars(value))
    return found


def _plan(namespace: dict[str, object], old: ModuleType, new: ModuleType) -> dict[str, object]:
    """The new value of each global in `namespace` that refers to `old`."""
    changes: dict[str, object] = {}
    for key, value in namespace.items():
        if key.startswith("__"):
            continue
        translated = _translate(value, old, new)
        if translated is not _UNCHANGED:
            changes[key] = translated
        elif _mentions(value, old):
            raise RuntimeError(
                f"{namespace.get('__name__')}.{key} holds {old.__name__} objects that the parser switch"
                f" cannot translate to {new.__name__}; make it a module-level h11 name, class or event"
            )
    return changes


_UNCHANGED: Final = object()


def _from(value: object, module: ModuleType) -> bool:
    """Whether `value` is `module`, a submodule, or a class defined in one."""
    name = module.__name__
    if isinstance(value, ModuleType):
        owner = value.__name__
    elif isinstance(value, type):
        owner = value.__module__
    else:
        return False
    return owner == name or owner.startswith(name + ".")


def _counterpart(owner: str, old: ModuleType, new: ModuleType) -> ModuleType:
    return importlib.import_module(new.__name__ + owner[len(old.__name__) :])


def _translate(value: object, old: ModuleType, new: ModuleType) -> object:
    """`value`'s equivalent in `new`, or _UNCHANGED when it is not an object of `old`."""
    if isinstance(value, ModuleType):
        return _counterpart(value.__name__, old, new) if _from(value, old) else _UNCHANGED
    if isinstance(value, type):
        if not _from(value, old):
            return _UNCHANGED
        return getattr(_counterpart(value.__module__, old, new), value.__qualname__)
    kind = type(value)
    if _from(kind, old) and dataclasses.is_dataclass(value):  # an event built at import time
        new_kind = _translate(kind, old, new)
        assert isinstance(new_kind, type)
        fields = {}
        for field in dataclasses.fields(value):
            if field.name.startswith("__") or not field.init:
                continue
            item = getattr(value, field.name)
            fields[field.name] = item.raw_items() if _from(type(item), old) else item
        return new_kind(**fields)
    return _UNCHANGED


def _mentions(value: object, old: ModuleType) -> bool:
    """Whether `value` is, or directly holds, an object of `old` (one level deep)."""
    items: list[object] = [value]
    if isinstance(value, (tuple, list, set, frozenset)):
        items += value
    elif isinstance(value, dict):
        items += [*value.keys(), *value.values()]
    return any(_from(item, old) or _from(type(item), old) for item in items)
