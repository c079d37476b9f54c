"""Where the driver's time comes from: the system clocks and the local time zone's bias.

The page holds one instant three ways (FILETIME local and UTC, CLOCK_REALTIME ns) plus the
CLOCK_MONOTONIC time of the write, and they must be read together. `Clock` is the seam the
driver's unit tests use to run the timer on a fake clock; `SystemClock` is the daemon's.
"""

from __future__ import annotations

import time
from typing import Protocol

from .._defs import utc_offset_to_bias


class Clock(Protocol):
    """Where the driver gets time from; a fake in unit tests, `SystemClock` in the daemon."""

    def monotonic_ns(self) -> int: ...

    def now(self) -> tuple[int, int, int]:
        """(CLOCK_REALTIME ns, CLOCK_MONOTONIC ns, Windows time-zone bias), read together."""
        ...


class SystemClock:
    """The real clocks; the bias comes from the C library's local time, so TZ is respected and
    a DST change shows at the first tick after it."""

    def monotonic_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def now(self) -> tuple[int, int, int]:
        realtime_ns = time.clock_gettime_ns(time.CLOCK_REALTIME)
        monotonic_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        return realtime_ns, monotonic_ns, time_zone_bias(realtime_ns)


def time_zone_bias(realtime_ns: int) -> int:
    """The Windows bias (UTC minus local, 100-ns units) in force at `realtime_ns`, from the C
    library's rules for TZ (or /etc/localtime): asked per instant, so DST needs no special case."""
    return utc_offset_to_bias(time.localtime(realtime_ns // 1_000_000_000).tm_gmtoff)
