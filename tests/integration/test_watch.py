"""`sharingmemory watch` against real drivers: what it prints where, how it ends, how it follows.

A terminal is a real pseudo-terminal (`pty.openpty()`), so the live display is tested as a
person's terminal would receive it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sharingmemory.cli.private_driver import stop_process
from tests.support import DriverProcess, start_driver

PLAIN_LINE = re.compile(r"^(\d\d:\d\d:\d\d)  tick (\d+)  late \S+ \S+  running  pid (\d+)  instance ([0-9a-f]{8})$")
SGR = re.compile(rb"\x1b\[[0-9;]*m")
HIDE_CURSOR, SHOW_CURSOR = b"\x1b[?25l", b"\x1b[?25h"


def watch(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sharingmemory", "watch", *args],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


@contextmanager
def watching(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A `watch` left running, its stdout and stderr piped; killed if the test leaves it running."""
    with subprocess.Popen(
        [sys.executable, "-m", "sharingmemory", "watch", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as process:  # fmt: skip
        try:
            yield process
        finally:
            stop_process(process)


def next_line(process: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """The next line of `process`'s stdout; fails the test if none comes within `timeout`."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"watch printed no line within {timeout} s")
    line = process.stdout.readline()
    assert line, "watch ended before its next line"
    return line.decode()


def run_in_terminal(args: list[str], env: dict[str, str], interrupt_after: bytes | None = None) -> tuple[int, bytes]:
    """Run `watch` with its stdout on a pseudo-terminal; returns its exit status and all it wrote
    there. With `interrupt_after`, SIGINT is sent (as Ctrl-C would) once that output was seen."""
    master, slave = pty.openpty()
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "sharingmemory", "watch", *args],
            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL, env=env,
        ) as process:  # fmt: skip
            os.close(slave)
            slave = -1
            output = b""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 1.0)
                if not ready:
                    continue
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal has gone
                    break
                if not chunk:
                    break
                output += chunk
                if interrupt_after is not None and output.count(interrupt_after) >= 2:
                    process.send_signal(signal.SIGINT)
                    interrupt_after = None
            return process.wait(30), output
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


# --- plain lines and JSON ---------------------------------------------------------------------


def test_plain_lines_when_stdout_is_not_a_terminal(fast_driver: DriverProcess) -> None:
    result = watch("--socket", fast_driver.socket_path, "--count", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    matches = [PLAIN_LINE.match(line) for line in lines]
    assert all(matches), lines
    ticks = [int(match[2]) for match in matches if match]
    assert ticks == sorted(set(ticks))
    assert {int(match[3]) for match in matches if match} == {fast_driver.pid}
    assert "\x1b" not in result.stdout


def test_the_plain_line_is_the_time_in_the_page(tmp_path: Path) -> None:
    # A slow driver and a page held open by the test: watch maps the same page and reads the
    # same tick the test reads.
    with start_driver(tmp_path, interval="30s") as driver, driver.open() as device:
        snap = device.map_shared_memory().read()
        result = watch("--socket", driver.socket_path, "--count", "1")
    assert result.returncode == 0, result.stderr
    match = PLAIN_LINE.match(result.stdout.strip())
    assert match, result.stdout
    assert match[1] == f"{snap.local_datetime:%H:%M:%S}"
    assert int(match[2]) == snap.tick_count
    assert match[4] == snap.instance_id.hex()[:8]


def test_json_is_one_object_per_tick(fast_driver: DriverProcess) -> None:
    result = watch("--socket", fast_driver.socket_path, "--count", "3", "--json")
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(objects) == 3
    instance = fast_driver.status().instance_id.hex()
    for data in objects:
        assert data["writer_pid"] == fast_driver.pid
        assert data["instance_id"] == instance
        assert data["state_name"] == "running"
        local = dt.datetime.fromisoformat(data["local_datetime"])
        utc = dt.datetime.fromisoformat(data["system_datetime"])
        assert local == utc  # one instant, two offsets
        assert data["local_time"] == data["system_time"] - data["time_zone_bias"]
        assert data["late_ns"] is None or data["late_ns"] >= 0
    ticks = [data["tick_count"] for data in objects]
    assert ticks == sorted(set(ticks))


# --- the terminal ----------------------------------------------------------------------------


def _terminal_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("NO_COLOR", "TERM")}
    return dict(env, COLUMNS="100", LINES="30", **extra)


def test_a_terminal_gets_the_live_display_in_colour(fast_driver: DriverProcess) -> None:
    status, output = run_in_terminal(["--socket", fast_driver.socket_path, "--count", "3"], _terminal_env(TERM="xterm"))
    assert status == 0
    assert output.startswith(HIDE_CURSOR) and output.rstrip().endswith(SHOW_CURSOR)
    assert "██".encode() in output  # the big clock
    assert b"\x1b[14F" in output  # redrawn in place: back up over the last frame
    assert SGR.search(output)
    assert f"pid {fast_driver.pid}".encode() in output


def test_no_color_is_respected(fast_driver: DriverProcess) -> None:
    env = _terminal_env(TERM="xterm", NO_COLOR="1")
    status, output = run_in_terminal(["--socket", fast_driver.socket_path, "--count", "3"], env)
    assert status == 0
    assert "██".encode() in output
    assert HIDE_CURSOR in output
    assert not SGR.search(output), output


def test_a_dumb_terminal_gets_plain_lines(fast_driver: DriverProcess) -> None:
    env = _terminal_env(TERM="dumb")
    status, output = run_in_terminal(["--socket", fast_driver.socket_path, "--count", "2"], env)
    assert status == 0
    assert b"\x1b" not in output
    lines = output.decode().splitlines()
    assert len(lines) == 2
    assert all(PLAIN_LINE.match(line) for line in lines), lines


def test_ctrl_c_exits_130_and_restores_the_terminal(fast_driver: DriverProcess) -> None:
    env = _terminal_env(TERM="xterm")
    status, output = run_in_terminal(["--socket", fast_driver.socket_path], env, interrupt_after=b"Ctrl-C quits")
    assert status == 130
    assert output.rstrip().endswith(SHOW_CURSOR)
    assert b"Traceback" not in output


# --- when the driver goes ----------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_driver_ends_the_watch_with_status_3(tmp_path: Path, signum: signal.Signals) -> None:
    with start_driver(tmp_path, interval="100ms") as driver, watching("--socket", driver.socket_path) as process:
        assert PLAIN_LINE.match(next_line(process).rstrip())
        driver.process.send_signal(signum)
        driver.process.wait(10)
        status = process.wait(30)
        assert process.stderr is not None
        errors = process.stderr.read().decode().splitlines()
    assert status == 3, errors
    assert len(errors) == 1, errors
    assert errors[0].startswith("sharingmemory: error: the driver stopped")
    assert f"pid {driver.pid}" in errors[0]


def test_follow_picks_up_a_new_driver_at_the_same_path(tmp_path: Path) -> None:
    with (
        start_driver(tmp_path, interval="100ms") as first,
        watching("--socket", first.socket_path, "--follow", "--json") as process,
    ):
        old = json.loads(next_line(process))
        assert old["writer_pid"] == first.pid
        first.terminate()
        with start_driver(tmp_path, interval="100ms") as second:  # the same socket path
            while (data := json.loads(next_line(process)))["writer_pid"] != second.pid:
                assert data["writer_pid"] == first.pid
            assert data["instance_id"] != old["instance_id"]
            assert data["instance_id"] == second.status().instance_id.hex()
            process.send_signal(signal.SIGINT)
            assert process.wait(30) == 130
        assert process.stderr is not None
        errors = process.stderr.read().decode()
    assert "the driver stopped; waiting for a driver at" in errors
    assert f"new driver: instance {data['instance_id'][:8]} (was {old['instance_id'][:8]}), pid {second.pid}" in errors
    assert "Traceback" not in errors


# --- the private driver ------------------------------------------------------------------------


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as cmdline:
                    if text.encode() in cmdline.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


def test_with_no_driver_watch_starts_a_private_one_and_leaves_nothing(tmp_path: Path) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    socket_path = tmp_path / "empty" / "SharingMemory"
    env = dict(os.environ, SHARINGMEMORY_SOCKET=str(socket_path), TMPDIR=str(temporary))
    result = watch("--count", "2", "--interval", "50ms", env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    match = re.search(r"started a private driver \(pid (\d+)\)", result.stderr)
    assert match, result.stderr
    private_pid = int(match[1])
    assert all(PLAIN_LINE.match(line) and f"pid {private_pid} " in line for line in result.stdout.splitlines())
    assert not os.path.exists(f"/proc/{private_pid}"), "the private driver outlived the watch"
    assert not _processes_mentioning(str(temporary)), "a process still runs from the private directory"
    assert list(temporary.iterdir()) == [], "the private driver's directory was left behind"
    assert not socket_path.exists() and not socket_path.parent.exists()
