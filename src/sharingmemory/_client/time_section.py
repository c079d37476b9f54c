"""The built-in section `time`: the seed's page (page-abi.md) with the reads and waits of a
section, its fields named by the page ABI. The page itself stays a `SharedPage` owned by the
device (`map_shared_memory`); this is a view of it, not a second mapping.
"""

from __future__ import annotations

from typing import Final

from .._defs import Field, PageSnapshot, SectionState, state_from_code
from .section import Snapshot, snapshot_type
from .shared_page import SharedPage

#: The page ABI's fields (page-abi.md) as a section's; `state` and `instance_id` are the
#: section's own attributes, `seq` is the seqlock's.
TIME_FIELDS: Final = (
    Field("local_time", "i64", unit="filetime", doc="local time, 100 ns since 1601-01-01 (the seed's value)"),
    Field("system_time", "i64", unit="filetime", doc="UTC, 100 ns since 1601-01-01"),
    Field("time_zone_bias", "i64", unit="100ns", doc="UTC minus local"),
    Field("realtime_ns", "i64", unit="ns", doc="CLOCK_REALTIME since the Unix epoch"),
    Field("monotonic_ns", "i64", unit="ns", doc="CLOCK_MONOTONIC at the update"),
    Field("tick_count", "u64", doc="updates since the page was created"),
    Field("interval_ns", "u64", unit="ns", doc="timer period"),
    Field("writer_pid", "u32", doc="pid of the driver process"),
)
_TIME_SNAPSHOT: Final = snapshot_type(TIME_FIELDS)


class TimeSection:
    """The seed's page as a section: the same reads and waits, fields named by the page ABI."""

    name: Final = "time"
    fields: Final = TIME_FIELDS
    producer = False

    def __init__(self, page: SharedPage) -> None:
        self._page = page
        first = page.read()
        self.instance_id: bytes = first.instance_id
        self.producer_pid: int = first.writer_pid
        self.producer_uid = -1

    @staticmethod
    def _convert(snap: PageSnapshot) -> Snapshot:
        values = (snap.tick_count, snap.realtime_ns, state_from_code(snap.state), *snap[1:8], snap.writer_pid)
        return tuple.__new__(_TIME_SNAPSHOT, values)

    def read(self) -> Snapshot:
        return self._convert(self._page.read())

    @property
    def state(self) -> SectionState:
        return self.read().state

    @property
    def closed(self) -> bool:
        return self._page.closed

    def wait_next(self, timeout: float | None = None) -> Snapshot:
        return self._convert(self._page.wait_next(timeout))

    async def next_update(self) -> Snapshot:
        return self._convert(await self._page.next_update())

    def close(self) -> None:
        """The page belongs to the device (map_shared_memory); it is unmapped with it."""

    def __enter__(self) -> TimeSection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
