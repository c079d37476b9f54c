"""Helper process: the real DeviceServer and Driver with a stopwatch around the tick.

The tick is the server's `_on_timer` (read the timerfd, the driver's on_timer: page write and
tick eventfds) plus the `_sync_timer` that re-arms the timerfd after it. Durations (ns) collect
in memory; SIGUSR1 writes those since the last dump to OUT_PATH as JSON and starts afresh.
Prints `ready` once serving; SIGTERM stops it as it stops `serve`.

Usage: python -m benchmarks._serve_instrumented SOCKET_PATH INTERVAL_NS OUT_PATH
"""

from __future__ import annotations

import json
import signal
import sys
import time
from types import FrameType

from sharingmemory._driver.driver import DriverConfig
from sharingmemory._server.server import DeviceServer, ServerConfig, raise_fd_limit


def main(argv: list[str]) -> int:
    socket_path, interval_ns, out_path = argv[0], int(argv[1]), argv[2]
    fd_limit = raise_fd_limit()
    handles = max(1, fd_limit - 128)
    config = ServerConfig(
        socket_path, driver=DriverConfig(interval_ns=interval_ns, max_handles=handles, max_handles_per_uid=handles)
    )
    durations: list[int] = []
    clock = time.perf_counter_ns
    with DeviceServer(config) as server:
        on_timer, sync_timer = server._on_timer, server._sync_timer
        started = 0

        def timed_on_timer(fd: object) -> None:
            nonlocal started
            started = clock()
            on_timer(fd)

        def timed_sync_timer() -> None:
            nonlocal started
            sync_timer()
            if started:
                durations.append(clock() - started)
                started = 0

        def dump(signum: int, frame: FrameType | None) -> None:
            with open(out_path, "w") as out:
                json.dump(durations, out)
            durations.clear()

        # The selector holds the bound method as the timerfd's callback: register it anew.
        server._selector.modify(server._timer.fileno(), 1, timed_on_timer)  # selectors.EVENT_READ
        setattr(server, "_sync_timer", timed_sync_timer)  # noqa: B010 (an instance attribute shadows the method)
        signal.signal(signal.SIGUSR1, dump)
        server.serve_forever(ready=lambda: print("ready", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
