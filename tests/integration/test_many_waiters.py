"""Many waiters, one wake-up: a tick of the `time` page or a publish to a section wakes one
reader, and the readers pass it on (docs/page-abi.md "Waiting for a tick", docs/section-abi.md
"Waiting for a publish"). Real driver, producer and reader processes.

The readers are threads spread over processes (each process its own Device handle) and get
one-hour wait slices: only the chain can wake them before the test's deadline, so a missing or
broken pass-on (between processes, or between threads of one handle, which the driver counts
once) fails the test. Every reader is seen asleep in FUTEX_WAIT (/proc/PID/task/*/syscall)
before the wake-up comes: the driver is SIGSTOPped meanwhile, so no tick can come early.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

import sharingmemory
from sharingmemory._sys import libc
from tests.support import DriverProcess, futex_sleepers, kill_all, wait_for

pytestmark = pytest.mark.skipif(not libc.FUTEX_AVAILABLE, reason="futex syscall number unknown on this machine")

# argv: socket, what ("time" or a section name), threads, slice ("long" or "normal"), mode
# ("honest"; "hostile": registers, then sleeps on the word once and never passes a wake-up on;
# "hostile-loop": the same, for ever, going back to sleep on the current word at each wake-up).
_READER = """
import os, sys, threading
import sharingmemory
from sharingmemory._client import futex_wait
from sharingmemory._sys import libc
path, what, threads, slice_, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
if slice_ == "long":
    futex_wait.WAIT_SLICE = 3600.0
with sharingmemory.open_device(path) as device:
    if what == "time":
        waitable = device.map_shared_memory()
        waiter = waitable._ensure_futex()
        count = lambda snap: snap.tick_count
    else:
        waitable = device.open_section(what)
        waiter = waitable._register()
        count = lambda snap: snap.updates
    assert waiter is not None
    print("ready", flush=True)
    sys.stdin.readline()
    if mode == "hostile":
        word = waiter.current_word()
        libc.futex_wait(waiter._word, word, 120 * 10**9)
        print("hostile", flush=True)
        os._exit(0)
    while mode == "hostile-loop":
        libc.futex_wait(waiter._word, waiter.current_word(), 120 * 10**9)
    results = []
    def work():
        results.append(count(waitable.wait_next()))
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(" ".join(map(str, results)), flush=True)
    os._exit(0)  # no CLEANUP round trip: the driver may be stopped now (its hang-up cleans up)
"""


@contextlib.contextmanager
def _readers(
    driver: DriverProcess, what: str, shape: list[tuple[int, str, str]]
) -> Iterator[list[subprocess.Popen[str]]]:
    """One process per (threads, slice, mode), each ready (registered) when this yields."""
    processes = []
    try:
        for threads, slice_, mode in shape:
            command = [sys.executable, "-c", _READER, driver.socket_path, what, str(threads), slice_, mode]
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            processes.append(process)
        for process in processes:
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        yield processes
    finally:
        kill_all(processes)


def _go_and_sleep(processes: list[subprocess.Popen[str]], shape: list[tuple[int, str, str]]) -> None:
    """Let them wait, in order, each process seen asleep with all its threads before the next
    starts: the queue's order is the list's."""
    for process, (threads, _slice, mode) in zip(processes, shape, strict=True):
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
        expected = 1 if mode.startswith("hostile") else threads
        assert wait_for(lambda p=process, n=expected: futex_sleepers(p.pid) >= n, timeout=60), "never slept"


def _counts(processes: list[subprocess.Popen[str]]) -> list[int]:
    """What each reader saw, once all have exited (a reader the chain never woke fails this)."""
    assert wait_for(lambda: all(p.poll() is not None for p in processes), timeout=120), "not all woken"
    counts = []
    for process in processes:
        assert process.stdout is not None
        line = process.stdout.readline()
        counts += [int(x) for x in line.split()] if line != "hostile\n" else []
    return counts


@contextlib.contextmanager
def _stopped(driver: DriverProcess) -> Iterator[None]:
    os.kill(driver.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(driver.pid, signal.SIGCONT)


def _one_tick(driver: DriverProcess, page: sharingmemory.SharedPage, before: int) -> None:
    """Let the stopped driver run until it has ticked, then stop it again: from then on only
    the readers' chain can wake anyone (a late driver may tick twice; far fewer than readers)."""
    os.kill(driver.pid, signal.SIGCONT)
    try:
        assert wait_for(lambda: page.read().tick_count > before, timeout=30)
    finally:
        os.kill(driver.pid, signal.SIGSTOP)


@pytest.mark.parametrize(
    "shape",
    [[(50, "long", "honest")], [(10, "long", "honest")] * 5, [(1, "long", "honest")] * 12],
    ids=["50-threads-one-handle", "5x10", "12-processes"],
)
def test_one_tick_wakes_every_waiter_of_the_page(driver: DriverProcess, shape: list[tuple[int, str, str]]) -> None:
    with driver.open() as device:
        page = device.map_shared_memory()
        with _readers(driver, "time", shape) as processes:
            with _stopped(driver):  # no tick until every reader sleeps, and none after the first
                _go_and_sleep(processes, shape)
                before = page.read().tick_count
                _one_tick(driver, page, before)
                counts = _counts(processes)
            assert len(counts) == sum(threads for threads, _s, _m in shape)
            assert all(count > before for count in counts), (before, counts)


@pytest.mark.parametrize(
    "shape",
    [[(50, "long", "honest")], [(10, "long", "honest")] * 5, [(1, "long", "honest")] * 12],
    ids=["50-threads-one-handle", "5x10", "12-processes"],
)
def test_one_publish_wakes_every_waiter_of_a_section(driver: DriverProcess, shape: list[tuple[int, str, str]]) -> None:
    with driver.open("rw") as device:
        section = device.create_section("many", [sharingmemory.Field("x", "u64")])
        with _readers(driver, "many", shape) as processes:
            _go_and_sleep(processes, shape)
            section.publish(x=1)
            assert _counts(processes) == [1] * sum(threads for threads, _s, _m in shape)


@pytest.mark.parametrize("thieves", [1, 2])
def test_a_page_waiter_that_keeps_the_wake_up_delays_the_others_only_by_their_slice(
    driver: DriverProcess, thieves: int
) -> None:
    """Thieves first in the queue take the tick's wake-up (and an honest link's pass-on) and
    never pass it on: the honest readers, with the normal bounded slice, still see the tick."""
    shape = [(1, "normal", "hostile")] * thieves + [(4, "normal", "honest")] * 3
    with driver.open() as device:
        page = device.map_shared_memory()
        with _readers(driver, "time", shape) as processes:
            with _stopped(driver):
                _go_and_sleep(processes, shape)
                before = page.read().tick_count
            counts = _counts(processes)
            assert len(counts) == 12 and all(count > before for count in counts), (before, counts)


def test_a_stopped_waiter_does_not_delay_the_ticks(fast_driver: DriverProcess) -> None:
    """A waiter SIGSTOPped (in FUTEX_WAIT, or between two: it sleeps again at every wake-up and
    never passes one on): the driver's wake never waits for anyone (FUTEX_WAKE dequeues a waiter
    and marks it runnable), so the ticks go on and this process's own waits get them."""
    shape = [(1, "normal", "hostile-loop")]
    with fast_driver.open() as device:
        page = device.map_shared_memory()
        page.wait_next(timeout=10)  # registered: the count is above 1, so wake-ups are passed on
        with _readers(fast_driver, "time", shape) as stopped:
            _go_and_sleep(stopped, shape)
            os.kill(stopped[0].pid, signal.SIGSTOP)
            try:
                start = page.read().tick_count
                seen = [page.wait_next(timeout=10).tick_count for _ in range(20)]
                assert seen[-1] >= start + 19  # the first may be `start` itself
                assert stopped[0].poll() is None  # still there, still stopped
            finally:
                os.kill(stopped[0].pid, signal.SIGCONT)
