"""The driver's sections without sockets: create, seal, open, list, wait, limits, and stop.

Real memfds and mappings (the driver layer owns them), driven through `Driver.dispatch` as the
server would, so the access bits of the IOCTL codes are checked too.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterator

import pytest

from sharingmemory._defs import (
    FILE_READ_DATA,
    FILE_WRITE_DATA,
    IOCTL_CLOSE_SECTION,
    IOCTL_CREATE_SECTION,
    IOCTL_LIST_SECTIONS,
    IOCTL_OPEN_SECTION,
    IOCTL_SEAL_SECTION,
    IOCTL_WAIT_SECTION,
    SECTION_REPLY,
    CreateRequest,
    Field,
    SectionState,
    decode_header,
    decode_list,
    encode_create,
)
from sharingmemory._defs.protocol import MajorFunction, Request
from sharingmemory._defs.section import SEQ_OFFSET, read_state, read_waiters
from sharingmemory._defs.status import NtStatus
from sharingmemory._driver import ProducerPolicy, SectionLimits
from sharingmemory._driver.driver import AccessPolicy, Completion, Credentials, Driver, DriverConfig, Handle

PRODUCER = Credentials(pid=100, uid=1000, gid=1000)
READER = Credentials(pid=200, uid=2000, gid=2000)
STRANGER = Credentials(pid=300, uid=3000, gid=3000)
FIELDS = (Field("load", "f64"), Field("name", "str", length=8))


@pytest.fixture
def driver() -> Iterator[Driver]:
    config = DriverConfig(
        policy=AccessPolicy(uids=frozenset(range(1000, 5000))),
        producer_policy=ProducerPolicy(uids=frozenset({1000}), gids=frozenset({1500})),
        section_limits=SectionLimits(max_section_size=8192, max_fields=8, max_sections=4, max_sections_per_uid=3),
    )
    drv = Driver(config)
    yield drv
    drv.unload()


def _open(drv: Driver, cred: Credentials, access: int = FILE_READ_DATA | FILE_WRITE_DATA) -> Handle:
    handle = drv.connect(cred)
    assert drv.dispatch(handle, Request(MajorFunction.IRP_MJ_CREATE, 1, access)).status == NtStatus.STATUS_SUCCESS
    return handle


def _ioctl(drv: Driver, handle: Handle, code: int, data: bytes = b"", out: int = 64) -> Completion:
    return drv.dispatch(handle, Request(MajorFunction.IRP_MJ_DEVICE_CONTROL, 2, code, out, data))


def _create(drv: Driver, handle: Handle, name: str = "sensors.cpu", **kw: tuple[int, ...]) -> Completion:
    request = CreateRequest(name, FIELDS, kw.get("uids", ()), kw.get("gids", ()))
    return _ioctl(drv, handle, IOCTL_CREATE_SECTION, encode_create(request), 64)


class Produced:
    """A created section as its producer holds it: the reply, the writable mapping."""

    def __init__(self, completion: Completion) -> None:
        assert completion.status == NtStatus.STATUS_SUCCESS, hex(completion.status)
        assert completion.fd is not None
        self.instance_id, self.size, self.section_id, _pid, _uid = SECTION_REPLY.unpack(completion.output)
        self.fd = completion.fd
        self.map = mmap.mmap(self.fd.fileno(), self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    @property
    def id_bytes(self) -> bytes:
        return struct.pack("<I", self.section_id)

    def close(self) -> None:
        self.map.close()
        self.fd.close()


def _produce(drv: Driver, handle: Handle, name: str = "sensors.cpu") -> Produced:
    produced = Produced(_create(drv, handle, name))
    assert _ioctl(drv, handle, IOCTL_SEAL_SECTION, produced.id_bytes).status == NtStatus.STATUS_SUCCESS
    return produced


def test_create_seal_open(driver: Driver) -> None:
    producer = _open(driver, PRODUCER)
    produced = Produced(_create(driver, producer))
    assert read_state(produced.map) == 0  # initializing until sealed
    reader = _open(driver, READER, FILE_READ_DATA)
    assert (
        _ioctl(driver, reader, IOCTL_OPEN_SECTION, b"sensors.cpu", 64).status == NtStatus.STATUS_OBJECT_NAME_NOT_FOUND
    )
    assert _ioctl(driver, producer, IOCTL_SEAL_SECTION, produced.id_bytes).status == NtStatus.STATUS_SUCCESS
    assert read_state(produced.map) == 1
    produced.map[200] = 7  # the producer's mapping made before the seal still writes
    assert _ioctl(driver, reader, IOCTL_OPEN_SECTION, b"sensors.cpu", 31).status == NtStatus.STATUS_BUFFER_TOO_SMALL
    opened = _ioctl(driver, reader, IOCTL_OPEN_SECTION, b"sensors.cpu", 64)
    assert opened.status == NtStatus.STATUS_SUCCESS
    assert opened.fd is not None
    with opened.fd:
        assert decode_header(mmap.mmap(opened.fd.fileno(), produced.size, prot=mmap.PROT_READ)).name == "sensors.cpu"
        reader_fd, producer_fd = opened.fd.fileno(), produced.fd.fileno()
        for attack in (
            lambda: mmap.mmap(reader_fd, produced.size, mmap.MAP_SHARED, mmap.PROT_WRITE),
            lambda: _write_through_reopen(reader_fd),
            lambda: mmap.mmap(producer_fd, produced.size, mmap.MAP_SHARED, mmap.PROT_WRITE),
            lambda: _write_through_reopen(producer_fd),
            lambda: os.ftruncate(producer_fd, 2 * produced.size),
            lambda: os.ftruncate(producer_fd, 0),
        ):
            with pytest.raises(PermissionError):
                attack()
    produced.close()


def _write_through_reopen(fd: int) -> None:
    """Reopen the memfd for writing through /proc (its mode is 0777) and write: the seals refuse."""
    reopened = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
    try:
        os.write(reopened, b"x")
    finally:
        os.close(reopened)


def test_a_short_output_buffer_creates_nothing(driver: Driver) -> None:
    handle = _open(driver, PRODUCER)
    for length in (0, 31):
        request = encode_create(CreateRequest("short", FIELDS))
        reply = _ioctl(driver, handle, IOCTL_CREATE_SECTION, request, length)
        assert (reply.status, reply.fd, len(driver.sections)) == (NtStatus.STATUS_BUFFER_TOO_SMALL, None, 0)


def test_read_only_handles_cannot_create(driver: Driver) -> None:
    handle = _open(driver, PRODUCER, FILE_READ_DATA)
    assert _create(driver, handle).status == NtStatus.STATUS_ACCESS_DENIED


@pytest.mark.parametrize("cred", [READER, Credentials(1, 1000 + 1, 1000)], ids=["other-uid", "near-uid"])
def test_producers_outside_the_policy_are_refused(driver: Driver, cred: Credentials) -> None:
    assert _create(driver, _open(driver, cred)).status == NtStatus.STATUS_ACCESS_DENIED


def test_policy_by_gid_and_root(driver: Driver) -> None:
    for cred, name in ((Credentials(5, 4000, 1500), "by-gid"), (Credentials(6, 0, 0), "by-root")):
        Produced(_create(driver, _open(driver, cred), name)).close()


@pytest.mark.parametrize("name", ["", "/", "a/b", "..", "a..b", "a\0b", "x" * 65, ".x", "é"])
def test_invalid_names(driver: Driver, name: str) -> None:
    handle = _open(driver, PRODUCER)
    raw = bytearray(encode_create(CreateRequest("placeholder", FIELDS)))
    encoded = name.encode()
    struct.pack_into("<H", raw, 2, len(encoded))
    raw[16 : 16 + len("placeholder")] = encoded
    assert _ioctl(driver, handle, IOCTL_CREATE_SECTION, bytes(raw)).status == NtStatus.STATUS_OBJECT_NAME_INVALID
    assert _ioctl(driver, handle, IOCTL_OPEN_SECTION, encoded).status == NtStatus.STATUS_OBJECT_NAME_INVALID


def test_malformed_create_requests(driver: Driver) -> None:
    handle = _open(driver, PRODUCER)
    good = encode_create(CreateRequest("x", FIELDS))
    for data in (b"", good[:10], good[:-1], good + b"\0", b"\x02" + good[1:]):
        assert _ioctl(driver, handle, IOCTL_CREATE_SECTION, data).status == NtStatus.STATUS_INVALID_PARAMETER


def test_collision_and_the_builtin_name(driver: Driver) -> None:
    handle = _open(driver, PRODUCER)
    Produced(_create(driver, handle)).close()
    assert _create(driver, _open(driver, PRODUCER)).status == NtStatus.STATUS_OBJECT_NAME_COLLISION
    assert _create(driver, handle, "time").status == NtStatus.STATUS_OBJECT_NAME_COLLISION


def test_limits(driver: Driver) -> None:
    handle = _open(driver, PRODUCER)
    too_many = CreateRequest("f", tuple(Field(f"f{i}", "u32") for i in range(9)))
    assert (
        _ioctl(driver, handle, IOCTL_CREATE_SECTION, encode_create(too_many)).status == NtStatus.STATUS_SECTION_TOO_BIG
    )
    too_big = CreateRequest("b", (Field("s", "str", length=4096), Field("t", "str", length=1)))
    assert (
        _ioctl(driver, handle, IOCTL_CREATE_SECTION, encode_create(too_big)).status == NtStatus.STATUS_SECTION_TOO_BIG
    )
    for i in range(3):
        Produced(_create(driver, handle, f"s{i}")).close()
    assert _create(driver, handle, "s3").status == NtStatus.STATUS_QUOTA_EXCEEDED  # per uid
    Produced(_create(driver, _open(driver, Credentials(7, 0, 0)), "root1")).close()
    assert _create(driver, _open(driver, Credentials(8, 0, 0)), "root2").status == NtStatus.STATUS_QUOTA_EXCEEDED


def test_reader_lists(driver: Driver) -> None:
    producer = _open(driver, PRODUCER)
    produced = Produced(_create(driver, producer, "private", uids=(2000,), gids=(2500,)))
    _ioctl(driver, producer, IOCTL_SEAL_SECTION, produced.id_bytes)
    expected = {READER: 0, STRANGER: NtStatus.STATUS_ACCESS_DENIED, PRODUCER: 0, Credentials(9, 3001, 2500): 0}
    for cred, status in expected.items():
        reply = _ioctl(driver, _open(driver, cred, FILE_READ_DATA), IOCTL_OPEN_SECTION, b"private")
        assert reply.status == status, cred
        if reply.fd is not None:
            reply.fd.close()
    stranger_list = _ioctl(driver, _open(driver, STRANGER), IOCTL_LIST_SECTIONS, b"", 65536)
    assert decode_list(stranger_list.output) == (0, [])  # not even its name
    produced.close()


def test_a_producer_that_seals_first_is_refused(driver: Driver) -> None:
    handle = _open(driver, PRODUCER)
    produced = Produced(_create(driver, handle))
    fcntl.fcntl(produced.fd.fileno(), fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL)
    assert _ioctl(driver, handle, IOCTL_SEAL_SECTION, produced.id_bytes).status == NtStatus.STATUS_INVALID_DEVICE_STATE
    assert read_state(produced.map) == 2
    Produced(_create(driver, handle)).close()  # and the name is free again
    produced.close()


def test_a_producer_that_resizes_first_is_refused(driver: Driver) -> None:
    handle = _open(driver, PRODUCER)
    produced = Produced(_create(driver, handle))
    os.ftruncate(produced.fd.fileno(), produced.size * 2)
    assert _ioctl(driver, handle, IOCTL_SEAL_SECTION, produced.id_bytes).status == NtStatus.STATUS_INVALID_DEVICE_STATE
    produced.close()


def test_seal_and_close_need_the_owner(driver: Driver) -> None:
    producer = _open(driver, PRODUCER)
    produced = Produced(_create(driver, producer))
    other = _open(driver, PRODUCER)
    for code in (IOCTL_SEAL_SECTION, IOCTL_CLOSE_SECTION):
        assert _ioctl(driver, other, code, produced.id_bytes).status == NtStatus.STATUS_INVALID_PARAMETER
        assert _ioctl(driver, producer, code, b"\0").status == NtStatus.STATUS_INVALID_PARAMETER
    produced.close()


def test_the_producers_handle_going_stops_its_sections(driver: Driver) -> None:
    producer = _open(driver, PRODUCER)
    produced = _produce(driver, producer)
    reader = _open(driver, READER, FILE_READ_DATA)
    assert _ioctl(driver, reader, IOCTL_WAIT_SECTION, produced.instance_id).status == NtStatus.STATUS_SUCCESS
    assert read_waiters(produced.map) == 1
    seq = struct.unpack_from("<Q", produced.map, SEQ_OFFSET)[0]
    driver.disconnect(producer)  # the hang-up of a process that died
    assert read_state(produced.map) == 2
    assert struct.unpack_from("<Q", produced.map, SEQ_OFFSET)[0] == seq + 2
    assert _ioctl(driver, reader, IOCTL_OPEN_SECTION, b"sensors.cpu").status == NtStatus.STATUS_OBJECT_NAME_NOT_FOUND
    again = _produce(driver, _open(driver, PRODUCER))
    assert again.instance_id != produced.instance_id
    assert len(driver.sections) == 1
    produced.close()
    again.close()


def test_waiters_are_counted_once_and_forgotten(driver: Driver) -> None:
    produced = _produce(driver, _open(driver, PRODUCER))
    readers = [_open(driver, READER, FILE_READ_DATA) for _ in range(3)]
    for reader in [*readers, readers[0]]:
        _ioctl(driver, reader, IOCTL_WAIT_SECTION, produced.instance_id)
    assert read_waiters(produced.map) == 3
    driver.disconnect(readers[1])
    assert read_waiters(produced.map) == 2
    assert _ioctl(driver, readers[0], IOCTL_WAIT_SECTION, b"short").status == NtStatus.STATUS_INVALID_PARAMETER
    assert _ioctl(driver, readers[0], IOCTL_WAIT_SECTION, bytes(16)).status == NtStatus.STATUS_SUCCESS
    produced.close()


def test_list_pages_and_reports(driver: Driver) -> None:
    producer = _open(driver, PRODUCER)
    made = [_produce(driver, producer, f"s{i}") for i in range(3)]
    reader = _open(driver, READER, FILE_READ_DATA)
    assert _ioctl(driver, reader, IOCTL_LIST_SECTIONS, b"", 4).status == NtStatus.STATUS_BUFFER_TOO_SMALL
    names, first = [], 0
    while True:
        reply = _ioctl(driver, reader, IOCTL_LIST_SECTIONS, struct.pack("<I", first), 300)
        total, entries = decode_list(reply.output)
        assert total == 3
        names += [e.name for e in entries]
        first += len(entries)
        if first >= total:
            break
    assert names == ["s0", "s1", "s2"]
    _total, entries = decode_list(_ioctl(driver, reader, IOCTL_LIST_SECTIONS, b"", 65536).output)
    assert {(e.state, e.producer_uid, e.producer_pid, e.fields) for e in entries} == {
        (SectionState.RUNNING, 1000, 100, FIELDS)
    }
    for produced in made:
        produced.close()


def test_a_section_is_listed_only_once_it_can_be_opened(driver: Driver) -> None:
    """Listed means openable: a producer between its CREATE and its SEAL (or one whose section
    could not be sealed) shows nothing to readers, in the list as in OPEN."""
    producer = _open(driver, PRODUCER)
    reader = _open(driver, READER, FILE_READ_DATA)
    produced = Produced(_create(driver, producer))

    def listed() -> list[str]:
        completion = _ioctl(driver, reader, IOCTL_LIST_SECTIONS, b"", 4096)
        assert completion.status == NtStatus.STATUS_SUCCESS
        return [info.name for info in decode_list(completion.output)[1]]

    assert listed() == []
    assert _ioctl(driver, producer, IOCTL_SEAL_SECTION, produced.id_bytes).status == NtStatus.STATUS_SUCCESS
    assert listed() == ["sensors.cpu"]
    produced.close()


def test_supplementary_groups_count_for_producers_and_readers(driver: Driver) -> None:
    """A group counts whether it is the peer's primary gid or a supplementary one (what
    `usermod -aG` gives), for the producer policy and for a section's readers alike."""
    member = Credentials(pid=400, uid=4000, gid=4000, groups=frozenset({1500, 2500}))
    producer = _open(driver, member)
    made = Produced(_create(driver, producer, "by.a.member", gids=(2500,)))
    assert _ioctl(driver, producer, IOCTL_SEAL_SECTION, made.id_bytes).status == NtStatus.STATUS_SUCCESS
    in_group = Credentials(pid=401, uid=4001, gid=4001, groups=frozenset({2500}))
    opened = _ioctl(driver, _open(driver, in_group, FILE_READ_DATA), IOCTL_OPEN_SECTION, b"by.a.member", 64)
    assert opened.status == NtStatus.STATUS_SUCCESS
    assert opened.fd is not None
    opened.fd.close()
    outside = Credentials(pid=402, uid=4002, gid=4002, groups=frozenset({1500}))
    refused = _ioctl(driver, _open(driver, outside, FILE_READ_DATA), IOCTL_OPEN_SECTION, b"by.a.member", 64)
    assert refused.status == NtStatus.STATUS_ACCESS_DENIED
    not_a_producer = Credentials(pid=403, uid=4003, gid=4003, groups=frozenset({2500}))
    assert _create(driver, _open(driver, not_a_producer), "not.allowed").status == NtStatus.STATUS_ACCESS_DENIED
    made.close()
