"""A CLOCK_MONOTONIC timerfd armed at absolute deadlines (timerfd_create(2), through ctypes).

Why a timerfd and not the poll timeout: epoll_wait's timeout is in whole milliseconds, rounded
up, and subject to the thread's timer slack (50 us by default, more when a wait is long), so a
1 ms tick taken from it would be up to 1 ms late every time. A timerfd armed with
TFD_TIMER_ABSTIME fires at the exact deadline, is one more fd in the same event loop (the tick
never competes with another thread for the GIL), and absolute deadlines cannot drift.
`os.timerfd_create` only arrives in Python 3.13, hence `_sys.libc`.
"""

from __future__ import annotations

import os
import time

from .._sys import libc

_CLOCK_MONOTONIC = time.CLOCK_MONOTONIC
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class MonotonicTimer:
    """One timerfd. `arm(deadline_ns)` sets an absolute CLOCK_MONOTONIC deadline (None stops
    it), `acknowledge()` reads the expiry count after the fd polls readable."""

    _fd: int = -1

    def __init__(self) -> None:
        self._fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def arm(self, deadline_ns: int | None) -> None:
        """Fire once at `deadline_ns` (already past: at once); None disarms."""
        # An all-zero it_value disarms, so a deadline of 0 is moved to 1 ns (long past anyway).
        value = 0 if deadline_ns is None else max(deadline_ns, 1)
        libc.timerfd_settime(self._fd, libc.TFD_TIMER_ABSTIME, value)

    def acknowledge(self) -> int:
        """Expirations since the last read (0 when it was a spurious wake-up)."""
        try:
            return int.from_bytes(os.read(self._fd, 8), "little")
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
