"""Waiting for a tick on the page's futex (page ABI 1.1, docs/page-abi.md "Waiting for a tick").

Real driver processes. What the driver keeps (the page's `waiters` count, read from a client's
own mapping), what it refuses (a handle without the page, a malformed registration), that the
default wait path asks for no tick channel any more, and the guarantees the channel gave:
threads and asyncio tasks at once, close() from another thread, an older (1.0) page.
"""

from __future__ import annotations

import asyncio
import itertools
import mmap
import os
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory._defs import IOCTL_WAIT_SECTION, MajorFunction, NtStatus, read_snapshot
from sharingmemory._sys import libc
from tests.fake_driver import Memfd, fake_driver
from tests.support import DriverProcess, RawConnection, futex_sleepers, kill_all, wait_for

pytestmark = pytest.mark.skipif(not libc.FUTEX_AVAILABLE, reason="futex syscall number unknown on this machine")

_WAITERS = 104
# argv: socket. Maps the page, registers its futex wait, says so, then waits for stdin to close.
_HOLDER = """
import sys
import sharingmemory
with sharingmemory.open_device(sys.argv[1]) as device:
    page = device.map_shared_memory()
    assert page._ensure_futex() is not None
    print("registered", flush=True)
    sys.stdin.read()
"""


def _waiters(page: sharingmemory.SharedPage) -> int:
    assert page._map is not None
    return int(struct.unpack_from("<I", page._map, _WAITERS)[0])


def test_the_default_wait_registers_once_on_the_futex_and_asks_for_no_tick_channel(
    fast_driver: DriverProcess, no_fd_leak: None
) -> None:
    def driver_sockets() -> int:
        return sum(1 for link in fast_driver.fds() if link.startswith("socket:"))

    idle = driver_sockets()
    with fast_driver.open() as device:
        page = device.map_shared_memory()
        ticks = [page.wait_next(timeout=5).tick_count for _ in range(5)]
        assert all(later > earlier for earlier, later in itertools.pairwise(ticks))
        assert page._tick_event is None and page._futex is not None
        assert _waiters(page) == 1  # five waits, one registration
        assert driver_sockets() == idle + 1  # the connection alone: no channel's end
    assert "tick channel created" not in fast_driver.log()
    assert "waits on the page's futex" in fast_driver.log()


def test_the_count_goes_up_once_per_handle_and_down_at_cleanup_and_at_a_kill(driver: DriverProcess) -> None:
    with driver.open() as device:
        page = device.map_shared_memory()
        assert _waiters(page) == 0
        page._ensure_futex()
        assert _waiters(page) == 1
        for _ in range(3):  # the same handle asking again counts once
            device.device_io_control(IOCTL_WAIT_SECTION, page.read().instance_id)
        assert _waiters(page) == 1
        other = driver.open()
        other.map_shared_memory()._ensure_futex()
        assert _waiters(page) == 2
        other.close()  # CLEANUP
        assert wait_for(lambda: _waiters(page) == 1)  # a reader's close does not wait for the CLEANUP
        holders = [
            subprocess.Popen([sys.executable, "-c", _HOLDER, driver.socket_path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
            for _ in range(3)
        ]  # fmt: skip
        try:
            for holder in holders:
                assert holder.stdout is not None and holder.stdout.readline() == "registered\n"
            assert _waiters(page) == 4
            holders[0].send_signal(signal.SIGKILL)  # the hang-up runs its CLEANUP
            holders[0].wait()
            assert wait_for(lambda: _waiters(page) == 3)
            assert holders[1].stdin is not None
            holders[1].stdin.close()  # a clean close
            holders[1].wait()
            assert wait_for(lambda: _waiters(page) == 2)
        finally:
            kill_all(holders)
        assert wait_for(lambda: _waiters(page) == 1)


def _instance_id(fd: int) -> bytes:
    with mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ) as mapping:
        return read_snapshot(mapping).instance_id


def test_a_raw_registration_gets_its_status(driver: DriverProcess) -> None:
    """What a client of any language can send: the page's instance id without holding the page
    (refused), malformed ids (refused), an id that names nothing (no effect), the right one."""
    with driver.open() as device:
        page = device.map_shared_memory()
        instance_id = page.read().instance_id
        raw = RawConnection(driver.socket_path)
        try:
            assert raw.create().status == NtStatus.STATUS_SUCCESS

            def wait(data: bytes) -> int:
                reply = raw.request(MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_WAIT_SECTION, 0, data)
                assert reply is not None, "the driver hung up"
                return reply.status

            assert wait(instance_id) == NtStatus.STATUS_INVALID_DEVICE_STATE  # no page on this handle
            assert _waiters(page) == 0
            assert raw.give_me_your_memory().status == NtStatus.STATUS_SUCCESS
            assert _instance_id(raw.fds[0]) == instance_id
            for bad in (b"", instance_id[:15], instance_id + b"\0", instance_id * 2):
                assert wait(bad) == NtStatus.STATUS_INVALID_PARAMETER, bad
            assert wait(bytes(a ^ 0xFF for a in instance_id)) == NtStatus.STATUS_SUCCESS  # names nothing: ignored
            assert _waiters(page) == 0
            assert wait(instance_id) == NtStatus.STATUS_SUCCESS
            assert _waiters(page) == 1
        finally:
            raw.sock.close()
            for fd in raw.fds:
                os.close(fd)
        assert wait_for(lambda: _waiters(page) == 0)


def test_a_write_only_handle_may_not_register(driver: DriverProcess) -> None:
    with driver.open() as device:
        instance_id = device.map_shared_memory().read().instance_id
    with driver.open("w") as device, pytest.raises(sharingmemory.AccessDenied):
        device.device_io_control(IOCTL_WAIT_SECTION, instance_id)


def test_threads_and_tasks_wait_at_once_on_the_futex(fast_driver: DriverProcess) -> None:
    with fast_driver.open() as device:
        page = device.map_shared_memory()

        async def tasks() -> list[list[int]]:
            async def one() -> list[int]:
                return [(await page.next_update()).tick_count for _ in range(3)]

            async with asyncio.timeout(20):
                return list(await asyncio.gather(*(one() for _ in range(8))))

        results: list[object] = []

        def work(index: int) -> None:
            try:
                results.append(asyncio.run(tasks()) if index == 0 else [page.wait_next(timeout=10).tick_count])
            except BaseException as err:  # reported below
                results.append(err)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == 4 and all(isinstance(result, list) for result in results), results
        assert page._tick_event is None and _waiters(page) == 1


@pytest.mark.parametrize("close", ["device", "page"])
def test_close_from_another_thread_wakes_futex_waiters_with_value_error(driver: DriverProcess, close: str) -> None:
    """A 1 s driver: the waiters are asleep in FUTEX_WAIT (seen in /proc) when close() comes."""
    device = driver.open_device(map=True)
    page = device.map_shared_memory()
    page.wait_next(timeout=5)
    assert page._futex is not None
    errors: list[BaseException | None] = []

    def work() -> None:
        try:
            page.wait_next(timeout=30)
            errors.append(None)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: futex_sleepers(os.getpid()) >= 3 or len(errors) > 0)
    (device if close == "device" else page).close()
    for thread in threads:
        thread.join(30)
    device.close()
    # A tick between the start and the close returns a snapshot (None here); otherwise ValueError.
    assert len(errors) == 3 and any(isinstance(err, ValueError) for err in errors), errors
    assert all(err is None or isinstance(err, ValueError) for err in errors), errors
    with pytest.raises(ValueError, match="closed"):
        page.wait_next(timeout=1)


def _fake_page(minor: int, header_size: int) -> Memfd:
    memfd = Memfd()
    assert memfd.map is not None
    memfd.map[6:8] = minor.to_bytes(2, "little")
    memfd.map[12:16] = header_size.to_bytes(4, "little")
    return memfd


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


@pytest.mark.parametrize(
    ("minor", "header_size", "futex"),
    [(0, 104, False), (1, 104, False), (0, 112, False), (1, 112, True), (7, 200, True)],
    ids=["1.0", "1.1-short-header", "1.0-long-header", "1.1", "newer"],
)
def test_the_futex_is_used_only_where_the_page_offers_it(
    tmp_path: Path, minor: int, header_size: int, futex: bool
) -> None:
    """A page of a 1.0 driver has no `waiters` and no wake-up: its readers keep the tick channel
    (the fake driver answers every IOCTL with success, so only the page decides)."""
    memfd = _fake_page(minor, header_size)
    path = str(tmp_path / "SharingMemory")
    try:
        with fake_driver(path, page=memfd.dup, tick=_eventfd), sharingmemory.open_device(path, map=True) as device:
            page = device.map_shared_memory()
            with pytest.raises(sharingmemory.IoTimeout):
                page.wait_next(timeout=0.05)  # the fake never ticks
            assert (page._futex is not None) is futex
            assert (page._tick_event is not None) is not futex
    finally:
        memfd.close()


@pytest.mark.parametrize("count", [1, 0x7FFFFFFF])
def test_a_peer_that_wakes_the_futex_for_nothing_changes_no_wait(driver: DriverProcess, count: int) -> None:
    """Anyone who maps the page can FUTEX_WAKE its word (a wake needs only read access): the
    wake-ups bring no news, so a wait goes back to sleep (and passes nothing on) and returns
    only at the next real tick, never early and never with an error."""
    with driver.open() as device, driver.open() as other:
        page = device.map_shared_memory()
        spammer = other.map_shared_memory()
        first = page.wait_next(timeout=5)
        stop = threading.Event()

        def spam() -> None:
            while not stop.is_set():
                libc.futex_wake(spammer.address + 16, count)

        thread = threading.Thread(target=spam)
        thread.start()
        try:
            ticks = [page.wait_next(timeout=5).tick_count for _ in range(2)]
        finally:
            stop.set()
            thread.join(10)
        assert ticks == [first.tick_count + 1, first.tick_count + 2]  # a 1 s driver: no tick is skipped
