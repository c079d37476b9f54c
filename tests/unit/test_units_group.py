"""The system units serve the group `sharingmemory`, which a sysusers.d snippet creates (issue 10)."""

from __future__ import annotations

import shlex

from sharingmemory.cli import systemd_units as _units
from tests.unit.test_units import PYTHON, parse


def test_system_units_serve_the_sharingmemory_group() -> None:
    files = _units.units(PYTHON, user=False)
    service = parse(files[_units.SERVICE_UNIT])["Service"]
    socket = parse(files[_units.SOCKET_UNIT])["Socket"]
    assert shlex.split(service["ExecStart"])[-2:] == ["--socket-group", "sharingmemory"]  # the policy admits it
    assert (socket["SocketGroup"], socket["SocketMode"]) == ("sharingmemory", "0660")
    # Created root:root by systemd before the driver runs: members must be able to traverse it.
    assert socket["DirectoryMode"] == service["RuntimeDirectoryMode"] == "0755"


def test_user_units_serve_no_group() -> None:
    files = _units.units(PYTHON, user=True)
    assert "SocketGroup" not in parse(files[_units.SOCKET_UNIT])["Socket"]
    assert "--socket-group" not in files[_units.SERVICE_UNIT]


def test_the_sysusers_snippet_creates_the_group_and_nothing_else() -> None:
    lines = [line for line in _units.sysusers_snippet(version="1.0").splitlines() if not line.startswith("#")]
    assert lines == ["g sharingmemory -"]
