"""Helper process: the outside observer of the driver's timer.

Maps the page (as the first client, so it sees tick 1 and with it the deadline grid), then waits
for each tick with SharedPage.wait_next() and records (tick_count, monotonic_ns of the write,
monotonic ns at its own wake-up). Prints `half` after the first N_FIRST ticks (the caller starts
its load then) and one JSON line with every sample at the end.

With POLL (a driver that signals no tick eventfd), it polls the page every 100 us instead;
lateness is taken from the page's write time, so polling late does not change it.

Usage: python -m benchmarks._tick_reader SOCKET_PATH N_FIRST N_SECOND [POLL]
"""

from __future__ import annotations

import json
import sys
import time

from sharingmemory import SharedPage, open_device
from sharingmemory._defs.page import PageSnapshot


def _next_tick(page: SharedPage, last: int, poll: bool) -> PageSnapshot:
    """The next tick: by the tick eventfd when this client has wait_next, else by polling."""
    if not poll and hasattr(page, "wait_next"):
        return page.wait_next(timeout=10)
    while True:
        snap = page.read()
        if snap.tick_count != last:
            return snap
        time.sleep(0.0001)


def main(argv: list[str]) -> int:
    socket_path, first, second = argv[0], int(argv[1]), int(argv[2])
    poll = argv[3:] == ["POLL"]
    clock = time.clock_gettime_ns
    monotonic = time.CLOCK_MONOTONIC
    with open_device(socket_path) as device:
        page = device.map_shared_memory()
        start = page.read()
        samples = [(start.tick_count, start.monotonic_ns, clock(monotonic))]
        last = start.tick_count
        for index in range(first + second):
            snap = _next_tick(page, last, poll)
            samples.append((snap.tick_count, snap.monotonic_ns, clock(monotonic)))
            last = snap.tick_count
            if index + 1 == first:
                print("half", flush=True)
        print(json.dumps({"interval_ns": start.interval_ns, "samples": samples}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
