"""A reader's close() waits for nothing; a producer's still does (issue 11, "Performance").

A read-only handle's close() only closes its socket: the driver runs CLEANUP and CLOSE on the
hang-up. These tests hold it to what that must not change: nothing leaks on either side, a status
query right after never counts the closed handle, a CREATE at the handle limit is never refused
for a handle already closed, and a handle with write access (a producer) still waits, so its
section's name is free for another process the moment close() returns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory import Field, winioctl
from sharingmemory._defs import (
    IOCTL_CREATE_SECTION,
    CreateRequest,
    MajorFunction,
    NtStatus,
    Request,
    encode_create,
    encode_request,
)
from tests.support import DriverProcess, RawConnection, open_fds, run_in_fork, run_in_forks, start_driver, wait_for

FIELDS = (Field("value", "f64"),)


def _map_page(device: sharingmemory.Device) -> None:
    device.map_shared_memory().read()


def _wait_registered(device: sharingmemory.Device) -> None:
    with contextlib.suppress(sharingmemory.IoTimeout):  # one look: it asks the driver for a tick fd
        device.map_shared_memory().wait_next(timeout=0)


def _open_section(device: sharingmemory.Device) -> None:
    device.open_section("shared").read()


def _nothing(device: sharingmemory.Device) -> None:
    pass


#: What a reader may hold when it closes: nothing, the page, the page and its tick fd, a section.
READER_USES: dict[str, Callable[[sharingmemory.Device], None]] = {
    "bare": _nothing,
    "page": _map_page,
    "tick fd": _wait_registered,
    "section": _open_section,
}


@pytest.fixture
def with_section(driver: DriverProcess) -> Iterator[DriverProcess]:
    """The driver with a section "shared" produced by this process for the test's length."""
    with driver.open_device("w") as producer, producer.create_section("shared", FIELDS):
        yield driver


@pytest.mark.parametrize("use", READER_USES.values(), ids=READER_USES.keys())
def test_a_readers_close_returns_while_the_driver_is_stopped(
    with_section: DriverProcess, use: Callable[[sharingmemory.Device], None], no_fd_leak: None
) -> None:
    driver = with_section
    baseline = len(driver.fds())
    device = sharingmemory.open_device(driver.socket_path, timeout=None)  # a wait would never end
    use(device)
    os.kill(driver.pid, signal.SIGSTOP)
    try:
        closer = threading.Thread(target=device.close)
        closer.start()
        closer.join(60)  # a hang guard, not a measurement: a close that waited would never return
        assert not closer.is_alive(), "close() waited for a driver that cannot answer"
        assert device.closed
        assert len(driver.fds()) > baseline  # the driver has not run: its end is still open
    finally:
        os.kill(driver.pid, signal.SIGCONT)
    assert wait_for(lambda: len(driver.fds()) == baseline)
    status = driver.status()
    assert (status.handles, status.mapped_handles) == (2, 0)  # the producer's and the query's own


@pytest.mark.parametrize("map_at_open", [False, True], ids=["open", "open(map=True)"])
@pytest.mark.parametrize("use", READER_USES.values(), ids=READER_USES.keys())
def test_a_status_right_after_a_readers_close_never_counts_it(
    with_section: DriverProcess,
    use: Callable[[sharingmemory.Device], None],
    map_at_open: bool,
) -> None:
    driver = with_section
    with driver.open() as watcher:
        for _ in range(30):
            with sharingmemory.open_device(driver.socket_path, map=map_at_open) as device:
                use(device)
            status = watcher.query_status()  # no wait_for: the driver takes in the hang-up first
            assert (status.handles, status.mapped_handles, status.page_allocated) == (2, 0, False)


@pytest.mark.parametrize("use", READER_USES.values(), ids=READER_USES.keys())
def test_a_create_at_the_handle_limit_is_never_refused_for_a_closed_reader(
    tmp_path: Path, use: Callable[[sharingmemory.Device], None], no_fd_leak: None
) -> None:
    with (
        start_driver(tmp_path, "--max-handles-per-uid", "2") as driver,
        driver.open_device("w") as producer,
        producer.create_section("shared", FIELDS),
    ):
        for _ in range(50):  # each open is this uid's second handle, right after a close
            with sharingmemory.open_device(driver.socket_path) as device:
                use(device)
        with driver.open() as device:  # the limit still holds for handles that are open
            with pytest.raises(sharingmemory.NtStatusError) as refused:
                driver.open()
            assert refused.value.status == NtStatus.STATUS_TOO_MANY_OPENED_FILES
            assert not device.closed


def test_the_overall_handle_limit_too(tmp_path: Path) -> None:
    with start_driver(tmp_path, "--max-handles", "1") as driver:
        for _ in range(50):
            with driver.open_device(map=True) as device:
                device.map_shared_memory().read()


def test_many_readers_closing_leak_nothing_in_the_driver(with_section: DriverProcess, no_fd_leak: None) -> None:
    driver = with_section
    baseline = open_fds(driver.pid)
    for index in range(200):
        with sharingmemory.open_device(driver.socket_path, map=index % 2 == 0) as device:
            READER_USES[list(READER_USES)[index % len(READER_USES)]](device)
    assert wait_for(lambda: len(open_fds(driver.pid)) == len(baseline))
    assert len(driver.memfds()) == 1  # the section's; the page went with its last reader
    assert driver.status().handles == 2  # the producer's and the query's own


def _create_raw(device: sharingmemory.Device, name: str) -> None:
    """A section made by a bare IOCTL: the Device does not know it produces one."""
    data = encode_create(CreateRequest(name, FIELDS, (), ()))
    reply = device._call(MajorFunction.IRP_MJ_DEVICE_CONTROL, code=IOCTL_CREATE_SECTION, input=data, output_length=64)
    assert reply.fd is not None
    reply.fd.close()


def _create_kept(device: sharingmemory.Device, name: str) -> None:
    device.create_section(name, FIELDS)


def _create_and_close_section(device: sharingmemory.Device, name: str) -> None:
    device.create_section(name, FIELDS).close()


PRODUCERS: dict[str, tuple[str, Callable[[sharingmemory.Device, str], None]]] = {
    "w, create_section": ("w", _create_kept),
    "rw, create_section": ("rw", _create_kept),
    "w, raw IOCTL": ("w", _create_raw),
    "rw, section closed first": ("rw", _create_and_close_section),
}


@pytest.mark.parametrize(("access", "create"), PRODUCERS.values(), ids=PRODUCERS.keys())
def test_a_producers_close_frees_the_name_for_another_process_at_once(
    driver: DriverProcess, access: str, create: Callable[[sharingmemory.Device, str], None], no_fd_leak: None
) -> None:
    for round_ in range(10):
        name = f"owned.{round_}"
        producer = driver.open_device(access)
        create(producer, name)
        producer.close()

        def take_over(name: str = name) -> bool:
            with sharingmemory.open_device(driver.socket_path, "w") as device:
                device.create_section(name, FIELDS).close()
            return True

        assert run_in_fork(take_over) == 0, "the name was still taken after the producer's close()"


def test_a_producers_close_has_stopped_its_section_when_it_returns(driver: DriverProcess) -> None:
    with driver.open() as reader:
        for round_ in range(10):
            producer = driver.open_device("w")
            producer.create_section("stopping", FIELDS)
            section = reader.open_section("stopping")
            producer.close()
            assert section.read().state == sharingmemory.SectionState.STOPPED  # no wait_for
            assert all(info.name != "stopping" for info in reader.list_sections()), round_
            section.close()


@pytest.mark.parametrize("map_at_open", [False, True], ids=["open", "open(map=True)"])
def test_readers_churning_at_their_limit_are_never_refused(tmp_path: Path, map_at_open: bool) -> None:
    """Several processes of one uid, each opening and closing in a loop, as many as the uid's
    limit: with other clients' connections ready at once, the driver may read a new CREATE
    before a closed reader's hang-up (it reads a CREATE at accept, and accepts several at once)."""
    workers = 4
    with start_driver(tmp_path, "--max-handles-per-uid", str(workers)) as driver:

        def churn() -> bool:
            for _ in range(150):
                with sharingmemory.open_device(driver.socket_path, map=map_at_open) as device:
                    device.map_shared_memory().read()
            return True

        codes = run_in_forks(churn, workers)
        assert codes == [0] * workers, "a CREATE was refused for handles already closed"


@pytest.mark.parametrize("queued", [1, 8, 20])
def test_taking_in_hangups_keeps_every_connections_order(driver: DriverProcess, queued: int) -> None:
    """While the driver is stopped: one connection queues `queued` requests (more than the 8 the
    loop serves per wake-up, for some), a reader closes, and a watcher asks for the status. The
    driver may serve the first two from inside the status query; either way each connection's
    replies come in its own order, and the closed reader is not counted."""
    code = sharingmemory.CTL_CODE(winioctl.FILE_DEVICE_UNKNOWN, 0x8FF, 0, winioctl.FILE_READ_ACCESS)
    with RawConnection(driver.socket_path) as busy, driver.open() as watcher:
        assert busy.create().status == NtStatus.STATUS_SUCCESS
        reader = driver.open_device(map=True)
        answered: list[sharingmemory.DriverStatus] = []
        os.kill(driver.pid, signal.SIGSTOP)
        try:
            for request_id in range(100, 100 + queued):
                busy.send_raw(encode_request(Request(MajorFunction.IRP_MJ_DEVICE_CONTROL, request_id, code)))
            reader.close()
            asking = threading.Thread(target=lambda: answered.append(watcher.query_status()))
            asking.start()
        finally:
            os.kill(driver.pid, signal.SIGCONT)
        asking.join(60)
        assert answered, "the status query was not answered"
        assert (answered[0].handles, answered[0].mapped_handles) == (2, 0)  # busy's and the watcher's
        replies = [busy.receive() for _ in range(queued)]
        assert [reply.request_id for reply in replies if reply is not None] == list(range(100, 100 + queued))
        assert {reply.status for reply in replies if reply is not None} == {NtStatus.STATUS_INVALID_DEVICE_REQUEST}


def test_without_so_passrights_too(tmp_path: Path, no_fd_leak: None) -> None:
    """Where the kernel cannot refuse peers' fds, the server closes sockets through its closer
    (closer.py): a reader's hang-up takes that path, and is still cleaned up before a status
    query or a CREATE at the limit."""
    with start_driver(tmp_path, "--no-passrights", "--max-handles-per-uid", "2") as driver:
        baseline = len(driver.fds())
        with driver.open() as watcher:
            for index in range(50):
                with sharingmemory.open_device(driver.socket_path, map=index % 2 == 0) as device:
                    device.map_shared_memory().read()
                status = watcher.query_status()
                assert (status.handles, status.mapped_handles, status.page_allocated) == (1, 0, False)
        assert wait_for(lambda: len(driver.fds()) == baseline)
