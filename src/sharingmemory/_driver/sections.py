"""The section registry: create, seal, open, list, wait, and what a producer's death stops.

Theory of operation. A section is live from CREATE until its producer's handle goes (CLEANUP,
CLOSE, a hang-up, the driver's unload) or the producer closes it. While live it is in the name
table `_by_name`, so a second CREATE of the name gets STATUS_OBJECT_NAME_COLLISION; when it
stops, the name is free at once and its readers keep their mappings, frozen, state=stopped.

Sealing (docs/section-abi.md). CREATE makes the memfd, sizes it, maps it writable here, writes
the header and schema, and hands the producer an fd that can write (state initializing). The
producer maps it and sends SEAL; only then does the driver add F_SEAL_SHRINK | F_SEAL_GROW |
F_SEAL_FUTURE_WRITE | F_SEAL_SEAL. FUTURE_WRITE leaves the producer's (and the driver's) mapping
made before the seal writable while nobody can make a new writable one. A producer could have
resized the file or sealed it itself in between: the driver checks the size and F_GET_SEALS
after sealing and stops a section it could not seal. Readers get an O_RDONLY open file of the
memfd, opened only after sealing.

Stopping: state=stopped, `seq` += 2 (same parity, so the stable copy stays), then one
FUTEX_WAKE of every waiter on `seq` (INT_MAX: the stop does not rely on the readers' chain, so
even those a non-passing reader holds up see it at once). A producer killed inside a publish
needs no repair: the latch leaves a complete copy. The driver reads producer-written memory only
for `updates` in the list, with a bounded latch read: a producer cannot make the event loop wait.

Concurrency: none; called from the driver, on the server's one thread. No sockets: results are
`SectionReply` tuples that the driver turns into Completions.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import struct
from collections.abc import Callable
from typing import Final

from .._defs import (
    IOCTL_CLOSE_SECTION,
    IOCTL_CREATE_SECTION,
    IOCTL_LIST_SECTIONS,
    IOCTL_OPEN_SECTION,
    IOCTL_SEAL_SECTION,
    IOCTL_WAIT_SECTION,
    SECTION_REPLY,
    CreateRequest,
    Field,
    Layout,
    NtStatus,
    SectionFormatError,
    SectionInfo,
    SectionState,
    check_section_name,
    decode_create,
    encode_list,
    encode_list_entry,
    layout,
    write_new_section,
)
from .._defs.section import SEQ_OFFSET, bump_seq, write_state, write_waiters
from .._defs.section_wire import LIST_HEAD_SIZE
from .._sys import Fd, libc
from .memory import PAGE_SEALS, _memfd_create
from .section_records import Peer, ProducerPolicy, SectionLimits, SectionReply, _Section, is_listed

__all__ = ["TIME_SECTION", "Peer", "ProducerPolicy", "SectionLimits", "SectionRegistry", "SectionReply", "is_listed"]

log = logging.getLogger("sharingmemory.driver")

_U32 = struct.Struct("<I")
#: The built-in section: the driver's own page (page-abi.md), never created by a producer.
TIME_SECTION: Final = "time"


class SectionRegistry:
    """Every live section of one driver, by name, by id and by owning handle."""

    def __init__(
        self, limits: SectionLimits, policy: ProducerPolicy, *, wake: Callable[[int], int] | None = None
    ) -> None:
        self.limits = limits
        self.policy = policy
        self._wake = wake or libc.futex_wake
        self._by_name: dict[str, _Section] = {}
        self._by_id: dict[int, _Section] = {}
        self._per_uid: dict[int, int] = {}
        self._owned: dict[int, set[int]] = {}  # handle id -> ids of the sections it produces
        self._waiting: dict[int, set[int]] = {}  # handle id -> ids of the sections it waits on
        self._next_id = 1
        self.created = 0
        self.stopped = 0

    def __len__(self) -> int:
        return len(self._by_name)

    def dispatch(self, code: int, handle_id: int, peer: Peer, data: bytes, output_length: int) -> SectionReply:
        """One section IOCTL (the access bits were checked by the driver)."""
        handler = _HANDLERS[code]
        return handler(self, handle_id, peer, data, output_length)

    # --- the producer's requests --------------------------------------------------------------

    def _create(self, handle_id: int, peer: Peer, data: bytes, output_length: int) -> SectionReply:
        if output_length < SECTION_REPLY.size:  # nothing useful fits: the NT contract, nothing made
            return SectionReply(NtStatus.STATUS_BUFFER_TOO_SMALL)
        if not self.policy.allows(peer):
            log.info("section CREATE refused: uid %d gid %d is not an allowed producer", peer.uid, peer.gid)
            return SectionReply(NtStatus.STATUS_ACCESS_DENIED)
        try:
            request = decode_create(data)
        except SectionFormatError as err:
            log.info("section CREATE refused: %s", err)
            return SectionReply(NtStatus.STATUS_INVALID_PARAMETER)
        except ValueError:
            return SectionReply(NtStatus.STATUS_OBJECT_NAME_INVALID)
        if len(request.fields) > self.limits.max_fields:
            return SectionReply(NtStatus.STATUS_SECTION_TOO_BIG)
        plan = layout(request.fields)
        if plan.total_size > self.limits.max_section_size:
            return SectionReply(NtStatus.STATUS_SECTION_TOO_BIG)
        if request.name == TIME_SECTION or request.name in self._by_name:
            return SectionReply(NtStatus.STATUS_OBJECT_NAME_COLLISION)
        if len(self._by_name) >= self.limits.max_sections or (
            self._per_uid.get(peer.uid, 0) >= self.limits.max_sections_per_uid
        ):
            log.warning("section CREATE refused: quota (uid %d has %d)", peer.uid, self._per_uid.get(peer.uid, 0))
            return SectionReply(NtStatus.STATUS_QUOTA_EXCEEDED)
        try:
            section, fd = self._allocate(handle_id, peer, request, plan)
        except OSError as err:
            log.error("section %s not created: %s", request.name, err)
            return SectionReply(NtStatus.STATUS_INSUFFICIENT_RESOURCES)
        return SectionReply(NtStatus.STATUS_SUCCESS, self._reply(section), fd)

    def _allocate(self, handle_id: int, peer: Peer, request: CreateRequest, plan: Layout) -> tuple[_Section, Fd]:
        name = request.name
        memfd = _memfd_create(f"section:{name}")
        mapping = None
        try:
            os.ftruncate(memfd, plan.total_size)
            mapping = mmap.mmap(memfd, plan.total_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            instance_id = os.urandom(16)
            write_new_section(
                mapping, name, plan.fields, producer_pid=peer.pid, producer_uid=peer.uid, instance_id=instance_id
            )
            producer_fd = Fd(os.dup(memfd))
        except BaseException:
            if mapping is not None:
                mapping.close()
            os.close(memfd)
            raise
        section = _Section(
            self._next_id, name, handle_id, (peer.pid, peer.uid, peer.gid), instance_id, plan,
            frozenset(request.reader_uids), frozenset(request.reader_gids), memfd, mapping,
        )  # fmt: skip
        self._next_id += 1
        self._by_name[name] = self._by_id[section.section_id] = section
        self._per_uid[peer.uid] = self._per_uid.get(peer.uid, 0) + 1
        self._owned.setdefault(handle_id, set()).add(section.section_id)
        self.created += 1
        log.debug("section %s created by pid %d uid %d (%d bytes)", name, peer.pid, peer.uid, plan.total_size)
        return section, producer_fd

    def _owned_section(self, handle_id: int, data: bytes) -> _Section | None:
        if len(data) != _U32.size:
            return None
        section = self._by_id.get(_U32.unpack(data)[0])
        return section if section is not None and section.owner == handle_id else None

    def _seal(self, handle_id: int, _peer: Peer, data: bytes, _out: int) -> SectionReply:
        section = self._owned_section(handle_id, data)
        if section is None:
            return SectionReply(NtStatus.STATUS_INVALID_PARAMETER)
        if section.state is not SectionState.INITIALIZING:
            return SectionReply(NtStatus.STATUS_INVALID_DEVICE_STATE)
        try:
            fcntl.fcntl(section.memfd, fcntl.F_ADD_SEALS, PAGE_SEALS)
            seals = fcntl.fcntl(section.memfd, fcntl.F_GET_SEALS)
            size = os.fstat(section.memfd).st_size
            if seals & PAGE_SEALS != PAGE_SEALS or size != section.plan.total_size:
                raise OSError(errno.EPERM, f"seals {seals:#x}, size {size}")
            section.reader_fd = os.open(f"/proc/self/fd/{section.memfd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            # EPERM from F_ADD_SEALS: the producer added F_SEAL_SEAL first; a changed size: it
            # resized the file. Either way readers could not be given a page that is safe.
            log.warning("section %s not sealed, stopped: %s", section.name, err.strerror or err)
            self._stop(section, "not sealable")
            return SectionReply(NtStatus.STATUS_INVALID_DEVICE_STATE)
        section.state = SectionState.RUNNING
        write_state(section.mapping, SectionState.RUNNING)
        log.debug("section %s sealed (shrink, grow, future-write, seal): running", section.name)
        return SectionReply(NtStatus.STATUS_SUCCESS)

    def _close_section(self, handle_id: int, _peer: Peer, data: bytes, _out: int) -> SectionReply:
        section = self._owned_section(handle_id, data)
        if section is None:
            return SectionReply(NtStatus.STATUS_INVALID_PARAMETER)
        self._stop(section, "closed by its producer")
        return SectionReply(NtStatus.STATUS_SUCCESS)

    # --- the readers' requests ----------------------------------------------------------------

    def _lookup(self, peer: Peer, data: bytes) -> _Section | int:
        """The running section named by `data`, or the status that refuses it."""
        try:
            name = check_section_name(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return NtStatus.STATUS_OBJECT_NAME_INVALID
        section = self._by_name.get(name)
        if section is None or section.state is not SectionState.RUNNING:
            return NtStatus.STATUS_OBJECT_NAME_NOT_FOUND
        if not section.may_read(peer):
            log.info("section %s: OPEN refused to uid %d gid %d", name, peer.uid, peer.gid)
            return NtStatus.STATUS_ACCESS_DENIED
        return section

    def _open(self, handle_id: int, peer: Peer, data: bytes, output_length: int) -> SectionReply:
        if output_length < SECTION_REPLY.size:
            return SectionReply(NtStatus.STATUS_BUFFER_TOO_SMALL)
        found = self._lookup(peer, data)
        if isinstance(found, int):
            return SectionReply(found)
        try:
            fd = Fd(os.dup(found.reader_fd))
        except OSError as err:
            log.error("section %s: OPEN failed: %s", found.name, err)
            return SectionReply(NtStatus.STATUS_INSUFFICIENT_RESOURCES)
        return SectionReply(NtStatus.STATUS_SUCCESS, self._reply(found), fd)

    def _wait(self, handle_id: int, peer: Peer, data: bytes, _out: int) -> SectionReply:
        """Count the handle among the waiters of the section whose instance_id is `data`. A
        section that has stopped since is not an error: the caller sees state=stopped."""
        if len(data) != 16:
            return SectionReply(NtStatus.STATUS_INVALID_PARAMETER)
        for section in self._by_name.values():
            if section.instance_id == data and section.may_read(peer):
                if handle_id not in section.waiters:
                    section.waiters.add(handle_id)
                    self._waiting.setdefault(handle_id, set()).add(section.section_id)
                    write_waiters(section.mapping, len(section.waiters))
                return SectionReply(NtStatus.STATUS_SUCCESS)
        return SectionReply(NtStatus.STATUS_SUCCESS)

    def _list(self, _handle_id: int, peer: Peer, data: bytes, output_length: int) -> SectionReply:
        first = _U32.unpack(data)[0] if len(data) == _U32.size else 0
        if output_length < LIST_HEAD_SIZE:
            return SectionReply(NtStatus.STATUS_BUFFER_TOO_SMALL)
        # Running sections only, as `_lookup` opens: one its producer has not sealed yet is not
        # there for readers, so nothing listed is ever "not found" when opened.
        visible = [s for s in self._by_name.values() if s.state is SectionState.RUNNING and s.may_read(peer)]
        entries, used = [], LIST_HEAD_SIZE
        for section in visible[first:]:
            entry = encode_list_entry(section.info())
            if used + len(entry) > output_length:
                break
            entries.append(entry)
            used += len(entry)
        if not entries and visible[first:]:
            return SectionReply(NtStatus.STATUS_BUFFER_TOO_SMALL)
        return SectionReply(NtStatus.STATUS_SUCCESS, encode_list(len(visible), entries))

    # --- stopping -----------------------------------------------------------------------------

    def handle_gone(self, handle_id: int) -> None:
        """IRP_MJ_CLEANUP of `handle_id`: stop the sections it produces, forget its waits."""
        for section_id in self._waiting.pop(handle_id, set()):
            section = self._by_id.get(section_id)
            if section is not None:
                section.waiters.discard(handle_id)
                write_waiters(section.mapping, len(section.waiters))
        for section_id in sorted(self._owned.pop(handle_id, set())):
            section = self._by_id.get(section_id)
            if section is not None:
                self._stop(section, "its producer's handle closed")

    def _stop(self, section: _Section, why: str) -> None:
        """state=stopped, seq moved, every waiter woken, the name free; readers keep their maps."""
        self._by_name.pop(section.name, None)
        self._by_id.pop(section.section_id, None)
        owned = self._owned.get(section.owner)
        if owned is not None:
            owned.discard(section.section_id)
        uid = section.producer[1]
        self._per_uid[uid] -= 1
        if not self._per_uid[uid]:
            del self._per_uid[uid]
        for waiter in section.waiters:
            self._waiting.get(waiter, set()).discard(section.section_id)
        section.state = SectionState.STOPPED
        write_state(section.mapping, SectionState.STOPPED)
        bump_seq(section.mapping)
        address = libc.buffer_address(section.mapping)
        try:
            self._wake(address + SEQ_OFFSET)
        except OSError as err:  # ENOSYS on an unknown machine: waiters time out instead
            log.warning("section %s: futex wake failed: %s", section.name, err)
        section.mapping.close()
        if section.reader_fd >= 0:
            os.close(section.reader_fd)
        os.close(section.memfd)
        self.stopped += 1
        log.debug("section %s stopped: %s", section.name, why)

    def unload(self) -> None:
        for section in list(self._by_name.values()):
            self._stop(section, "driver unloading")

    # --- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _reply(section: _Section) -> bytes:
        pid, uid, _gid = section.producer
        return SECTION_REPLY.pack(section.instance_id, section.plan.total_size, section.section_id, pid, uid)

    def sections(self) -> list[SectionInfo]:
        """Every live section (for tests and the status)."""
        return [s.info() for s in self._by_name.values()]

    def fields_of(self, name: str) -> tuple[Field, ...] | None:
        section = self._by_name.get(name)
        return None if section is None else section.plan.fields


_Handler = Callable[[SectionRegistry, int, Peer, bytes, int], SectionReply]

#: IOCTL code -> handler, the way the driver's `_IOCTLS` reads.
_HANDLERS: dict[int, _Handler] = {
    IOCTL_CREATE_SECTION: SectionRegistry._create,
    IOCTL_SEAL_SECTION: SectionRegistry._seal,
    IOCTL_CLOSE_SECTION: SectionRegistry._close_section,
    IOCTL_OPEN_SECTION: SectionRegistry._open,
    IOCTL_LIST_SECTIONS: SectionRegistry._list,
    IOCTL_WAIT_SECTION: SectionRegistry._wait,
}

#: The codes the driver routes here.
SECTION_IOCTLS: Final = frozenset(_HANDLERS)
