"""The unit files as text: they parse as INI, carry the keys the service depends on, and agree with
the socket path clients look for by default."""

from __future__ import annotations

import ast
import configparser
import inspect
import shlex

import pytest

from sharingmemory._defs.paths import default_socket_path
from sharingmemory.cli import systemd_units as _units

PYTHON = "/opt/sharingmemory/bin/python3"


def parse(text: str) -> configparser.ConfigParser:
    """Strict INI: no duplicate sections or keys, `=` only, keys case-sensitive as systemd's."""
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",), empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def memlock_bytes(value: str) -> int:
    suffixes = {"K": 1024, "M": 1024**2, "G": 1024**3}
    if value[-1] in suffixes:
        return int(value[:-1]) * suffixes[value[-1]]
    return int(value)


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_service_has_what_the_driver_needs(user: bool) -> None:
    unit = parse(_units.service_unit(PYTHON, user=user, home="read-only" if user else "yes"))
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Unit"]["Requires"] == unit["Unit"]["After"] == "sharingmemory.socket"
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert shlex.split(service["ExecStart"]) == [PYTHON, "-m", "sharingmemory", "serve"]
    assert service["Restart"] == "on-failure"
    assert service["WatchdogSec"] == "10s"
    assert service["RuntimeDirectory"] == "sharingmemory"
    assert service["RuntimeDirectoryMode"] == "0750"
    assert service["RuntimeDirectoryPreserve"] == "yes"  # the socket unit's socket lives in it
    assert memlock_bytes(service["LimitMEMLOCK"]) >= 4096  # one page
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["RestrictAddressFamilies"] == "AF_UNIX"
    assert service["ProtectHome"] == ("read-only" if user else "yes")
    assert ("CapabilityBoundingSet" in service) is not user
    assert unit["Install"]["Also"] == "sharingmemory.socket"


def test_socket_is_the_path_clients_look_for() -> None:
    unit = parse(_units.socket_unit())
    socket = unit["Socket"]
    assert socket["SocketMode"] == "0660"
    assert socket["DirectoryMode"] == "0750"
    assert unit["Install"]["WantedBy"] == "sockets.target"
    listen = socket["ListenSequentialPacket"]
    # %t is /run for the system manager (whose clients are root) and $XDG_RUNTIME_DIR for a user's.
    assert listen.replace("%t", "/run") == default_socket_path({}, uid=0)
    runtime = "/run/user/1000"
    assert listen.replace("%t", runtime) == default_socket_path({"XDG_RUNTIME_DIR": runtime}, uid=1000)


def test_units_are_named_and_versioned() -> None:
    files = _units.units(PYTHON, version="9.9")
    assert sorted(files) == ["sharingmemory.service", "sharingmemory.socket"]
    for text in files.values():
        assert "(sharingmemory 9.9)" in text.splitlines()[0]
        assert text.endswith("\n")
        assert all(line == line.rstrip() for line in text.splitlines())


@pytest.mark.parametrize(
    ("user", "paths", "expected"),
    [
        (False, ["/usr/bin/python3", "/usr/lib/python3/dist-packages/sharingmemory"], "yes"),
        (False, ["/opt/venv/bin/python", "/root/.pyenv/versions/3.11.7"], "read-only"),
        (False, ["/home/alice/venv/bin/python"], "read-only"),
        (False, ["/run/user/1000/x"], "read-only"),
        (False, ["/homework/python"], "yes"),
        (True, ["/usr/bin/python3"], "read-only"),
    ],
)
def test_protect_home_never_hides_the_interpreter(user: bool, paths: list[str], expected: str) -> None:
    assert _units.protect_home(user, paths) == expected
    service = parse(_units.units(paths[0], user=user, needed_paths=paths[1:])["sharingmemory.service"])
    assert service["Service"]["ProtectHome"] == expected


@pytest.mark.parametrize(
    ("word", "written"),
    [
        ("/usr/bin/python3", "/usr/bin/python3"),
        ("/opt/my python/bin/python", '"/opt/my python/bin/python"'),
        ("/opt/100%/python", "/opt/100%%/python"),
        ("/opt/$HOME/python", '"/opt/$$HOME/python"'),
        ('/opt/a"b\\c', '"/opt/a\\"b\\\\c"'),
    ],
)
def test_exec_words_are_quoted_and_escaped(word: str, written: str) -> None:
    assert _units.exec_word(word) == written


def test_an_interpreter_with_a_space_survives_the_command_line() -> None:
    python = "/opt/my tools/bin/python3"
    service = parse(_units.service_unit(python))
    assert shlex.split(service["Service"]["ExecStart"]) == [python, "-m", "sharingmemory", "serve"]


@pytest.mark.parametrize("python", ["python3", "bin/python3", "/opt/py\nthon", ""])
def test_an_interpreter_that_cannot_be_written_is_refused(python: str) -> None:
    with pytest.raises(ValueError, match=r"interpreter|command line"):
        _units.service_unit(python)


def test_the_unit_module_does_no_io() -> None:
    tree = ast.parse(inspect.getsource(_units))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "os", "re", "collections.abc"}
    assert "open(" not in inspect.getsource(_units)
