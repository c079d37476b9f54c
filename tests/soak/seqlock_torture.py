"""Seqlock torture: the real PageWriter at full speed against reader processes using read_snapshot.

    python -m tests.soak.seqlock_torture --reads 10000000 --readers 3

The writer is this process: a real `SealedMemory` page (memfd, sealed, mlocked) written by the
real `PageWriter` as fast as Python can. Each reader is a forked process that maps the page
read-only through its own O_RDONLY descriptor, exactly as a client does, and calls the real
`read_snapshot` in a loop, checking every snapshot against the page's invariants:

* local_time == system_time - time_zone_bias
* system_time == realtime_ns // 100 + 116444736000000000
* tick_count never goes back
* and, since the writer derives every field from tick_count, each field agrees with tick_count
  (realtime_ns, monotonic_ns and time_zone_bias all change at every update, so a snapshot mixing
  two updates cannot pass)

A snapshot that breaks one is torn; the goal is zero. As a control, each reader also copies the
guarded fields without the seqlock's checks (`--unchecked-reads` of them) and counts how many of
those copies are torn: a non-zero count shows the run really raced the writer, so the zero above
means something.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import select
import signal
import struct
import sys
import time
from typing import Any, Final

from sharingmemory._defs.page import EPOCH_AS_FILETIME, PAGE_SIZE, PageSnapshot, PageWriter, check_header, read_snapshot
from sharingmemory._driver.memory import SealedMemory

from ._figures import Figures

REALTIME_BASE: Final = 1_700_000_000_000_000_000  # ns; 2023-11-14
REALTIME_STEP: Final = 1_000_003_171  # ns per update: every byte of the field moves
MONOTONIC_STEP: Final = 999_983
BIASES: Final = (-288_000_000_000, 0, 36_000_000_000, -19_800_000_000, 180_000_000_000)
INTERVAL_NS: Final = 1_000_000
_GUARDED = struct.Struct("<Qqqqqq QQII16s")  # the seqlock's fields, as read_snapshot reads them


def expected(tick: int) -> tuple[int, int, int]:
    """(realtime_ns, monotonic_ns, time_zone_bias) the writer stores at update number `tick`."""
    return REALTIME_BASE + tick * REALTIME_STEP, tick * MONOTONIC_STEP, BIASES[tick % len(BIASES)]


def broken_invariant(snap: PageSnapshot, last_tick: int, writer_pid: int, instance_id: bytes) -> str | None:
    """The first invariant `snap` breaks, or None."""
    if snap.seq & 1:
        return "seq is odd"
    if snap.tick_count == 0:  # the header as PageWriter leaves it before the first update: all zero
        return None if (snap.local_time, snap.system_time, snap.realtime_ns, snap.state) == (0, 0, 0, 0) else "torn"
    if snap.local_time != snap.system_time - snap.time_zone_bias:
        return "local_time != system_time - time_zone_bias"
    if snap.system_time != snap.realtime_ns // 100 + EPOCH_AS_FILETIME:
        return "system_time != realtime_ns // 100 + EPOCH"
    if snap.tick_count < last_tick:
        return "tick_count went back"
    if snap.tick_count and (snap.realtime_ns, snap.monotonic_ns, snap.time_zone_bias) != expected(snap.tick_count):
        return "fields of two different updates"
    if (snap.interval_ns, snap.writer_pid, snap.instance_id) != (INTERVAL_NS, writer_pid, instance_id):
        return "constant fields changed"
    return None


def reader(fd: int, reads: int, *, unchecked_every: int, writer_pid: int, instance_id: bytes, out: int) -> None:
    """Body of one reader process: map `fd` read-only, read, check, report JSON on `out`."""
    mapping = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
    os.close(fd)
    check_header(mapping)
    torn: dict[str, int] = {}
    unchecked = unchecked_torn = 0
    last_tick = 0
    distinct = 0
    started = time.perf_counter()
    for n in range(reads):
        snap = read_snapshot(mapping)
        problem = broken_invariant(snap, last_tick, writer_pid, instance_id)
        if problem is not None:
            torn[problem] = torn.get(problem, 0) + 1
        if snap.tick_count != last_tick:
            distinct += 1
            last_tick = max(last_tick, snap.tick_count)
        if unchecked_every and n % unchecked_every == 0:
            # The control: the same copy without the seqlock's checks.
            raw = PageSnapshot._make(_GUARDED.unpack_from(mapping, 16))
            unchecked += 1
            if broken_invariant(raw, 0, writer_pid, instance_id) is not None:
                unchecked_torn += 1
    elapsed = time.perf_counter() - started
    result = {
        "reads": reads, "torn": torn, "distinct_ticks": distinct, "last_tick": last_tick,
        "unchecked": unchecked, "unchecked_torn": unchecked_torn, "seconds": elapsed,
    }  # fmt: skip
    os.write(out, json.dumps(result).encode() + b"\n")
    mapping.close()


def _spawn_readers(memory: SealedMemory, args: argparse.Namespace, instance_id: bytes) -> dict[int, int]:
    """Fork the readers; pid -> read end of the pipe each reports its JSON on."""
    children: dict[int, int] = {}
    for _ in range(args.readers):
        fd = memory.open_reader_fd()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the reader process
            status = 1
            try:
                os.close(r)
                reader(
                    fd, -(-args.reads // args.readers), unchecked_every=args.unchecked_every,
                    writer_pid=os.getppid(), instance_id=instance_id, out=w,
                )  # fmt: skip
                status = 0
            finally:
                os._exit(status)
        os.close(fd)
        os.close(w)
        children[pid] = r
    return children


def _write_until_reported(writer: PageWriter, children: dict[int, int]) -> tuple[int, list[dict[str, Any]]]:
    """Update the page at full speed until every reader has reported: (updates, reports)."""
    updates = 0
    results: list[dict[str, Any]] = []
    pending = dict(children)
    received: dict[int, bytes] = {r: b"" for r in pending.values()}
    try:
        while pending:
            for _ in range(2_000):
                realtime_ns, monotonic_ns, bias = expected(writer.tick_count + 1)
                writer.update(realtime_ns=realtime_ns, monotonic_ns=monotonic_ns, time_zone_bias=bias)
            updates += 2_000
            ready, _, _ = select.select(list(pending.values()), [], [], 0)
            for r in ready:
                chunk = os.read(r, 65536)
                received[r] += chunk
                if not chunk or received[r].endswith(b"\n"):
                    del pending[next(pid for pid, fd in pending.items() if fd == r)]
                    os.close(r)
                    if received[r].strip():
                        results.append(json.loads(received[r]))
    finally:
        for pid in children:
            if pid in pending:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return updates, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.seqlock_torture", description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=10_000_000, help="checked reads in all (default 10,000,000)")
    parser.add_argument("--readers", type=int, default=3, help="reader processes (default 3)")
    parser.add_argument(
        "--unchecked-every", type=int, default=10, help="one unchecked control read per N checked reads (0: none)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)

    memory = SealedMemory("SharingMemory-torture")
    instance_id = os.urandom(16)
    writer = PageWriter(memory.buffer, interval_ns=INTERVAL_NS, writer_pid=os.getpid(), instance_id=instance_id)
    started = time.perf_counter()
    try:
        updates, results = _write_until_reported(writer, _spawn_readers(memory, args, instance_id))
    finally:
        writer.release()
        memory.close()
    elapsed = time.perf_counter() - started

    goal_reads = args.reads
    reads = sum(int(result["reads"]) for result in results)
    torn: dict[str, int] = {}
    for result in results:
        for problem, count in result["torn"].items():
            torn[problem] = torn.get(problem, 0) + int(count)
    figures = Figures("seqlock torture")
    figures.record("reader processes", len(results), f"{args.readers} reported", len(results) == args.readers)
    figures.record("checked reads", reads, f">= {goal_reads:,}", reads >= goal_reads)
    figures.record("torn snapshots", sum(torn.values()), "0", not torn)
    for problem, count in sorted(torn.items()):
        figures.record(f"  torn: {problem}", count)
    figures.record("writer updates", updates)
    figures.record("seconds", elapsed)
    figures.record("reads per second", round(reads / elapsed))
    figures.record("writer updates per second", round(updates / elapsed))
    figures.record("distinct ticks seen by readers", sum(int(result["distinct_ticks"]) for result in results))
    figures.record("control: unchecked reads", sum(int(result["unchecked"]) for result in results))
    figures.record("control: unchecked reads torn", sum(int(result["unchecked_torn"]) for result in results))
    return figures.report(as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
