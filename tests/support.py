"""Helpers for tests that run real driver processes and look at them through /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sharingmemory

READY_TIMEOUT = 10.0


@dataclass
class DriverProcess:
    """A running `sharingmemory serve` and where it serves."""

    process: subprocess.Popen[bytes]
    socket_path: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def open(self, access: str = "r", timeout: float = 5.0) -> sharingmemory.Device:
        return sharingmemory.open_device(self.socket_path, access, timeout=timeout)

    def status(self) -> sharingmemory.DriverStatus:
        with self.open() as device:
            return device.query_status()

    def fds(self) -> list[str]:
        """What the driver process has open, as /proc/PID/fd links."""
        result = []
        for name in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                result.append(os.readlink(f"/proc/{self.pid}/fd/{name}"))
        return result

    def memfds(self) -> set[int]:
        """Inodes of the memfds the driver holds open (Python's mmap keeps a dup of its fd, so
        one page is two fds and one inode)."""
        inodes = set()
        for name in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{self.pid}/fd/{name}").startswith("/memfd:"):
                    inodes.add(os.stat(f"/proc/{self.pid}/fd/{name}").st_ino)
        return inodes

    def memfd_mappings(self) -> list[str]:
        with open(f"/proc/{self.pid}/maps") as maps:
            return [line for line in maps if "/memfd:" in line]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def wait_for(predicate: object, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll `predicate()` until true or `timeout`; returns its last truth value."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@contextlib.contextmanager
def start_driver(tmp_path: Path, *args: str, interval: str = "1s") -> Iterator[DriverProcess]:
    """Start `python -m sharingmemory -vv serve` on `tmp_path/dev/SharingMemory` and wait until
    it logs that it listens; SIGTERM it (SIGKILL if need be) afterwards."""
    socket_path = str(tmp_path / "dev" / "SharingMemory")
    log_path = tmp_path / "driver.log"
    with open(log_path, "wb") as log:
        command = [sys.executable, "-m", "sharingmemory", "-vv", "serve", "--socket", socket_path]
        process = subprocess.Popen(
            [*command, "--interval", interval, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    driver = DriverProcess(process, socket_path, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while b" ready (driver pid" not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"driver did not start:\n{log_path.read_text()}")
            time.sleep(0.01)
        yield driver
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
