"""A bound on the log lines a peer can cause.

Theory of operation. The driver logs to stderr with blocking writes; when stderr is a pipe that
nobody drains (a service manager that stalled, a terminal that is suspended), a write that does
not fit waits, and the single event loop with it. Lines the driver writes of its own accord are
few (start, stop, a warning about mlock); lines a peer can cause (a refused CREATE, a handle
limit, a failed IOCTL) are as many as the peer likes. So those carry `extra=PEER`, and
`PeerLineLimit` lets a burst through, then one line per `period`, and says how many it dropped
when the next one passes. Debug lines (`-vv`) are not limited: that level is for diagnosis by
someone who reads the output, not for a service's long run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

#: `extra=PEER` marks a record that a peer's request or behaviour triggered.
PEER: Final = {"peer": True}


class PeerLineLimit(logging.Filter):
    """A token bucket over records marked `PEER` at INFO and above; others pass untouched."""

    def __init__(self, burst: int = 20, period: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "peer", False) or record.levelno < logging.INFO:
            return True
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) / self.period)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return False
        self._tokens -= 1.0
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} similar line(s) caused by peers suppressed before this)"
            self.suppressed = 0
        return True


#: One limit for the driver's and the server's loggers: a peer's lines count against one bucket.
PEER_LIMIT: Final = PeerLineLimit()
for _name in ("sharingmemory.driver", "sharingmemory.server"):
    logging.getLogger(_name).addFilter(PEER_LIMIT)
