"""8. Sections, continued: what a tick of the `time` page costs the driver with many waiting.

Issue 11 asks that waiting cost the waker nothing per waiter: the driver's tick with 1,000
waiting readers within 1.5x of its tick with one. Readers are threads spread over a few
processes, each thread with its own Device handle (so the driver counts 1,000 waiters), each
waiting for every tick with `SharedPage.wait_next()`. The tick is long (100 ms) so that 2 CPUs
can run 1,000 woken readers between ticks. Driver CPU is the sum over its threads of
/proc/PID/task/*/schedstat's run time (ns; /proc/PID/stat's utime+stime count 10 ms clock
ticks, too coarse for tens of microseconds a tick), over a few seconds, divided by the ticks
written meanwhile. The tick channel (one send per handle per tick, what a 1.0 driver's readers
use) is measured the same way, for comparison.
"""

from __future__ import annotations

import contextlib
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support import DriverProcess

import sharingmemory

from ._common import Config, Section, driver, ratio_figure, spawn, stop

_WAITERS = struct.Struct("<I")  # the page's waiters count, at 104 (page ABI 1.1)
_PROCESSES = 10


def run_ticks(section: Section, config: Config) -> None:
    interval, window = ("50ms", 0.5) if config.smoke else ("100ms", 5.0)
    counts = (1, 20) if config.smoke else (1, 1_000)
    modes = ("futex",) if config.smoke else ("futex", "channel")
    costs: dict[tuple[str, int], float] = {}
    shares: dict[tuple[str, int], float] = {}
    limits = ("--max-handles", "4096", "--max-handles-per-uid", "4096")
    with driver(*limits, interval=interval) as process, process.open() as device:
        page = device.map_shared_memory()
        for mode in modes:
            for count in counts:
                costs[mode, count], shares[mode, count] = _cost_per_tick(process, page, count, mode, window)
    first = counts[0]
    for mode in modes:
        what = "futex wake-up (default)" if mode == "futex" else "tick channel"
        for count in counts:
            ratio_figure(section, f"driver CPU per tick of `time`, {count} waiting, {what}", costs[mode, count], "us",
                         vs=(f"with {first} waiting", costs[mode, first]),
                         goal=1.5 if mode == "futex" and count != first else None)  # fmt: skip
    for mode in modes:
        many = counts[-1]
        what = "futex" if mode == "futex" else "tick channel"
        ratio_figure(section, f"ticks each of {many} waiting readers saw ({what})", shares[mode, many] * 100, "%",
                     vs=("every tick", 100.0), goal=None)  # fmt: skip
    if "channel" in modes:
        many = counts[-1]
        ratio_figure(section, f"driver CPU per tick, {many} waiting: futex vs tick channel", costs["futex", many], "us",
                     vs=("tick channel", costs["channel", many]), goal=None)  # fmt: skip
    section.note(
        f"A tick every {interval}; readers are threads over {_PROCESSES} processes, one Device handle each. The "
        "driver's tick makes one FUTEX_WAKE(seq, 1) when its page's waiters count is not 0, and each reader woken "
        "with news wakes two more (docs/page-abi.md, Waiting for a tick); the tick channel is one send per handle. "
        "Driver CPU: schedstat run time over the window / ticks written in it. The share of ticks the readers "
        "saw counts from their first wait to the close of their stdin, so the wait in progress at each end is "
        "lost by construction (a few percent)."
    )


def _cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


@contextlib.contextmanager
def _waiters(process: DriverProcess, count: int, mode: str) -> Iterator[list[int]]:
    """`count` readers over up to _PROCESSES processes, all registered and waiting when this
    yields; afterwards the list holds the ticks each process's readers saw, summed."""
    processes = min(_PROCESSES, count)
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    helpers = [spawn("_tick_waiters", process.socket_path, str(n), mode, stdin=subprocess.PIPE) for n in shares]
    seen: list[int] = []
    try:
        for helper in helpers:
            assert helper.stdout is not None
            line = helper.stdout.readline()
            assert line == b"ready\n", line
        yield seen
        for helper in helpers:
            assert helper.stdin is not None
            assert helper.stdout is not None
            helper.stdin.close()
            seen.append(int(helper.stdout.readline().split()[1]))
    finally:
        for helper in helpers:
            stop(helper, timeout=30)


def _cost_per_tick(
    process: DriverProcess, page: sharingmemory.SharedPage, count: int, mode: str, window: float
) -> tuple[float, float]:
    """Microseconds of driver CPU per tick while `count` readers wait on every tick, and the
    share of the ticks of the readers' life that they saw (1.0: every reader woke at every tick)."""
    mapping = page._map  # this process only reads the page: it never registers as a waiter
    assert mapping is not None
    with _waiters(process, count, mode) as seen:
        born = page.read().tick_count
        registered = _WAITERS.unpack_from(mapping, 104)[0]
        assert registered == (count if mode == "futex" else 0), (registered, count, mode)
        time.sleep(window / 5)  # past the first ticks' stragglers
        start = page.read().tick_count
        cpu = _cpu_ns(process.pid)
        time.sleep(window)
        end = page.read().tick_count
        used = _cpu_ns(process.pid) - cpu
    died = page.read().tick_count
    return used / max(1, end - start) / 1e3, sum(seen) / max(1, count * (died - born))
