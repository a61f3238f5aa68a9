"""Every test in tests/protocol runs once per parser: h11, and the compiled fork h11-mypyc.

Module-scoped, so a module runs through with one parser, then the other (hypothesis
refuses function-scoped fixtures), and h11 is back in place for the other test folders.
Both parsers are pinned in requirements-dev.txt: a missing one fails here, never skips.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from protocol import PARSERS, select_parser


@pytest.fixture(scope="module", autouse=True, params=list(PARSERS))
def parser(request: pytest.FixtureRequest) -> Iterator[str]:
    name = str(request.param)
    select_parser(name)
    try:
        yield name
    finally:
        select_parser("h11")
