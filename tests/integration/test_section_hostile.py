"""A producer may write anything into its own section: its readers get typed errors or values,
never a crash or a spin, and the driver (which keeps its own copy of the schema) goes on."""

from __future__ import annotations

import struct

import pytest

import sharingmemory
from tests.section_programs import FIELDS, values
from tests.support import DriverProcess

# (offset, struct format, value): what a hostile producer scribbles over its header.
SCRIBBLES = {
    "magic": (0, "4s", b"EVIL"),
    "major": (4, "H", 7),
    "total-size": (8, "I", 1 << 30),
    "schema-offset": (52, "I", 0xFFFFFF00),
    "schema-size": (56, "I", 0xFFFFFFFF),
    "field-count": (48, "I", 0xFFFFFFFF),
    "entry-size": (60, "I", 3),
    "data-offset": (64, "I", 4095),
    "data-size": (68, "I", 1 << 20),
    "name": (80, "8s", b"../../x\0"),
    "string-offset": (144 + 12, "I", 0xFFFFFFF0),  # the first field's name offset
    "value-offset": (144 + 8, "I", 4000),  # the first field's value, outside the copy
    "type": (144, "H", 8),  # the first field (an i64) claims to be a str of length 8
}


@pytest.mark.parametrize(("offset", "fmt", "value"), SCRIBBLES.values(), ids=SCRIBBLES.keys())
def test_scribbled_headers(driver: DriverProcess, offset: int, fmt: str, value: object) -> None:
    with driver.open("rw") as producer, driver.open() as old_device, driver.open() as new_device:
        section = producer.create_section("hostile", FIELDS)
        section.publish(**values(3))
        old = old_device.open_section("hostile")
        mapping = section._map
        assert mapping is not None
        struct.pack_into("<" + fmt, mapping, offset, value)
        section.publish(**values(4))
        try:
            new = new_device.open_section("hostile")
        except sharingmemory.SectionFormatError:
            pass  # refused, typed (a RevisionMismatch, an NtStatusError)
        else:
            new.read()  # or accepted, when the scribble is still a valid section: values, no crash
        assert old.read().as_dict() == values(4)  # old readers keep the layout they checked
        (info,) = producer.list_sections()
        assert (info.name, info.fields, info.updates) == ("hostile", FIELDS, 2)  # the driver's own schema
    assert driver.status().handles == 1


def test_a_forged_state_or_seq_neither_crashes_nor_spins(driver: DriverProcess) -> None:
    with driver.open("rw") as producer, driver.open() as reader_device:
        section = producer.create_section("hostile", FIELDS)
        section.publish(**values(1))
        reader = reader_device.open_section("hostile")
        mapping = section._map
        assert mapping is not None
        struct.pack_into("<I", mapping, 16, 99)  # a state no reader knows reads as stopped
        struct.pack_into("<Q", mapping, 72, 2**64 - 1)  # seq odd and huge
        assert reader.read().state == "stopped"
        assert reader.wait_next(timeout=5).state == "stopped"  # returns at once: nothing to wait for
        copy = struct.unpack_from("<I", mapping, 64)[0]
        mapping[copy : copy + 16] = b"\xff" * 16  # updates and published_ns of copy 0 garbage
        assert isinstance(reader.read().updates, int)
        assert [s.name for s in producer.list_sections()] == ["hostile"]
