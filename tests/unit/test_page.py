"""The page ABI over plain buffers: layout, seqlock writer and reader, FILETIME conversions."""

from __future__ import annotations

import datetime as dt
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sharingmemory._defs.page import (
    EPOCH_AS_FILETIME,
    HEADER_SIZE,
    MAX_READ_ATTEMPTS,
    PAGE_SIZE,
    STATE_INITIALIZING,
    STATE_RUNNING,
    STATE_STOPPED,
    PageTornError,
    PageWriter,
    bias_to_timezone,
    check_header,
    datetime_to_filetime,
    filetime_to_datetime,
    read_snapshot,
    utc_offset_to_bias,
)
from sharingmemory._defs.status import RevisionMismatch

IID = bytes(range(16))


def new_page() -> tuple[bytearray, PageWriter]:
    buffer = bytearray(b"\xff" * PAGE_SIZE)  # garbage first: the writer must zero it
    return buffer, PageWriter(buffer, interval_ns=1_000_000_000, writer_pid=4242, instance_id=IID)


def test_filetime_epoch_test_vector() -> None:
    assert EPOCH_AS_FILETIME == 116444736000000000
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert datetime_to_filetime(epoch) == 116444736000000000
    assert filetime_to_datetime(116444736000000000) == epoch


@given(st.datetimes(min_value=dt.datetime(1601, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC)))
def test_filetime_round_trip_to_the_microsecond(value: dt.datetime) -> None:
    assert filetime_to_datetime(datetime_to_filetime(value)) == value


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        datetime_to_filetime(dt.datetime(2020, 1, 1))


def test_bias_follows_the_windows_convention() -> None:
    assert utc_offset_to_bias(8 * 3600) == -288000000000  # UTC+8
    assert bias_to_timezone(-288000000000).utcoffset(None) == dt.timedelta(hours=8)
    assert bias_to_timezone(utc_offset_to_bias(-5 * 3600 - 1800)).utcoffset(None) == dt.timedelta(hours=-5.5)


def test_layout_matches_the_abi_table() -> None:
    buffer, writer = new_page()
    writer.update(realtime_ns=1_700_000_000_123_456_789, monotonic_ns=55, time_zone_bias=-288000000000)
    assert buffer[0:4] == b"SHMT"
    assert struct.unpack_from("<HHII", buffer, 4) == (1, 1, 4096, 112)  # ABI 1.1: waiters at 104
    seq, local, system, bias, realtime, mono, ticks, interval, state, pid = struct.unpack_from(
        "<QqqqqqQQII", buffer, 16
    )
    assert seq == 4 and ticks == 1  # header write (seq 2) + one update (seq 4)
    assert system == 1_700_000_000_123_456_789 // 100 + EPOCH_AS_FILETIME
    assert local == system + 288000000000
    assert (bias, realtime, mono, interval, state, pid) == (
        -288000000000, 1_700_000_000_123_456_789, 55, 1_000_000_000, STATE_RUNNING, 4242
    )  # fmt: skip
    assert buffer[88:104] == IID
    assert buffer[HEADER_SIZE:] == bytes(PAGE_SIZE - HEADER_SIZE)  # unused bytes are zero


def test_snapshot_names_and_conversions() -> None:
    buffer, writer = new_page()
    assert read_snapshot(buffer).state == STATE_INITIALIZING
    writer.update(realtime_ns=0 + 86_400 * 10**9, monotonic_ns=1, time_zone_bias=utc_offset_to_bias(3600))
    snap = read_snapshot(buffer)
    assert snap.tick_count == 1
    assert snap.state_name == "running"
    assert snap.local_datetime == dt.datetime(1970, 1, 2, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert snap.local_datetime == snap.system_datetime
    writer.stop(realtime_ns=2 * 86_400 * 10**9, monotonic_ns=2, time_zone_bias=0)
    stopped = read_snapshot(buffer)
    assert (stopped.state, stopped.tick_count) == (STATE_STOPPED, 1)


def test_check_header_refuses_other_versions() -> None:
    buffer, _writer = new_page()
    check_header(buffer)
    for offset, value, message in (
        (0, b"XXXX", "magic"),
        (4, b"\x02\x00", "major"),
        (8, b"\x00\x20\x00\x00", "page_size"),
    ):
        bad = bytearray(buffer)
        bad[offset : offset + len(value)] = value
        with pytest.raises(RevisionMismatch, match=message):
            check_header(bad)
    minor = bytearray(buffer)
    minor[6:8] = b"\x07\x00"
    check_header(minor)  # a newer minor only adds fields: accepted
    with pytest.raises(RevisionMismatch):
        check_header(b"SHMT")


def test_a_writer_stuck_inside_an_update_is_reported_not_spun_on_forever() -> None:
    buffer, _writer = new_page()
    struct.pack_into("<Q", buffer, 16, 7)  # odd: a writer that died between its two increments
    with pytest.raises(PageTornError):
        read_snapshot(buffer)
    assert MAX_READ_ATTEMPTS > 1000


def test_reader_works_over_a_read_only_buffer() -> None:
    buffer, writer = new_page()
    writer.update(realtime_ns=10**18, monotonic_ns=1, time_zone_bias=0)
    assert read_snapshot(bytes(buffer)).realtime_ns == 10**18
    assert read_snapshot(memoryview(bytes(buffer))).tick_count == 1


def test_writer_refuses_wrong_buffers() -> None:
    with pytest.raises(ValueError, match="writable"):
        PageWriter(bytes(PAGE_SIZE), interval_ns=1, writer_pid=1, instance_id=IID)
    with pytest.raises(ValueError, match="writable"):
        PageWriter(bytearray(100), interval_ns=1, writer_pid=1, instance_id=IID)
    with pytest.raises(ValueError, match="16 bytes"):
        PageWriter(bytearray(PAGE_SIZE), interval_ns=1, writer_pid=1, instance_id=b"short")


@given(
    st.lists(st.tuples(st.integers(1, 2**62), st.integers(0, 2**62), st.integers(-14 * 3600, 14 * 3600)), max_size=20)
)
def test_invariants_hold_after_any_sequence_of_updates(updates: list[tuple[int, int, int]]) -> None:
    buffer, writer = new_page()
    for count, (realtime, mono, offset) in enumerate(updates, start=1):
        writer.update(realtime_ns=realtime, monotonic_ns=mono, time_zone_bias=utc_offset_to_bias(offset))
        snap = read_snapshot(buffer)
        assert snap.seq % 2 == 0
        assert snap.tick_count == count
        assert snap.local_time == snap.system_time - snap.time_zone_bias
        assert snap.system_time == snap.realtime_ns // 100 + EPOCH_AS_FILETIME
