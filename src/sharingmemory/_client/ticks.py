"""Waiting for the next tick: the client's side of IOCTL_REGISTER_TICK_EVENT.

Theory of operation. The seed's program polled the page every 1000 ms beside a writer that also
ticked every 1000 ms, so it skipped or repeated a second. Ours waits for the tick instead:

* With an eventfd from the driver (`TickEvent`), a reader blocks in poll(2) until the driver
  signals, then reads the page. The same poll also watches the device socket for POLLRDHUP, so
  a driver that dies without writing state=stopped ends the wait at once with
  DeviceNotConnected instead of a wait that never ends.
* Without one (a page mapped from a bare fd), `SharedPage.wait_next` sleeps to the next deadline
  which the page itself gives (`monotonic_ns + interval_ns` on the system-wide CLOCK_MONOTONIC),
  then re-reads in short steps until the tick is there.

The eventfd is the client's own (one per handle, see the driver), so no other client can steal
or fake its wake-ups; a spurious wake-up costs one page read and is otherwise harmless, because
the page's `tick_count`, not the eventfd's counter, decides whether a tick happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import time

from .._defs import PageSnapshot
from .._sys import Fd

_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
_HANGUP = select.POLLHUP | select.POLLERR | _POLLRDHUP


class TickEvent:
    """An eventfd the driver signals at each tick, owned by this object, plus the device socket
    whose hang-up means the driver is gone. `close()` is idempotent."""

    def __init__(self, fd: Fd, device_fd: int) -> None:
        """Take ownership of `fd`; `device_fd` stays the device's (only polled, never closed)."""
        self._owner = fd
        self._fd = fd.fileno()
        self._device_fd = device_fd
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._poll.register(device_fd, _POLLRDHUP)

    def drain(self) -> None:
        """Forget the signals already counted: the page is about to be read anyway."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)

    def wait(self, timeout: float | None) -> bool:
        """Block until signalled (True) or `timeout` seconds pass (False). Raises
        ConnectionResetError when the device socket hung up (the driver died)."""
        millis = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        ready = self._poll.poll(millis)
        for fd, events in ready:
            if fd == self._device_fd and events & _HANGUP:
                raise ConnectionResetError("the driver hung up")
        return bool(ready)

    def device_hung_up(self) -> bool:
        """Whether the device socket has hung up, without blocking."""
        return any(fd == self._device_fd and ev & _HANGUP for fd, ev in self._poll.poll(0))

    async def wait_async(self) -> None:
        """Resolve when the eventfd is readable or the device socket hangs up."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        loop.add_reader(self._fd, wake)
        loop.add_reader(self._device_fd, wake)
        try:
            await future
        finally:
            loop.remove_reader(self._fd)
            loop.remove_reader(self._device_fd)
        if self.device_hung_up():
            raise ConnectionResetError("the driver hung up")

    def close(self) -> None:
        """Idempotent."""
        self._owner.close()


def next_deadline_delay(last: PageSnapshot) -> float:
    """Seconds until just after the tick that should follow `last` (may be negative)."""
    target = last.monotonic_ns + last.interval_ns + 200_000  # 0.2 ms past the deadline
    return (target - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9


def retry_step(last: PageSnapshot) -> float:
    """How long to wait between re-reads once the deadline has passed without a tick."""
    return min(0.001, last.interval_ns / 1e10)
