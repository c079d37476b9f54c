"""A publish is visible before its wake-up is made, so a wake that fails (ENOSYS: a machine whose
futex number the library does not know, or any other OSError) leaves the publish standing: no
exception from `publish()`, the update counted, readers see it, a waiter gets it by its slice."""

from __future__ import annotations

import errno

import pytest

import sharingmemory
from sharingmemory._sys import libc
from tests.support import DriverProcess


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EFAULT, errno.EINVAL])
def test_a_failed_wake_does_not_fail_the_publish(
    driver: DriverProcess, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    fields = [sharingmemory.Field("x", "f64")]
    with driver.open("rw") as producer, driver.open() as reader_device:
        section = producer.create_section("wakeless", fields)
        reader = reader_device.open_section("wakeless")
        with pytest.raises(sharingmemory.IoTimeout):
            reader.wait_next(timeout=0.01)  # registered: the driver counts it in `waiters`

        def failing(address: int, count: int = 0x7FFFFFFF) -> int:
            raise OSError(code, "no wake")

        monkeypatch.setattr(libc, "futex_wake", failing)
        assert section.publish(x=1.5) == 1
        assert section.publish(x=2.5) == 2
        assert reader.read().x == 2.5
        assert reader.wait_next(timeout=5).updates == 2  # newer than its last wait, no wake needed
