"""Publishing and reading a section make no system call; with readers waiting, a publish makes
exactly one (FUTEX_WAKE of one waiter, who passes it on), however many they are. strace
counts the calls between two markers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DriverProcess

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
ROOT = Path(__file__).resolve().parents[2]

# Producer and reader in one process (strace follows one pid); `waiters` reader handles register
# as waiters (one wait_next that times out), so the driver sets the section's waiters word.
_PROGRAM = """
import os, sys, sharingmemory
path, count, waiters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fields = [sharingmemory.Field(f"f{i}", "f64") for i in range(8)] + [sharingmemory.Field("s", "str", length=8)]
with sharingmemory.open_device(path, "rw") as producer:
    section = producer.create_section("counted", fields)
    reader = producer.open_section("counted")
    devices = [sharingmemory.open_device(path) for _ in range(waiters)]
    for device in devices:
        try:
            device.open_section("counted").wait_next(timeout=0.01)
        except sharingmemory.IoTimeout:
            pass
    publish, read = section.publish, reader.read
    for i in range(1000):
        publish(f0=float(i), f7=1.0, s="x")
        read()
    os.access("/smbench-section-begin", os.F_OK)
    for i in range(count):
        publish(f0=float(i), f1=2.0, f2=3.0, f3=4.0, f4=5.0, f5=6.0, f6=7.0, f7=8.0, s="warm")
        read()
        read()
    os.access("/smbench-section-end", os.F_OK)
    for device in devices:
        device.close()
"""


def _calls(driver: DriverProcess, tmp_path: Path, count: int, waiters: int) -> list[str]:
    log = tmp_path / f"trace-{count}-{waiters}"
    command = ["strace", "-f", "-qq", "-o", str(log), sys.executable, "-c", _PROGRAM, driver.socket_path]
    subprocess.run([*command, str(count), str(waiters)], cwd=ROOT, check=True, timeout=120)
    lines = log.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if "/smbench-section-begin" in line)
    end = next(i for i, line in enumerate(lines) if "/smbench-section-end" in line)
    return [line for line in lines[begin + 1 : end] if "(" in line]


def test_publish_and_read_make_no_system_call_when_nobody_waits(driver: DriverProcess, tmp_path: Path) -> None:
    few = _calls(driver, tmp_path, 10, 0)
    many = _calls(driver, tmp_path, 20_000, 0)
    assert many == [] and few == [], many[:5] + few[:5]


@pytest.mark.parametrize("waiters", [1, 5])
def test_a_publish_with_waiters_makes_one_futex_wake(driver: DriverProcess, tmp_path: Path, waiters: int) -> None:
    calls = _calls(driver, tmp_path, 500, waiters)
    assert len(calls) == 500, calls[:5]
    assert all("futex(" in call and "FUTEX_WAKE, 1)" in call for call in calls), calls[:5]
