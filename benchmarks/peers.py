"""3. Against what users pick today to share a live value between processes, same machine, same run.

Peers: Redis GET of a small key (Debian's redis-server on loopback TCP, redis-py), a
multiprocessing.Manager value proxy, multiprocessing.shared_memory guarded by a
multiprocessing.Lock, and an iceoryx2 blackboard entry (a 64-byte struct). Each peer's writer
lives in another process. "read" is one read of the current value as its users write it; "attach"
is what a new reader pays to get its first value (connect/open/map, first read), then it closes.
A peer whose package or server is missing is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import multiprocessing.managers
import multiprocessing.synchronize
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

from sharingmemory import open_device
from sharingmemory.cli.private_driver import stop_process

from ._common import Config, Figure, Section, driver, median, ns_per_call, run_alone, spawn, stop

GOAL_SOCKET = 50.0  # our read at least this many times faster than a socket-based peer's
GOAL_ICEORYX2_READ = 4.0
GOAL_ICEORYX2_ATTACH = 10.0


@dataclass
class Peer:
    """A peer under test: `read` returns the value once; `attach` opens and reads once, and
    returns what closes it (called outside the timed part). Goals are on peer/ours ratios."""

    name: str
    read: Callable[[], object]
    attach: Callable[[], Callable[[], object]]
    read_goal: float | None = None
    attach_goal: float | None = None
    slow: bool = False  # socket-based: fewer iterations


def attach_ns(attach: Callable[[], Callable[[], object]], count: int) -> float:
    """Median ns of `attach()` (open + first read); each one is closed after its clock stops."""
    times = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        close = attach()
        times.append(clock() - start)
        close()
    return median(times)


def run(config: Config) -> Section:
    section = Section("peers", "3. Against other ways to share a live value (same machine, same run)")
    reads, attaches = (2_000, 20) if config.smoke else (100_000, 200)
    with driver() as process:

        def our_attach() -> Callable[[], object]:
            device = open_device(process.socket_path, map=True)  # CREATE and the map in one round trip
            device.map_shared_memory().read()
            return device.close

        with open_device(process.socket_path) as device:  # holds the page, as a running system has it
            page = device.map_shared_memory()
            ours_read = ns_per_call(page.read, reads, 5)
            ours_attach = attach_ns(our_attach, attaches)
        section.add(Figure("sharingmemory: SharedPage.read()", ours_read, "ns"))
        section.add(Figure("sharingmemory: open + map + first read", ours_attach / 1e3, "us"))
        peer_reads: dict[str, float] = {"sharingmemory": ours_read}
        peer_attaches: dict[str, float] = {"sharingmemory": ours_attach}
        for factory in (_redis, _manager, _shared_memory_with_lock, _iceoryx2):
            with contextlib.ExitStack() as stack:
                try:
                    peer = stack.enter_context(factory())
                except _UnavailableError as skip:
                    section.note(f"{factory.__name__.strip('_')}: skipped ({skip})")
                    continue
                read_ns = ns_per_call(peer.read, max(50, reads // (50 if peer.slow else 1)), 5)
                attached_ns = attach_ns(peer.attach, max(5, attaches // (4 if peer.slow else 1)))
                peer_reads[peer.name], peer_attaches[peer.name] = read_ns, attached_ns
                _add_peer_figures(section, peer, read_ns, attached_ns, ours=(ours_read, ours_attach))
    _plot(config, section, peer_reads, peer_attaches)
    section.note(
        "Ratios are the peer's cost over ours (higher is better for us). Goals: >= 50x for socket-based peers' "
        "reads, >= 4x for iceoryx2's read, >= 10x for iceoryx2's attach. shared_memory + Lock has no goal."
    )
    return section


def _add_peer_figures(
    section: Section, peer: Peer, read_ns: float, attach_ns: float, *, ours: tuple[float, float]
) -> None:
    ours_read, ours_attach = ours
    goal = peer.read_goal
    ratio = read_ns / ours_read
    section.add(
        Figure(
            f"{peer.name}: read", read_ns, "ns", "our read() (peer/ours)", ratio,
            f">= {goal:g}x" if goal else "", ratio >= goal if goal else None,
        )
    )  # fmt: skip
    attach_goal = peer.attach_goal
    ratio = attach_ns / ours_attach
    section.add(
        Figure(
            f"{peer.name}: attach (open + first read)", attach_ns / 1e3, "us", "our open+map+read (peer/ours)",
            ratio, f">= {attach_goal:g}x" if attach_goal else "", ratio >= attach_goal if attach_goal else None,
        )
    )  # fmt: skip


class _UnavailableError(Exception):
    """A peer that cannot run here (package or server missing)."""


# --- Redis ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _redis() -> Iterator[Peer]:
    try:
        import redis
    except ImportError as err:
        raise _UnavailableError("the redis package is not installed (pip install '.[bench]')") from err
    server = shutil.which("redis-server")
    if server is None:
        raise _UnavailableError("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="smbench-redis-") as tmp:
        command = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        command += ["--dir", tmp, "--logfile", ""]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            client = redis.Redis(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            client.set("smbench:time", struct.pack("<q", time.time_ns()))

            def attach() -> Callable[[], object]:
                other = redis.Redis(host="127.0.0.1", port=port)
                other.get("smbench:time")
                close: Callable[[], object] = other.close
                return close

            yield Peer("Redis GET (loopback TCP)", lambda: client.get("smbench:time"), attach, GOAL_SOCKET, slow=True)
            client.close()
        finally:
            stop_process(process, 10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- multiprocessing.Manager ------------------------------------------------------------------


@functools.cache
def _managed_value() -> Any:
    """The one shared value, in the manager's server process (typeshed does not know the class)."""
    return multiprocessing.managers.Value("q", time.time_ns())  # type: ignore[attr-defined]


class _ValueManager(multiprocessing.managers.BaseManager):
    """A manager that hands every client a proxy of the same value."""


_ValueManager.register("get_value", callable=_managed_value, proxytype=multiprocessing.managers.ValueProxy)


@contextlib.contextmanager
def _manager() -> Iterator[Peer]:
    authkey = os.urandom(16)
    # The default address, a Unix socket on Linux: what Manager() gives its users.
    server = _ValueManager(authkey=authkey, ctx=multiprocessing.get_context("fork"))
    server.start()
    try:
        proxy = server.get_value()  # type: ignore[attr-defined]

        def attach() -> Callable[[], object]:
            client = _ValueManager(address=server.address, authkey=authkey)
            client.connect()
            value = client.get_value()  # type: ignore[attr-defined]
            value.value  # noqa: B018 (the first read)
            return lambda: value  # the proxy is released (decref) when dropped

        yield Peer("multiprocessing.Manager Value proxy", lambda: proxy.value, attach, GOAL_SOCKET, slow=True)
    finally:
        server.shutdown()


# --- multiprocessing.shared_memory + Lock -----------------------------------------------------


def _shm_writer(name: str, lock: multiprocessing.synchronize.Lock, stop: multiprocessing.synchronize.Event) -> None:
    block = shared_memory.SharedMemory(name=name)
    buf = block.buf
    assert buf is not None
    try:
        while not stop.wait(1.0):
            with lock:
                struct.pack_into("<q", buf, 0, time.time_ns())
    finally:
        buf.release()
        block.close()


@contextlib.contextmanager
def _shared_memory_with_lock() -> Iterator[Peer]:
    context = multiprocessing.get_context("fork")
    lock, stop = context.Lock(), context.Event()
    block = shared_memory.SharedMemory(create=True, size=64)
    buf = block.buf
    assert buf is not None
    struct.pack_into("<q", buf, 0, time.time_ns())
    writer = context.Process(target=_shm_writer, args=(block.name, lock, stop))
    writer.start()
    unpack = struct.Struct("<q").unpack_from

    def read() -> object:
        with lock:
            return unpack(buf, 0)[0]

    def attach() -> Callable[[], object]:
        # Attaching registers the name with this process's resource tracker again (gh-82300);
        # the tracker keeps a set, and the creator's unlink below unregisters it once.
        other = shared_memory.SharedMemory(name=block.name)
        assert other.buf is not None
        with lock:
            unpack(other.buf, 0)
        return other.close

    try:
        yield Peer("shared_memory + Lock", read, attach)
    finally:
        stop.set()
        writer.join(10)
        buf.release()
        block.close()
        block.unlink()


# --- iceoryx2 blackboard ----------------------------------------------------------------------


@contextlib.contextmanager
def _iceoryx2() -> Iterator[Peer]:
    try:
        import iceoryx2 as iox2
    except ImportError as err:
        raise _UnavailableError("the iceoryx2 package is not installed (pip install '.[bench]')") from err
    from ._iceoryx2_writer import KEY, Value

    iox2.set_log_level(iox2.LogLevel.Error)
    service_name = f"smbench/{os.getpid()}/{time.monotonic_ns()}"
    writer = spawn("_iceoryx2_writer", service_name, stdin=subprocess.PIPE)
    try:
        assert writer.stdout is not None
        if writer.stdout.readline().strip() != b"ready":
            raise _UnavailableError("the iceoryx2 writer did not start")

        def open_entry() -> tuple[object, object, object, object]:
            node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
            service = node.service_builder(iox2.ServiceName.new(service_name)).blackboard_opener(ctypes.c_uint64)
            service = service.open()
            reader = service.reader_builder().create()
            return node, service, reader, reader.entry(KEY, Value)

        keep = open_entry()
        entry = keep[3]

        def read() -> object:
            return entry.get().decode_as(Value)  # type: ignore[attr-defined]

        def attach() -> Callable[[], object]:
            opened = open_entry()
            opened[3].get().decode_as(Value)  # type: ignore[attr-defined]
            return lambda: opened  # dropped (closed) after the clock stops

        yield Peer(
            "iceoryx2 blackboard entry.get().decode_as()", read, attach, GOAL_ICEORYX2_READ, GOAL_ICEORYX2_ATTACH
        )
    finally:
        stop(writer)


# --- plot -------------------------------------------------------------------------------------


def _plot(config: Config, section: Section, reads: dict[str, float], attaches: dict[str, float]) -> None:
    from ._plots import bar_chart

    path = bar_chart(
        config.out_dir / "peers.png",
        "Read one live value (ns, log scale) and attach (us, log scale)",
        [("read (ns)", reads), ("attach (us)", {name: value / 1e3 for name, value in attaches.items()})],
    )
    if path is not None:
        section.plots.append(path)


if __name__ == "__main__":
    sys.exit(run_alone(run))
