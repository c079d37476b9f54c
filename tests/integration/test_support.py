"""The helpers of tests/support.py, which every integration test trusts to see what it claims.

A helper that failed silently would make the tests that use it unable to fail: `open_fds` must
see an fd the moment it is open and forget it once closed, and `RawConnection`'s handshake must
fail loudly when the driver refuses or hangs up rather than hand back something else.
"""

from __future__ import annotations

import os

import pytest

from sharingmemory import NtStatus
from sharingmemory.winioctl import FILE_READ_DATA, FILE_WRITE_DATA
from tests.support import DriverProcess, RawConnection, open_fds


def test_open_fds_lists_an_fd_while_it_is_open_and_not_after() -> None:
    read_end, write_end = os.pipe()
    try:
        links = open_fds()
        assert links[read_end] == links[write_end]
        assert links[read_end].startswith("pipe:[")
    finally:
        os.close(read_end)
        os.close(write_end)
    assert read_end not in open_fds()
    assert write_end not in open_fds()


def test_open_fds_of_the_driver_names_its_timer_socket_and_page(driver: DriverProcess) -> None:
    links = list(open_fds(driver.pid).values())
    assert links == driver.fds()
    assert "anon_inode:[timerfd]" in links
    assert any(link.startswith("socket:[") for link in links)
    assert driver.memfds() == set()  # the page exists only while a handle maps it
    with RawConnection(driver.socket_path) as raw:
        raw.open_page()
        assert len(driver.memfds()) == 1
        assert any(link.startswith("/memfd:") for link in driver.fds())


def test_open_page_returns_the_page_fd_it_owns(driver: DriverProcess) -> None:
    with RawConnection(driver.socket_path) as raw:
        fd = raw.open_page()
        assert raw.fds == [fd]
        assert open_fds()[fd].startswith("/memfd:")
    assert fd not in open_fds() or not open_fds()[fd].startswith("/memfd:")  # closed with it


@pytest.mark.parametrize("access", [FILE_WRITE_DATA, 0])
def test_open_page_fails_the_test_when_a_step_is_refused(driver: DriverProcess, access: int) -> None:
    with RawConnection(driver.socket_path) as raw, pytest.raises(AssertionError, match="answered"):
        raw.open_page(access)


def test_create_fails_the_test_when_the_driver_has_hung_up(driver: DriverProcess) -> None:
    with RawConnection(driver.socket_path) as raw:
        assert raw.create(0).status == NtStatus.STATUS_INVALID_PARAMETER
        assert raw.closed_by_peer()
        # Depending on when the close reached this end: EPIPE on the send, or no reply.
        with pytest.raises((BrokenPipeError, ConnectionResetError, AssertionError)):
            raw.create(FILE_READ_DATA)
