"""Waiting for the tick: `SharedPage.wait_next` and `next_update` with a real driver."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory import STATE_STOPPED
from tests.support import DriverProcess, start_driver, wait_for


def test_wait_next_returns_each_new_tick(fast_driver: DriverProcess, no_fd_leak: None) -> None:
    with fast_driver.open() as device:
        page = device.map_shared_memory()
        page._futex_asked = True  # the tick channel, as a 1.0 driver's page gets
        ticks = [page.wait_next(timeout=5).tick_count for _ in range(5)]
        assert all(later > earlier for earlier, later in itertools.pairwise(ticks))
        status = device.query_status()
        assert status.mapped_handles == 1
    assert wait_for(lambda: "tick channel closed" in fast_driver.log())  # a reader's close does not wait


def test_wait_next_uses_a_tick_channel_from_the_driver(fast_driver: DriverProcess) -> None:
    before = sum(1 for fd in os.listdir("/proc/self/fd") if _link(fd).startswith("socket:"))
    with fast_driver.open() as device:
        page = device.map_shared_memory()
        page._futex_asked = True  # the tick channel, as a 1.0 driver's page gets
        page.wait_next(timeout=5)
        sockets = sum(1 for fd in os.listdir("/proc/self/fd") if _link(fd).startswith("socket:"))
        assert sockets == before + 2, "the client holds the device socket and its tick channel's end"
        assert "tick channel created" in fast_driver.log()


def test_wait_next_times_out_between_slow_ticks(tmp_path: Path) -> None:
    with start_driver(tmp_path, interval="30s") as driver, driver.open() as device:
        page = device.map_shared_memory()
        with pytest.raises(TimeoutError):
            page.wait_next(timeout=0.2)
        with pytest.raises(sharingmemory.IoTimeout) as info:  # the library's own kind of timeout
            page.wait_next(timeout=0.05)
        assert info.value.status == sharingmemory.NtStatus.STATUS_IO_TIMEOUT


def test_wait_next_returns_the_stopped_page_when_the_driver_unloads(tmp_path: Path) -> None:
    with start_driver(tmp_path, interval="30s") as driver, driver.open() as device:
        page = device.map_shared_memory()
        driver.process.send_signal(signal.SIGTERM)
        snap = page.wait_next(timeout=10)
        assert snap.state == STATE_STOPPED


def test_wait_next_raises_when_the_driver_is_killed(tmp_path: Path) -> None:
    with start_driver(tmp_path, interval="30s") as driver, driver.open() as device:
        page = device.map_shared_memory()
        with pytest.raises(TimeoutError):
            page.wait_next(timeout=0.05)  # registers the eventfd; no tick yet
        driver.process.send_signal(signal.SIGKILL)
        driver.process.wait()
        with pytest.raises(sharingmemory.DeviceNotConnected):
            page.wait_next(timeout=10)


def test_next_update_in_asyncio(fast_driver: DriverProcess) -> None:
    async def two_ticks(page: sharingmemory.SharedPage) -> list[int]:
        first = await asyncio.wait_for(page.next_update(), 5)
        second = await asyncio.wait_for(page.next_update(), 5)
        return [first.tick_count, second.tick_count]

    with fast_driver.open() as device:
        page = device.map_shared_memory()
        start = page.read().tick_count
        first, second = asyncio.run(two_ticks(page))
    assert start < first < second


def test_a_waiting_handle_that_dies_leaves_no_tick_channel_in_the_driver(fast_driver: DriverProcess) -> None:
    def driver_sockets() -> int:
        return sum(1 for link in fast_driver.fds() if link.startswith("socket:"))

    idle = driver_sockets()
    with fast_driver.open() as device:
        page = device.map_shared_memory()
        page._futex_asked = True  # the tick channel, as a 1.0 driver's page gets
        page.wait_next(timeout=5)
        assert driver_sockets() == idle + 2  # the connection and the tick channel's end
    assert wait_for(lambda: driver_sockets() == idle)


def _link(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@pytest.mark.skipif(os.geteuid() != 0, reason="opens /proc/self/map_files: needs CAP_SYS_ADMIN (proc(5)), so root")
def test_a_page_without_an_eventfd_waits_by_the_deadline_it_announces(fast_driver: DriverProcess) -> None:
    with fast_driver.open() as device:
        mapped = device.map_shared_memory()
        fd = os.open(f"/proc/self/map_files/{mapped.address:x}-{mapped.address + 4096:x}", os.O_RDONLY)
        try:
            bare = sharingmemory.SharedPage(fd)  # no Device behind it: no tick eventfd to ask for
        finally:
            os.close(fd)
        with bare:
            ticks = [bare.wait_next(timeout=5).tick_count for _ in range(3)]
            assert all(later > earlier for earlier, later in itertools.pairwise(ticks))
            with pytest.raises(TimeoutError):
                bare.wait_next(timeout=0)
