"""Who may produce and who may read a section, with a real second uid (65534, nobody).

The other uid runs Debian's /usr/bin/python3 with the source tree on PYTHONPATH (the venv's
interpreter is not readable by other uids), as tests/integration/test_security.py does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import sharingmemory
from tests.integration.test_security import NOBODY, SYSTEM_PYTHON, _readable_by_others, _source_tree
from tests.support import start_driver

needs_other_uid = pytest.mark.skipif(
    os.getuid() != 0 or not os.path.exists(SYSTEM_PYTHON) or not _readable_by_others(_source_tree()),
    reason="needs root (to drop to uid 65534), /usr/bin/python3 and a source tree readable by other uids",
)
pytestmark = needs_other_uid

_REACHABLE = ("--dir-mode", "0755", "--socket-mode", "0666", "--allow-uid", str(NOBODY))

# What the other uid runs: create or open a section, and print how it went in one line.
_CLIENT = """
import sys, sharingmemory
command, path, name = sys.argv[1:4]
try:
    with sharingmemory.open_device(path, "rw" if command == "create" else "r") as device:
        if command == "create":
            device.create_section(name, [sharingmemory.Field("x", "f64")]).publish(x=1.5)
            print("ok")
        else:
            print("ok", device.open_section(name).read().as_dict())
except sharingmemory.NtStatusError as err:
    print(type(err).__name__, hex(err.status))
"""


def _as_nobody(command: str, socket_path: str, name: str) -> str:
    env = {"PYTHONPATH": _source_tree(), "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", _CLIENT, command, socket_path, name],
        user=NOBODY, group=NOBODY, extra_groups=[], env=env, cwd="/",
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_producer_outside_the_policy_is_refused(open_dir: Path) -> None:
    with start_driver(open_dir, *_REACHABLE) as driver:
        assert _as_nobody("create", driver.socket_path, "theirs") == "AccessDenied 0xc0000022"
        assert "not an allowed producer" in driver.log()
        with driver.open() as device:
            assert device.list_sections() == []


def test_allow_producer_uid_admits_it(open_dir: Path) -> None:
    with start_driver(open_dir, *_REACHABLE, "--allow-producer-uid", str(NOBODY)) as driver:
        assert _as_nobody("create", driver.socket_path, "theirs") == "ok"  # and it stopped when it exited
        assert "section theirs stopped" in driver.log()


def test_allow_producer_gid_admits_its_members(open_dir: Path) -> None:
    with start_driver(open_dir, *_REACHABLE, "--allow-producer-gid", str(NOBODY)) as driver:
        assert _as_nobody("create", driver.socket_path, "theirs") == "ok"


@pytest.mark.parametrize(
    ("readers", "expected"),
    [
        ({}, "ok {'x': 0.0}"),
        ({"readers_uids": [NOBODY]}, "ok {'x': 0.0}"),
        ({"readers_gids": [NOBODY]}, "ok {'x': 0.0}"),
        ({"readers_uids": [12345]}, "AccessDenied 0xc0000022"),
        ({"readers_uids": [12345], "readers_gids": [54321]}, "AccessDenied 0xc0000022"),
    ],
    ids=["everyone", "by-uid", "by-gid", "other-uid", "other-uid-and-gid"],
)
def test_a_sections_reader_list(open_dir: Path, readers: dict[str, list[int]], expected: str) -> None:
    with start_driver(open_dir, *_REACHABLE) as driver, driver.open("rw") as device:
        device.create_section("private", [sharingmemory.Field("x", "f64")], **readers)
        assert _as_nobody("read", driver.socket_path, "private") == expected
