"""``muheam recover --until-time``: what a far-future or non-finite time does."""

from __future__ import annotations

import re

import click
import pytest

from muheam.cli.recover import _parse_time

NOW = 1_780_000_000.0


def test_times_up_to_a_day_ahead_are_taken_as_given() -> None:
    assert _parse_time("1700000000", now=NOW) == 1_700_000_000_000_000
    assert _parse_time(str(NOW + 3600), now=NOW) == int((NOW + 3600) * 1e6)
    assert _parse_time("2026-01-01T00:00:00+00:00", now=NOW) == 1_767_225_600_000_000


@pytest.mark.parametrize("text, words", [
    ("1e30", "years after now"),
    ("1780000000000", "milliseconds? give Unix seconds"),
    ("2999-01-01T00:00:00+00:00", "after now"),
    ("inf", "finite time"),
    ("nan", "finite time"),
])
def test_far_future_and_non_finite_times_are_refused(text: str, words: str) -> None:
    with pytest.raises(click.BadParameter, match=re.escape(words)) as info:
        _parse_time(text, now=NOW)
    assert info.value.exit_code == 2
