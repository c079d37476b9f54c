"""8. Sections (issue 11): publish, read, publish-to-wake-up, the waker's cost, scale, open cycle.

Every goal is a ratio to a baseline measured in the same run: a bare seqlock write of the same
eight fields taking the same keyword arguments (publish), time.time_ns() (read), an eventfd
ping-pong between two processes (wake-up), the same publish with one waiter (the waker's cost
with many), the design's open-cycle floor (open_cycle.py's). The peers, when installed (the bench extra):
iceoryx2's blackboard (update_with_copy of 64 bytes, entry.get().decode_as()) and
prometheus_client's multiprocess mmap file (8 write_value, the collector's file read).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import mmap
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sharingmemory
from sharingmemory._defs.section import SEQ_OFFSET

from . import page_waiters
from ._common import Config, Figure, Section, driver, median, percentile, ratio_figure, seconds_each
from .open_cycle import floor_cycle, floor_server

FIELDS = [sharingmemory.Field(f"f{i}", "f64") for i in range(8)]


def run(config: Config) -> Section:
    section = Section("sections", "8. Sections: publish, read, wake-up, the waker's cost, scale, open cycle")
    number, repeat = (20_000, 3) if config.smoke else (300_000, 7)
    with driver("--max-sections-per-uid", "2000", "--max-sections", "2000") as process:
        with sharingmemory.open_device(process.socket_path, "rw") as producer, process.open() as reader_device:
            cpu = producer.create_section("bench", FIELDS)
            assert isinstance(cpu, sharingmemory.Section)
            reader = reader_device.open_section("bench")
            _publish_and_read(section, cpu, reader, number, repeat)
            _wake_up(section, process.socket_path, cpu, readers=(1, 10) if config.smoke else (1, 100))
            _open_cycle(section, process.socket_path, 100 if config.smoke else 2_000)
        _scale(section, process, 100 if config.smoke else 1_000)
    page_waiters.run_ticks(section, config)
    return section


def _best(func: Callable[[], object], number: int, repeat: int) -> float:
    import timeit

    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e9


def _publish_and_read(section: Section, cpu: sharingmemory.Section, reader: object, number: int, repeat: int) -> None:
    mapping = cpu._map
    writer = cpu._writer
    assert mapping is not None
    assert writer is not None
    view = memoryview(mapping)
    word = view[SEQ_OFFSET : SEQ_OFFSET + 8].cast("Q")
    pack_into, offset = writer._struct.pack_into, writer._copies[(writer._seq + 1) & 1]  # the copy nobody reads

    def bare(*, f0: float, f1: float, f2: float, f3: float, f4: float, f5: float, f6: float, f7: float) -> None:
        """The floor: one seqlock write of the eight values (odd, store, even), no checks."""
        word[0] = 1
        pack_into(mapping, offset, 1, 2, f0, f1, f2, f3, f4, f5, f6, f7)
        word[0] = 2

    values = {f"f{i}": float(i) for i in range(8)}
    floor = _best(lambda: bare(**values), number, repeat)
    publish = cpu.publish
    ours = _best(lambda: publish(**values), number, repeat)
    word[0] = writer._seq  # the floor's stores left seq at 2: give the writer's back
    word.release()
    view.release()
    # The same call as code writes it, keywords spelled out: no dict to bind from. It is the
    # one to hold beside iceoryx2's update_with_copy(value), which is handed a ready value too.
    literal = _best(lambda: publish(f0=0.0, f1=1.0, f2=2.0, f3=3.0, f4=4.0, f5=5.0, f6=6.0, f7=7.0), number, repeat)
    ratio_figure(section, "bare seqlock write of 8 f64 (keywords)", floor, "ns", vs=("itself", floor), goal=None)
    ratio_figure(section, "publish() of 8 f64", ours, "ns", vs=("bare seqlock write", floor), goal=1.5)
    ratio_figure(section, "publish(f0=..., ..., f7=...) (keywords written out)", literal, "ns",
                 vs=("bare seqlock write", floor), goal=None)  # fmt: skip
    assert isinstance(reader, sharingmemory.Section)
    clock = _best(time.time_ns, number, repeat)
    read = _best(reader.read, number, repeat)
    ratio_figure(section, "time.time_ns()", clock, "ns", vs=("itself", clock), goal=None)
    ratio_figure(section, "read() of 8 fields (no publish since)", read, "ns", vs=("time.time_ns()", clock), goal=4.0)
    _peers(section, literal, read, number // 10, repeat)

    def publish_then_read() -> None:
        publish(f0=1.0)
        reader.read()

    both = _best(publish_then_read, number // 4, repeat)
    alone = _best(lambda: publish(f0=1.0), number // 4, repeat)
    ratio_figure(
        section, "read() right after a publish (latch path)", max(0.0, both - alone), "ns",
        vs=("time.time_ns()", clock), goal=None,
    )  # fmt: skip
    section.note(
        "publish() is the per-schema generated function (one keyword parameter per field, so the call binds "
        "no dict): one comparison a field for a value of the exact type, one pack of the copy readers are not on "
        "and one store of seq (the floor stores seq twice), plus what the floor does not do: time.time_ns for "
        "published_ns (~60 ns), the read of the waiters word (~40 ns), the tuple of current values that a "
        "partial publish draws on (~35 ns). Of the floor itself, ~580 ns is binding the keywords from a dict; "
        "written out as code calls it, the same publish costs about half, which is the figure held beside "
        "iceoryx2's update_with_copy(value) of a value built beforehand (the row after it builds one)."
    )


def _peers(section: Section, publish: float, read: float, number: int, repeat: int) -> None:
    """iceoryx2's blackboard and prometheus_client's mmap files, writer and reader in this
    process (the cost of each call, not a wake-up), with ratios to ours in the same run."""
    try:
        import iceoryx2 as iox2

        from ._iceoryx2_writer import KEY, Value
    except ImportError:
        section.note("iceoryx2 is not installed (pip install '.[bench]'): its rows are not measured.")
    else:
        iox2.set_log_level(iox2.LogLevel.Error)
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        name = iox2.ServiceName.new(f"smbench/sections/{os.getpid()}")
        service = node.service_builder(name).blackboard_creator(ctypes.c_uint64).add(KEY, Value()).create()
        entry = service.writer_builder().create().entry(KEY, Value)
        reader = service.reader_builder().create().entry(KEY, Value)
        value = Value(seq=1)
        update = _best(lambda: entry.update_with_copy(value), number, repeat)
        seven = ctypes.c_int64 * 7
        built = _best(lambda: entry.update_with_copy(Value(seq=1, fields=seven(1, 2, 3, 4, 5, 6, 7))), number, repeat)
        get = _best(lambda: reader.get().decode_as(Value), number, repeat)
        ratio_figure(section, "iceoryx2 blackboard update_with_copy (64 B)", update, "ns",
                     vs=("publish(f0=..., ...)", publish), goal=None)  # fmt: skip
        ratio_figure(section, "iceoryx2 update_with_copy of a Value built from 8 numbers", built, "ns",
                     vs=("publish(f0=..., ...)", publish), goal=None)  # fmt: skip
        ratio_figure(section, "publish(f0=..., ...) vs iceoryx2 update_with_copy", publish, "ns",
                     vs=("iceoryx2 update", update), goal=1.0)  # fmt: skip
        ratio_figure(section, "iceoryx2 blackboard entry.get().decode_as()", get, "ns",
                     vs=("our read()", read), goal=None)  # fmt: skip
        ratio_figure(section, "our read() vs iceoryx2 read", read, "ns", vs=("iceoryx2 read", get), goal=0.25)
        del reader, entry, service, node
    try:  # untyped module: held as Any (mypy --strict refuses its calls otherwise)
        mmap_dict: Any = importlib.import_module("prometheus_client.mmap_dict")
    except ImportError:
        section.note("prometheus_client is not installed: its rows are not measured.")
        return
    with tempfile.TemporaryDirectory(prefix="smbench-prom-") as tmp:
        path = str(Path(tmp) / "gauge_all_1.db")
        store = mmap_dict.MmapedDict(path)
        keys = [f'["g", "g{i}", {{}}, {{}}, "help"]' for i in range(8)]
        for key in keys:
            store.write_value(key, 0.0, 0.0)
        write_value = store.write_value

        def write8() -> None:
            now = time.time()
            for key in keys:
                write_value(key, 1.0, now)

        write = _best(write8, number, repeat)
        file_read = _best(lambda: list(mmap_dict.MmapedDict.read_all_values_from_file(path)), number, repeat)
        store.close()
    ratio_figure(section, "prometheus_client mmap file: 8 write_value", write, "ns",
                 vs=("publish(f0=..., ...)", publish), goal=None)  # fmt: skip
    ratio_figure(section, "prometheus_client mmap file read (8 values, as the collector)", file_read, "ns",
                 vs=("our read()", read), goal=None)  # fmt: skip


def _eventfd_spaced(rounds: int, gap: float) -> tuple[float, float]:
    """One-way eventfd wake-up with the publish benchmark's pattern: the reader blocked, the
    waker stamping time_ns and writing every `gap` seconds (so both CPUs may idle between, as
    they do between publishes; the ping-pong keeps them busy). p50 and p99 in us."""
    efd = os.eventfd(0)
    report_r, report_w = os.pipe()
    stamp = mmap.mmap(-1, mmap.PAGESIZE)
    pid = os.fork()
    if pid == 0:
        try:
            out, seen = [], 0
            while seen < rounds:  # two writes may come as one read: count writes, not reads
                seen += os.eventfd_read(efd)
                out.append((time.time_ns() - int.from_bytes(stamp[0:8], "little")) / 1e3)
            os.write(report_w, (json.dumps(out) + "\n").encode())
        finally:
            os._exit(0)
    os.close(report_w)
    time.sleep(0.1)
    for _ in range(rounds):
        stamp[0:8] = time.time_ns().to_bytes(8, "little")
        os.eventfd_write(efd, 1)
        time.sleep(gap)
    with os.fdopen(report_r) as reports:
        times = json.loads(reports.readline())
    os.waitpid(pid, 0)
    os.close(efd)
    stamp.close()
    return percentile(times, 50), percentile(times, 99)


def _wake_up(section: Section, socket_path: str, cpu: sharingmemory.Section, readers: tuple[int, ...]) -> None:
    pingpong = _eventfd_pingpong(2_000)
    ratio_figure(section, "eventfd ping-pong, one way (p50)", pingpong[0], "us", vs=("itself", pingpong[0]), goal=None)
    ratio_figure(section, "eventfd ping-pong, one way (p99)", pingpong[1], "us", vs=("itself", pingpong[1]), goal=None)
    if len(os.sched_getaffinity(0)) >= 2:
        cpu_a, cpu_b = sorted(os.sched_getaffinity(0))[:2]
        for label, pair in (("one CPU", (cpu_a, cpu_a)), ("two CPUs", (cpu_a, cpu_b))):
            pinned = _eventfd_pingpong(2_000, pair)
            ratio_figure(section, f"eventfd ping-pong pinned to {label} (p50)", pinned[0], "us",
                         vs=("unpinned p50", pingpong[0]), goal=None)  # fmt: skip
    # One spacing for every count (the largest count's need) and the eventfd: a FUTEX_WAKE(1) after
    # 32 ms idle costs ~40 us here, after 2 ms ~9, whatever the waiters; a spacing growing with the
    # count measured the idle, not the waiters.
    spacing = 0.002 + max(readers) * 0.0003
    spaced = _eventfd_spaced(200, spacing)
    ratio_figure(section, "eventfd wake-up, spaced as the publishes (p50)", spaced[0], "us",
                 vs=("ping-pong p50", pingpong[0]), goal=None)  # fmt: skip
    ratio_figure(section, "eventfd wake-up, spaced as the publishes (p99)", spaced[1], "us",
                 vs=("ping-pong p99", pingpong[1]), goal=None)  # fmt: skip
    costs, cpu_costs = {}, {}
    for count in readers:
        p50, p99, publish_us, cpu_costs[count] = _publish_to_waiters(socket_path, cpu, count, 200, spacing)
        ratio_figure(section, f"publish to wake-up, {count} waiting (p50)", p50, "us",
                     vs=("ping-pong p50", pingpong[0]), goal=1.5)  # fmt: skip
        ratio_figure(section, f"publish to wake-up, {count} waiting (p99)", p99, "us",
                     vs=("ping-pong p99", pingpong[1]), goal=1.5)  # fmt: skip
        ratio_figure(section, f"publish to wake-up, {count} waiting (p50) vs spaced eventfd", p50, "us",
                     vs=("spaced eventfd p50", spaced[0]), goal=None)  # fmt: skip
        costs[count] = publish_us
    first = min(readers)
    for count in readers:
        ratio_figure(section, f"publish() with {count} waiting (the waker's cost, median)", costs[count], "us",
                     vs=(f"with {first} waiting", costs[first]), goal=1.5 if count != first else None)  # fmt: skip
    for count in readers:
        ratio_figure(section, f"publish() with {count} waiting (the waker's CPU time, median)", cpu_costs[count],
                     "us", vs=(f"with {first} waiting", cpu_costs[first]), goal=None)  # fmt: skip
    section.note(
        "Waiters sleep in FUTEX_WAIT on seq; a publish makes one FUTEX_WAKE(seq, 1) when the driver's waiters "
        "word is not 0, and each reader woken with news wakes two more on seq before it reads "
        "(docs/section-abi.md). The ping-pong keeps both CPUs busy; the spaced eventfd wakes a blocked "
        "reader with the publishes' spacing, the fair baseline for one waiter. The time page's tick follows "
        "the same rule: its cost with many waiting is measured below."
    )


def _eventfd_pingpong(rounds: int, cpus: tuple[int, int] | None = None) -> tuple[float, float]:
    """One-way wake-up between two processes: half of each eventfd round trip, p50 and p99 in us.
    `cpus`: pin the two sides (waker, reader) there; unpinned, the scheduler may keep both on
    one CPU (a wake-up with no IPI) in one run and split them in the next."""
    ping, pong = os.eventfd(0), os.eventfd(0)
    before = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[0]})
    pid = os.fork()
    if pid == 0:
        try:
            if cpus is not None:
                os.sched_setaffinity(0, {cpus[1]})
            for _ in range(rounds):
                os.eventfd_read(ping)
                os.eventfd_write(pong, 1)
        finally:
            os._exit(0)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        os.eventfd_write(ping, 1)
        os.eventfd_read(pong)
        times.append((time.perf_counter() - start) / 2 * 1e6)
    os.waitpid(pid, 0)
    os.sched_setaffinity(0, before)
    os.close(ping)
    os.close(pong)
    return percentile(times, 50), percentile(times, 99)


def _publish_to_waiters(
    socket_path: str, cpu: sharingmemory.Section, count: int, publishes: int, spacing: float
) -> tuple[float, float, float, float]:
    """`count` reader processes wait with wait_next(); each publish's wake-up latency (reader's
    time.time_ns() minus the snapshot's published_ns) at p50/p99 over all readers, in us, and
    the median cost of publish() itself: wall-clock time, and this thread's CPU time (what the
    wall time holds besides: being preempted by the readers it woke, on 2 CPUs)."""
    report_r, report_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            try:
                os.close(report_r)
                with sharingmemory.open_device(socket_path) as device:
                    section = device.open_section("bench")
                    mine = []
                    target = section.read().updates + publishes
                    os.write(ready_w, b"r")
                    while True:  # two publishes may come as one wake-up: count updates, not wakes
                        snap = section.wait_next(timeout=30)
                        mine.append((time.time_ns() - snap.published_ns) / 1e3)
                        if snap.updates >= target:
                            break
                    os.write(report_w, (json.dumps(mine) + "\n").encode())
            except BaseException as err:
                os.write(2, f"reader: {err!r}\n".encode())
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(report_w)
    os.close(ready_w)
    got = 0
    while got < count:
        got += len(os.read(ready_r, count))
    os.close(ready_r)
    time.sleep(0.2)  # every reader inside FUTEX_WAIT
    costs, cpu_costs = [], []
    for i in range(publishes):
        start, start_cpu = time.perf_counter(), time.thread_time_ns()
        cpu.publish(f0=float(i))
        cpu_costs.append((time.thread_time_ns() - start_cpu) / 1e3)
        costs.append((time.perf_counter() - start) * 1e6)
        time.sleep(spacing)
    latencies: list[float] = []
    with os.fdopen(report_r) as reports:
        for line in reports:
            latencies += json.loads(line)
    for pid in pids:
        os.waitpid(pid, 0)
    return percentile(latencies, 50), percentile(latencies, 99), median(costs), median(cpu_costs)


def _open_cycle(section: Section, socket_path: str, cycles: int) -> None:
    with floor_server() as path:
        floor = median(seconds_each(lambda: floor_cycle(path), cycles)) * 1e6

    def obvious() -> None:
        with sharingmemory.open_device(socket_path) as device:
            device.open_section("bench").read()

    ours = median(seconds_each(obvious, cycles)) * 1e6
    ratio_figure(section, "open-cycle floor (median)", floor, "us", vs=("itself", floor), goal=None)
    ratio_figure(section, "with open_device() as d: d.open_section(name).read()", ours, "us",
                 vs=("open-cycle floor", floor), goal=1.5)  # fmt: skip
    section.note(
        "The obvious way waits two round trips (CREATE, then IOCTL_OPEN_SECTION with the fd; a reader's close() "
        "waits for nothing) where the floor waits one: see docs/performance.md, note 8, for where the rest goes."
    )


def _scale(section: Section, process: object, total: int) -> None:
    from tests.support import DriverProcess, rss_kib

    assert isinstance(process, DriverProcess)
    before = rss_kib(process.pid)
    producers = []
    per = total // 10
    for index in range(10):
        producers.append(
            subprocess.Popen(
                [sys.executable, "-c", _PRODUCER, process.socket_path, str(index), str(per)],
                stdout=subprocess.PIPE,
                stdin=subprocess.PIPE,
                text=True,
            )
        )
    for producer in producers:
        assert producer.stdout is not None
        producer.stdout.readline()
    after = rss_kib(process.pid)
    device = process.open()
    listed = len(device.list_sections())
    device.close(wait=True)  # a reader's close does not wait, and the driver's cleanup would count
    switches = _context_switches(process.pid)
    time.sleep(2.0)
    idle = _context_switches(process.pid) - switches
    for producer in producers:
        assert producer.stdin is not None
        producer.stdin.close()
        producer.wait(30)
    section.add(Figure(f"driver RSS per section ({listed} sections, 10 producers)", (after - before) / max(1, listed),
                       "KiB"))  # fmt: skip
    section.add(Figure("driver wake-ups in 2 s while nobody publishes or connects", idle, "switches", goal="0",
                       met=idle == 0))  # fmt: skip


def _context_switches(pid: int) -> int:
    total = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


_PRODUCER = """
import sys, sharingmemory
path, index, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with sharingmemory.open_device(path, "rw") as device:
    for i in range(count):
        device.create_section(f"p{index}.s{i}", [sharingmemory.Field("x", "f64")]).publish(x=1.0)
    print("ready", flush=True)
    sys.stdin.read()
"""
