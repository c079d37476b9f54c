"""4. Open + map + first read + close, one full cycle, against the floor of this design.

Ours, written the obvious way (`with open_device() as d: d.map_shared_memory().read()`) and
pipelined (`open_device(map=True)`), against a real driver. The floor
(benchmarks/_floor_server.py and `floor_cycle` below): connect, one request, one reply with
SCM_RIGHTS, mmap, read, close: what any client and server of this design must do at least.
Both run one cycle after another from this process, against a server in another process.
"""

from __future__ import annotations

import array
import contextlib
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sharingmemory import open_device

from ._common import (
    Config,
    Figure,
    Section,
    driver,
    median,
    percentile,
    ratio_figure,
    run_alone,
    seconds_each,
    spawn,
    stop,
)

GOAL = 1.5
_FD_SPACE = socket.CMSG_SPACE(array.array("i", [0]).itemsize)


@contextlib.contextmanager
def floor_server() -> Iterator[str]:
    """The floor's server (`_floor_server`) on a private socket, ready: its path for the body."""
    with tempfile.TemporaryDirectory(prefix="smbench-floor-") as tmp:
        path = str(Path(tmp) / "floor.sock")
        server = spawn("_floor_server", path, stdin=subprocess.PIPE)
        try:
            assert server.stdout is not None
            server.stdout.readline()
            yield path
        finally:
            stop(server)


def run(config: Config) -> Section:
    section = Section("open_cycle", "4. Open + map + first read + close, against the design's floor")
    cycles = 100 if config.smoke else 3_000
    with floor_server() as path:
        floor = _measure(
            section, "floor: connect, 1 request, 1 reply + SCM_RIGHTS, mmap, close", lambda: floor_cycle(path), cycles
        )
    with driver() as process:

        def ours() -> None:
            with open_device(process.socket_path) as device:
                device.map_shared_memory().read()

        # The first client of an idle driver also makes it allocate, seal and lock the page (and
        # the last one's close frees it): measured, but the floor's page always exists.
        _measure(section, "sharingmemory, sole client (page allocated and freed per cycle)", ours, cycles // 3)

        def pipelined() -> None:
            with open_device(process.socket_path, map=True) as device:
                device.map_shared_memory().read()

        with open_device(process.socket_path) as holder:
            holder.map_shared_memory()
            plain = _measure(section, "sharingmemory, the obvious way: open_device, map_shared_memory, read, close",
                             ours, cycles)  # fmt: skip
            mine = _measure(section, "sharingmemory: open_device(map=True), read, close", pipelined, cycles)
    ratio_figure(section, "the obvious page cycle (median)", plain, "us", vs=("floor (median)", floor), goal=GOAL)
    ratio_figure(
        section, "sharingmemory cycle, pipelined (median)", mine, "us", vs=("floor (median)", floor), goal=GOAL
    )
    section.note(
        "Each cycle is timed alone; medians compared. The obvious way waits two round trips (CREATE, then the IOCTL "
        "with the fd) where the floor waits one; open_device(map=True) sends CREATE and the IOCTL together: one "
        "round trip, like the floor. A read-only handle's close() waits for nothing (the driver cleans up on the "
        "hang-up)."
    )
    return section


def _measure(section: Section, name: str, cycle: Callable[[], None], cycles: int) -> float:
    for _ in range(min(50, cycles)):
        cycle()  # warm up
    start = time.perf_counter()
    times = seconds_each(cycle, cycles)
    elapsed = time.perf_counter() - start
    typical = median(times) * 1e6
    section.add(Figure(f"{name}: median", typical, "us"))
    section.add(Figure(f"{name}: p99", percentile(times, 99) * 1e6, "us"))
    section.add(Figure(f"{name}: cycles per second", cycles / elapsed, "cycles/s"))
    return typical


def floor_cycle(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as sock:
        sock.connect(path)
        sock.send(b"\0" * 24)
        _data, ancillary, _flags, _addr = sock.recvmsg(64, _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
        fd = array.array("i", ancillary[0][2])[0]
        try:
            page = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        with page:
            int.from_bytes(page[24:32], "little")


if __name__ == "__main__":
    sys.exit(run_alone(run))
