"""NTSTATUS codes and their typed exceptions."""

from __future__ import annotations

import pytest

import sharingmemory
from sharingmemory._defs.status import NtStatus, exception_for, is_error, raise_for_status, status_name

SEED_VALUES = {
    "STATUS_SUCCESS": 0x00000000,
    "STATUS_UNSUCCESSFUL": 0xC0000001,
    "STATUS_INVALID_HANDLE": 0xC0000008,
    "STATUS_INVALID_PARAMETER": 0xC000000D,
    "STATUS_INVALID_DEVICE_REQUEST": 0xC0000010,
    "STATUS_ACCESS_DENIED": 0xC0000022,
    "STATUS_BUFFER_TOO_SMALL": 0xC0000023,
    "STATUS_INSUFFICIENT_RESOURCES": 0xC000009A,
    "STATUS_DEVICE_CONFIGURATION_ERROR": 0xC0000182,
    "STATUS_BUFFER_OVERFLOW": 0x80000005,
}


@pytest.mark.parametrize(("name", "value"), SEED_VALUES.items())
def test_codes_have_their_windows_values(name: str, value: int) -> None:
    assert NtStatus[name] == value


def test_every_error_code_has_its_own_exception_class() -> None:
    for status in NtStatus:
        if not status.is_error:
            continue
        error = exception_for(status)
        assert isinstance(error, sharingmemory.NtStatusError)
        assert error.status == status
        assert type(error) is not sharingmemory.NtStatusError, status.name


def test_severity_decides_what_raises() -> None:
    raise_for_status(NtStatus.STATUS_SUCCESS)
    raise_for_status(NtStatus.STATUS_BUFFER_OVERFLOW)  # a warning comes with data, it does not raise
    with pytest.raises(sharingmemory.BufferTooSmall):
        raise_for_status(NtStatus.STATUS_BUFFER_TOO_SMALL)
    assert not is_error(0x80000005)
    assert is_error(0xC0000001)


def test_unknown_error_codes_still_raise_the_base_class() -> None:
    error = exception_for(0xC0DE0001, "odd")
    assert type(error) is sharingmemory.NtStatusError
    assert error.status == 0xC0DE0001
    assert "0xC0DE0001" in str(error)


def test_messages_name_the_status() -> None:
    assert str(sharingmemory.AccessDenied("uid 1000 may not open")) == (
        "uid 1000 may not open [STATUS_ACCESS_DENIED (0xC0000022)]"
    )
    assert status_name(0xC0000023) == "STATUS_BUFFER_TOO_SMALL (0xC0000023)"


def test_io_timeout_is_a_timeout_error() -> None:
    """One kind for every timeout: `except TimeoutError` catches the library's too."""
    error = exception_for(NtStatus.STATUS_IO_TIMEOUT, "slow")
    assert isinstance(error, sharingmemory.IoTimeout)
    assert isinstance(error, TimeoutError)
    assert not isinstance(sharingmemory.DeviceNotConnected(), TimeoutError)
