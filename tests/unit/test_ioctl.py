"""CTL_CODE and its inverse, against the values winioctl.h gives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sharingmemory
from sharingmemory import CTL_CODE
from sharingmemory._defs.ioctl import FILE_READ_DATA, FILE_WRITE_ACCESS, FILE_WRITE_DATA, required_access
from sharingmemory.winioctl import FILE_DEVICE_UNKNOWN, FILE_READ_ACCESS, METHOD_BUFFERED, split_ctl_code


def test_the_seeds_code() -> None:
    assert sharingmemory.IOCTL_GIVE_ME_YOUR_MEMORY == 0x00226000
    assert CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS) == 0x00226000
    assert sharingmemory.IOCTL_QUERY_STATUS == 0x00226004


def test_known_windows_codes() -> None:
    # IOCTL_DISK_GET_DRIVE_GEOMETRY = CTL_CODE(IOCTL_DISK_BASE=7, 0, METHOD_BUFFERED, FILE_ANY_ACCESS)
    assert CTL_CODE(0x7, 0, 0, 0) == 0x00070000
    # FSCTL_GET_REPARSE_POINT = CTL_CODE(FILE_DEVICE_FILE_SYSTEM=9, 42, METHOD_BUFFERED, FILE_ANY_ACCESS)
    assert CTL_CODE(0x9, 42, 0, 0) == 0x000900A8


@given(st.integers(0, 0xFFFFFFFF))
def test_split_is_the_inverse_of_ctl_code(code: int) -> None:
    assert CTL_CODE(*split_ctl_code(code)) == code


@pytest.mark.parametrize("fields", [(0x10000, 0, 0, 0), (0, 0x1000, 0, 0), (0, 0, 4, 0), (0, 0, 0, 4), (-1, 0, 0, 0)])
def test_fields_out_of_range_are_refused(fields: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError, match=r"does not fit|not one of|not a combination"):
        CTL_CODE(*fields)


def test_required_access_follows_the_code_bits() -> None:
    assert required_access(sharingmemory.IOCTL_GIVE_ME_YOUR_MEMORY) == FILE_READ_DATA
    both = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x900, METHOD_BUFFERED, FILE_READ_ACCESS | FILE_WRITE_ACCESS)
    assert required_access(both) == FILE_READ_DATA | FILE_WRITE_DATA
    assert required_access(CTL_CODE(FILE_DEVICE_UNKNOWN, 0x900, METHOD_BUFFERED, 0)) == 0
