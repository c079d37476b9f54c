"""Lifetime of a Device after things go wrong (issue 9): a fatal error, a collection without
close(), an IOCTL refused for access, and os.fork()."""

from __future__ import annotations

import gc
import os
import signal
import warnings
from pathlib import Path

import pytest

import sharingmemory
from tests.support import DriverProcess, run_in_fork, start_driver


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _fatal_by_death(driver: DriverProcess, device: sharingmemory.Device) -> None:
    driver.process.send_signal(signal.SIGKILL)
    driver.process.wait(10)
    with pytest.raises(sharingmemory.DeviceNotConnected):
        device.query_status()


def _fatal_by_timeout(driver: DriverProcess, device: sharingmemory.Device) -> None:
    driver.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(sharingmemory.IoTimeout):
            device.query_status()
    finally:
        driver.process.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("fatal", [_fatal_by_death, _fatal_by_timeout])
def test_close_after_a_fatal_error_releases_the_page_and_the_tick_fd(tmp_path: Path, fatal: object) -> None:
    """300 cycles used to leak 300 fds: close() returned early once the socket was gone."""
    assert callable(fatal)
    for round_ in range(3):
        (tmp_path / str(round_)).mkdir()
        with start_driver(tmp_path / str(round_), interval="20ms") as driver:
            before = _fds()
            device = sharingmemory.open_device(driver.socket_path, map=True, timeout=0.5)
            page = device.map_shared_memory()
            page.wait_next(timeout=5)  # the tick fd is open too
            fatal(driver, device)
            assert device.closed
            page.read()  # the mapping stays readable until close()
            with pytest.raises(ValueError, match="closed Device"):  # never the stale page
                device.map_shared_memory()
            device.close()
            assert page.closed
            assert _fds() <= before


def test_an_ioctl_refused_for_access_leaves_the_handle_usable(driver: DriverProcess) -> None:
    """Only CREATE's STATUS_ACCESS_DENIED closes the connection (docs/protocol.md)."""
    with driver.open("w") as device:
        for _ in range(2):
            with pytest.raises(sharingmemory.AccessDenied):
                device.map_shared_memory()
        assert not device.closed
        with pytest.raises(sharingmemory.InvalidDeviceRequest):  # answered: the handle goes on
            device.device_io_control(sharingmemory.CTL_CODE(0x22, 0xFFF, 0, 0))
        assert not device.closed


@pytest.mark.parametrize("mapped", [False, True])
def test_a_device_collected_unclosed_warns_and_releases_everything(driver: DriverProcess, mapped: bool) -> None:
    before = _fds()
    device = sharingmemory.open_device(driver.socket_path, map=mapped)
    if mapped:
        device.map_shared_memory().wait_next(timeout=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del device
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and "Device" in str(w.message) for w in caught), caught
    assert _fds() <= before
    assert driver.status().handles == 1  # the driver saw the hang-up and freed the handle


def test_a_forked_child_cannot_use_or_close_the_parents_handle(fast_driver: DriverProcess) -> None:
    with fast_driver.open_device(map=True) as device:
        page = device.map_shared_memory()
        page.wait_next(timeout=5)
        handles = device.query_status().handles

        def child_requests_fail() -> bool:
            for request in (device.query_status, lambda: device.device_io_control(0), device._register_tick_event):
                try:
                    request()
                except sharingmemory.InvalidHandle:
                    continue
                return False
            # The mapping stays readable in the child, and is what map_shared_memory() gives; its
            # waits go by the page's deadline (the tick fd's description is the parent's).
            tick = page.wait_next(timeout=5).tick_count
            return device.map_shared_memory() is page and page.read().tick_count >= tick > 0

        def child_closes() -> bool:
            device.close()
            return device.closed and page.closed

        assert run_in_fork(child_requests_fail) == 0
        assert run_in_fork(child_closes) == 0
        # The parent's handle lives on, in step: its requests and waits still work.
        assert device.query_status().handles == handles
        assert page.wait_next(timeout=5).tick_count > 0
        assert device.query_status().mapped_handles >= 1


def test_a_page_held_alone_keeps_its_device_and_is_released_with_it(driver: DriverProcess) -> None:
    before = _fds()
    page = sharingmemory.open_device(driver.socket_path, map=True).map_shared_memory()
    gc.collect()
    assert not page.closed  # the device lives as long as its page
    assert page.wait_next(timeout=5).tick_count >= 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del page
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught), caught
    assert _fds() <= before
