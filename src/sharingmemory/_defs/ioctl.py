"""`CTL_CODE` and the IOCTL codes of this device.

Theory of operation: an NT I/O control code packs four fields into 32 bits (winioctl.h):

    bits 31..16  device type      FILE_DEVICE_UNKNOWN = 0x22
    bits 15..14  required access  FILE_ANY_ACCESS 0, FILE_READ_ACCESS 1, FILE_WRITE_ACCESS 2
    bits 13..2   function         0x800 and up are for vendors
    bits  1..0   transfer method  METHOD_BUFFERED 0 ...

The access bits are not decoration: the I/O manager refuses an IOCTL whose bits the handle was
not opened with, and our driver does the same with the access granted at CREATE. Pure: no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

FILE_DEVICE_UNKNOWN = 0x00000022

METHOD_BUFFERED = 0
METHOD_IN_DIRECT = 1
METHOD_OUT_DIRECT = 2
METHOD_NEITHER = 3

FILE_ANY_ACCESS = 0
FILE_READ_ACCESS = 1
FILE_WRITE_ACCESS = 2

# Access rights asked for at CREATE. For a device these are the FILE_READ_DATA and
# FILE_WRITE_DATA bits, which the I/O manager compares with the IOCTL's FILE_*_ACCESS bits.
FILE_READ_DATA = 0x0001
FILE_WRITE_DATA = 0x0002
VALID_ACCESS_MASK = FILE_READ_DATA | FILE_WRITE_DATA


class ControlCode(NamedTuple):
    """The four fields of an IOCTL code, as `CTL_CODE` takes them."""

    device_type: int
    function: int
    method: int
    access: int


def CTL_CODE(device_type: int, function: int, method: int, access: int) -> int:  # noqa: N802
    """Pack an IOCTL code exactly as the winioctl.h macro does; out-of-range fields are refused."""
    if not 0 <= device_type <= 0xFFFF:
        raise ValueError(f"device_type {device_type:#x} does not fit 16 bits")
    if not 0 <= function <= 0xFFF:
        raise ValueError(f"function {function:#x} does not fit 12 bits")
    if not 0 <= method <= 3:
        raise ValueError(f"method {method} is not one of METHOD_BUFFERED..METHOD_NEITHER")
    if not 0 <= access <= 3:
        raise ValueError(f"access {access} is not a combination of FILE_READ/WRITE_ACCESS")
    return (device_type << 16) | (access << 14) | (function << 2) | method


def split_ctl_code(code: int) -> ControlCode:
    """The inverse of `CTL_CODE`: `CTL_CODE(*split_ctl_code(c)) == c` for every 32-bit `c`."""
    if not 0 <= code <= 0xFFFFFFFF:
        raise ValueError(f"IOCTL code {code:#x} does not fit 32 bits")
    return ControlCode(
        device_type=code >> 16,
        function=(code >> 2) & 0xFFF,
        method=code & 3,
        access=(code >> 14) & 3,
    )


def required_access(code: int) -> int:
    """The FILE_READ_DATA/FILE_WRITE_DATA bits a handle needs to send `code`."""
    access = split_ctl_code(code).access
    needed = 0
    if access & FILE_READ_ACCESS:
        needed |= FILE_READ_DATA
    if access & FILE_WRITE_ACCESS:
        needed |= FILE_WRITE_DATA
    return needed


#: The seed's request: map the shared page into the caller. 0x00226000.
IOCTL_GIVE_ME_YOUR_MEMORY = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS)
#: The driver's own state (handles, page, timer); see `docs/protocol.md`. 0x00226004.
IOCTL_QUERY_STATUS = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, METHOD_BUFFERED, FILE_READ_ACCESS)
#: A tick channel the driver makes readable after each tick (and when the page stops), for
#: readers that want to wait for the tick instead of sleeping beside it. 0x00226008.
IOCTL_REGISTER_TICK_EVENT = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x802, METHOD_BUFFERED, FILE_READ_ACCESS)

# Sections (docs/section-abi.md): named, self-describing pages that any authorised producer
# publishes. Creating one needs a handle opened for writing, as NtCreateSection needs write access.
#: Create a named section; the reply brings the unsealed memfd for the producer to map. 0x0022A00C.
IOCTL_CREATE_SECTION = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x803, METHOD_BUFFERED, FILE_WRITE_ACCESS)
#: Seal the section the producer has mapped; from then on readers may open it. 0x0022A010.
IOCTL_SEAL_SECTION = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x804, METHOD_BUFFERED, FILE_WRITE_ACCESS)
#: Stop one of the caller's sections before its handle closes. 0x0022A014.
IOCTL_CLOSE_SECTION = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x805, METHOD_BUFFERED, FILE_WRITE_ACCESS)
#: Open a section by name: a read-only fd of the sealed memfd. 0x00226018.
IOCTL_OPEN_SECTION = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x806, METHOD_BUFFERED, FILE_READ_ACCESS)
#: The live sections, paged by a first index. 0x0022601C.
IOCTL_LIST_SECTIONS = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x807, METHOD_BUFFERED, FILE_READ_ACCESS)
#: Count this handle among a section's waiters, so its producer wakes the futex. 0x00226020.
IOCTL_WAIT_SECTION = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x808, METHOD_BUFFERED, FILE_READ_ACCESS)
