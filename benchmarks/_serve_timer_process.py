"""Helper process: a prototype where the tick runs in a process of its own, measured beside the
real driver by the timer benchmark.

Why: under load the driver's process is always runnable, so its tick waits for the scheduler
(CFS gives no wake-up preference to a busy task) and for whatever the loop is doing. A process
that only sleeps on a timerfd and writes the page is a sleeper, woken and run at once, as the
bare sleep loop of the floor is. Once the driver has created the page, the server forks a child
that inherits the writable mapping (F_SEAL_FUTURE_WRITE forbids mapping it writable again),
closes every inherited fd, and from then on writes the page at each deadline of the same grid;
the parent stops ticking. Prototype limits: tick eventfds are not signalled (readers poll), and
the page is freed only at exit (the benchmark holds it throughout).
Prints `ready` once serving; SIGTERM stops it.

Usage: python -m benchmarks._serve_timer_process SOCKET_PATH INTERVAL_NS
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from sharingmemory._driver.driver import DriverConfig
from sharingmemory._server.server import DeviceServer, ServerConfig, default_handle_limits, raise_fd_limit
from sharingmemory._server.timerfd import MonotonicTimer
from sharingmemory._sys.libc import set_timer_slack


class TimerProcessServer(DeviceServer):
    _child = 0

    def _sync_timer(self) -> None:
        driver = self.driver
        if not self._child and driver._page is not None and driver._deadline is not None:
            deadline = driver._deadline
            pid = os.fork()
            if pid == 0:
                _tick_forever(self, deadline)
            self._child = pid
            driver._deadline = None  # the child ticks from now on
        super()._sync_timer()

    def close(self) -> None:
        if self._child:
            os.kill(self._child, signal.SIGKILL)
            os.waitpid(self._child, 0)
            self._child = 0
        super().close()


def _tick_forever(server: TimerProcessServer, deadline: int) -> None:
    """The child: close what the parent owns, then write the page at every deadline."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        set_timer_slack(1)
        driver = server.driver
        page = driver._page
        assert page is not None
        writer, clock, interval = page.writer, driver._clock, driver.config.interval_ns
        timer = MonotonicTimer()
        poller = select.poll()
        poller.register(timer.fileno(), select.POLLIN)
        while True:
            timer.arm(deadline)
            poller.poll()
            timer.acknowledge()
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            if now < deadline:
                continue
            realtime_ns, monotonic_ns, bias = clock.now()
            writer.update(realtime_ns=realtime_ns, monotonic_ns=monotonic_ns, time_zone_bias=bias)
            deadline += interval * ((now - deadline) // interval + 1)
    finally:
        os._exit(0)


def main(argv: list[str]) -> int:
    socket_path, interval_ns = argv[0], int(argv[1])
    max_handles, per_uid = default_handle_limits(raise_fd_limit())
    config = ServerConfig(
        socket_path, driver=DriverConfig(interval_ns=interval_ns, max_handles=max_handles, max_handles_per_uid=per_uid)
    )
    with TimerProcessServer(config) as server:
        server.serve_forever(ready=lambda: print("ready", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
