"""Every test in tests/protocol runs once per parser: h11, and the compiled fork h11-mypyc
(but for the tests marked `parser_agnostic`: WebSocket frames after a handshake, which are
wsproto's and never reach the parser; the handshake itself runs on both, in other tests).

Module-scoped, so a module runs through with one parser, then the other (hypothesis
refuses function-scoped fixtures), and h11 is back in place for the other test folders.
Both parsers are pinned in requirements-dev.txt: a missing one fails here, never skips.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from protocol import PARSERS, select_parser


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the h11-mypyc runs of the tests marked `parser_agnostic`."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        parser = callspec.params.get("parser") if callspec is not None else None
        if parser == "h11-mypyc" and item.get_closest_marker("parser_agnostic") is not None:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="module", autouse=True, params=list(PARSERS))
def parser(request: pytest.FixtureRequest) -> Iterator[str]:
    name = str(request.param)
    select_parser(name)
    try:
        yield name
    finally:
        select_parser("h11")
