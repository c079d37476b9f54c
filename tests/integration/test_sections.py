"""Sections end to end: real driver, real producer processes, real readers (issue 11).

Producers run as separate processes (`tests.section_programs`), so closing, dying and SIGKILL
are the kernel's, seen by the driver as a hang-up.
"""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory._defs import IOCTL_CREATE_SECTION, CreateRequest, encode_create
from sharingmemory._defs.section import ENTRY_SIZE
from tests.section_programs import FIELDS, values
from tests.support import DriverProcess, start_driver, wait_for

ROOT = Path(__file__).resolve().parents[2]


class Producer:
    """A `tests.section_programs produce` process: publishes one update at start, then one per
    JSON line written to it."""

    def __init__(self, driver: DriverProcess, name: str = "sensors.cpu", command: str = "produce") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.section_programs", command, driver.socket_path, name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        assert line[:1] == ["ready"], line
        self.instance_id = bytes.fromhex(line[1])

    def publish(self, **fields: object) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(fields) + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "published"

    def close(self) -> int:
        if self.process.stdin is not None:
            self.process.stdin.close()
        code = self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.close()


@pytest.fixture
def producer(driver: DriverProcess) -> Iterator[Producer]:
    made = Producer(driver)
    yield made
    made.kill()


def test_a_producer_process_publishes_and_readers_read(driver: DriverProcess, producer: Producer) -> None:
    with driver.open() as device:
        section = device.open_section("sensors.cpu")
        assert section.fields == FIELDS
        assert section.instance_id == producer.instance_id
        assert section.producer_pid == producer.process.pid
        snap = section.read()
        assert snap.as_dict() == values(1)
        assert (snap.a, snap["b"], snap.s, snap.odd, snap.updates, snap.state) == (1, -1.0, "1", True, 1, "running")
        assert snap.published_ns > 0
        (info,) = device.list_sections()
        assert (info.name, info.fields, info.producer_pid, info.producer_uid, info.state, info.updates) == (
            "sensors.cpu", FIELDS, producer.process.pid, 0, "running", 1,
        )  # fmt: skip
        producer.publish(a=5)  # a subset: the others keep their values
        assert section.read().as_dict() == {**values(1), "a": 5}
        with pytest.raises(KeyError):
            snap["nosuch"]
        with pytest.raises(AttributeError):
            _ = snap.nosuch


def test_fields_read_zero_until_the_first_publish(driver: DriverProcess) -> None:
    with driver.open("rw") as producer, driver.open() as reader:
        producer.create_section("fresh", FIELDS)
        snap = reader.open_section("fresh").read()
        assert (snap.updates, snap.a, snap.b, snap.s, snap.odd) == (0, 0, 0.0, "", False)


def test_wait_next_and_next_update_see_the_next_publish(driver: DriverProcess, producer: Producer) -> None:
    with driver.open() as device:
        section = device.open_section("sensors.cpu")
        with pytest.raises(sharingmemory.IoTimeout):
            section.wait_next(timeout=0.05)
        publisher = threading.Timer(0.1, producer.publish, kwargs={"a": 7})
        publisher.start()
        snap = section.wait_next(timeout=30)
        publisher.join()
        assert (snap.a, snap.updates) == (7, 2)

        async def next_one() -> sharingmemory.Snapshot:
            task = asyncio.ensure_future(section.next_update())
            await asyncio.sleep(0.05)
            await asyncio.to_thread(producer.publish, a=8)
            async with asyncio.timeout(30):
                return await task

        assert asyncio.run(next_one()).a == 8


@pytest.mark.parametrize("how", ["close", "sigkill"])
def test_the_producer_going_stops_the_section_and_wakes_every_waiter(driver: DriverProcess, how: str) -> None:
    producer = Producer(driver)
    producer.publish(a=42)
    devices = [driver.open() for _ in range(3)]
    sections = [d.open_section("sensors.cpu") for d in devices]
    results: list[sharingmemory.Snapshot] = []
    waiters = [threading.Thread(target=lambda s=s: results.append(s.wait_next(timeout=60))) for s in sections]
    for waiter in waiters:
        waiter.start()
    assert wait_for(lambda: _waiters(driver) == 3)
    producer.kill() if how == "sigkill" else producer.close()
    for waiter in waiters:
        waiter.join(60)
    assert [(r.state, r.a, r.updates) for r in results] == [("stopped", 42, 2)] * 3
    assert all(s.state == "stopped" and s.read().as_dict() == {**values(1), "a": 42} for s in sections)
    # The name is free at once; old readers tell the new section apart by its instance_id.
    again = Producer(driver)
    with driver.open() as device:
        new = device.open_section("sensors.cpu")
        assert new.instance_id == again.instance_id != sections[0].instance_id
        assert new.read().a == 1 and new.state == "running"
    assert sections[0].read().a == 42
    again.kill()
    for device in devices:
        device.close()


def _waiters(driver: DriverProcess) -> int:
    with driver.open() as device:
        section = device.open_section("sensors.cpu")
        assert isinstance(section, sharingmemory.Section)
        mapping = section._map
        assert mapping is not None
        return int(struct.unpack_from("<I", mapping, 20)[0])


def test_a_stopped_section_keeps_its_mapping_after_the_driver_goes(tmp_path: Path) -> None:
    with start_driver(tmp_path) as driver:
        producer = Producer(driver)
        device = driver.open()
        section = device.open_section("sensors.cpu")
        driver.terminate()
        assert wait_for(lambda: section.state == "stopped")
        assert section.read().as_dict() == values(1)
        producer.kill()
        device.close()


@pytest.mark.parametrize("name", ["", "/", "a/b", "..", "a..b", "../x", "a\0b", "x" * 65, ".x", "-x", "é", "a b"])
def test_invalid_names_get_object_name_invalid(driver: DriverProcess, name: str) -> None:
    with driver.open("rw") as device:
        with pytest.raises(sharingmemory.ObjectNameInvalid):
            device.create_section(name, FIELDS)
        with pytest.raises(sharingmemory.ObjectNameInvalid) as raised:
            device.open_section(name)
        assert raised.value.status == 0xC0000033


def test_collision_and_not_found(driver: DriverProcess, producer: Producer) -> None:
    with driver.open("rw") as device:
        with pytest.raises(sharingmemory.ObjectNameCollision) as collision:
            device.create_section("sensors.cpu", FIELDS)
        assert collision.value.status == 0xC0000035
        with pytest.raises(sharingmemory.ObjectNameCollision):
            device.create_section("time", FIELDS)
        with pytest.raises(sharingmemory.ObjectNameNotFound) as missing:
            device.open_section("sensors.gpu")
        assert missing.value.status == 0xC0000034
        assert not isinstance(missing.value, sharingmemory.DeviceNotFound)


def test_a_read_only_handle_is_refused_by_the_driver(driver: DriverProcess) -> None:
    with driver.open("r") as device, pytest.raises(sharingmemory.AccessDenied, match="IRP_MJ_DEVICE_CONTROL"):
        device.create_section("x", FIELDS)


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [sharingmemory.Field("a", "f64"), sharingmemory.Field("a", "u32")],
        [sharingmemory.Field(f"f{i}", "u32") for i in range(3000)],
    ],
    ids=["zero", "duplicate", "thousands"],
)
def test_hostile_schemas_are_value_errors_in_the_library(driver: DriverProcess, fields: list[object]) -> None:
    with driver.open("rw") as device, pytest.raises(ValueError, match="field"):
        device.create_section("x", fields)  # type: ignore[arg-type]


def _patched(offset_in_schema: int, fmt: str, value: object, fields: tuple[sharingmemory.Field, ...] = FIELDS) -> bytes:
    data = bytearray(encode_create(CreateRequest("x", fields)))
    struct.pack_into("<" + fmt, data, 16 + 1 + offset_in_schema, value)  # header, the name "x", then the schema
    return bytes(data)


def _renamed_second_field() -> bytes:
    data = bytearray(
        encode_create(CreateRequest("x", (sharingmemory.Field("aa", "f64"), sharingmemory.Field("ab", "f64"))))
    )
    at = data.index(b"ab\0")
    data[at : at + 2] = b"aa"
    return bytes(data)


HOSTILE_REQUESTS = {
    "duplicate-names": _renamed_second_field(),
    "zero-fields": _patched(-5, "I", 0),  # field_count in the request header
    "thousands-of-fields": _patched(-5, "I", 3000),
    "str-too-long": _patched(2 * ENTRY_SIZE + 4, "I", 5000),
    "str-length-zero": _patched(2 * ENTRY_SIZE + 4, "I", 0),
    "unknown-type": _patched(0, "H", 99),
    "empty-field-name": _patched(24, "H", 0),
    "name-out-of-table": _patched(12, "I", 10**6),
    "misaligned-value": _patched(ENTRY_SIZE + 8, "I", 25),
    "truncated": encode_create(CreateRequest("x", FIELDS))[:-3],
}


@pytest.mark.parametrize("data", HOSTILE_REQUESTS.values(), ids=HOSTILE_REQUESTS.keys())
def test_hostile_create_requests_get_a_status_and_the_driver_goes_on(driver: DriverProcess, data: bytes) -> None:
    with driver.open("rw") as device:
        with pytest.raises(sharingmemory.NtStatusError) as raised:
            device.device_io_control(IOCTL_CREATE_SECTION, data, 64)
        assert raised.value.status in {0xC000000D, 0xC0000040}  # INVALID_PARAMETER, SECTION_TOO_BIG
        assert device.list_sections() == []
    assert driver.status().handles == 1  # the driver still serves, and holds nothing of it


@pytest.mark.parametrize("name", ["/", "..", "a\0", "x" * 65, "a/../b"])
def test_hostile_names_on_the_wire(driver: DriverProcess, name: str) -> None:
    good = encode_create(CreateRequest("y", FIELDS))
    raw = name.encode()
    data = good[:2] + struct.pack("<H", len(raw)) + good[4:16] + raw + good[17:]
    with driver.open("rw") as device, pytest.raises(sharingmemory.ObjectNameInvalid):
        device.device_io_control(IOCTL_CREATE_SECTION, data, 64)


def test_limits_from_serve(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    options = ("--max-section-size", "4096", "--max-section-fields", "3", "--max-sections", "2")
    with start_driver(tmp_path / "a", *options, "--max-sections-per-uid", "5") as driver, driver.open("rw") as device:
        with pytest.raises(sharingmemory.SectionTooBig):
            device.create_section("big", [sharingmemory.Field("s", "str", length=4000)])
        with pytest.raises(sharingmemory.SectionTooBig):
            device.create_section("wide", [sharingmemory.Field(f"f{i}", "u32") for i in range(4)])
        device.create_section("one", FIELDS[:3])
        device.create_section("two", FIELDS[:3])
        with pytest.raises(sharingmemory.QuotaExceeded):
            device.create_section("three", FIELDS[:3])
    with start_driver(tmp_path / "b", "--max-sections-per-uid", "1") as driver, driver.open("rw") as device:
        device.create_section("one", FIELDS)
        with pytest.raises(sharingmemory.QuotaExceeded) as raised:
            device.create_section("two", FIELDS)
        assert raised.value.status == 0xC0000044


def test_the_time_section_is_the_seeds_page(driver: DriverProcess) -> None:
    with driver.open() as device:
        section = device.open_section("time")
        assert [f.name for f in section.fields][:2] == ["local_time", "system_time"]
        snap = section.read()
        assert snap.tick_count >= 1 and snap.state == "running" and snap.writer_pid == driver.pid
        assert snap.local_time == device.map_shared_memory().read().local_time or snap.tick_count >= 1
        assert section.instance_id == device.map_shared_memory().read().instance_id
        assert section.wait_next(timeout=30).tick_count > snap.tick_count


def test_publish_refuses_bad_values_and_closed_sections(driver: DriverProcess) -> None:
    with driver.open("rw") as device, driver.open() as reader_device:
        section = device.create_section("values", FIELDS)
        section.publish(**values(3))
        reader = reader_device.open_section("values")
        for bad in ({"a": 2**63}, {"a": "1"}, {"b": "x"}, {"s": "x" * 25}, {"odd": 1}, {"nosuch": 1}):
            with pytest.raises(ValueError, match=r"\w"):
                section.publish(**{"s": "9", **bad})
        assert reader.read().as_dict() == values(3)
        section.close()
        assert reader.state == "stopped"
        with pytest.raises(ValueError, match="not open"):
            section.publish(a=1)
        device.create_section("values", FIELDS)  # free again after close()


def test_sections_leak_no_fds_and_the_driver_frees_them(driver: DriverProcess, no_fd_leak: None) -> None:
    before = len(driver.fds())
    for _ in range(20):
        with driver.open("rw") as device, driver.open() as reader:
            section = device.create_section("churn", FIELDS)
            section.publish(**values(1))
            reader.open_section("churn").read()
    assert wait_for(lambda: len(driver.fds()) <= before)
    assert not driver.memfd_mappings() or all("section:" not in line for line in driver.memfd_mappings())


def test_a_waiter_notices_a_driver_killed_without_a_word(tmp_path: Path) -> None:
    """SIGKILL of the driver writes no state=stopped: the bounded futex sleeps look at the device
    socket between them, so the waiter ends with DeviceNotConnected instead of waiting for ever."""
    with start_driver(tmp_path) as driver:
        producer = Producer(driver)
        device = driver.open()
        section = device.open_section("sensors.cpu")
        outcome: list[BaseException] = []

        def wait() -> None:
            try:
                section.wait_next(timeout=60)
            except BaseException as err:
                outcome.append(err)

        waiter = threading.Thread(target=wait)
        waiter.start()
        assert wait_for(lambda: _waiters(driver) == 1)
        driver.process.send_signal(signal.SIGKILL)
        waiter.join(60)
        assert len(outcome) == 1 and isinstance(outcome[0], sharingmemory.DeviceNotConnected), outcome
        assert section.read().as_dict() == values(1)  # the mapping is still there
        producer.kill()
        device.close()
