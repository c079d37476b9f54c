"""The Device's section methods: create, open and list sections on the device's handle.

Theory of operation. The work of a section (its mapping, its latch, its waits) is in
section.py; what lives here is only how a `Device` reaches the driver for it. A `Section`
talks to its device through a port (`_SectionPort`, section.py's `_Port`): an IOCTL on the
device's connection, and whether that connection hung up (poll(2) POLLRDHUP, no system call
into the driver). The port holds the device, not the socket, so a section made before the
connection was lost sees it lost too. A Device keeps every section it made and closes them
when it closes, as it unmaps its page; names the driver would refuse are refused here first.

`DeviceSections` is a base class of `Device` (device.py), above the request plumbing it uses.
"""

from __future__ import annotations

import select
import struct
from collections.abc import Callable, Iterable

from .._defs import (
    IOCTL_CREATE_SECTION,
    IOCTL_LIST_SECTIONS,
    IOCTL_OPEN_SECTION,
    MAX_OUTPUT_LENGTH,
    CreateRequest,
    Field,
    MajorFunction,
    NtStatus,
    ObjectNameInvalid,
    SectionInfo,
    decode_list,
    encode_create,
    exception_for,
)
from .requests import RequestChannel
from .section import IoctlResult, Section
from .shared_page import SharedPage
from .time_section import TimeSection


class DeviceSections(RequestChannel):
    """Sections (docs/section-abi.md; the work is in section.py) on a Device's handle."""

    #: The Device's page, which `open_section("time")` returns as a section.
    map_shared_memory: Callable[[], SharedPage]

    _sections: tuple[Section, ...] = ()

    def create_section(
        self,
        name: str,
        fields: Iterable[Field],
        *,
        readers_uids: Iterable[int] = (),
        readers_gids: Iterable[int] = (),
    ) -> Section:
        """NtCreateSection: a new named section this handle produces, live while the handle is
        open. Needs a handle opened with access "w" or "rw". Raises ObjectNameInvalid,
        ObjectNameCollision, AccessDenied, SectionTooBig, QuotaExceeded; ValueError for a
        field list that breaks the schema rules (duplicate names, none, too many)."""
        try:
            data = encode_create(CreateRequest(name, tuple(fields), tuple(readers_uids), tuple(readers_gids)))
        except ValueError as err:
            if "section name" in str(err):
                raise ObjectNameInvalid(str(err)) from None
            raise
        result = self._section_port.ioctl(IOCTL_CREATE_SECTION, data, 64)
        return self._keep(Section(self._section_port, name, result.output, result.fd, producer=True))

    def open_section(self, name: str) -> Section | TimeSection:
        """NtOpenSection + NtMapViewOfSection(PAGE_READONLY): a section mapped read-only and
        sealed; `time` is the driver's own page. Raises ObjectNameNotFound, ObjectNameInvalid,
        AccessDenied (outside the section's readers)."""
        if name == "time":
            return TimeSection(self.map_shared_memory())
        result = self._section_port.ioctl(IOCTL_OPEN_SECTION, str(name).encode("utf-8", "replace"), 64)
        return self._keep(Section(self._section_port, name, result.output, result.fd, producer=False))

    def list_sections(self) -> list[SectionInfo]:
        """Every live section this handle may read: name, fields, producer_uid, producer_pid,
        state, updates (and instance_id)."""
        found: list[SectionInfo] = []
        while True:
            result = self._section_port.ioctl(IOCTL_LIST_SECTIONS, _U32.pack(len(found)), MAX_OUTPUT_LENGTH)
            try:
                total, entries = decode_list(result.output)
            except ValueError as err:
                raise exception_for(NtStatus.STATUS_UNSUCCESSFUL, f"unreadable section list: {err}") from err
            found += entries
            if len(found) >= total or not entries:
                return found

    @property
    def _section_port(self) -> _SectionPort:
        return _SectionPort(self)

    def _keep(self, section: Section) -> Section:
        self._sections = (*(s for s in self._sections if not s.closed), section)
        return section

    def _close_sections(self) -> None:
        sections, self._sections = self._sections, ()
        for section in sections:
            section.close()


class _SectionPort:
    """The three calls a Section makes on its device (section.py's `_Port`)."""

    def __init__(self, device: RequestChannel) -> None:
        self._device = device

    def ioctl(self, code: int, input: bytes = b"", output_length: int = 0) -> IoctlResult:
        reply = self._device._call(
            MajorFunction.IRP_MJ_DEVICE_CONTROL, code=code, input=input, output_length=output_length
        )
        return IoctlResult(reply.status, reply.output, reply.fd)

    def hung_up(self) -> bool:
        sock = self._device._sock
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), _POLLRDHUP)
        return any(events & (select.POLLHUP | select.POLLERR | _POLLRDHUP) for _fd, events in poller.poll(0))


_U32 = struct.Struct("<I")
_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
