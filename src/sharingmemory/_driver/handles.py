"""The driver's records: a handle's context and credentials, an IRP's completion, the config.

Theory of operation. These are the nouns the dispatch table (`driver`), the IOCTL handlers
(`ioctls`, `tick_events`) and the server share: who is on the other end of a connection
(`Credentials`, from SO_PEERCRED), what the driver keeps per handle (`Handle`, moved along
NEW -> OPEN -> CLEANED -> CLOSED by `driver` alone), how an IRP completed (`Completion`, which
may carry an `Fd` the receiver sends and closes), and what `serve` can set (`DriverConfig`,
`AccessPolicy`). They hold data and check their own arguments; they decide nothing, so they
live below every module that does.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import NamedTuple

from .._sys import Fd
from .section_records import ProducerPolicy, SectionLimits, is_listed

MIN_INTERVAL_NS = 1_000_000
#: A day: the longest period anyone means for a clock's tick, and far inside what the page's
#: u64 `interval_ns` and timerfd's time_t deadlines can carry.
MAX_INTERVAL_NS = 86_400 * 1_000_000_000
DEFAULT_INTERVAL_NS = 1_000_000_000


class Credentials(NamedTuple):
    """The peer of a connection, as SO_PEERCRED (and SO_PEERGROUPS) report it at connect time."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


class Completion(NamedTuple):
    """How an IRP completed. `fd`, when set, goes to the receiver of the Completion with its
    `Fd`, to send and then close; `close_connection` asks the server to drop the connection
    after sending the reply."""

    status: int
    information: int = 0
    output: bytes = b""
    fd: Fd | None = None
    close_connection: bool = False


class HandleState(enum.Enum):
    """Where a handle is in NEW -> OPEN -> CLEANED -> CLOSED."""

    NEW = "new"
    OPEN = "open"
    CLEANED = "cleaned"
    CLOSED = "closed"


@dataclass(eq=False)
class Handle:
    """The per-handle context (the seed's file object): who opened it, with what access, and
    whether it holds the page. Created by `Driver.connect`, driven only by the driver."""

    handle_id: int
    credentials: Credentials
    state: HandleState = HandleState.NEW
    granted_access: int = 0
    mapped: bool = False
    tick_event: Fd | None = None  # the driver's end of this handle's tick channel


@dataclass(frozen=True)
class AccessPolicy:
    """Who may open the device: these uids, or members of these gids, whether the group is the
    peer's primary gid or a supplementary one (SO_PEERGROUPS). Root always."""

    uids: frozenset[int] = field(default_factory=lambda: frozenset({os.getuid()}))
    gids: frozenset[int] = frozenset()

    def allows(self, cred: Credentials) -> bool:
        return cred.uid == 0 or is_listed(cred, self.uids, self.gids)


@dataclass(frozen=True)
class DriverConfig:
    """What `serve` can set. Limits are counted over handles in state OPEN or CLEANED."""

    interval_ns: int = DEFAULT_INTERVAL_NS
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    max_handles: int = 4096
    max_handles_per_uid: int = 1024
    #: Sections (docs/section-abi.md): who may create them, and how big and how many.
    producer_policy: ProducerPolicy = field(default_factory=ProducerPolicy)
    section_limits: SectionLimits = field(default_factory=SectionLimits)

    def __post_init__(self) -> None:
        if not MIN_INTERVAL_NS <= self.interval_ns <= MAX_INTERVAL_NS:
            raise ValueError(f"interval must be from 1 ms to 24 h, not {self.interval_ns} ns")
        if self.max_handles < 1 or self.max_handles_per_uid < 1:
            raise ValueError("handle limits must be at least 1")
