"""NTSTATUS codes, and the exceptions that carry them.

Theory of operation: the seed's driver answers every request with an NTSTATUS, and so does ours,
with the same numbers on the wire. This module owns the table of codes this system can return and
the mapping from a failure code to a typed Python exception. It knows nothing of sockets or of the
driver: it is the vocabulary the other layers share.

NT's rules, kept here: the two top bits of a code give its severity (00 success, 01
informational, 10 warning, 11 error). Warnings such as STATUS_BUFFER_OVERFLOW come with data and
are not raised; only error codes become exceptions.
"""

from __future__ import annotations

import enum


class NtStatus(enum.IntEnum):
    """The NTSTATUS codes that cross this system's wire, with their Windows names and values."""

    STATUS_SUCCESS = 0x00000000
    STATUS_BUFFER_OVERFLOW = 0x80000005
    STATUS_UNSUCCESSFUL = 0xC0000001
    STATUS_NOT_IMPLEMENTED = 0xC0000002
    STATUS_INVALID_HANDLE = 0xC0000008
    STATUS_INVALID_PARAMETER = 0xC000000D
    STATUS_INVALID_DEVICE_REQUEST = 0xC0000010
    STATUS_ACCESS_DENIED = 0xC0000022
    STATUS_BUFFER_TOO_SMALL = 0xC0000023
    STATUS_OBJECT_NAME_INVALID = 0xC0000033
    STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
    STATUS_OBJECT_NAME_COLLISION = 0xC0000035
    STATUS_SECTION_TOO_BIG = 0xC0000040
    STATUS_QUOTA_EXCEEDED = 0xC0000044
    STATUS_REVISION_MISMATCH = 0xC0000059
    STATUS_INSUFFICIENT_RESOURCES = 0xC000009A
    STATUS_DEVICE_NOT_CONNECTED = 0xC000009D
    STATUS_IO_TIMEOUT = 0xC00000B5
    STATUS_TOO_MANY_OPENED_FILES = 0xC000011F
    STATUS_TRUST_FAILURE = 0xC0000190
    STATUS_DEVICE_CONFIGURATION_ERROR = 0xC0000182
    STATUS_INVALID_DEVICE_STATE = 0xC0000184

    @property
    def is_error(self) -> bool:
        """True for severity ERROR (top bits 11): the caller gets an exception."""
        return is_error(self)


def is_error(status: int) -> bool:
    """Whether a raw 32-bit status has severity ERROR; unknown codes are judged by their bits."""
    return (status >> 30) == 0b11


def status_name(status: int) -> str:
    """`STATUS_NAME (0xC0000023)`, or the bare hex for a code this system does not define."""
    try:
        return f"{NtStatus(status).name} (0x{status:08X})"
    except ValueError:
        return f"NTSTATUS 0x{status:08X}"


class NtStatusError(Exception):
    """A request failed with an NTSTATUS of severity ERROR.

    `status` is the numeric code. Catch this class for any failure the system reports; catch a
    subclass for one cause. Errors in the caller's use of the API (a bad argument type, using a
    closed object) are ordinary `TypeError`/`ValueError`, not this.
    """

    status: int = NtStatus.STATUS_UNSUCCESSFUL

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        if status is not None:
            self.status = status
        super().__init__(message or status_name(self.status))

    def __str__(self) -> str:
        text = super().__str__()
        name = status_name(self.status)
        return text if name in text else f"{text} [{name}]"


class Unsuccessful(NtStatusError):
    """STATUS_UNSUCCESSFUL: the driver failed for a reason it does not name more precisely."""

    status = NtStatus.STATUS_UNSUCCESSFUL


class NotImplementedStatus(NtStatusError):
    """STATUS_NOT_IMPLEMENTED: the major function exists in NT but this driver does not serve it."""

    status = NtStatus.STATUS_NOT_IMPLEMENTED


class InvalidHandle(NtStatusError):
    """STATUS_INVALID_HANDLE: the handle was closed, or the request came before CREATE."""

    status = NtStatus.STATUS_INVALID_HANDLE


class InvalidParameter(NtStatusError):
    """STATUS_INVALID_PARAMETER: a field of the request is out of range or inconsistent."""

    status = NtStatus.STATUS_INVALID_PARAMETER


class InvalidDeviceRequest(NtStatusError):
    """STATUS_INVALID_DEVICE_REQUEST: an IOCTL code or major function the driver does not know."""

    status = NtStatus.STATUS_INVALID_DEVICE_REQUEST


class AccessDenied(NtStatusError):
    """STATUS_ACCESS_DENIED: the peer's uid/gid may not open the device, or the handle lacks the
    access bits the IOCTL code requires."""

    status = NtStatus.STATUS_ACCESS_DENIED


class BufferTooSmall(NtStatusError):
    """STATUS_BUFFER_TOO_SMALL: the output buffer cannot hold any useful answer."""

    status = NtStatus.STATUS_BUFFER_TOO_SMALL


class ObjectNameInvalid(NtStatusError):
    """STATUS_OBJECT_NAME_INVALID: a name (of a section, say) breaks the naming rules."""

    status = NtStatus.STATUS_OBJECT_NAME_INVALID


class ObjectNameNotFound(NtStatusError):
    """STATUS_OBJECT_NAME_NOT_FOUND: nothing of that name exists (a section, or the device)."""

    status = NtStatus.STATUS_OBJECT_NAME_NOT_FOUND


class DeviceNotFound(ObjectNameNotFound):
    """STATUS_OBJECT_NAME_NOT_FOUND for the device itself: no driver listens at its path.

    Raised by the client when it cannot connect; a name the driver does not know arrives as
    the base class, so `except DeviceNotFound` means "no driver" and nothing else."""


class ObjectNameCollision(NtStatusError):
    """STATUS_OBJECT_NAME_COLLISION: a live object of that name exists already."""

    status = NtStatus.STATUS_OBJECT_NAME_COLLISION


class SectionTooBig(NtStatusError):
    """STATUS_SECTION_TOO_BIG: the section asked for is larger than the driver allows."""

    status = NtStatus.STATUS_SECTION_TOO_BIG


class QuotaExceeded(NtStatusError):
    """STATUS_QUOTA_EXCEEDED: a per-uid or overall limit of the driver is reached."""

    status = NtStatus.STATUS_QUOTA_EXCEEDED


class RevisionMismatch(NtStatusError):
    """STATUS_REVISION_MISMATCH: the peer speaks another wire-protocol or page-ABI version."""

    status = NtStatus.STATUS_REVISION_MISMATCH


class InsufficientResources(NtStatusError):
    """STATUS_INSUFFICIENT_RESOURCES: the driver could not allocate the page, fd or mapping."""

    status = NtStatus.STATUS_INSUFFICIENT_RESOURCES


class DeviceNotConnected(NtStatusError):
    """STATUS_DEVICE_NOT_CONNECTED: the driver went away (stopped, killed) under an open handle."""

    status = NtStatus.STATUS_DEVICE_NOT_CONNECTED


class IoTimeout(NtStatusError, TimeoutError):
    """STATUS_IO_TIMEOUT: the driver did not answer, or no tick came, within the timeout.

    Also a `TimeoutError`, so code that bounds any wait with `except TimeoutError` catches it."""

    status = NtStatus.STATUS_IO_TIMEOUT


class TooManyOpenedFiles(NtStatusError):
    """STATUS_TOO_MANY_OPENED_FILES: the driver's handle limit (overall or per uid) is reached."""

    status = NtStatus.STATUS_TOO_MANY_OPENED_FILES


class DeviceConfigurationError(NtStatusError):
    """STATUS_DEVICE_CONFIGURATION_ERROR: the device could not be created (bad path, in use)."""

    status = NtStatus.STATUS_DEVICE_CONFIGURATION_ERROR


class InvalidDeviceState(NtStatusError):
    """STATUS_INVALID_DEVICE_STATE: a request out of order (a second CREATE, anything after
    CLEANUP), or a driver that is unloading."""

    status = NtStatus.STATUS_INVALID_DEVICE_STATE


class UntrustedDevice(NtStatusError):
    """STATUS_TRUST_FAILURE: the client refused what answered at the device's path.

    Raised before any of it is used: the listening process is not root, this user or a uid the
    caller named as trusted (SO_PEERCRED); the socket's directory could be replaced by another
    user; the page fd lacks the ABI's seals or size; the tick fd is not a channel, a pipe or an eventfd.
    Whoever can create files in a shared directory can serve a fake driver there, so none of
    these is taken on trust."""

    status = NtStatus.STATUS_TRUST_FAILURE


_EXCEPTIONS: dict[int, type[NtStatusError]] = {
    cls.status: cls
    for cls in (
        Unsuccessful,
        NotImplementedStatus,
        InvalidHandle,
        InvalidParameter,
        InvalidDeviceRequest,
        AccessDenied,
        BufferTooSmall,
        ObjectNameInvalid,
        ObjectNameNotFound,
        ObjectNameCollision,
        SectionTooBig,
        QuotaExceeded,
        RevisionMismatch,
        InsufficientResources,
        DeviceNotConnected,
        IoTimeout,
        TooManyOpenedFiles,
        UntrustedDevice,
        DeviceConfigurationError,
        InvalidDeviceState,
    )
}


def exception_for(status: int, message: str = "") -> NtStatusError:
    """The typed exception for an error status; unknown error codes give a plain NtStatusError."""
    cls = _EXCEPTIONS.get(status)
    if cls is None:
        return NtStatusError(message, status=status)
    return cls(message)


def raise_for_status(status: int, message: str = "") -> None:
    """Raise the typed exception when `status` is an error; success and warnings return."""
    if is_error(status):
        raise exception_for(status, message)
