"""`stop_process`, the one "SIGTERM, wait, then SIGKILL" of the library, the tests and the benchmarks.

Its children are real processes that do what a driver might: stop on SIGTERM, ignore it, trap it
and exit with a status of their own, or be gone already.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sharingmemory.cli.private_driver import stop_process
from tests.support import start_driver, wait_for

# What each child does with SIGTERM before it says "ready" (so the signal cannot come first).
_CHILDREN = {
    "default": "pass",
    "ignores SIGTERM": "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
    "blocks SIGTERM": "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})",
    "traps SIGTERM, exits 3": "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))",
}


def _child(kind: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import signal, sys, time; {_CHILDREN[kind]}; print('ready', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    process.stdout.close()
    return process


def _state(pid: int) -> str:
    """The state letter of /proc/PID/stat (proc(5)), after the command name in parentheses."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("default", -signal.SIGTERM),
        ("ignores SIGTERM", -signal.SIGKILL),
        ("blocks SIGTERM", -signal.SIGKILL),
        ("traps SIGTERM, exits 3", 3),
    ],
)
def test_the_process_is_stopped_and_reaped_whatever_it_does_with_sigterm(kind: str, status: int) -> None:
    process = _child(kind)
    assert stop_process(process, timeout=0.5) == status
    assert process.returncode == status  # reaped: no zombie, no ResourceWarning from Popen.__del__
    assert stop_process(process, timeout=0.5) == status  # twice is harmless


def test_a_process_that_already_exited_is_reaped_not_signalled() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"], stdin=subprocess.DEVNULL)
    process.wait()  # reaped before: its pid may belong to someone else by now
    assert stop_process(process) == 7
    zombie = subprocess.Popen([sys.executable, "-c", "raise SystemExit(5)"], stdin=subprocess.DEVNULL)
    assert wait_for(lambda: _state(zombie.pid) == "Z", timeout=30)  # exited, not yet reaped
    assert stop_process(zombie) == 5  # the SIGTERM, if any, found nobody to end


def test_a_driver_stops_cleanly_on_sigterm_and_leaves_no_socket(tmp_path: Path) -> None:
    with start_driver(tmp_path) as driver:
        assert stop_process(driver.process) == 0
        assert not Path(driver.socket_path).exists()
        assert stop_process(driver.process) == 0  # start_driver's own stop finds it reaped
