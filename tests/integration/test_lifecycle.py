"""The driver's life and death as a client sees it: one driver per path, stale sockets reclaimed,
a clear exception (never a hang) when the driver stops, dies or freezes, and a mapped page that
stays readable through all of it."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory import STATE_RUNNING, STATE_STOPPED
from tests.support import DriverProcess, start_driver, wait_for


def _serve(socket_path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sharingmemory", "serve", "--socket", socket_path],
        capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize("spelling", ["same", "dotted"])
def test_second_serve_on_the_same_path_exits_naming_the_running_pid(driver: DriverProcess, spelling: str) -> None:
    path = driver.socket_path
    if spelling == "dotted":
        path = os.path.join(os.path.dirname(path), "..", "dev", ".", os.path.basename(path))
    inode = os.stat(driver.socket_path).st_ino
    result = _serve(path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"pid {driver.pid}" in lines[0]
    assert "already serves" in lines[0]
    # The running driver is untouched: same socket file, still serving.
    assert os.stat(driver.socket_path).st_ino == inode
    assert driver.status().pid == driver.pid


def test_socket_left_by_a_killed_driver_is_reclaimed_at_the_next_start(tmp_path: Path) -> None:
    with start_driver(tmp_path) as first:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        assert stat.S_ISSOCK(os.lstat(first.socket_path).st_mode)  # left behind
        with pytest.raises(sharingmemory.DeviceNotFound):
            sharingmemory.open_device(first.socket_path)
    with start_driver(tmp_path) as second:
        assert second.socket_path == first.socket_path
        assert "stale socket" in second.log()
        assert "reclaimed" in second.log()
        with second.open() as device:
            snap = device.map_shared_memory().read()
        assert snap.writer_pid == second.pid
        assert snap.state == STATE_RUNNING


@pytest.fixture
def mapped(
    fast_driver: DriverProcess,
) -> Iterator[tuple[DriverProcess, sharingmemory.Device, sharingmemory.SharedPage]]:
    device = fast_driver.open(timeout=5)
    try:
        page = device.map_shared_memory()
        assert page.read().state == STATE_RUNNING
        yield fast_driver, device, page
    finally:
        device.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_client_sees_device_not_connected_when_the_driver_dies(
    mapped: tuple[DriverProcess, sharingmemory.Device, sharingmemory.SharedPage], signum: int
) -> None:
    driver, device, page = mapped
    driver.process.send_signal(signum)
    driver.process.wait(10)
    snap = page.read()  # the mapping outlives the driver
    if signum == signal.SIGTERM:
        assert snap.state == STATE_STOPPED  # the driver said so on its way out
    else:
        assert snap.state == STATE_RUNNING  # nobody was left to write "stopped": the ticks stop instead
        time.sleep(0.1)  # five intervals of the 20 ms driver
        assert page.read().tick_count == snap.tick_count
    with pytest.raises(sharingmemory.DeviceNotConnected) as info:
        device.query_status()
    assert info.value.status == sharingmemory.NtStatus.STATUS_DEVICE_NOT_CONNECTED
    assert device.closed  # the connection cannot be used again
    with pytest.raises(ValueError, match="closed Device"):
        device.query_status()
    assert page.read().tick_count == snap.tick_count  # still readable
    with pytest.raises(sharingmemory.DeviceNotFound):
        sharingmemory.open_device(driver.socket_path)


def test_request_to_a_frozen_driver_raises_io_timeout(
    mapped: tuple[DriverProcess, sharingmemory.Device, sharingmemory.SharedPage],
) -> None:
    driver, _device, page = mapped
    device = driver.open(timeout=0.5)
    driver.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(sharingmemory.IoTimeout) as info:
            device.query_status()
        assert info.value.status == sharingmemory.NtStatus.STATUS_IO_TIMEOUT
        assert device.closed  # a timed-out connection cannot be resynchronised
        with pytest.raises(sharingmemory.IoTimeout):
            driver.open(timeout=0.5)  # connect succeeds (the backlog), CREATE is never answered
        assert page.read().tick_count >= 1  # the page is still readable while the driver is frozen
    finally:
        driver.process.send_signal(signal.SIGCONT)
    # Thawed, the driver cleans up the connections that gave up on it.
    assert wait_for(lambda: driver.status().handles == 2)  # the fixture's handle and the query's own
    assert page.read().state == STATE_RUNNING


def test_driver_killed_during_a_request_is_device_not_connected_not_a_timeout(
    mapped: tuple[DriverProcess, sharingmemory.Device, sharingmemory.SharedPage],
) -> None:
    driver, _device, _page = mapped
    device = driver.open(timeout=60)
    driver.process.send_signal(signal.SIGSTOP)  # the request below waits for an answer

    def kill_soon() -> None:
        time.sleep(0.3)
        driver.process.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    try:
        with pytest.raises(sharingmemory.DeviceNotConnected):
            device.query_status()
    finally:
        killer.join()
        device.close()


def test_device_of_a_restarted_driver_is_not_connected(tmp_path: Path) -> None:
    with start_driver(tmp_path, interval="20ms") as first:
        device = first.open()
        page = device.map_shared_memory()
        old = page.read().instance_id
        assert first.terminate() == 0
    try:
        with start_driver(tmp_path, interval="20ms") as second:
            with pytest.raises(sharingmemory.DeviceNotConnected):
                device.query_status()
            assert page.read().state == STATE_STOPPED
            with second.open() as fresh:
                assert fresh.map_shared_memory().read().instance_id != old
    finally:
        device.close()


def test_close_after_the_driver_died_raises_nothing(driver: DriverProcess) -> None:
    device = driver.open()
    device.map_shared_memory()
    driver.process.send_signal(signal.SIGKILL)
    driver.process.wait()
    device.close()
    device.close()
    assert device.closed
