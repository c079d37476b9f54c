"""`install-unit`: the systemd units written where systemd looks, checked by systemd's own tools.

The units' text itself is tested pure in tests/unit/test_units.py; here the command writes it to
real directories, all or nothing, and `systemd-analyze verify` reads what it wrote.
"""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.command_line import clean_environ, one_line, run_cli

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _install(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("install-unit", *args, env=env)


def _parse_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # unit keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_install_unit_writes_both_units_and_says_what_next(tmp_path: Path) -> None:
    units = tmp_path / "units"
    result = _install("--dir", str(units))
    assert result.returncode == 0, result.stderr
    service, socket_unit = units / "sharingmemory.service", units / "sharingmemory.socket"
    sysusers = units / "sharingmemory.conf"  # the group the system units serve, beside them with --dir
    assert result.stdout.splitlines() == [
        f"wrote {service}",
        f"wrote {socket_unit}",
        f"wrote {sysusers}",
        *([line for line in result.stdout.splitlines() if line.startswith("note: ")]),
        "next:",
        f"  systemd-sysusers {sysusers}",
        "  systemctl daemon-reload",
        "  systemctl enable --now sharingmemory.socket",
        "  usermod -aG sharingmemory USER   # for each user who may open the device",
    ]
    for path in (service, socket_unit):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    parsed = _parse_unit(service)
    assert parsed["Service"]["ExecStart"] == f"{sys.executable} -m sharingmemory serve --socket-group sharingmemory"
    assert parsed["Service"]["Type"] == "notify"
    assert _parse_unit(socket_unit)["Socket"]["ListenSequentialPacket"] == "%t/sharingmemory/SharingMemory"

    again = _install("--dir", str(units))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[:2] == [f"unchanged {service}", f"unchanged {socket_unit}"]


def test_install_unit_refuses_to_replace_a_different_unit_without_force(tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    (units / "sharingmemory.socket").write_text("[Socket]\nListenSequentialPacket=/somewhere/else\n")
    refused = _install("--dir", str(units))
    assert refused.returncode == 1
    assert "sharingmemory.socket exists and differs from the unit to write; --force replaces it" in one_line(refused)
    assert (units / "sharingmemory.socket").read_text() == "[Socket]\nListenSequentialPacket=/somewhere/else\n"
    assert not (units / "sharingmemory.service").exists()  # all or nothing

    forced = _install("--dir", str(units), "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"wrote {units / 'sharingmemory.socket'}" in forced.stdout.splitlines()
    assert "%t/sharingmemory/SharingMemory" in (units / "sharingmemory.socket").read_text()
    assert sorted(os.listdir(units)) == ["sharingmemory.conf", "sharingmemory.service", "sharingmemory.socket"]


def test_install_unit_for_a_user_goes_to_the_users_config(tmp_path: Path) -> None:
    result = _install("--user", env=clean_environ(XDG_CONFIG_HOME=str(tmp_path / "config")))
    assert result.returncode == 0, result.stderr
    service = tmp_path / "config" / "systemd" / "user" / "sharingmemory.service"
    assert f"wrote {service}" in result.stdout.splitlines()
    assert "  systemctl --user enable --now sharingmemory.socket" in result.stdout.splitlines()
    assert _parse_unit(service)["Service"]["ProtectHome"] == "read-only"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze (Debian package systemd) not installed")
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path, user: bool) -> None:
    assert SYSTEMD_ANALYZE is not None
    units = tmp_path / "units"
    assert _install("--dir", str(units), *(["--user"] if user else [])).returncode == 0
    verify = subprocess.run(
        [SYSTEMD_ANALYZE, *(["--user"] if user else []), "verify",
         str(units / "sharingmemory.socket"), str(units / "sharingmemory.service")],
        env=clean_environ(XDG_RUNTIME_DIR=str(tmp_path)), cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == ""
