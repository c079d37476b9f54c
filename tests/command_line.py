"""Running `python -m sharingmemory` as a person or a service manager does, for the tests of what
the command line prints and how it exits."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

# How a service manager speaks to its service (sd_listen_fds(3), sd_watchdog_enabled(3),
# sd_notify(3)), and the device's own variable: a test run under systemd, or from a shell that
# set one of them, must not hand it on to the process under test by accident.
SERVICE_VARIABLES = (
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "NOTIFY_SOCKET",
    "SHARINGMEMORY_SOCKET",
)


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without `SERVICE_VARIABLES`, with `extra` set."""
    env = {key: value for key, value in os.environ.items() if key not in SERVICE_VARIABLES}
    env.update(extra)
    return env


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m sharingmemory ARGS` to its end, output captured as text, stdin closed; in
    `clean_environ()` unless `env` is given."""
    return subprocess.run(
        [sys.executable, "-m", "sharingmemory", *args],
        env=clean_environ() if env is None else env,
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failure prints on stderr; fails the test if there are more, or a traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]
