"""Random and mutated payloads to every section IOCTL, on the wire: each gets a status, the
driver goes on, and whatever it created for a garbage request is gone with the handle."""

from __future__ import annotations

import os
import random

from sharingmemory._defs import (
    IOCTL_CLOSE_SECTION,
    IOCTL_CREATE_SECTION,
    IOCTL_LIST_SECTIONS,
    IOCTL_OPEN_SECTION,
    IOCTL_SEAL_SECTION,
    IOCTL_WAIT_SECTION,
    CreateRequest,
    Field,
    encode_create,
)
from sharingmemory._defs.protocol import MajorFunction
from tests.support import DriverProcess, RawConnection

CODES = (IOCTL_CREATE_SECTION, IOCTL_SEAL_SECTION, IOCTL_CLOSE_SECTION, IOCTL_OPEN_SECTION, IOCTL_LIST_SECTIONS,
         IOCTL_WAIT_SECTION)  # fmt: skip
VALID = encode_create(CreateRequest("fuzz", (Field("a", "f64"), Field("s", "str", length=5, unit="u", doc="d"))))


def _payload(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        data = bytearray(VALID)
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(len(data))
            data[where] = rng.randrange(256)
        return bytes(data[: rng.randint(0, len(data))] if rng.random() < 0.2 else data)
    return rng.randbytes(rng.randint(0, 300))


def test_fuzzed_section_requests(driver: DriverProcess) -> None:
    rng = random.Random(11)
    created = 0
    with RawConnection(driver.socket_path) as raw:
        assert raw.request(MajorFunction.IRP_MJ_CREATE, 3) is not None  # read and write access
        for _ in range(3000):
            code = rng.choice(CODES)
            reply = raw.request(MajorFunction.IRP_MJ_DEVICE_CONTROL, code, rng.choice((0, 31, 32, 4096)), _payload(rng))
            assert reply is not None, driver.log()[-2000:]
            created += code == IOCTL_CREATE_SECTION and reply.status == 0
            assert reply.status == 0 or reply.status >= 0x80000000
            for fd in raw.fds:
                os.close(fd)
            raw.fds.clear()
    assert created > 0  # mutations also reached the allocation path
    with driver.open() as device:
        assert device.list_sections() == []  # the fuzzing handle's sections went with it
    assert driver.process.poll() is None
    assert "Traceback" not in driver.log()
