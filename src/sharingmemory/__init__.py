"""sharingmemory: a privileged producer shares a live page of memory with unprivileged readers.

The Linux form of the "SharingMemory" Windows driver tutorial: a driver daemon maps one sealed,
locked page into each client and writes the local time into it every interval; clients read it
straight from memory with no call into the driver.

    >>> import sharingmemory
    >>> with sharingmemory.open_device() as device:            # doctest: +SKIP
    ...     page = device.map_shared_memory()
    ...     print(page.read().local_datetime.strftime("%H:%M:%S"))
"""

from . import winioctl
from ._client import Device, IoResult, SharedPage, open_device

# Sections (docs/section-abi.md): anyone authorised publishes named, self-describing values.
from ._client import Section as Section
from ._client import Snapshot as Snapshot
from ._client import TimeSection as TimeSection
from ._defs import (
    DEVICE_NAME,
    EPOCH_AS_FILETIME,
    IOCTL_GIVE_ME_YOUR_MEMORY,
    IOCTL_QUERY_STATUS,
    PAGE_SIZE,
    STATE_INITIALIZING,
    STATE_RUNNING,
    STATE_STOPPED,
    AccessDenied,
    BufferTooSmall,
    DeviceConfigurationError,
    DeviceNotConnected,
    DeviceNotFound,
    DriverStatus,
    InsufficientResources,
    InvalidDeviceRequest,
    InvalidDeviceState,
    InvalidHandle,
    InvalidParameter,
    IoTimeout,
    NotImplementedStatus,
    NtStatus,
    NtStatusError,
    ObjectNameCollision,
    ObjectNameInvalid,
    ObjectNameNotFound,
    PageSnapshot,
    PageTornError,
    QuotaExceeded,
    RevisionMismatch,
    SectionTooBig,
    TooManyOpenedFiles,
    Unsuccessful,
    UntrustedDevice,
    datetime_to_filetime,
    default_socket_path,
    filetime_to_datetime,
)
from ._defs import Field as Field
from ._defs import SectionFormatError as SectionFormatError
from ._defs import SectionInfo as SectionInfo
from ._defs import SectionState as SectionState
from ._defs import SectionTornError as SectionTornError
from ._defs.ioctl import CTL_CODE
from ._include import get_include

__version__ = "0.1.0"

__all__ = [
    "CTL_CODE",
    "DEVICE_NAME",
    "EPOCH_AS_FILETIME",
    "IOCTL_GIVE_ME_YOUR_MEMORY",
    "IOCTL_QUERY_STATUS",
    "PAGE_SIZE",
    "STATE_INITIALIZING",
    "STATE_RUNNING",
    "STATE_STOPPED",
    "AccessDenied",
    "BufferTooSmall",
    "Device",
    "DeviceConfigurationError",
    "DeviceNotConnected",
    "DeviceNotFound",
    "DriverStatus",
    "Field",
    "InsufficientResources",
    "InvalidDeviceRequest",
    "InvalidDeviceState",
    "InvalidHandle",
    "InvalidParameter",
    "IoResult",
    "IoTimeout",
    "NotImplementedStatus",
    "NtStatus",
    "NtStatusError",
    "ObjectNameCollision",
    "ObjectNameInvalid",
    "ObjectNameNotFound",
    "PageSnapshot",
    "PageTornError",
    "QuotaExceeded",
    "RevisionMismatch",
    "Section",
    "SectionFormatError",
    "SectionInfo",
    "SectionState",
    "SectionTooBig",
    "SectionTornError",
    "SharedPage",
    "Snapshot",
    "TimeSection",
    "TooManyOpenedFiles",
    "Unsuccessful",
    "UntrustedDevice",
    "__version__",
    "datetime_to_filetime",
    "default_socket_path",
    "filetime_to_datetime",
    "get_include",
    "open_device",
    "winioctl",
]

# Tracebacks, reprs and docs name the public path (sharingmemory.AccessDenied), not the private
# module a name happens to be defined in, as httpcore's __init__ does.
for _name in __all__:
    _value = globals()[_name]
    if (isinstance(_value, type) or callable(_value)) and str(getattr(_value, "__module__", "")).startswith(
        __name__ + "._"
    ):
        _value.__module__ = __name__
del _name, _value
