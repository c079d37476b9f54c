"""The seed's whole point: reading the page makes no call into the driver, nor any system call.

strace counts the system calls of a reader process between two markers around its read loop; a
reader doing 100,000 reads must make no more than one doing 10 (both make none).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from benchmarks.syscalls import count_read_syscalls

from tests.support import start_driver

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")


def test_reads_make_no_system_calls(tmp_path: Path) -> None:
    # A 10 ms tick, so the 100,000 reads also cross ticks and take the full seqlock path.
    with start_driver(tmp_path, interval="10ms", verbosity="") as driver:
        few, _ = count_read_syscalls(driver.socket_path, 10)
        many, calls = count_read_syscalls(driver.socket_path, 100_000)
    assert many <= few, calls
    assert many == 0, calls
