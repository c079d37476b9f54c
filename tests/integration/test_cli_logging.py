"""Logging at the command line: -v/-q on either side of the subcommand, and journald's form.

Under systemd, JOURNAL_STREAM names the stream the service's stderr is (`DEV:INODE`); the test
makes a real one the same way: a file as the driver's stderr and its own device and inode in the
variable, then the same file with a variable that names another inode (a child that
inherited the variable but not the stream), which must keep the plain form.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sharingmemory

PRIORITY = re.compile(r"^<([0-7])>sharingmemory\.\S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL): ")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
EXPECTED = {"DEBUG": "7", "INFO": "6", "WARNING": "4", "ERROR": "3", "CRITICAL": "2"}


def journal_environ(fd: int, stream: str | None) -> dict[str, str]:
    """The environment with JOURNAL_STREAM naming `fd` ("match"), a near miss ("other inode"),
    the given text, or unset (None)."""
    stat = os.fstat(fd)
    env = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    if stream == "match":
        env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
    elif stream == "other inode":
        env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino + 1}"
    elif stream is not None:
        env["JOURNAL_STREAM"] = stream
    return env


def check_config(tmp_path: Path, stream: str | None, *args: str) -> list[str]:
    """`serve --check-config ...` with stderr into a file; its lines."""
    log = tmp_path / "stderr"
    with open(log, "wb") as err:
        env = journal_environ(err.fileno(), stream)
        subprocess.run(
            [sys.executable, "-m", "sharingmemory", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env, timeout=60, check=False,
        )  # fmt: skip
    return log.read_text().splitlines()


def serve_lines(tmp_path: Path, stream: str | None) -> list[str]:
    """A real driver started and stopped, logging at DEBUG and WARNING (-vv, and a `--socket-mode`
    that is fine): the lines it wrote."""
    log = tmp_path / "stderr"
    socket_path = tmp_path / "dev" / "SharingMemory"
    with open(log, "wb") as err:
        env = journal_environ(err.fileno(), stream)
        process = subprocess.Popen(
            [sys.executable, "-m", "sharingmemory", "serve", "-vv", "--socket", str(socket_path), "--interval", "10ms"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
        )  # fmt: skip
    try:
        for _ in range(1000):
            if b" ready (driver pid" in log.read_bytes() or process.poll() is not None:
                break
            time.sleep(0.01)
        # A client maps the page, so the driver logs its resources (DEBUG) and the page's lock.
        with sharingmemory.open_device(str(socket_path), map=True) as device:
            device.map_shared_memory().wait_next(timeout=10)
    finally:
        process.terminate()
        process.wait(30)
    return log.read_text().splitlines()


def test_under_journald_lines_carry_a_priority_and_no_timestamp(tmp_path: Path) -> None:
    # `serve -vv`, the subcommand's own -v, as the docs write it: DEBUG lines prove it counted.
    lines = serve_lines(tmp_path, "match")
    assert len(lines) >= 3, lines
    levels = set()
    for line in lines:
        match = PRIORITY.match(line)
        assert match, f"no priority prefix: {line!r}"
        assert EXPECTED[match[2]] == match[1], line
        assert not TIMESTAMP.search(line[3:]), f"a timestamp the journal would double: {line!r}"
        levels.add(match[2])
    assert {"DEBUG", "INFO"} <= levels, lines


@pytest.mark.parametrize("stream", [None, "other inode", "", "garbage", "1:2:3", ":", "99999999999999999999999:1"])
def test_elsewhere_lines_keep_their_timestamp(tmp_path: Path, stream: str | None) -> None:
    lines = serve_lines(tmp_path, stream)
    assert lines and all(TIMESTAMP.match(line) for line in lines), lines
    assert not any(line.startswith("<") for line in lines)


@pytest.mark.parametrize(
    "args",
    [("serve", "-vv"), ("-v", "serve", "-v"), ("serve", "--verbose", "--verbose"), ("-vv", "serve")],
)
def test_verbosity_is_accepted_after_the_subcommand_too(tmp_path: Path, args: tuple[str, ...]) -> None:
    socket_path = str(tmp_path / "d" / "S")
    lines = check_config(tmp_path, None, *args, "--socket", socket_path, "--check-config")
    assert not any("error" in line for line in lines), lines


@pytest.mark.parametrize(
    "args", [("-q", "serve", "-v"), ("serve", "-q", "-v"), ("-v", "status", "-q"), ("status", "-vq")]
)
def test_quiet_and_verbose_together_are_a_usage_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sharingmemory", *args, "--socket", str(tmp_path / "S")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "not allowed with" in result.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_silences_the_private_driver_notice(tmp_path: Path, where: str) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = dict(os.environ, SHARINGMEMORY_SOCKET=str(tmp_path / "none" / "S"), TMPDIR=str(temporary))
    args = ["-q", "watch"] if where == "before" else ["watch", "-q"]
    result = subprocess.run(
        [sys.executable, "-m", "sharingmemory", *args, "--count", "1", "--interval", "10ms"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    assert len(result.stdout.splitlines()) == 1
    loud = subprocess.run(
        [sys.executable, "-m", "sharingmemory", "watch", "--count", "1", "--interval", "10ms"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False, env=env,
    )  # fmt: skip
    assert "started a private driver" in loud.stderr, "without -q the notice is there (the test can fail)"
