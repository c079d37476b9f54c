"""Local time follows TZ, and a DST change shows at the first tick after it."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator

import pytest

from sharingmemory._driver.clock import time_zone_bias
from sharingmemory.cli.options import parse_duration

SECOND = 1_000_000_000


@pytest.fixture
def berlin() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def _ns(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp()) * SECOND


def test_dst_starts_between_two_ticks(berlin: None) -> None:
    # 2026-03-29 01:00 UTC: Berlin moves from UTC+1 to UTC+2.
    assert time_zone_bias(_ns("2026-03-29T00:59:59+00:00")) == -3600 * 10**7
    assert time_zone_bias(_ns("2026-03-29T01:00:00+00:00")) == -7200 * 10**7


def test_dst_ends_between_two_ticks(berlin: None) -> None:
    # 2026-10-25 01:00 UTC: back to UTC+1.
    assert time_zone_bias(_ns("2026-10-25T00:59:59+00:00")) == -7200 * 10**7
    assert time_zone_bias(_ns("2026-10-25T01:00:00+00:00")) == -3600 * 10**7


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1s", SECOND),
        ("250ms", 250_000_000),
        ("1ms", 1_000_000),
        ("2", 2 * SECOND),
        ("1500us", 1_500_000),
        ("0.5s", SECOND // 2),
        ("1m", 60 * SECOND),
    ],
)
def test_intervals_as_written_on_the_command_line(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "fast", "1 h", "-1s", "999us", "0"])
def test_bad_intervals_are_refused(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
