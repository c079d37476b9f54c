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
from .shared_page import (
    SharedPage,
)
from .ticks import (
    next_deadline_delay,
    retry_step,
)

__all__ = [
    "Device",
    "IoResult",
    "SharedPage",
    "next_deadline_delay",
    "open_device",
    "retry_step",
]
