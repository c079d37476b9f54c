"""sharingmemory: a privileged producer shares a live page of memory with unprivileged readers.

The Linux form of the "SharingMemory" Windows driver tutorial: a driver daemon maps one sealed,
locked page into each client and writes the local time into it every interval; clients read it
straight from memory with no call into the driver.

    >>> import sharingmemory
    >>> with sharingmemory.open_device() as device:            # doctest: +SKIP
    ...     page = device.map_shared_memory()
    ...     print(page.read().local_datetime.strftime("%H:%M:%S"))
"""

from ._client import Device, IoResult, open_device
from ._ioctl import (
    CTL_CODE,
    FILE_ANY_ACCESS,
    FILE_DEVICE_UNKNOWN,
    FILE_READ_ACCESS,
    FILE_READ_DATA,
    FILE_WRITE_ACCESS,
    FILE_WRITE_DATA,
    IOCTL_GIVE_ME_YOUR_MEMORY,
    IOCTL_QUERY_STATUS,
    METHOD_BUFFERED,
    METHOD_IN_DIRECT,
    METHOD_NEITHER,
    METHOD_OUT_DIRECT,
    ControlCode,
    split_ctl_code,
)
from ._page import (
    EPOCH_AS_FILETIME,
    PAGE_SIZE,
    STATE_INITIALIZING,
    STATE_RUNNING,
    STATE_STOPPED,
    PageSnapshot,
    PageTornError,
    datetime_to_filetime,
    filetime_to_datetime,
)
from ._paths import DEVICE_NAME, default_socket_path
from ._protocol import DriverStatus
from ._shared_page import SharedPage
from ._status import (
    AccessDenied,
    BufferTooSmall,
    DeviceConfigurationError,
    DeviceNotConnected,
    DeviceNotFound,
    InsufficientResources,
    InvalidDeviceRequest,
    InvalidDeviceState,
    InvalidHandle,
    InvalidParameter,
    IoTimeout,
    NotImplementedStatus,
    NtStatus,
    NtStatusError,
    RevisionMismatch,
    TooManyOpenedFiles,
    Unsuccessful,
)

__version__ = "0.1.0"

__all__ = [
    "CTL_CODE",
    "DEVICE_NAME",
    "EPOCH_AS_FILETIME",
    "FILE_ANY_ACCESS",
    "FILE_DEVICE_UNKNOWN",
    "FILE_READ_ACCESS",
    "FILE_READ_DATA",
    "FILE_WRITE_ACCESS",
    "FILE_WRITE_DATA",
    "IOCTL_GIVE_ME_YOUR_MEMORY",
    "IOCTL_QUERY_STATUS",
    "METHOD_BUFFERED",
    "METHOD_IN_DIRECT",
    "METHOD_NEITHER",
    "METHOD_OUT_DIRECT",
    "PAGE_SIZE",
    "STATE_INITIALIZING",
    "STATE_RUNNING",
    "STATE_STOPPED",
    "AccessDenied",
    "BufferTooSmall",
    "ControlCode",
    "Device",
    "DeviceConfigurationError",
    "DeviceNotConnected",
    "DeviceNotFound",
    "DriverStatus",
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
    "PageSnapshot",
    "PageTornError",
    "RevisionMismatch",
    "SharedPage",
    "TooManyOpenedFiles",
    "Unsuccessful",
    "__version__",
    "datetime_to_filetime",
    "default_socket_path",
    "filetime_to_datetime",
    "open_device",
    "split_ctl_code",
]
