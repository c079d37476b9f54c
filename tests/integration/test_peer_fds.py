"""Nothing a peer sends or holds can make the driver's loop wait (issue 9).

Each attack leaves in place something whose close(2) or write(2) waits (a lingering TCP socket
with a full send queue and a peer that never reads; a tick fd made blocking, filled, spliced),
and, while it holds, checks that ticks keep arriving and `status` answers. The fd attacks run
against a driver as it runs by default (SO_PASSRIGHTS off on its socket: the sender's sendmsg
fails with EPERM) and one started with --no-passrights (the path of kernels before 6.16: the
fds arrive and the closer thread closes them). Before these fixes, the first froze the loop for
the linger time and the second for ever (tests/soak/attack.py has the figures).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory._defs.protocol import MajorFunction
from sharingmemory.winioctl import FILE_READ_DATA
from tests.soak.attack import (
    driver_stopped,
    lingering_tcp_sockets,
    lingering_unix_sockets,
    send_fds,
    tick_channel_attack,
)
from tests.support import DriverProcess, RawConnection, start_driver, wait_for

SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534

MODES = {"passrights": (), "closer-thread": ("--no-passrights",)}


@pytest.fixture(params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def attacked(tmp_path: Path, mode: str) -> Iterator[DriverProcess]:
    with start_driver(tmp_path, *MODES[mode], interval="20ms") as driver:
        yield driver


def assert_loop_turns(driver: DriverProcess) -> None:
    """Three new ticks reach a reader and a new connection gets the status: both need the loop.
    The timeouts are a hundred intervals: a loop that waits on a peer misses them by minutes."""
    with sharingmemory.open_device(driver.socket_path, timeout=2) as device:
        page = device.map_shared_memory()
        first = page.read().tick_count
        for _ in range(3):
            page.wait_next(timeout=2)
        assert page.read().tick_count >= first + 3
        assert device.query_status().mapped_handles >= 1


Sockets = Callable[[], contextlib.AbstractContextManager[list[socket.socket]]]
KINDS: dict[str, Sockets] = {
    "tcp4-linger": lambda: lingering_tcp_sockets(socket.AF_INET, 1),
    "tcp6-linger": lambda: lingering_tcp_sockets(socket.AF_INET6, 1),
    "tcp4-linger-x40": lambda: lingering_tcp_sockets(socket.AF_INET, 40),  # more than one cmsg's worth once
    "unix-stream-linger": lambda: lingering_unix_sockets(3),
}


@pytest.mark.parametrize("when", ["before-create", "after-create"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fds_whose_close_waits_do_not_stop_the_loop(attacked: DriverProcess, mode: str, kind: str, when: str) -> None:
    with KINDS[kind]() as socks, RawConnection(attacked.socket_path) as raw:
        if when == "after-create":
            reply = raw.request(MajorFunction.IRP_MJ_CREATE, FILE_READ_DATA)
            assert reply is not None and reply.status == 0
        with driver_stopped(attacked):  # so that the references in flight are the last ones
            outcome = send_fds(raw, [s.fileno() for s in socks], when="now")
            if outcome == "sent":
                for sock in socks:
                    sock.close()
        assert outcome == ("refused by the kernel" if mode == "passrights" else "sent")
        assert_loop_turns(attacked)
        if mode == "closer-thread":  # the request that carried them is refused, with a status
            reply = raw.receive()
            assert reply is not None and reply.status == sharingmemory.NtStatus.STATUS_INVALID_PARAMETER
            raw.close()  # its socket is closed too, with whatever it still queued
            assert_loop_turns(attacked)
    assert_loop_turns(attacked)  # the attack over (the peers reset), the closer has caught up


def test_fds_left_queued_on_a_closed_connection_are_not_closed_by_the_loop(tmp_path: Path) -> None:
    """A socket we close with fd-carrying messages still queued is a final close of those fds:
    several such messages, queued behind a request that makes the driver drop the connection."""
    with (
        start_driver(tmp_path, "--no-passrights", interval="20ms") as driver,
        lingering_tcp_sockets(socket.AF_INET, 6) as socks,
        RawConnection(driver.socket_path) as raw,
    ):
        with driver_stopped(driver):
            raw.send_raw(b"garbage that ends the connection")
            for sock in socks:
                raw.send_raw(b"", [sock.fileno()])
                sock.close()
        assert raw.closed_by_peer()
        assert_loop_turns(driver)


def test_a_client_cannot_make_the_tick_write_wait(attacked: DriverProcess) -> None:
    """Its tick fd made blocking, written to (an eventfd's counter would be full), never read,
    and spliced into a full socket (a pipe's mutex would be held): the ticks go on."""
    tick_channel_attack(attacked, 0.0)
    assert_loop_turns(attacked)


_REFUSED_ATTACKER = textwrap.dedent(
    """
    import array, os, socket, sys
    fds = [int(fd) for fd in sys.argv[2:]]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(sys.argv[1])
    try:
        sock.sendmsg([b"SM\\x01\\x00" + bytes(20)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        print("sent")
    except PermissionError:
        print("refused by the kernel")
    """
)


@pytest.mark.skipif(
    os.getuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root (to run the attacker as uid 65534) and /usr/bin/python3",
)
def test_a_refused_uid_cannot_stop_the_loop_with_fds(open_dir: Path, mode: str) -> None:
    """uid 65534, whom the policy refuses, sends lingering sockets with its first message."""
    reachable = ("--dir-mode", "0755", "--socket-mode", "0666")
    with (
        start_driver(open_dir, *MODES[mode], *reachable, interval="20ms") as driver,
        lingering_tcp_sockets(socket.AF_INET, 2) as socks,
    ):
        assert stat.S_IMODE(os.stat(driver.socket_path).st_mode) == 0o666
        numbers = [str(s.fileno()) for s in socks]
        with driver_stopped(driver):
            attacker = subprocess.Popen(
                [SYSTEM_PYTHON, "-c", _REFUSED_ATTACKER, driver.socket_path, *numbers],
                user=NOBODY, group=NOBODY, extra_groups=[], pass_fds=[s.fileno() for s in socks],
                stdout=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"}, cwd="/",
            )  # fmt: skip
            for sock in socks:
                sock.close()  # the attacker's copies, and then those in flight, are the last
            out, _ = attacker.communicate(timeout=30)
        assert out.strip() == ("refused by the kernel" if mode == "passrights" else "sent")
        assert_loop_turns(driver)


def test_fds_sent_by_a_connection_refused_at_accept_do_not_stop_the_loop(attacked: DriverProcess, mode: str) -> None:
    """The `_refuse` path: over MAX_PENDING_PER_UID connections waiting for CREATE, the next
    one is answered and closed at accept; its first message carries lingering sockets."""
    from sharingmemory._server.server import MAX_PENDING_PER_UID

    idle = [RawConnection(attacked.socket_path) for _ in range(MAX_PENDING_PER_UID)]
    try:
        for raw in idle:  # each accepted and waiting: one refused request apiece proves it
            assert raw.request(MajorFunction.IRP_MJ_CLEANUP) is not None
        with lingering_tcp_sockets(socket.AF_INET, 2) as socks, contextlib.ExitStack() as stack:
            with driver_stopped(attacked):  # connected and sent before the driver can accept
                raw = stack.enter_context(RawConnection(attacked.socket_path))
                outcome = send_fds(raw, [s.fileno() for s in socks], when="now")
                if outcome == "sent":
                    for sock in socks:
                        sock.close()
            assert outcome == ("refused by the kernel" if mode == "passrights" else "sent")
            reply = raw.receive()
            if mode == "passrights":  # no request arrived (the sender got EPERM): closed unanswered
                assert reply is None
            else:  # the request is answered, its fds closed by the thread
                assert reply is not None and reply.status == sharingmemory.NtStatus.STATUS_TOO_MANY_OPENED_FILES
            for waiting in idle:  # room for the checks' own connections
                waiting.close()
            assert wait_for(lambda: _can_open(attacked))
            assert_loop_turns(attacked)
    finally:
        for raw in idle:
            raw.close()


def _can_open(driver: DriverProcess) -> bool:
    try:
        with sharingmemory.open_device(driver.socket_path, timeout=2):
            return True
    except sharingmemory.TooManyOpenedFiles:
        return False


def test_a_client_playing_with_its_page_fd_reaches_no_one(attacked: DriverProcess) -> None:
    """The page fds are dups of one O_RDONLY open file the driver holds too: flags, flock and
    read locks on it change nothing the driver waits on (it only dup(2)s that file)."""
    with RawConnection(attacked.socket_path) as raw:
        assert raw.request(MajorFunction.IRP_MJ_CREATE, FILE_READ_DATA) is not None
        from sharingmemory._defs import IOCTL_GIVE_ME_YOUR_MEMORY

        reply = raw.request(MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_GIVE_ME_YOUR_MEMORY, 8)
        assert reply is not None and reply.status == 0 and raw.fds
        page_fd = raw.fds[-1]
        fcntl.fcntl(page_fd, fcntl.F_SETFL, fcntl.fcntl(page_fd, fcntl.F_GETFL) ^ os.O_NONBLOCK)
        fcntl.flock(page_fd, fcntl.LOCK_EX)
        fcntl.lockf(page_fd, fcntl.LOCK_SH)  # F_RDLCK on the whole file, held while this runs
        for _ in range(3):  # other handles map it while the locks are held
            assert_loop_turns(attacked)
