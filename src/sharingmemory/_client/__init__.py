"""Layer 4, the library's I/O: a `Device` handle, the `SharedPage` it maps, and tick waits.

The client side never imports the server side: they meet only on the wire (`_defs.protocol`).
"""

from .device import (
    Device,
    IoResult,
)
from .opening import (
    open_device,
)
from .section import Section, Snapshot
from .shared_page import (
    SharedPage,
)
from .ticks import (
    next_deadline_delay,
    retry_step,
)
from .time_section import TimeSection

__all__ = [
    "Device",
    "IoResult",
    "Section",
    "SharedPage",
    "Snapshot",
    "TimeSection",
    "next_deadline_delay",
    "open_device",
    "retry_step",
]
