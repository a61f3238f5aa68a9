"""Config refuses, at start-up, values that would make every connection fail or hang."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import Config


@pytest.mark.parametrize(
    "change",
    [
        {"max_head_size": 0},
        {"max_target_length": 0},
        {"max_header_count": 0},
        {"send_chunk_size": 0},  # a file would be sent 0 bytes at a time, forever
        {"max_body_size": -1},
        {"keep_alive_timeout": -1},  # 0 is allowed: no keep-alive
        {"head_timeout": -1.0},
        {"body_timeout": float("nan")},
        {"send_timeout": 0.0},
        {"linger_timeout": 0},
        {"server_header": b"x\r\nSet-Cookie: y"},
        {"server_header": b" padded "},
        {"server_header": b"a\x01b"},  # control characters h11 would refuse
        {"server_header": b"a\x7fb"},
    ],
)
def test_invalid_values_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(change))):
        Config(**change)


def test_defaults_and_edge_values_are_accepted() -> None:
    Config()
    Config(max_body_size=0, server_header=b"h11-server/0.1 (test)\tx\xe9", keep_alive_timeout=0.001)
