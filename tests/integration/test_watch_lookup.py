"""Where `watch --follow` looks with no `--socket`: open_device()'s default, at every try.

A follower used to wait at one path resolved once, the user's own, so a non-root user's
`watch --follow` would never see the system driver once open_device() looks there first. Now
each try is open_device() with no name. This test cannot tell the two apart by itself (the
system path's driver would be shared with every test on the machine): SHARINGMEMORY_SOCKET
names the place, which the default then uses alone, and the test checks that a follower
started before any driver finds the one started later and carries on through its restart
without a private driver. Which places the default tries is open_device()'s own test.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import start_driver


def read_until(stream: int, needle: bytes, timeout: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        ready, _, _ = select.select([stream], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(stream, 4096) if ready else b""
        if not chunk:
            pytest.fail(f"no {needle!r} in time:\n{seen.decode(errors='replace')}")
        seen += chunk
    return seen


def test_a_follower_with_no_socket_finds_a_driver_started_later(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "SharingMemory"  # where start_driver serves
    env = dict(os.environ, SHARINGMEMORY_SOCKET=str(path))
    with subprocess.Popen(
        [sys.executable, "-m", "sharingmemory", "watch", "--follow", "--count", "4"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as watch:  # fmt: skip
        try:
            assert watch.stdout is not None and watch.stderr is not None
            errors = read_until(watch.stderr.fileno(), b"waiting for one")
            assert f"no driver at {path}; waiting for one".encode() in errors
            # The first driver's tick 1 is written when the page is mapped, its next one 5 s
            # later: it is stopped in between, so the other three ticks must be the second's.
            with start_driver(tmp_path, interval="5s") as first:
                lines = read_until(watch.stdout.fileno(), b"tick 1 ")
                assert f"pid {first.pid} ".encode() in lines
            with start_driver(tmp_path, interval="50ms") as second:
                assert watch.wait(60) == 0
                rest = watch.stdout.read()
            assert rest.count(f"pid {second.pid} ".encode()) == 3, rest
            assert b"started a private driver" not in errors + watch.stderr.read()
        finally:
            if watch.poll() is None:
                watch.kill()
