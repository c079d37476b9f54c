"""The closer thread's budget: fds whose close never finishes cannot grow the driver's fd table
(the --no-passrights path, as on kernels before 6.16)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import sharingmemory
from sharingmemory._defs.protocol import MajorFunction
from sharingmemory.winioctl import FILE_READ_DATA
from tests.integration.test_peer_fds import assert_loop_turns
from tests.soak.attack import driver_stopped, lingering_tcp_sockets
from tests.support import DriverProcess, RawConnection, start_driver, wait_for

# Room for one message of up to 253 fds (SCM_MAX_FD) while the thread holds 2 or fewer.
BUDGET = 255


def _probes(pid: int) -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += "budget-probe" in os.readlink(f"/proc/{pid}/fd/{name}")
    return count


def _stick_the_closer(driver: DriverProcess, stuck: list[socket.socket]) -> None:
    """Three fds whose close waits: the thread is stuck on the first, holding all three."""
    with RawConnection(driver.socket_path) as raw, driver_stopped(driver):
        raw.send_raw(b"x", [s.fileno() for s in stuck])
        for sock in stuck:
            sock.close()
    assert wait_for(lambda: "unexpected fd(s) closed unread" in driver.log())


def test_a_stuck_closer_leaves_fd_carrying_connections_unread(tmp_path: Path) -> None:
    probe = os.memfd_create("budget-probe", os.MFD_CLOEXEC)
    waiting: list[RawConnection] = []
    try:
        with start_driver(tmp_path, "--no-passrights", "--closer-budget", str(BUDGET), interval="20ms") as driver:
            with lingering_tcp_sockets(socket.AF_INET, 3) as stuck:
                _stick_the_closer(driver, stuck)
                # Every connection whose next message carries fds now waits unread, fds and all.
                waiting += [RawConnection(driver.socket_path) for _ in range(5)]
                for raw in waiting:
                    raw.send_raw(b"y" * 24, [probe] * 8)
                assert wait_for(lambda: driver.log().count("left unread until it has room") == len(waiting))
                assert _probes(driver.pid) == 0  # not one of the 40 probe fds is in the driver
                assert_loop_turns(driver)  # honest clients, which send no fds, are served meanwhile
            # The attacker's peers have reset: the thread catches up, the waiting connections are
            # read, their requests refused, their fds closed by the thread.
            for raw in waiting:
                reply = raw.receive()
                assert reply is not None and reply.status == sharingmemory.NtStatus.STATUS_INVALID_PARAMETER
            assert wait_for(lambda: _probes(driver.pid) == 0)
    finally:
        for raw in waiting:
            raw.close()
        os.close(probe)


def test_a_budget_below_one_message_is_a_usage_error(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "d" / "s")
    result = subprocess.run(
        [sys.executable, "-m", "sharingmemory", "serve", "--socket", socket_path, "--closer-budget", "100"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "below 253" in result.stderr, result.stderr


def test_requests_without_fds_are_read_while_the_closer_is_full(tmp_path: Path) -> None:
    """CREATE on a fresh connection still works (the peek only looks for fds)."""
    with (
        start_driver(tmp_path, "--no-passrights", "--closer-budget", str(BUDGET), interval="20ms") as driver,
        lingering_tcp_sockets(socket.AF_INET, 3) as stuck,
    ):
        _stick_the_closer(driver, stuck)
        with RawConnection(driver.socket_path) as raw:
            reply = raw.request(MajorFunction.IRP_MJ_CREATE, FILE_READ_DATA)
            assert reply is not None and reply.status == 0
