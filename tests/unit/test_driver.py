"""The driver without sockets: dispatch table, handle states, page ownership, timer arithmetic.

The driver's page is a real sealed memfd (the driver layer owns it); time comes from a fake
clock so the timer's arithmetic can be checked exactly.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest

from sharingmemory._defs.ioctl import (
    CTL_CODE,
    FILE_DEVICE_UNKNOWN,
    FILE_READ_DATA,
    FILE_WRITE_ACCESS,
    FILE_WRITE_DATA,
    IOCTL_GIVE_ME_YOUR_MEMORY,
    IOCTL_QUERY_STATUS,
    IOCTL_REGISTER_TICK_EVENT,
    METHOD_BUFFERED,
)
from sharingmemory._defs.page import STATE_RUNNING, STATE_STOPPED, read_snapshot
from sharingmemory._defs.protocol import MajorFunction, Request, decode_driver_status
from sharingmemory._defs.status import NtStatus
from sharingmemory._driver.driver import (
    AccessPolicy,
    Completion,
    Credentials,
    Driver,
    DriverConfig,
    Handle,
    HandleState,
)

ME = Credentials(pid=100, uid=1000, gid=1000)
SECOND = 1_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.mono = 50 * SECOND
        self.real = 1_700_000_000 * SECOND

    def monotonic_ns(self) -> int:
        return self.mono

    def now(self) -> tuple[int, int, int]:
        return self.real + self.mono, self.mono, -288000000000

    def advance(self, ns: int) -> None:
        self.mono += ns


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def driver(clock: FakeClock) -> Iterator[Driver]:
    config = DriverConfig(
        interval_ns=SECOND, policy=AccessPolicy(uids=frozenset({1000})), max_handles=4, max_handles_per_uid=3
    )
    drv = Driver(config, clock=clock, pid=7)
    yield drv
    drv.unload()


def irp(driver: Driver, handle: Handle, major: MajorFunction, code: int = 0, output_length: int = 0) -> Completion:
    completion = driver.dispatch(handle, Request(major, 1, code, output_length))
    if completion.fd is not None:
        completion.fd.close()
    return completion


def opened(driver: Driver, access: int = FILE_READ_DATA, cred: Credentials = ME) -> Handle:
    handle = driver.connect(cred)
    assert irp(driver, handle, MajorFunction.IRP_MJ_CREATE, access).status == NtStatus.STATUS_SUCCESS
    return handle


def mapped(driver: Driver) -> Handle:
    handle = opened(driver)
    assert irp(driver, handle, MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_GIVE_ME_YOUR_MEMORY, 8).status == 0
    return handle


def test_the_dispatch_table_serves_the_four_major_functions(driver: Driver) -> None:
    handle = opened(driver)
    assert handle.state is HandleState.OPEN
    assert irp(driver, handle, MajorFunction.IRP_MJ_CLEANUP).status == 0
    assert handle.state.value == "cleaned"
    close = irp(driver, handle, MajorFunction.IRP_MJ_CLOSE)
    assert (close.status, close.close_connection, handle.state) == (0, True, HandleState.CLOSED)


@pytest.mark.parametrize(
    ("state_setup", "major", "status"),
    [
        ("new", MajorFunction.IRP_MJ_DEVICE_CONTROL, NtStatus.STATUS_INVALID_HANDLE),
        ("new", MajorFunction.IRP_MJ_CLEANUP, NtStatus.STATUS_INVALID_HANDLE),
        ("open", MajorFunction.IRP_MJ_CREATE, NtStatus.STATUS_INVALID_DEVICE_STATE),
        ("cleaned", MajorFunction.IRP_MJ_DEVICE_CONTROL, NtStatus.STATUS_INVALID_HANDLE),
        ("cleaned", MajorFunction.IRP_MJ_CLEANUP, NtStatus.STATUS_INVALID_HANDLE),
    ],
)
def test_requests_out_of_order_are_refused_and_change_nothing(
    driver: Driver, state_setup: str, major: MajorFunction, status: int
) -> None:
    handle = driver.connect(ME) if state_setup == "new" else opened(driver)
    if state_setup == "cleaned":
        irp(driver, handle, MajorFunction.IRP_MJ_CLEANUP)
    before = handle.state
    assert irp(driver, handle, major, FILE_READ_DATA).status == status
    assert handle.state is before


def test_the_seeds_checks(driver: Driver) -> None:
    handle = opened(driver)
    unknown = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x8AB, METHOD_BUFFERED, 0)
    assert irp(driver, handle, MajorFunction.IRP_MJ_DEVICE_CONTROL, unknown, 8).status == 0xC0000010
    short = irp(driver, handle, MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_GIVE_ME_YOUR_MEMORY, 7)
    assert (short.status, short.information, short.fd) == (0xC0000023, 0, None)
    assert driver.page is None and driver.timer_deadline is None  # nothing acquired on failure


def test_give_me_your_memory_answers_the_length_and_a_read_only_fd(driver: Driver) -> None:
    handle = opened(driver)
    completion = driver.dispatch(handle, Request(MajorFunction.IRP_MJ_DEVICE_CONTROL, 1, IOCTL_GIVE_ME_YOUR_MEMORY, 8))
    assert completion.fd is not None
    try:
        assert (completion.status, completion.information) == (0, 8)
        assert struct.unpack("<Q", completion.output) == (4096,)
        assert os.get_blocking(completion.fd.fileno())
        flags = os.open(f"/proc/self/fd/{completion.fd.fileno()}", os.O_RDONLY)
        os.close(flags)
        with pytest.raises(
            OSError, match="Bad file descriptor"
        ):  # O_RDONLY: no write through this fd, and the seal refuses others
            os.write(completion.fd.fileno(), b"x")
    finally:
        completion.fd.close()


def test_the_page_is_written_at_once_then_at_every_deadline(driver: Driver, clock: FakeClock) -> None:
    mapped(driver)
    assert driver.page is not None
    assert driver.page.tick_count == 1  # the seed calls UpdateTime before IoStartTimer
    first_deadline = driver.timer_deadline
    assert first_deadline == clock.mono + SECOND
    clock.advance(SECOND // 2)
    driver.on_timer(clock.mono)
    assert driver.page.tick_count == 1  # early wake-ups write nothing
    clock.advance(SECOND // 2 + 300_000)  # 0.3 ms late
    driver.on_timer(clock.mono)
    assert driver.page.tick_count == 2
    assert driver.timer_deadline == first_deadline + SECOND  # no drift from the lateness
    assert driver.max_lateness_ns == 300_000


def test_missed_deadlines_are_skipped_not_bunched(driver: Driver, clock: FakeClock) -> None:
    mapped(driver)
    start = driver.timer_deadline
    assert start is not None
    clock.advance(int(3.5 * SECOND))
    driver.on_timer(clock.mono)
    assert driver.page is not None and driver.page.tick_count == 2
    assert driver.timer_deadline == start + 3 * SECOND
    assert driver.late_ticks == 1


def test_one_page_for_every_handle_freed_with_the_last(driver: Driver) -> None:
    one, two = mapped(driver), mapped(driver)
    page = driver.page
    assert page is not None and driver.mapped_handles == 2
    irp(driver, one, MajorFunction.IRP_MJ_CLEANUP)
    assert driver.page is page and driver.timer_deadline is not None
    irp(driver, one, MajorFunction.IRP_MJ_CLOSE)
    driver.disconnect(two)  # the peer died: no CLEANUP was sent
    assert driver.page is None and driver.timer_deadline is None
    assert driver.mapped_handles == 0 and driver.open_handles == 0


def test_the_last_handle_writes_stopped_before_the_page_goes(driver: Driver) -> None:
    handle = mapped(driver)
    completion = driver.dispatch(handle, Request(MajorFunction.IRP_MJ_DEVICE_CONTROL, 2, IOCTL_GIVE_ME_YOUR_MEMORY, 8))
    assert completion.fd is not None
    import mmap

    view = mmap.mmap(completion.fd.fileno(), 4096, mmap.MAP_SHARED, mmap.PROT_READ)
    completion.fd.close()
    try:
        assert read_snapshot(view).state == STATE_RUNNING
        driver.disconnect(handle)
        assert read_snapshot(view).state == STATE_STOPPED
    finally:
        view.close()


def test_a_second_map_on_a_handle_takes_no_second_reference(driver: Driver) -> None:
    handle = mapped(driver)
    for _ in range(5):
        assert irp(driver, handle, MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_GIVE_ME_YOUR_MEMORY, 8).status == 0
    assert driver.mapped_handles == 1
    driver.disconnect(handle)
    assert driver.page is None


def test_access_bits_of_the_code_are_enforced(driver: Driver) -> None:
    write_only = opened(driver, FILE_WRITE_DATA)
    denied = irp(driver, write_only, MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_GIVE_ME_YOUR_MEMORY, 8)
    assert denied.status == NtStatus.STATUS_ACCESS_DENIED
    read_only = opened(driver)
    needs_write = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_WRITE_ACCESS)
    assert (
        irp(driver, read_only, MajorFunction.IRP_MJ_DEVICE_CONTROL, needs_write, 8).status
        == NtStatus.STATUS_ACCESS_DENIED
    )


def test_create_checks_the_peer_and_the_access_mask(clock: FakeClock) -> None:
    driver = Driver(DriverConfig(policy=AccessPolicy(uids=frozenset({1000}), gids=frozenset({50}))), clock=clock)
    assert irp(driver, driver.connect(Credentials(1, 1000, 1000)), MajorFunction.IRP_MJ_CREATE, 1).status == 0
    assert irp(driver, driver.connect(Credentials(1, 2000, 50)), MajorFunction.IRP_MJ_CREATE, 1).status == 0
    assert irp(driver, driver.connect(Credentials(1, 0, 0)), MajorFunction.IRP_MJ_CREATE, 1).status == 0
    denied = irp(driver, driver.connect(Credentials(1, 2000, 2000)), MajorFunction.IRP_MJ_CREATE, 1)
    assert (denied.status, denied.close_connection) == (NtStatus.STATUS_ACCESS_DENIED, True)
    for bad_access in (0, 4, 0xFFFF):
        bad = irp(driver, driver.connect(Credentials(1, 1000, 1000)), MajorFunction.IRP_MJ_CREATE, bad_access)
        assert bad.status == NtStatus.STATUS_INVALID_PARAMETER
    driver.unload()


def test_handle_limits_overall_and_per_uid(driver: Driver) -> None:
    for _ in range(3):
        opened(driver)
    over_uid = irp(driver, driver.connect(ME), MajorFunction.IRP_MJ_CREATE, FILE_READ_DATA)
    assert (over_uid.status, over_uid.close_connection) == (NtStatus.STATUS_TOO_MANY_OPENED_FILES, True)
    opened(driver, cred=Credentials(5, 0, 0))  # root: a different uid, the 4th handle overall
    over_all = irp(driver, driver.connect(Credentials(6, 0, 0)), MajorFunction.IRP_MJ_CREATE, FILE_READ_DATA)
    assert over_all.status == NtStatus.STATUS_TOO_MANY_OPENED_FILES


def test_query_status_follows_the_nt_output_contract(driver: Driver) -> None:
    handle = mapped(driver)
    full = irp(driver, handle, MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_QUERY_STATUS, 80)
    status = decode_driver_status(full.output)
    assert (full.status, full.information) == (0, 80)
    assert (status.handles, status.mapped_handles, status.page_allocated, status.timer_running) == (1, 1, True, True)
    assert status.pid == 7
    cut = irp(driver, handle, MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_QUERY_STATUS, 16)
    assert (cut.status, cut.information, cut.output) == (NtStatus.STATUS_BUFFER_OVERFLOW, 16, full.output[:16])
    tiny = irp(driver, handle, MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_QUERY_STATUS, 3)
    assert (tiny.status, tiny.information, tiny.output) == (NtStatus.STATUS_BUFFER_TOO_SMALL, 0, b"")


def test_tick_events_are_per_handle_and_signalled_at_each_tick(driver: Driver, clock: FakeClock) -> None:
    unmapped = opened(driver)
    assert irp(driver, unmapped, MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_REGISTER_TICK_EVENT).status == (
        NtStatus.STATUS_INVALID_DEVICE_STATE
    )
    fds = []
    for _ in range(2):
        handle = mapped(driver)
        completion = driver.dispatch(handle, Request(MajorFunction.IRP_MJ_DEVICE_CONTROL, 3, IOCTL_REGISTER_TICK_EVENT))
        assert completion.status == 0 and completion.fd is not None
        fds.append(completion.fd)
    try:
        clock.advance(SECOND)
        driver.on_timer(clock.mono)
        clock.advance(SECOND)
        driver.on_timer(clock.mono)
        for fd in fds:  # one wake-up message per tick (a SEQPACKET channel, not an eventfd counter)
            assert [os.read(fd.fileno(), 8) for _ in range(2)] == [b"\1", b"\1"]  # each waiter gets every tick
        driver.unload()
        for fd in fds:  # woken once more (state=stopped), then end of file: the driver's end is closed
            assert [os.read(fd.fileno(), 8) for _ in range(2)] == [b"\1", b""]
    finally:
        for fd in fds:
            fd.close()


def test_unload_closes_everything(driver: Driver) -> None:
    handles = [mapped(driver) for _ in range(3)]
    driver.unload()
    assert all(h.state is HandleState.CLOSED for h in handles)
    assert driver.page is None and driver.open_handles == 0
    assert (
        irp(driver, driver.connect(ME), MajorFunction.IRP_MJ_CREATE, 1).status == NtStatus.STATUS_INVALID_DEVICE_STATE
    )


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="1 ms"):
        DriverConfig(interval_ns=999_999)
    with pytest.raises(ValueError, match="at least 1"):
        DriverConfig(max_handles=0)


@pytest.mark.parametrize("interval_ns", [0, 999_999, 86_400 * SECOND + 1, 20_000_000_000 * SECOND])
def test_intervals_outside_one_millisecond_to_a_day_are_refused(interval_ns: int) -> None:
    with pytest.raises(ValueError, match="from 1 ms to 24 h"):
        DriverConfig(interval_ns=interval_ns)
