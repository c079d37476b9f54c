"""Every field of the page is the driver's to write, so none is trusted (issue 9): whatever a
snapshot holds, its properties return a value or raise ValueError, never anything else."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sharingmemory._defs.page import (
    EPOCH_AS_FILETIME,
    FILETIME_TICKS_PER_SECOND,
    PageSnapshot,
    bias_to_timezone,
    datetime_to_filetime,
    filetime_to_datetime,
    utc_offset_to_bias,
)

HOUR = 3600 * FILETIME_TICKS_PER_SECOND
NOON_2026 = datetime_to_filetime(dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC))
i64 = st.integers(-(2**63), 2**63 - 1)
u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


def snapshot(**fields: int) -> PageSnapshot:
    base = PageSnapshot(2, NOON_2026, NOON_2026, 0, 0, 0, 1, 10**9, 1, 1, bytes(16))
    return base._replace(**fields)  # type: ignore[arg-type]  # ints only: instance_id stays


FIELDS = st.tuples(i64, i64, i64, i64, i64, u64, u64, u32, u32, st.binary(min_size=16, max_size=16))


@given(FIELDS)
def test_any_fields_give_values_or_value_error(fields: tuple[object, ...]) -> None:
    snap = PageSnapshot(2, *fields)  # type: ignore[arg-type]
    for name in ("local_datetime", "system_datetime"):
        try:
            value = getattr(snap, name)
        except ValueError:
            continue
        assert isinstance(value, dt.datetime)
    assert isinstance(snap.state_name, str)
    assert isinstance(snap.utc_offset, dt.timedelta)


@pytest.mark.parametrize("hours", [24, -24, 24.999, -24.999, 25, 100, -1000])
def test_a_zone_a_day_or_more_from_utc_gives_the_naive_local_wall_clock(hours: float) -> None:
    """POSIX allows TZ=ABC-24 (and up to 24:59:59); datetime.timezone does not, so the local
    time comes back naive, with the true offset in `utc_offset`."""
    bias = -int(hours * HOUR)
    snap = snapshot(local_time=NOON_2026 - bias, time_zone_bias=bias)
    local = snap.local_datetime
    assert local.tzinfo is None
    assert local == dt.datetime(2026, 12, 1, 12) + dt.timedelta(hours=hours)
    assert snap.utc_offset == dt.timedelta(hours=hours)


@pytest.mark.parametrize("hours", [0, 5.5, -12, 23.999, -23.999, 14])
def test_a_zone_under_a_day_from_utc_gives_an_aware_datetime(hours: float) -> None:
    bias = -int(hours * HOUR)
    snap = snapshot(local_time=NOON_2026 - bias, time_zone_bias=bias)
    assert snap.local_datetime.utcoffset() == dt.timedelta(hours=hours)
    assert snap.local_datetime == snap.system_datetime  # the same instant


@pytest.mark.parametrize("filetime", [2**63 - 1, -(2**63), -EPOCH_AS_FILETIME * 10, 10**20, -(10**20)])
def test_filetimes_outside_a_datetime_raise_value_error(filetime: int) -> None:
    with pytest.raises(ValueError, match="datetime"):
        filetime_to_datetime(filetime)
    with pytest.raises(ValueError, match="datetime"):
        _ = snapshot(local_time=filetime).local_datetime
    with pytest.raises(ValueError, match="datetime"):
        _ = snapshot(system_time=filetime).system_datetime


@pytest.mark.parametrize("bad", [1.5, "0", None, True, b"\x00"])
def test_a_filetime_that_is_no_int_raises_type_error(bad: object) -> None:
    with pytest.raises(TypeError):
        filetime_to_datetime(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [None, 0, "2026-12-01", dt.date(2026, 12, 1)])
def test_datetime_to_filetime_refuses_what_is_no_datetime(bad: object) -> None:
    with pytest.raises(TypeError):
        datetime_to_filetime(bad)  # type: ignore[arg-type]


def test_datetime_to_filetime_refuses_an_instant_with_no_utc_form() -> None:
    edge = dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    with pytest.raises(ValueError, match="UTC form"):
        datetime_to_filetime(edge)


@pytest.mark.parametrize("bias", [24 * HOUR, -24 * HOUR, 2**63 - 1, -(2**63)])
def test_bias_to_timezone_raises_value_error_beyond_a_day(bias: int) -> None:
    with pytest.raises(ValueError, match=r"bias|offset|timedelta"):
        bias_to_timezone(bias)


def test_offset_and_bias_still_round_trip() -> None:
    assert bias_to_timezone(utc_offset_to_bias(19800)).utcoffset(None) == dt.timedelta(hours=5, minutes=30)
