"""The Windows I/O-control vocabulary, for the few clients that build their own IOCTL codes.

Most programs need only `sharingmemory.CTL_CODE` and the `IOCTL_*` codes at the top level.
What winioctl.h spells out besides (transfer methods, access bits, the device type, and the
inverse of `CTL_CODE`) lives here, as `trio.lowlevel` keeps what few users need out of the
way of everyone else.

    >>> from sharingmemory import winioctl
    >>> winioctl.split_ctl_code(0x00226000)
    ControlCode(device_type=34, function=2048, method=0, access=1)
"""

from ._defs.ioctl import (
    CTL_CODE,
    FILE_ANY_ACCESS,
    FILE_DEVICE_UNKNOWN,
    FILE_READ_ACCESS,
    FILE_READ_DATA,
    FILE_WRITE_ACCESS,
    FILE_WRITE_DATA,
    METHOD_BUFFERED,
    METHOD_IN_DIRECT,
    METHOD_NEITHER,
    METHOD_OUT_DIRECT,
    ControlCode,
    split_ctl_code,
)

__all__ = [
    "CTL_CODE",
    "FILE_ANY_ACCESS",
    "FILE_DEVICE_UNKNOWN",
    "FILE_READ_ACCESS",
    "FILE_READ_DATA",
    "FILE_WRITE_ACCESS",
    "FILE_WRITE_DATA",
    "METHOD_BUFFERED",
    "METHOD_IN_DIRECT",
    "METHOD_NEITHER",
    "METHOD_OUT_DIRECT",
    "ControlCode",
    "split_ctl_code",
]

for _name in ("ControlCode", "split_ctl_code"):
    globals()[_name].__module__ = __name__
del _name
