"""The socket file is one driver's: no lock trick or foreign listener lets a second take it (issue 9)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DriverProcess, start_driver


def _serve(socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sharingmemory", "serve", "--socket", str(socket_path), "--interval", "1s", *args],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sharingmemory: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("how", ["deleted", "replaced by a new file"])
def test_a_deleted_lock_file_does_not_let_a_second_driver_take_over(driver: DriverProcess, how: str) -> None:
    lock = Path(driver.socket_path + ".lock")
    lock.unlink()
    if how != "deleted":
        lock.write_text("12345\n")
    for check in ((), ("--check-config",)):
        line = _one_error_line(_serve(Path(driver.socket_path), *check))
        assert "in use" in line and f"pid {driver.pid}" in line, line
    assert driver.status().pid == driver.pid  # the first still serves, at the same socket


@pytest.fixture(params=["seqpacket", "stream", "dgram"])
def foreign_listener(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Another program's live socket at the device's path (no lock file: it is not a driver)."""
    kind = {"seqpacket": socket.SOCK_SEQPACKET, "stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM}
    path = tmp_path / "dev" / "SharingMemory"
    path.parent.mkdir(mode=0o750)
    sock = socket.socket(socket.AF_UNIX, kind[request.param])
    sock.bind(str(path))
    if request.param != "dgram":
        sock.listen(1)
    yield path
    sock.close()


def test_another_programs_live_socket_is_not_treated_as_stale(foreign_listener: Path) -> None:
    inode = os.lstat(foreign_listener).st_ino
    for check in ((), ("--check-config",)):
        line = _one_error_line(_serve(foreign_listener, *check))
        assert "in use" in line, line
    assert os.lstat(foreign_listener).st_ino == inode  # still there, still theirs


def test_a_stale_socket_is_still_reclaimed(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "SharingMemory"
    path.parent.mkdir(mode=0o750)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(path))
    sock.close()  # its owner is gone: connect(2) is refused
    with start_driver(tmp_path) as driver:
        assert "stale socket" in driver.log()
        assert driver.status().pid == driver.pid


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "hard link", "another uid's file"])
def test_a_lock_file_that_is_not_a_plain_file_of_ours_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "dev" / "SharingMemory"
    path.parent.mkdir(mode=0o750)
    lock = Path(str(path) + ".lock")
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "directory":
        lock.mkdir()
    elif kind == "symlink":
        lock.symlink_to(target)
    elif kind == "hard link":
        os.link(target, lock)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root, to give the lock file to another uid")
        lock.write_text("")
        os.chown(lock, 65534, 65534)
    line = _one_error_line(_serve(path))
    assert "lock file" in line, line
    assert target.read_text() == "keep me\n"  # never truncated through a link
    assert not path.exists()
