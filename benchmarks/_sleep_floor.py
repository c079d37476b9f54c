"""Helper process: the floor of timer lateness, a bare Python loop that only sleeps to absolute
CLOCK_MONOTONIC deadlines, with the same timer slack as the driver (1 ns, PR_SET_TIMERSLACK).
Missed deadlines are skipped as the driver skips them. Prints one JSON list of lateness in ns.

Usage: python -m benchmarks._sleep_floor INTERVAL_NS COUNT
"""

from __future__ import annotations

import json
import sys
import time

from sharingmemory._sys.libc import set_timer_slack


def main(argv: list[str]) -> int:
    interval, count = int(argv[0]), int(argv[1])
    set_timer_slack(1)
    clock, monotonic, sleep = time.clock_gettime_ns, time.CLOCK_MONOTONIC, time.sleep
    deadline = clock(monotonic) + interval
    lateness = []
    for _ in range(count):
        delay = deadline - clock(monotonic)
        if delay > 0:
            sleep(delay / 1e9)
        late = clock(monotonic) - deadline
        lateness.append(late)
        deadline += interval * (late // interval + 1)
    print(json.dumps(lateness), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
