"""The driver's own IOCTL handlers: the page's fd, the driver's status, and the section IOCTLs.

Theory of operation. Each handler completes one IRP_MJ_DEVICE_CONTROL whose access bits
`driver` has already checked against the handle, and never raises for anything a peer can send:
a short output buffer, a failed allocation, a refused section request are all statuses. A
handler takes the driver as its first argument, the way the seed's Dispatch routines take the
DEVICE_OBJECT and reach its extension: the page, its reference count and the section registry
stay the driver's, and the handler asks it (`_allocate_page`, `_free_page`) to change them, so
the invariant "the page exists if and only if a handle is mapped" is kept in one class.
The table that maps codes to handlers is `driver._IOCTLS`; the tick-event handler is in
`tick_events`, with the channels it makes.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from .._defs import PAGE_SIZE, STATUS_STRUCT_SIZE, NtStatus, Request, encode_driver_status
from .._sys import Fd
from .handles import Completion, Handle
from .peer_log import PEER

if TYPE_CHECKING:
    from .driver import Driver

log = logging.getLogger("sharingmemory.driver")

_POINTER = struct.Struct("<Q")


def ioctl_give_me_your_memory(driver: Driver, handle: Handle, request: Request) -> Completion:
    """The seed's request: a read-only fd of the page; the output is the length to map."""
    if request.output_length < _POINTER.size:
        return Completion(NtStatus.STATUS_BUFFER_TOO_SMALL)
    created = False
    try:
        if driver._page is None:
            driver._allocate_page()
            created = True
        assert driver._page is not None
        fd = Fd(driver._page.memory.open_reader_fd())
    except OSError as err:
        log.error("IOCTL_GIVE_ME_YOUR_MEMORY failed for handle %d: %s", handle.handle_id, err, extra=PEER)
        if created and driver._mapped == 0:
            driver._free_page()
        return Completion(NtStatus.STATUS_INSUFFICIENT_RESOURCES)
    driver._take_page_reference(handle)
    return Completion(NtStatus.STATUS_SUCCESS, _POINTER.size, _POINTER.pack(PAGE_SIZE), fd)


def ioctl_query_status(driver: Driver, handle: Handle, request: Request) -> Completion:
    """The driver's state. A buffer shorter than the struct gets the prefix that fits and
    STATUS_BUFFER_OVERFLOW; one that cannot hold the size field gets BUFFER_TOO_SMALL."""
    if request.output_length < 4:
        return Completion(NtStatus.STATUS_BUFFER_TOO_SMALL)
    data = encode_driver_status(driver.status())
    if request.output_length < STATUS_STRUCT_SIZE:
        cut = data[: request.output_length]
        return Completion(NtStatus.STATUS_BUFFER_OVERFLOW, len(cut), cut)
    return Completion(NtStatus.STATUS_SUCCESS, len(data), data)


def ioctl_section(driver: Driver, handle: Handle, request: Request) -> Completion:
    """The section IOCTLs, decided in `sections.py`."""
    status, output, fd = driver.sections.dispatch(
        request.code, handle.handle_id, handle.credentials, request.input, request.output_length
    )
    return Completion(status, len(output), output, fd)
