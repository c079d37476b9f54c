"""Layer 3, the driver: the dispatch table, per-handle contexts, the shared page and its timer.

No sockets: the server (layer 4) moves bytes and fds, the driver decides what they mean.
`driver` holds the dispatch tables and the handle and page life cycles, `handles` the records
they share, `ioctls` and `tick_events` the IOCTL handlers; `memory` makes and frees the sealed
page, `clock` is the seam for time.
"""

from .driver import (
    MAX_INTERVAL_NS,
    MIN_INTERVAL_NS,
    AccessPolicy,
    Completion,
    Credentials,
    Driver,
    DriverConfig,
    Handle,
    HandleState,
)
from .peer_log import (
    PEER,
    PEER_LIMIT,
    PeerLineLimit,
)
from .section_records import ProducerPolicy, SectionLimits

__all__ = [
    "MAX_INTERVAL_NS",
    "MIN_INTERVAL_NS",
    "PEER",
    "PEER_LIMIT",
    "AccessPolicy",
    "Completion",
    "Credentials",
    "Driver",
    "DriverConfig",
    "Handle",
    "HandleState",
    "PeerLineLimit",
    "ProducerPolicy",
    "SectionLimits",
]
