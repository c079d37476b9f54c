"""1. The read path: SharedPage.read() and local_time() against time.time_ns() (the vDSO floor).

The page comes from a real driver. `read()` between two ticks revalidates the last snapshot with
one load of `seq`; the first read after a tick runs the full seqlock read, measured separately
against a local writer that changes the page before every read.
"""

from __future__ import annotations

import mmap
import os
import sys
import time
from collections.abc import Callable

from sharingmemory import SharedPage, open_device
from sharingmemory._defs.page import _GUARDED, _SEQ, PAGE_SIZE, SEQ_OFFSET, PageWriter

from ._common import Config, Section, driver, ns_per_call, ratio_figure, run_alone

GOAL_SNAPSHOT = 4.0
GOAL_SINGLE = 2.5


def run(config: Config) -> Section:
    section = Section("read_path", "1. Read path: SharedPage.read() and local_time() vs time.time_ns()")
    number, repeat = (20_000, 3) if config.smoke else (1_000_000, 7)
    with driver() as process, open_device(process.socket_path) as device:
        page = device.map_shared_memory()
        page.read()
        floor = ns_per_call(time.time_ns, number, repeat)
        ratio_figure(section, "time.time_ns()", floor, "ns", vs=("itself", floor), goal=None)
        read = ns_per_call(page.read, number, repeat)
        ratio_figure(
            section, "SharedPage.read() (full snapshot)", read, "ns", vs=("time.time_ns()", floor), goal=GOAL_SNAPSHOT
        )
        single = ns_per_call(page.local_time, number, repeat)
        ratio_figure(
            section, "SharedPage.local_time() (one value)", single, "ns", vs=("time.time_ns()", floor), goal=GOAL_SINGLE
        )
        bare = ns_per_call(_bare_seqlock_reader(page), number, repeat)
        ratio_figure(
            section,
            "bare seqlock unpack of seq+fields (reference)",
            bare,
            "ns",
            vs=("time.time_ns()", floor),
            goal=None,
        )
    changed = _read_after_change(number // 4, repeat)
    ratio_figure(
        section, "read() right after a tick (full seqlock path)", changed, "ns", vs=("time.time_ns()", floor), goal=None
    )
    section.note(
        "read() and local_time() between ticks cost one aligned 8-byte load of seq plus a call: the snapshot of "
        "the last tick is still the page's content while seq has not moved. The first read after a tick pays "
        "the full seqlock read (last row), once per tick per reader."
    )
    return section


def _bare_seqlock_reader(page: SharedPage) -> Callable[[], object]:
    """The least a seqlock read of the fields costs in Python: one unpack of seq and fields, one
    re-read of seq, no snapshot object (the brief's "bare seqlock read")."""
    mapping = page._map
    unpack, unpack_seq = _GUARDED.unpack_from, _SEQ.unpack_from

    def bare() -> object:
        fields = unpack(mapping, SEQ_OFFSET)  # type: ignore[arg-type]
        if fields[0] & 1 or unpack_seq(mapping, SEQ_OFFSET)[0] != fields[0]:  # type: ignore[arg-type]
            return None
        return fields

    return bare


def _read_after_change(number: int, repeat: int) -> float:
    """ns of `read()` when the page changed since the last read: (update + read) - update, with a
    local PageWriter on a real memfd page that a SharedPage maps read-only."""
    fd = os.memfd_create("smbench-page", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, PAGE_SIZE)
        with mmap.mmap(fd, PAGE_SIZE) as writable:
            writer = PageWriter(writable, interval_ns=1_000_000, writer_pid=os.getpid(), instance_id=bytes(16))
            page = SharedPage(fd)
            now = time.time_ns()

            def update() -> None:
                writer.update(realtime_ns=now, monotonic_ns=now, time_zone_bias=0)

            def update_and_read() -> None:
                writer.update(realtime_ns=now, monotonic_ns=now, time_zone_bias=0)
                page.read()

            try:
                both = ns_per_call(update_and_read, number, repeat)
                alone = ns_per_call(update, number, repeat)
            finally:
                page.close()
                writer.release()
            return max(0.0, both - alone)
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(run_alone(run))
