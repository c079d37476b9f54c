"""The driver's side of the page's futex (page ABI 1.1), without sockets: who is counted in
`waiters`, and that a tick costs one FUTEX_WAKE(1) whatever the number of waiters (the wake
function is replaced by a recorder; the page is the driver's real memfd)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from sharingmemory._defs.ioctl import FILE_READ_DATA, FILE_WRITE_DATA, IOCTL_GIVE_ME_YOUR_MEMORY, IOCTL_WAIT_SECTION
from sharingmemory._defs.page import SEQ_OFFSET, WAITERS_OFFSET
from sharingmemory._defs.protocol import MajorFunction, Request
from sharingmemory._defs.status import NtStatus
from sharingmemory._driver.driver import AccessPolicy, Credentials, Driver, DriverConfig, Handle
from sharingmemory._driver.page_waiters import PageWaiters
from sharingmemory._sys import libc

ME = Credentials(pid=100, uid=1000, gid=1000)
SECOND = 1_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.mono = 50 * SECOND

    def monotonic_ns(self) -> int:
        return self.mono

    def now(self) -> tuple[int, int, int]:
        return 1_700_000_000 * SECOND + self.mono, self.mono, 0


class Wakes:
    """Records (address, count) of every wake the driver makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, address: int, count: int) -> int:
        self.calls.append((address, count))
        return 0


@pytest.fixture
def setup() -> Iterator[tuple[Driver, FakeClock, Wakes]]:
    clock, wakes = FakeClock(), Wakes()
    config = DriverConfig(interval_ns=SECOND, policy=AccessPolicy(uids=frozenset({1000})), max_handles=300,
                          max_handles_per_uid=300)  # fmt: skip
    driver = Driver(config, clock=clock, pid=7)
    driver.page_waiters = PageWaiters(wake=wakes)
    yield driver, clock, wakes
    driver.unload()


def _irp(
    driver: Driver, handle: Handle, major: MajorFunction, code: int = 0, length: int = 0, *, data: bytes = b""
) -> int:
    completion = driver.dispatch(handle, Request(major, 1, code, length, data))
    if completion.fd is not None:
        completion.fd.close()
    return int(completion.status)


def _handle(driver: Driver, *, access: int = FILE_READ_DATA, mapped: bool = True) -> Handle:
    handle = driver.connect(ME)
    assert _irp(driver, handle, MajorFunction.IRP_MJ_CREATE, access) == NtStatus.STATUS_SUCCESS
    if mapped:
        assert _irp(driver, handle, MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_GIVE_ME_YOUR_MEMORY, 8) == 0
    return handle


def _wait(driver: Driver, handle: Handle, data: bytes | None = None) -> int:
    data = driver.instance_id if data is None else data
    return _irp(driver, handle, MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_WAIT_SECTION, 0, data=data)


def _count(driver: Driver) -> int:
    page = driver._page
    assert page is not None
    return int(struct.unpack_from("<I", page.memory.buffer, WAITERS_OFFSET)[0])


def _seq_address(driver: Driver) -> int:
    page = driver._page
    assert page is not None
    return libc.buffer_address(page.memory.buffer) + SEQ_OFFSET


def _tick(driver: Driver, clock: FakeClock) -> None:
    clock.mono += SECOND
    driver.on_timer()


@pytest.mark.parametrize("waiting", [0, 1, 2, 250])
def test_a_tick_makes_one_wake_of_one_whatever_the_waiters(
    setup: tuple[Driver, FakeClock, Wakes], waiting: int
) -> None:
    driver, clock, wakes = setup
    handles = [_handle(driver) for _ in range(max(1, waiting))]
    for handle in handles[:waiting]:
        assert _wait(driver, handle) == NtStatus.STATUS_SUCCESS
    assert _count(driver) == waiting
    for _ in range(3):
        _tick(driver, clock)
    assert wakes.calls == ([(_seq_address(driver), 1)] * 3 if waiting else [])


def test_the_stop_wakes_everyone_once(setup: tuple[Driver, FakeClock, Wakes]) -> None:
    driver, _clock, wakes = setup
    handles = [_handle(driver) for _ in range(3)]
    for handle in handles:
        _wait(driver, handle)
    address = _seq_address(driver)
    for handle in handles:
        _irp(driver, handle, MajorFunction.IRP_MJ_CLEANUP)
    assert driver._page is None  # the last mapped handle freed the page, state stopped first
    assert wakes.calls == [(address, 0x7FFFFFFF)]


def test_a_handle_counts_once_until_its_cleanup(setup: tuple[Driver, FakeClock, Wakes]) -> None:
    driver, _clock, _wakes = setup
    first, second = _handle(driver), _handle(driver)
    for _ in range(3):
        assert _wait(driver, first) == NtStatus.STATUS_SUCCESS
    assert _count(driver) == 1
    assert _wait(driver, second) == NtStatus.STATUS_SUCCESS
    assert _count(driver) == 2
    driver.disconnect(second)  # a hang-up, as a client's SIGKILL makes
    assert _count(driver) == 1
    assert _irp(driver, first, MajorFunction.IRP_MJ_CLEANUP) == 0
    assert driver._page is None and len(driver.page_waiters) == 0


def test_what_a_registration_is_refused(setup: tuple[Driver, FakeClock, Wakes]) -> None:
    driver, _clock, _wakes = setup
    holder = _handle(driver)
    unmapped = _handle(driver, mapped=False)
    assert _wait(driver, unmapped) == NtStatus.STATUS_INVALID_DEVICE_STATE
    for bad in (b"", driver.instance_id[:8], driver.instance_id + b"x"):
        assert _wait(driver, holder, bad) == NtStatus.STATUS_INVALID_PARAMETER
    writer = _handle(driver, access=FILE_WRITE_DATA, mapped=False)
    assert _wait(driver, writer) == NtStatus.STATUS_ACCESS_DENIED
    assert _count(driver) == 0


@pytest.mark.parametrize("errno_", [38, 14])  # ENOSYS (an unknown machine), EFAULT
def test_a_wake_that_fails_at_every_tick_is_warned_of_once(
    setup: tuple[Driver, FakeClock, Wakes], caplog: pytest.LogCaptureFixture, errno_: int
) -> None:
    driver, clock, _wakes = setup

    def failing(address: int, count: int) -> int:
        raise OSError(errno_, "no futex here")

    driver.page_waiters._wake = failing
    _wait(driver, _handle(driver))
    with caplog.at_level("WARNING", logger="sharingmemory.driver"):
        for _ in range(50):
            _tick(driver, clock)
    assert [r.message for r in caplog.records].count(
        f"page futex wake failed: [Errno {errno_}] no futex here; waiters wake at the end of their wait slices"
    ) == 1
