"""The server's look for hang-ups before a status (connections.py, `_take_in_hangups`) costs one
entry per peer that has gone, never one per live connection: a first form polled every ready
connection, so a burst of status queries from n connections cost the driver n x n. strace
watches the driver through such a burst: no poll(2) of ready connections, and every look at the
hang-up set returns only the peers that went."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sharingmemory import IOCTL_QUERY_STATUS
from sharingmemory._defs.protocol import MajorFunction, Request, encode_request
from tests.support import DriverProcess, RawConnection, open_fds, wait_for

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")

_EPOLL_WAIT = re.compile(r"epoll_wait\((\d+), .*, (-?\d+)\) += (\d+)")


def _epoll_fds(pid: int) -> list[int]:
    return sorted(fd for fd, link in open_fds(pid).items() if link == "anon_inode:[eventpoll]")


@pytest.mark.parametrize(("live", "gone", "asks"), [(150, 3, 4), (60, 0, 8), (100, 10, 2)])
def test_a_burst_of_status_queries_looks_only_at_the_peers_that_went(
    driver: DriverProcess, tmp_path: Path, live: int, gone: int, asks: int
) -> None:
    epolls = _epoll_fds(driver.pid)  # the selector's, then the hang-up set's (made second: the higher fd)
    hangups_fd = epolls[-1] if len(epolls) == 2 else -1
    connections = []
    for _ in range(live + gone):
        raw = RawConnection(driver.socket_path, timeout=30)
        raw.create()
        connections.append(raw)
    log = tmp_path / "driver.trace"
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-e", "trace=poll,ppoll,epoll_wait,epoll_pwait", "-o", str(log), "-p", str(driver.pid)],
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: log.exists() and driver.status() is not None, timeout=10)
        time.sleep(0.3)  # strace attached to every thread
        for raw in connections[live:]:
            raw.sock.close()  # hang-ups the next status must take in first
        burst = [
            encode_request(Request(MajorFunction.IRP_MJ_DEVICE_CONTROL, 100 + i, IOCTL_QUERY_STATUS, 4096, b""))
            for i in range(asks)
        ]
        for raw in connections[:live]:
            for message in burst:
                raw.send_raw(message)
        for raw in connections[:live]:
            for _ in burst:
                reply = raw.receive()
                assert reply is not None and reply.status == 0, reply
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        for raw in connections[:live]:
            raw.sock.close()
    lines = log.read_text().splitlines()
    assert not [line for line in lines if re.search(r"\b(p?poll)\(", line)], "a poll(2) over ready connections"
    looks = [match for line in lines if (match := _EPOLL_WAIT.search(line)) and int(match[1]) == hangups_fd]
    assert len(looks) >= live * asks // 8  # the look ran (at most 8 requests are served per wake-up)
    assert max(int(match[3]) for match in looks) <= gone, "the look returned live connections"
    assert all(int(match[2]) == 0 for match in looks)  # never waits
