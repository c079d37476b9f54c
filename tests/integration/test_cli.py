"""The command line: read, status, serve's options, and one readable line for every failure."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DriverProcess


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sharingmemory", *args],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def test_read_json_is_a_snapshot_of_the_page(driver: DriverProcess) -> None:
    result = run("read", "--socket", driver.socket_path, "--json")
    assert result.returncode == 0, result.stderr
    snap = json.loads(result.stdout)
    assert snap["state_name"] == "running"
    assert snap["writer_pid"] == driver.pid
    assert snap["local_time"] == snap["system_time"] - snap["time_zone_bias"]
    read_at = dt.datetime.fromisoformat(snap["system_datetime"])
    assert abs(read_at - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=5)


def test_status_json_has_the_documented_keys(driver: DriverProcess) -> None:
    result = run("status", "--socket", driver.socket_path, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert {"handles", "mapped_handles", "page_allocated", "timer_running", "ticks"} <= status.keys()
    assert status["handles"] == 1  # its own
    assert status["page_allocated"] is False
    assert status["pid"] == driver.pid


def test_the_socket_environment_variable_names_the_device(driver: DriverProcess) -> None:
    env = dict(os.environ, SHARINGMEMORY_SOCKET=driver.socket_path)
    result = run("read", env=env)
    assert result.returncode == 0, result.stderr
    assert "running" in result.stdout


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("read", "--socket", "/nonexistent/SharingMemory"), 1, "no driver is serving /nonexistent/SharingMemory"),
        (("status", "--socket", "/nonexistent/x"), 1, "no driver"),
        (("serve", "--interval", "0.5ms"), 2, "shorter than the 1 ms minimum"),
        (("serve", "--interval", "soon"), 2, "invalid duration 'soon'"),
        (("serve", "--socket-mode", "999"), 2, "invalid mode"),
        (("serve", "--allow-uid", "alice"), 2, "invalid id"),
        (("watch", "--count", "0"), 2, "not a positive number"),
        (("frobnicate",), 2, "invalid choice"),
    ],
)
def test_failures_are_one_line_and_a_status(args: tuple[str, ...], status: int, message: str) -> None:
    result = run(*args)
    assert result.returncode == status
    lines = [line for line in result.stderr.splitlines() if not line.startswith("usage:") and line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_serve_refuses_an_unusable_socket_path_in_one_line(tmp_path: Path) -> None:
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("mine")
    result = run("serve", "--socket", str(not_a_socket))
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("is not a socket; refusing to replace it [STATUS_DEVICE_CONFIGURATION_ERROR (0xC0000182)]")
    )
    assert not_a_socket.read_text() == "mine"


@pytest.mark.parametrize("command", ["serve", "watch", "read", "status"])
def test_help_everywhere(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert "--socket" in result.stdout


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("sharingmemory ")
