"""The wake-up fans out among the waiters (docs/section-abi.md, "Waiting"): a publish wakes one
reader; each reader woken with news wakes two more on the same word. Real producer and reader
processes; readers are known to sleep in the kernel (/proc/PID/task/*/syscall) before the
publish, so the wake-up, not a re-read, is what each one sees.

The chain test gives the readers one-hour slices: only the chain can wake them before the
test's generous deadline, so a broken link (a build without the pass-on) fails it. The hostile
tests put processes that never pass the wake on at the head of the queue (one, or two in a row:
the whole first fan-out of an honest reader could land on thieves): the others, with the normal
bounded slices, still see the publish."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory._sys import libc
from tests.support import DriverProcess, wait_for

pytestmark = pytest.mark.skipif(not libc.FUTEX_AVAILABLE, reason="futex syscall number unknown on this machine")
_SYS_FUTEX = libc._SYS_FUTEX  # what /proc/PID/task/TID/syscall shows first while a thread waits

# argv: socket, mode ("honest", "honest-long", "honest-async-long", "hostile").
_READER = """
import asyncio
import sys
import sharingmemory
from sharingmemory._defs.section import SEQ_OFFSET
from sharingmemory._sys import libc
path, mode = sys.argv[1], sys.argv[2]
if mode.endswith("-long"):
    from sharingmemory._client import futex_wait
    futex_wait.WAIT_SLICE = 3600.0  # only a wake-up can end the sleep within the test
with sharingmemory.open_device(path) as device:
    cpu = device.open_section("fan")
    if mode == "honest-async-long":
        snap = asyncio.run(cpu.next_update())
        print(snap.updates, snap.x, flush=True)
    elif mode.startswith("honest"):
        snap = cpu.wait_next(timeout=None if mode == "honest-long" else 60)
        print(snap.updates, snap.x, flush=True)
    else:  # never passes a wake-up on: sleeps on the word, once, and leaves
        cpu._register()
        word = int.from_bytes(cpu._map[SEQ_OFFSET : SEQ_OFFSET + 4], "little")
        libc.futex_wait(libc.buffer_address(cpu._map) + SEQ_OFFSET, word, 120 * 10**9)
        print("hostile woke", flush=True)
"""


def _spawn(driver: DriverProcess, mode: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", _READER, driver.socket_path, mode]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def _asleep(process: subprocess.Popen[str]) -> bool:
    """Some thread of it sleeps in a shared FUTEX_WAIT (op 0; Python's own locks use the
    PRIVATE ops), which is the section wait: next_update sleeps in a worker thread."""
    try:
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            call = (task / "syscall").read_text().split()
            if call[:1] == [str(_SYS_FUTEX)] and call[2:3] == ["0x0"]:
                return True
    except (FileNotFoundError, ProcessLookupError):
        pass
    return False


def _start_asleep(driver: DriverProcess, mode: str, count: int) -> list[subprocess.Popen[str]]:
    readers = [_spawn(driver, mode) for _ in range(count)]
    assert wait_for(lambda: all(_asleep(reader) for reader in readers), timeout=60), "readers never slept"
    return readers


def _results(readers: list[subprocess.Popen[str]]) -> list[str]:
    outputs = []
    for reader in readers:
        out, _ = reader.communicate(timeout=120)
        assert reader.returncode == 0
        outputs.append(out.strip())
    return outputs


def _reap(readers: list[subprocess.Popen[str]]) -> None:
    for reader in readers:
        reader.kill()
        reader.wait()
        if reader.stdout is not None:
            reader.stdout.close()


@pytest.mark.parametrize(("mode", "count"), [("honest-long", 1), ("honest-long", 3), ("honest-long", 20),
                                             ("honest-async-long", 5)])  # fmt: skip
def test_one_publish_wakes_every_waiter_through_the_chain(driver: DriverProcess, mode: str, count: int) -> None:
    with sharingmemory.open_device(driver.socket_path, "rw") as device:
        cpu = device.create_section("fan", [sharingmemory.Field("x", "f64")])
        readers = _start_asleep(driver, mode, count)
        try:
            cpu.publish(x=7.5)
            assert _results(readers) == ["1 7.5"] * count
        finally:
            _reap(readers)


@pytest.mark.parametrize("thieves", [1, 2])
def test_a_waiter_that_keeps_the_wake_up_delays_the_others_only_by_their_slice(
    driver: DriverProcess, thieves: int
) -> None:
    with sharingmemory.open_device(driver.socket_path, "rw") as device:
        cpu = device.create_section("fan", [sharingmemory.Field("x", "f64")])
        hostile = [_start_asleep(driver, "hostile", 1)[0] for _ in range(thieves)]  # first in the queue
        honest = _start_asleep(driver, "honest", 8)
        try:
            for value in (1.0, 2.0):  # the first publish feeds a thief; the second may feed the next
                cpu.publish(x=value)
            # Each honest reader returns the first publish it saw: the first, or both at once.
            for line in _results(honest):
                updates, x = line.split()
                assert (updates, x) in {("1", "1.0"), ("2", "2.0")}, line
        finally:
            _reap(hostile + honest)


def test_the_stop_wakes_waiters_a_thief_left_asleep(driver: DriverProcess) -> None:
    """A thief at the head of the queue takes the publish's one wake-up, so the readers
    (one-hour slices) stay asleep; the producer's close must still wake them: the driver's stop
    wakes every waiter, not one."""
    device = sharingmemory.open_device(driver.socket_path, "rw")
    readers: list[subprocess.Popen[str]] = []
    try:
        cpu = device.create_section("fan", [sharingmemory.Field("x", "f64")])
        readers += _start_asleep(driver, "hostile", 1)
        readers += _start_asleep(driver, "honest-long", 4)
        cpu.publish(x=3.0)
        assert readers[0].stdout is not None
        assert readers[0].stdout.readline() == "hostile woke\n"
        assert all(reader.poll() is None for reader in readers[1:])  # nobody passed it on
        device.close()
        assert _results(readers[1:]) == ["1 3.0"] * 4
    finally:
        device.close()
        _reap(readers)
