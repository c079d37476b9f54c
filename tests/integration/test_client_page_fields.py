"""A page that passes every trust check can still hold any bytes in its fields (a buggy or
hostile driver writes them): reads, waits and conversions answer with values or documented
errors, never an OverflowError, a hang or a crash (issue 9)."""

from __future__ import annotations

import contextlib
import datetime as dt
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory._defs.page import FILETIME_TICKS_PER_SECOND
from tests.fake_driver import Memfd, fake_driver

DAY = 24 * 3600 * FILETIME_TICKS_PER_SECOND
MAX_I64 = 2**63 - 1
MIN_I64 = -(2**63)
MAX_U64 = 2**64 - 1

#: (local_time, system_time, bias, realtime_ns, monotonic_ns, tick_count, interval_ns, state, pid)
GARBAGE = {
    "huge interval": (0, 0, 0, 0, 0, 5, MAX_U64, 1, 1),
    "deadline far in the future": (0, 0, 0, 0, MAX_I64, 5, 10**9, 1, 1),
    "deadline far in the past": (0, 0, 0, 0, MIN_I64, 5, 0, 1, 1),
    "bias of a day": (DAY, 0, -DAY, 0, 0, 5, 10**9, 1, 1),
    "bias of minus a day and a bit": (0, DAY + 1, DAY + 1, 0, 0, 5, 10**9, 1, 1),
    "bias at the i64 limits": (MAX_I64, MIN_I64, MIN_I64, 0, 0, 5, 10**9, 1, 1),
    "times at the i64 limits": (MIN_I64, MAX_I64, MAX_I64, MIN_I64, MAX_I64, MAX_U64, 1, 2**32 - 1, 2**32 - 1),
    "unknown state": (0, 0, 0, 0, 0, 5, 10**9, 77, 0),
}


@pytest.fixture(params=list(GARBAGE))
def garbage_page(request: pytest.FixtureRequest) -> Iterator[Memfd]:
    page = Memfd()
    page.write_fields(*GARBAGE[request.param], bytes(16))
    yield page
    page.close()


def test_reads_and_conversions_of_garbage_fields_raise_only_value_error(tmp_path: Path, garbage_page: Memfd) -> None:
    path = str(tmp_path / "SharingMemory")
    with fake_driver(path, page=garbage_page.dup), sharingmemory.open_device(path, map=True) as device:
        snap = device.map_shared_memory().read()
        assert snap.tick_count == struct.unpack_from("<Q", garbage_page.map, 64)[0]  # type: ignore[arg-type]
        for name in ("local_datetime", "system_datetime"):
            with contextlib.suppress(ValueError):  # the one error documented for a field out of range
                assert isinstance(getattr(snap, name), dt.datetime)
        assert isinstance(snap.state_name, str)


def test_a_wait_by_the_deadline_of_a_garbage_page_times_out_cleanly(tmp_path: Path, garbage_page: Memfd) -> None:
    """No tick fd (the fake sends none): the wait sleeps by the page's own deadline, which it
    never trusts with more than a bounded sleep."""
    path = str(tmp_path / "SharingMemory")
    with fake_driver(path, page=garbage_page.dup), sharingmemory.open_device(path, map=True) as device:
        page = device.map_shared_memory()
        state = page.read().state
        if state == sharingmemory.STATE_STOPPED:
            assert page.wait_next(timeout=0.05).state == state
        else:
            with pytest.raises(sharingmemory.IoTimeout):
                page.wait_next(timeout=0.05)


def test_a_page_whose_seq_stays_odd_raises_page_torn_error(tmp_path: Path) -> None:
    memfd = Memfd()
    assert memfd.map is not None
    memfd.map[16:24] = (3).to_bytes(8, "little")  # a writer that "died" inside an update
    path = str(tmp_path / "SharingMemory")
    try:
        with fake_driver(path, page=memfd.dup), sharingmemory.open_device(path, map=True) as device:
            with pytest.raises(sharingmemory.PageTornError):
                device.map_shared_memory().read()
            with pytest.raises(sharingmemory.InvalidDeviceState):  # its documented base
                device.map_shared_memory().local_time()
    finally:
        memfd.close()


@pytest.mark.parametrize("header", [b"XXXX", b"SHMT\x02\x00"])
def test_a_page_with_a_foreign_header_is_refused(tmp_path: Path, header: bytes) -> None:
    memfd = Memfd()
    assert memfd.map is not None
    memfd.map[: len(header)] = header
    path = str(tmp_path / "SharingMemory")
    try:
        with fake_driver(path, page=memfd.dup), pytest.raises(sharingmemory.RevisionMismatch):
            sharingmemory.open_device(path, map=True)
    finally:
        memfd.close()
