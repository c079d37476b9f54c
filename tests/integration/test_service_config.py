"""The service side of issue 10: --socket-group, supplementary groups, directories that are
refused rather than ignored, --check-config for paths that can never work, and SIGHUP."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.support import start_driver, wait_for

SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sharingmemory", "serve", *args],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sharingmemory: error: "), lines[0]
    return lines[0]


# --- groups: primary or supplementary ---------------------------------------------------------------


def _a_group_nobody_is_not_in() -> grp.struct_group | None:
    for name in ("users", "staff", "src"):
        try:
            group = grp.getgrnam(name)
        except KeyError:
            continue
        if group.gr_gid != NOBODY and "nobody" not in group.gr_mem:
            return group
    return None


GROUP = _a_group_nobody_is_not_in()
_source_tree = str(Path(__file__).resolve().parents[2] / "src")
needs_nobody = pytest.mark.skipif(
    os.getuid() != 0 or not os.path.exists(SYSTEM_PYTHON) or GROUP is None,
    reason="needs root (to run a client as uid 65534), /usr/bin/python3 and a group nobody is not in",
)

_CLIENT = textwrap.dedent(
    """
    import sys, sharingmemory
    try:
        with sharingmemory.open_device(sys.argv[1], timeout=5) as device:
            print("ok", device.map_shared_memory().read().tick_count >= 0)
    except (sharingmemory.NtStatusError, OSError) as err:
        print(type(err).__name__)
    """
)


def _client_as_nobody(socket_path: str, extra_groups: list[int]) -> str:
    copy = Path(tempfile.mkdtemp(prefix="sharingmemory-src-"))
    try:
        shutil.copytree(Path(_source_tree) / "sharingmemory", copy / "sharingmemory")
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", _CLIENT, socket_path],
            user=NOBODY, group=NOBODY, extra_groups=extra_groups, cwd="/",
            env={"PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@needs_nobody
def test_socket_group_members_open_the_device_through_a_supplementary_group(open_dir: Path) -> None:
    assert GROUP is not None
    with start_driver(open_dir, "--socket-group", GROUP.gr_name) as driver:
        socket_info, dir_info = os.stat(driver.socket_path), os.stat(os.path.dirname(driver.socket_path))
        assert (socket_info.st_gid, stat.S_IMODE(socket_info.st_mode)) == (GROUP.gr_gid, 0o660)
        assert (dir_info.st_gid, stat.S_IMODE(dir_info.st_mode)) == (GROUP.gr_gid, 0o750)
        assert _client_as_nobody(driver.socket_path, [GROUP.gr_gid]) == "ok True"
        # Without the group: the directory (0750) already keeps it out.
        assert _client_as_nobody(driver.socket_path, []) in {"PermissionError", "AccessDenied", "DeviceNotFound"}


@needs_nobody
@pytest.mark.parametrize("how", ["--allow-gid", "--socket-group"])
def test_the_policy_counts_supplementary_groups(open_dir: Path, how: str) -> None:
    """The socket reachable by everyone, so only the driver's own check decides."""
    assert GROUP is not None
    value = str(GROUP.gr_gid) if how == "--allow-gid" else GROUP.gr_name
    reachable = ("--dir-mode", "0755", "--socket-mode", "0666")
    with start_driver(open_dir, how, value, *reachable) as driver:
        assert _client_as_nobody(driver.socket_path, [GROUP.gr_gid]) == "ok True"
        assert _client_as_nobody(driver.socket_path, []) == "AccessDenied"


def test_an_unknown_socket_group_is_a_usage_error(tmp_path: Path) -> None:
    line = _one_error_line(_serve("--socket", str(tmp_path / "d" / "s"), "--socket-group", "no-such-group-x"))
    assert "no such group" in line


# --- a directory's mode or group is applied or refused, never ignored ---------------------------------


@pytest.mark.parametrize("check", [(), ("--check-config",)], ids=["serve", "check-config"])
@pytest.mark.parametrize(
    ("existing_mode", "args"),
    [(0o755, ("--dir-mode", "0750")), (0o700, ("--dir-mode", "0750")), (0o750, ("--socket-group", "0"))],
)
def test_an_existing_directory_that_differs_is_refused(
    tmp_path: Path, existing_mode: int, args: tuple[str, ...], check: tuple[str, ...]
) -> None:
    directory = tmp_path / "dev"
    directory.mkdir()
    directory.chmod(existing_mode)
    if args[0] == "--socket-group":
        if os.getuid() != 0:
            pytest.skip("needs root, to give the directory a group other than gid 0")
        os.chown(directory, -1, 1)
    line = _one_error_line(_serve("--socket", str(directory / "SharingMemory"), *args, *check))
    assert "exists with" in line, line
    assert stat.S_IMODE(directory.stat().st_mode) == existing_mode  # untouched


def test_an_existing_directory_that_matches_is_used(tmp_path: Path) -> None:
    directory = tmp_path / "dev"
    directory.mkdir()
    directory.chmod(0o750)
    result = _serve("--socket", str(directory / "SharingMemory"), "--dir-mode", "0750", "--check-config")
    assert result.returncode == 0 and "configuration OK" in result.stdout, result.stderr


@pytest.mark.parametrize("path", ["/proc/x/y", "/proc/self/SharingMemory", "/sys/x/SharingMemory"])
def test_check_config_reports_paths_that_can_never_be_bound(path: str) -> None:
    line = _one_error_line(_serve("--socket", path, "--check-config"))
    assert "holds no sockets" in line or "missing" in line, line


# --- SIGHUP ----------------------------------------------------------------------------------------------


def test_sighup_is_logged_and_the_driver_keeps_serving(tmp_path: Path) -> None:
    with start_driver(tmp_path, interval="50ms") as driver:
        for count in (1, 2):
            driver.process.send_signal(signal.SIGHUP)
            assert wait_for(lambda n=count: driver.log().count("SIGHUP: ") == n)
            assert driver.process.poll() is None
            assert driver.status().pid == driver.pid
        line = next(line for line in driver.log().splitlines() if "SIGHUP: " in line)
        assert "time zone re-read" in line and "other settings need a restart" in line


@pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("unshare") is None or not os.path.exists("/usr/share/zoneinfo/Asia/Kolkata"),
    reason="needs root and unshare (a private /etc/localtime for the driver) and tzdata",
)
def test_sighup_rereads_a_changed_local_time_zone(tmp_path: Path) -> None:
    """The driver sees its own /etc/localtime (bind-mounted in a private mount namespace); the
    file changes under it, and after SIGHUP the page's bias follows at the next tick."""
    zone = tmp_path / "localtime"
    shutil.copyfile("/usr/share/zoneinfo/Etc/UTC", zone)
    # glibc re-reads a zone file only if its inode or mtime (in whole seconds) changed.
    os.utime(zone, (0, 0))
    prefix = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/localtime && exec "$@"', str(zone)]
    env_tz = os.environ.pop("TZ", None)
    try:
        with start_driver(tmp_path, interval="50ms", prefix=prefix) as driver, driver.open() as device:
            page = device.map_shared_memory()
            assert page.wait_next(timeout=5).time_zone_bias == 0
            zone.write_bytes(Path("/usr/share/zoneinfo/Asia/Kolkata").read_bytes())  # in place: the mount stays
            driver.process.send_signal(signal.SIGHUP)
            assert wait_for(lambda: "SIGHUP: " in driver.log())
            # Windows bias: UTC minus local, in minutes; India is UTC+05:30.
            assert wait_for(lambda: page.wait_next(timeout=5).time_zone_bias == -330 * 60 * 10_000_000)
    finally:
        if env_tz is not None:
            os.environ["TZ"] = env_tz
