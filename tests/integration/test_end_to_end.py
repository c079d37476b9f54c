"""The seed's whole system with real processes: open, map, read, tick, share, close, die."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest

import sharingmemory
from sharingmemory import EPOCH_AS_FILETIME, IOCTL_GIVE_ME_YOUR_MEMORY, STATE_RUNNING, STATE_STOPPED, winioctl
from tests.support import DriverProcess, wait_for


def test_open_map_read(driver: DriverProcess, no_fd_leak: None) -> None:
    with driver.open() as device:
        page = device.map_shared_memory()
        snap = page.read()
    assert snap.state == STATE_RUNNING
    assert snap.tick_count >= 1
    assert snap.writer_pid == driver.pid
    assert snap.interval_ns == 1_000_000_000
    now = dt.datetime.now(dt.UTC)
    assert abs((snap.system_datetime - now).total_seconds()) < 1.0


def test_the_seed_contract_address_in_an_eight_byte_output(driver: DriverProcess) -> None:
    with driver.open() as device:
        result = device.device_io_control(IOCTL_GIVE_ME_YOUR_MEMORY, output_size=8)
        assert result.status == 0
        assert result.information == 8
        (address,) = struct.unpack("<Q", result.output)
        page = device.map_shared_memory()
        assert address == page.address != 0
        with open("/proc/self/maps") as maps:
            mapping = next(line for line in maps if line.startswith(f"{address:x}-"))
        assert "/memfd:SharingMemory" in mapping
        assert mapping.split()[1].startswith("r--s"), mapping  # read-only, shared


def test_time_advances_at_each_tick_and_matches_now(fast_driver: DriverProcess) -> None:
    with fast_driver.open() as device:
        page = device.map_shared_memory()
        first = page.read()
        seen = [first]
        deadline = time.monotonic() + 5
        while len(seen) < 6 and time.monotonic() < deadline:
            snap = page.read()
            if snap.tick_count != seen[-1].tick_count:
                seen.append(snap)
            time.sleep(0.002)
    assert len(seen) == 6
    for before, after in itertools.pairwise(seen):
        assert after.tick_count > before.tick_count
        assert after.system_time > before.system_time
        assert after.monotonic_ns > before.monotonic_ns
    interval = dt.timedelta(milliseconds=20)
    last = seen[-1]
    assert abs(last.system_datetime - dt.datetime.now(dt.UTC)) < interval + dt.timedelta(milliseconds=50)


def test_fields_are_consistent(driver: DriverProcess) -> None:
    with driver.open() as device:
        snap = device.map_shared_memory().read()
    assert snap.local_time == snap.system_time - snap.time_zone_bias
    assert snap.system_time == snap.realtime_ns // 100 + EPOCH_AS_FILETIME
    local_offset = dt.datetime.fromtimestamp(snap.realtime_ns / 1e9).astimezone().utcoffset()
    assert local_offset is not None
    assert snap.time_zone_bias == -int(local_offset.total_seconds()) * 10_000_000


def test_time_zone_follows_tz(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    from tests.support import start_driver

    env_tz = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Shanghai"  # UTC+8, no DST: the seed's own time zone
    try:
        with start_driver(Path(tmp_path)) as drv, drv.open() as device:
            snap = device.map_shared_memory().read()
    finally:
        if env_tz is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = env_tz
    assert snap.time_zone_bias == -288_000_000_000
    assert snap.local_datetime.utcoffset() == dt.timedelta(hours=8)
    assert snap.local_datetime == snap.system_datetime


def test_two_clients_share_one_page(driver: DriverProcess) -> None:
    with driver.open() as one, driver.open() as two:
        page_one, page_two = one.map_shared_memory(), two.map_shared_memory()
        assert page_one.read().instance_id == page_two.read().instance_id
        status = one.query_status()
        assert (status.handles, status.mapped_handles, status.page_allocated) == (2, 2, True)
        assert len(driver.memfds()) == 1  # one page, whatever the number of clients
        tick = page_one.read().tick_count
        assert wait_for(lambda: page_two.read().tick_count > tick, timeout=3)


def test_second_ioctl_on_a_handle_returns_the_same_page_and_leaks_nothing(driver: DriverProcess) -> None:
    with driver.open() as device:
        first = device.device_io_control(IOCTL_GIVE_ME_YOUR_MEMORY, output_size=8).output
        fds_in_client = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            assert device.device_io_control(IOCTL_GIVE_ME_YOUR_MEMORY, output_size=8).output == first
        assert len(os.listdir("/proc/self/fd")) == fds_in_client
        status = device.query_status()
        assert (status.handles, status.mapped_handles) == (1, 1)
        assert len(driver.memfds()) == 1


def test_unknown_ioctl_is_invalid_device_request(driver: DriverProcess) -> None:
    code = sharingmemory.CTL_CODE(winioctl.FILE_DEVICE_UNKNOWN, 0x8FF, 0, winioctl.FILE_READ_ACCESS)
    with driver.open() as device:
        with pytest.raises(sharingmemory.InvalidDeviceRequest) as info:
            device.device_io_control(code, output_size=8)
        assert info.value.status == 0xC0000010
        assert device.query_status().handles == 1  # the handle is still good


@pytest.mark.parametrize("size", [0, 1, 7])
def test_short_output_buffer_is_buffer_too_small(driver: DriverProcess, size: int) -> None:
    with driver.open() as device:
        with pytest.raises(sharingmemory.BufferTooSmall) as info:
            device.device_io_control(IOCTL_GIVE_ME_YOUR_MEMORY, output_size=size)
        assert info.value.status == 0xC0000023
        status = device.query_status()
        assert not status.page_allocated
        assert status.mapped_handles == 0


def test_close_releases_the_handle_stops_the_timer_and_frees_the_page(driver: DriverProcess) -> None:
    with driver.open() as device:
        device.map_shared_memory()
        assert driver.memfds()
    status = driver.status()
    assert (status.handles, status.mapped_handles) == (1, 0)  # the status query's own handle
    assert not status.page_allocated
    assert not status.timer_running
    assert driver.memfds() == set()
    assert driver.memfd_mappings() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="opens /proc/self/map_files: needs CAP_SYS_ADMIN (proc(5)), so root")
def test_page_stays_readable_and_shows_stopped_after_close_of_the_last_handle(driver: DriverProcess) -> None:
    """A reader that kept its own mapping sees state=stopped once the page is freed."""
    with driver.open() as device:
        page = device.map_shared_memory()
        fd_copy = os.open(f"/proc/self/map_files/{page.address:x}-{page.address + 4096:x}", os.O_RDONLY)
    try:
        kept = sharingmemory.SharedPage(fd_copy)
        assert wait_for(lambda: kept.read().state == STATE_STOPPED)  # a reader's close does not wait
        kept.close()
    finally:
        os.close(fd_copy)


_CLIENT = textwrap.dedent(
    """
    import sys, time, sharingmemory
    device = sharingmemory.open_device(sys.argv[1])
    page = device.map_shared_memory()
    print(page.read().tick_count, flush=True)
    time.sleep(60)
    """
)


def test_sigkill_of_a_client_cleans_up_its_handle(driver: DriverProcess) -> None:
    client = subprocess.Popen([sys.executable, "-c", _CLIENT, driver.socket_path], stdout=subprocess.PIPE)
    try:
        assert client.stdout is not None
        assert int(client.stdout.readline()) >= 1
        status = driver.status()
        assert (status.handles, status.mapped_handles, status.timer_running) == (2, 1, True)
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
        if client.stdout is not None:
            client.stdout.close()
    assert wait_for(lambda: driver.status().handles == 1)
    status = driver.status()
    assert (status.mapped_handles, status.page_allocated, status.timer_running) == (0, False, False)
    assert driver.memfds() == set()
    assert "page freed" in driver.log()


def test_sigterm_of_the_driver_shows_stopped_to_a_mapped_reader(driver: DriverProcess) -> None:
    device = driver.open()
    try:
        page = device.map_shared_memory()
        assert page.read().state == STATE_RUNNING
        assert driver.terminate() == 0
        snap = page.read()
        assert snap.state == STATE_STOPPED
        assert not os.path.exists(driver.socket_path)
        with pytest.raises(sharingmemory.DeviceNotConnected):
            device.query_status()
        assert page.read().state == STATE_STOPPED  # the mapping outlives the driver
    finally:
        device.close()


def test_no_driver_is_device_not_found(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(sharingmemory.DeviceNotFound, match="no driver"):
        sharingmemory.open_device(os.path.join(tmp_path, "nothing"))


def test_open_and_map_in_one_round_trip(driver: DriverProcess, no_fd_leak: None) -> None:
    with driver.open_device(map=True) as device:
        page = device.map_shared_memory()
        assert device.map_shared_memory() is page  # already mapped by open_device
        assert page.read().state == STATE_RUNNING
        status = device.query_status()
        assert (status.handles, status.mapped_handles) == (1, 1)


def test_open_and_map_raises_a_refused_map_and_releases_the_handle(driver: DriverProcess, no_fd_leak: None) -> None:
    with pytest.raises(sharingmemory.AccessDenied):  # a write-only handle may not map the page
        sharingmemory.open_device(driver.socket_path, "w", map=True)
    assert wait_for(lambda: driver.status().handles == 1)  # only the status query's own


def test_close_without_waiting_still_releases_everything(driver: DriverProcess, no_fd_leak: None) -> None:
    device = driver.open_device(map=True)
    device.close(wait=False)
    assert device.closed
    assert wait_for(lambda: driver.status().mapped_handles == 0)
    assert wait_for(lambda: driver.memfds() == set())
    status = driver.status()
    assert (status.handles, status.page_allocated) == (1, False)
