"""Fixtures shared by every test layer: real driver processes on real sockets, and fd-leak checks."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DriverProcess, open_fds, start_driver


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[DriverProcess]:
    """A driver process at 1 s on a private socket, stopped (SIGTERM) after the test."""
    with start_driver(tmp_path) as process:
        yield process


@pytest.fixture
def fast_driver(tmp_path: Path) -> Iterator[DriverProcess]:
    """A driver ticking every 20 ms, for tests that watch several ticks."""
    with start_driver(tmp_path, interval="20ms") as process:
        yield process


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every uid can traverse, for drivers that another uid's client must reach
    (pytest's tmp_path is 0700 all the way up); removed after the test."""
    directory = Path(tempfile.mkdtemp(prefix="sharingmemory-test-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it leaves this process with more open fds than it started with."""
    before = open_fds()
    yield
    for _ in range(50):  # give the GC and closing sockets a moment
        after = open_fds()
        if len(after) <= len(before):
            return
        time.sleep(0.01)
    leaked = {fd: link for fd, link in after.items() if fd not in before}
    pytest.fail(f"fds leaked by the test: {leaked}")
