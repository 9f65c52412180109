"""The CLI's durations: one format with the stall warnings' (``shardq.core.stall.span``)."""

from __future__ import annotations

import math

import pytest

from shardq.cli.common import duration
from shardq.core.stall import span


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.0, "0.0s"), (12.34, "12.3s"), (185, "3m05s"), (3720, "1h02m")]
)
def test_duration_is_the_stall_line_format(seconds: float, text: str) -> None:
    assert duration(seconds) == span(seconds) == text


@pytest.mark.parametrize("seconds", [None, math.nan, math.inf, -1.0])
def test_an_unknown_duration_is_two_dashes(seconds: float | None) -> None:
    # An infinite ETA (or `--timeout inf`) must read as unknown, not raise OverflowError.
    assert duration(seconds) == "--"
