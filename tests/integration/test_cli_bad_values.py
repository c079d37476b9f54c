"""Issue 9 at the command line: every bad value is one line on stderr and a non-zero exit.

Each case runs the real command (`python -m sharingmemory ...`), against a real driver where the
value only matters once a device is open, and accepts one form only: exit 2 and one
`sharingmemory ...: error: ...` line for a bad option, exit 1 and one `sharingmemory: error:
...` line for a failure at run time; never a traceback, never an "Exception ignored" line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DriverProcess, start_driver

DIGITS_400 = "1" * 400


def run(
    *args: str, env: dict[str, str] | None = None, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sharingmemory", *args],
        stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def assert_one_error_line(
    result: subprocess.CompletedProcess[str], status: int, *words: str, longest: int = 300
) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sharingmemory") and ": error: " in lines[0], lines[0]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert len(lines[0]) < longest, "a 400-digit value is cut in the error line"
    return lines[0]


BAD_INTERVALS = [
    "1e400s",  # not a duration at all: no exponents
    DIGITS_400,  # seconds: a float would be inf and round() an OverflowError
    f"{DIGITS_400}ns",
    "15000m",  # over the driver's one-day maximum (_driver.MAX_INTERVAL_NS)
    "86401s",
    "86400000000001ns",
    "0.5ms",  # under the 1 ms minimum
    "-1s",
    "nan",
    "inf",
    "",
]


@pytest.mark.parametrize("command", ["watch", "gui", "serve"])
@pytest.mark.parametrize("interval", BAD_INTERVALS)
def test_a_bad_interval_is_a_usage_error_at_once(command: str, interval: str) -> None:
    args = [command, "--interval", interval]
    if command == "serve":
        args += ["--check-config", "--socket", "/nonexistent-dir-for-test/x"]
    assert_one_error_line(run(*args), 2, "--interval")


@pytest.mark.parametrize("interval", ["86400s", "1440m", "1ms", f"0.{DIGITS_400}"])
def test_an_interval_up_to_a_day_is_accepted(interval: str, tmp_path: Path) -> None:
    result = run("serve", "--interval", interval, "--check-config", "--socket", str(tmp_path / "d" / "S"))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["watch", "read", "status", "gui"])
@pytest.mark.parametrize("timeout", ["inf", "-inf", "nan", "-1", "0", "1e300", "86401", DIGITS_400, "x", ""])
def test_a_bad_timeout_is_a_usage_error(command: str, timeout: str) -> None:
    assert_one_error_line(run(command, "--socket", "/nonexistent/x", "--timeout", timeout), 2, "--timeout")


@pytest.mark.parametrize("command", ["watch", "gui"])
@pytest.mark.parametrize("count", ["9" * 5000, DIGITS_400, str(2**63), "0", "-3", "1.5", "x"])
def test_a_bad_count_is_a_usage_error(command: str, count: str) -> None:
    assert_one_error_line(run(command, "--socket", "/nonexistent/x", "--count", count), 2, "--count")


@pytest.mark.parametrize(("count", "timeout"), [(str(2**63 - 1), "86400"), ("1", "2.5"), ("00001", "3e0")])
def test_the_bounds_themselves_are_accepted(driver: DriverProcess, count: str, timeout: str) -> None:
    result = run("watch", "--socket", driver.socket_path, "--count", "1", "--timeout", timeout)
    assert result.returncode == 0, result.stderr
    result = run("gui", "--count", count, "--socket", "/nonexistent/x")
    assert "--count" not in result.stderr, result.stderr


@pytest.mark.parametrize("args", [("read",), ("read", "--json"), ("status",), ("status", "--json"),
                                  ("status", "--prometheus")])  # fmt: skip
def test_a_full_disk_is_one_line(driver: DriverProcess, args: tuple[str, ...]) -> None:
    with open("/dev/full", "w") as full:
        result = run(*args, "--socket", driver.socket_path, stdout=full.fileno())
    assert_one_error_line(result, 1, "cannot write the output", "No space left on device")


def test_watch_into_a_full_disk_is_one_line(driver: DriverProcess) -> None:
    with open("/dev/full", "w") as full:
        result = run("watch", "--socket", driver.socket_path, "--count", "1", stdout=full.fileno())
    assert_one_error_line(result, 1, "No space left on device")


@pytest.mark.parametrize("encoding", ["ascii", "latin-1", "cp1252"])
@pytest.mark.parametrize("args", [("read",), ("status",), ("watch", "--count", "1")])
def test_a_narrow_encoding_is_no_traceback(driver: DriverProcess, encoding: str, args: tuple[str, ...]) -> None:
    env = dict(os.environ, PYTHONIOENCODING=encoding, LANG="C", LC_ALL="C")
    result = run(*args, "--socket", driver.socket_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip()


@pytest.mark.parametrize(
    ("zone", "offset"),
    [
        ("ABC-5:30:15", "+05:30:15"),
        ("ABC+3:00:07", "-03:00:07"),
        ("ABC-5:30", "+05:30"),
        ("ABC-0:00:01", "+00:00:01"),
        ("UTC0", "+00:00"),
    ],
)
def test_read_shows_an_offset_with_seconds(
    zone: str, offset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", zone)  # the driver's zone; the client shows what the page holds
    with start_driver(tmp_path) as driver:
        env = {key: value for key, value in os.environ.items() if key != "TZ"}
        result = run("read", "--socket", driver.socket_path, env=env)
    assert result.returncode == 0, result.stderr
    stamp = result.stdout.split("  ")[0]
    assert stamp.endswith(offset), result.stdout


@pytest.mark.parametrize(
    ("zone", "offset"), [("ABC-24", "+24:00"), ("ABC+24", "-24:00"), ("ABC-24:59:59", "+24:59:59")]
)
def test_a_zone_of_24_hours_or_more_is_shown_not_a_traceback(
    zone: str, offset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", zone)  # legal POSIX TZ (tzset(3)); datetime refuses such offsets
    with start_driver(tmp_path, interval="20ms") as driver:
        monkeypatch.delenv("TZ")
        text = run("read", "--socket", driver.socket_path)
        as_json = run("read", "--json", "--socket", driver.socket_path)
        watched = run("watch", "--count", "2", "--socket", driver.socket_path)
        watched_json = run("watch", "--json", "--count", "2", "--socket", driver.socket_path)
    for result in (text, as_json, watched, watched_json):
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    assert text.stdout.split("  ")[0].endswith(offset), text.stdout
    assert f'{offset}"' in as_json.stdout
    assert len(watched.stdout.splitlines()) == 2


@pytest.mark.parametrize("command", ["read", "status", "watch", "gui"])
@pytest.mark.parametrize("socket", ["", "\\\\.\\Other", "\\\\.\\", "\\\\.\\SharingMemory2"])
def test_a_bad_device_name_is_a_usage_error(command: str, socket: str) -> None:
    assert_one_error_line(run(command, "--socket", socket), 2, "--socket")


@pytest.mark.parametrize(
    "socket", ["/tmp/" + "x" * 200, "/etc/passwd", "/", "/nonexistent/é/ü", "/tmp/line\nbreak", "/tmp/\x1b[2J\x1e\r"]
)
def test_a_socket_path_with_no_driver_is_one_line(socket: str) -> None:
    # The path itself is shown whole (it may be all a user has to go on), so the bound grows with it.
    assert_one_error_line(run("read", "--socket", socket), 1, longest=300 + len(socket))


#: Runs the command with RLIMIT_NOFILE set, once Python and the package are imported, to as
#: many fds as are open plus `spare` (argv[1]): the connection, its page or the tick eventfd
#: then fail with EMFILE at one step or another.
LOW_FDS = """
import os, resource, sys
from sharingmemory.cli import main
spare = int(sys.argv[1])
used = len(os.listdir("/proc/self/fd")) - 1  # the listing's own fd is gone again
resource.setrlimit(resource.RLIMIT_NOFILE, (used + spare, used + spare))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("args", [("read",), ("status",), ("watch", "--count", "1")])
def test_no_free_fds_is_one_line(driver: DriverProcess, args: tuple[str, ...]) -> None:
    failed: list[int] = []
    for spare in range(4):
        _run_with_few_fds(driver, spare, args, failed)
    assert failed[0] == 1, "with no spare fd at all the command must fail (else the test tests nothing)"


def _run_with_few_fds(driver: DriverProcess, spare: int, args: tuple[str, ...], failed: list[int]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOW_FDS, str(spare), *args, "--socket", driver.socket_path],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    if result.returncode == 0:  # enough after all (status needs the socket only)
        assert spare > 0 and result.stdout.strip() and not result.stderr
    else:
        assert_one_error_line(result, 1)
    failed.append(result.returncode)
