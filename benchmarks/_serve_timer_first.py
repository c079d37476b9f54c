"""Helper process: a prototype of the event loop that meets the timer goal under load, measured
beside the real one by the timer benchmark (the real loop lives in sharingmemory._server).

The real loop runs every callback that one select() returned before it looks at the clock again,
so under 100 busy clients the tick waits behind a whole batch of requests (up to ~100 x 50 us).
This variant (1) runs the timerfd's callback first in each batch and (2) before each connection
callback, runs the tick at once if its deadline has passed (one clock_gettime, ~50 ns): the tick
then waits for one request at most, never for a batch. Same driver, same server otherwise.
Prints `ready` once serving; SIGTERM stops it.

Usage: python -m benchmarks._serve_timer_first SOCKET_PATH INTERVAL_NS
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from sharingmemory._driver import DriverConfig
from sharingmemory._server import DeviceServer, ServerConfig, default_handle_limits, raise_fd_limit


class TimerFirstServer(DeviceServer):
    def _run_once(self) -> None:
        timeout = self._watchdog_timeout(self._next_idle_timeout())
        events = self._selector.select(timeout)
        timer_fd = self._timer.fileno()
        for key, _mask in events:
            if key.fd == timer_fd:
                callback: Callable[[object], None] = key.data
                callback(key.fileobj)
                self._sync_timer()
        for key, _mask in events:
            if key.fd != timer_fd:
                self._tick_if_due()
                callback = key.data
                callback(key.fileobj)
        self._expire_idle()
        self._sync_timer()
        self._feed_watchdog()

    def _tick_if_due(self) -> None:
        deadline = self.driver.timer_deadline
        if deadline is not None:
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            if now >= deadline:
                self._timer.acknowledge()
                self.driver.on_timer(now)
                self._sync_timer()


def main(argv: list[str]) -> int:
    socket_path, interval_ns = argv[0], int(argv[1])
    max_handles, per_uid = default_handle_limits(raise_fd_limit())
    config = ServerConfig(
        socket_path, driver=DriverConfig(interval_ns=interval_ns, max_handles=max_handles, max_handles_per_uid=per_uid)
    )
    with TimerFirstServer(config) as server:
        server.serve_forever(ready=lambda: print("ready", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
