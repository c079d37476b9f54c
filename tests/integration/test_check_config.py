"""`serve --check-config`: the driver's options and socket path checked without serving.

Every refusal is the one line, and the status, that `serve` itself would give, and nothing is
created on the way. The same check with a socket passed by a service manager is in
test_activation.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.command_line import one_line, run_cli


def _serve_check(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("serve", "--check-config", *args)


def test_check_config_accepts_good_options_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "SharingMemory"
    result = _serve_check(
        "--socket", str(path), "--interval", "250ms", "--allow-uid", "1000", "--allow-gid", "100",
        "--socket-mode", "0600", "--dir-mode", "0700",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"configuration OK: socket {path}, interval 250 ms"
    assert result.stderr == ""
    assert not path.parent.exists()


def _prepare(tmp_path: Path, case: str) -> str:
    """A socket path whose surroundings make `case` go wrong."""
    if case == "long":
        return str(tmp_path / ("x" * 120))
    if case == "dir is a file":
        (tmp_path / "dev").write_text("")
        return str(tmp_path / "dev" / "S")
    if case == "dir is everyone's":
        (tmp_path / "dev").mkdir()
        (tmp_path / "dev").chmod(0o777)
        return str(tmp_path / "dev" / "S")
    if case == "path is a file":
        (tmp_path / "S").write_text("precious")
        return str(tmp_path / "S")
    assert case == "parent missing"
    return str(tmp_path / "no" / "such" / "S")


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("long", "socket path is longer than 107 bytes"),
        ("dir is a file", "is not a directory"),
        ("dir is everyone's", "is writable by everyone; refusing to serve from it"),
        ("path is a file", "exists and is not a socket; refusing to replace it"),
        ("parent missing", "is missing"),
    ],
)
def test_check_config_refuses_an_unsafe_socket_path(tmp_path: Path, case: str, says: str) -> None:
    result = _serve_check("--socket", _prepare(tmp_path, case))
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith("sharingmemory: error: ")
    assert says in line
    if case == "path is a file":
        assert (tmp_path / "S").read_text() == "precious"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--interval", "0"), "--interval"),
        (("--interval", "soon"), "invalid duration"),
        (("--socket-mode", "0444"), "--socket-mode 0444 denies the owner write permission"),
        (("--socket-mode", "888"), "invalid mode"),
        (("--dir-mode", "0666"), "--dir-mode 0666 denies the owner rwx"),
        (("--dir-mode", "0777"), "--dir-mode 0777 makes the directory writable by everyone"),
        (("--allow-uid", "alice"), "--allow-uid"),
        (("--allow-gid", "4294967295"), "--allow-gid"),
        (("--max-handles", "0"), "--max-handles"),
    ],
)
def test_check_config_refuses_a_bad_option_in_one_line(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    result = _serve_check("--socket", str(tmp_path / "S"), *args)
    assert result.returncode == 2
    # argparse's own errors may come after a usage text; the error itself is one line.
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(errors) == 1, result.stderr
    assert says in errors[0]


def test_serve_itself_refuses_what_check_config_refuses(tmp_path: Path) -> None:
    result = run_cli("serve", "--socket", str(tmp_path / "S"), "--socket-mode", "0400")
    assert result.returncode == 2
    assert "--socket-mode 0400 denies the owner write permission" in one_line(result)
    assert not (tmp_path / "S").exists()
