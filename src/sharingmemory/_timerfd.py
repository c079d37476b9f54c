"""A CLOCK_MONOTONIC timerfd armed at absolute deadlines (timerfd_create(2), through ctypes).

Why a timerfd and not the poll timeout: epoll_wait's timeout is in whole milliseconds, rounded
up, and subject to the thread's timer slack (50 us by default, more when a wait is long), so a
1 ms tick taken from it would be up to 1 ms late every time. A timerfd armed with
TFD_TIMER_ABSTIME fires at the exact deadline, is one more fd in the same event loop (the tick
never competes with another thread for the GIL), and absolute deadlines cannot drift.
`os.timerfd_create` only arrives in Python 3.13, hence ctypes.
"""

from __future__ import annotations

import ctypes
import os
import time

_CLOCK_MONOTONIC = time.CLOCK_MONOTONIC
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1
_PR_SET_TIMERSLACK = 29


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.timerfd_settime.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def set_timer_slack(slack_ns: int) -> None:
    """prctl(PR_SET_TIMERSLACK): how late the kernel may wake this thread's timed waits."""
    _check(_libc.prctl(_PR_SET_TIMERSLACK, slack_ns, 0, 0, 0))


class MonotonicTimer:
    """One timerfd. `arm(deadline_ns)` sets an absolute CLOCK_MONOTONIC deadline, `disarm()`
    stops it, `acknowledge()` reads the expiry count after the fd polls readable."""

    _fd: int = -1

    def __init__(self) -> None:
        self._fd = _check(_libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))

    def fileno(self) -> int:
        return self._fd

    def arm(self, deadline_ns: int | None) -> None:
        """Fire once at `deadline_ns` (already past: at once); None disarms."""
        spec = _Itimerspec()
        if deadline_ns is not None:
            deadline_ns = max(deadline_ns, 1)  # an all-zero it_value would disarm
            spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
        _check(_libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None))

    def disarm(self) -> None:
        self.arm(None)

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
