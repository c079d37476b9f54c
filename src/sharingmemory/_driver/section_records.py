"""The records of the section registry: a live section, the limits and the producer policy.

Theory of operation. `sections.SectionRegistry` decides; these are what it decides about, kept
apart so that the registry's module holds only the requests and the life of sections. `_Section`
is one live section: the driver's writable mapping of its memfd, who may read it, who waits.
`is_listed` is the one membership rule of every access list the driver keeps. Nothing here
does I/O except `_Section.updates`, a bounded read of the section's own memory.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from .._defs import Layout, SectionInfo, SectionState
from .._defs.section import SEQ_OFFSET
from .._sys import Fd

_COPY_UPDATES = struct.Struct("<Q")


class Peer(Protocol):
    """What the registry needs of a handle's credentials (the driver's `Credentials`)."""

    @property
    def pid(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def groups(self) -> frozenset[int]: ...


def is_listed(peer: Peer, uids: frozenset[int], gids: frozenset[int]) -> bool:
    """Whether `peer` is one of `uids` or a member of one of `gids`, the group primary or
    supplementary (SO_PEERGROUPS): the one membership rule of every access list the driver
    keeps (the device's, the producers', a section's readers)."""
    return peer.uid in uids or peer.gid in gids or not gids.isdisjoint(peer.groups)


class SectionReply(NamedTuple):
    """status, information-bearing output, and the fd to send (owned by the receiver)."""

    status: int
    output: bytes = b""
    fd: Fd | None = None


@dataclass(frozen=True)
class SectionLimits:
    """What `serve` can set: the size of one section, its fields, and how many sections."""

    max_section_size: int = 64 * 1024
    max_fields: int = 256
    max_sections: int = 1024
    max_sections_per_uid: int = 256

    def __post_init__(self) -> None:
        if min(self.max_section_size, self.max_fields, self.max_sections, self.max_sections_per_uid) < 1:
            raise ValueError("section limits must be at least 1")
        if self.max_section_size < 4096:
            raise ValueError("the section size limit must be at least one page (4096 bytes)")


@dataclass(frozen=True)
class ProducerPolicy:
    """Who may create sections: these uids or members of these gids (primary or supplementary,
    SO_PEERGROUPS). Root always."""

    uids: frozenset[int] = field(default_factory=lambda: frozenset({os.getuid()}))
    gids: frozenset[int] = frozenset()

    def allows(self, peer: Peer) -> bool:
        return peer.uid == 0 or is_listed(peer, self.uids, self.gids)


@dataclass(eq=False)
class _Section:
    """One live section: the driver's writable mapping of its memfd and who may read it."""

    section_id: int
    name: str
    owner: int  # handle id of the producer
    producer: tuple[int, int, int]  # pid, uid, gid
    instance_id: bytes
    plan: Layout
    reader_uids: frozenset[int]
    reader_gids: frozenset[int]
    memfd: int
    mapping: mmap.mmap
    state: SectionState = SectionState.INITIALIZING
    reader_fd: int = -1
    waiters: set[int] = field(default_factory=set)

    def may_read(self, peer: Peer) -> bool:
        if peer.uid in (0, self.producer[1]):
            return True
        if not self.reader_uids and not self.reader_gids:
            return True
        return is_listed(peer, self.reader_uids, self.reader_gids)

    def updates(self) -> int:
        """The update count by a bounded latch read of the producer's words (never waits)."""
        buf, copies = self.mapping, self.plan.copy_offsets
        value = 0
        for _ in range(3):
            seq = _COPY_UPDATES.unpack_from(buf, SEQ_OFFSET)[0]
            value = _COPY_UPDATES.unpack_from(buf, copies[seq & 1])[0]
            if _COPY_UPDATES.unpack_from(buf, SEQ_OFFSET)[0] == seq:
                break
        return int(value)

    def info(self) -> SectionInfo:
        return SectionInfo(
            self.name,
            self.plan.fields,
            self.producer[1],
            self.producer[0],
            self.state,
            self.updates(),
            self.instance_id,
        )
