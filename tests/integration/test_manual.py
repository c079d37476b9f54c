"""The man page and bash completion in share/ are what the argparse parser makes now, and work.

When a test here fails because an option was added or changed, regenerate at the repository root:

    python -m sharingmemory.cli.manual --write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sharingmemory.cli import manual

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "run `python -m sharingmemory.cli.manual --write` at the repository root and commit share/"
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = manual.build_parser()
    return [("", parser), *((name, sub) for name, _help, sub in manual._subcommands(parser))]


def test_committed_files_are_what_the_parser_makes_now() -> None:
    for path, text in manual.generated().items():
        committed = ROOT / path
        assert committed.is_file(), f"{path} is missing: {REGENERATE}"
        assert committed.read_text(encoding="utf-8") == text, f"{path} is out of date: {REGENERATE}"


def test_check_mode_agrees_and_names_what_is_stale(tmp_path: Path) -> None:
    assert manual.main(["--check", "--root", str(ROOT)]) == 0
    assert manual.main(["--write", "--root", str(tmp_path)]) == 0
    assert manual.stale(tmp_path) == []
    (tmp_path / manual.MAN_PAGE).write_text("stale\n")
    (tmp_path / manual.BASH_COMPLETION).unlink()
    assert manual.stale(tmp_path) == [manual.MAN_PAGE, manual.BASH_COMPLETION]
    result = subprocess.run(
        [sys.executable, "-m", "sharingmemory.cli.manual", "--check", "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "sharingmemory.1 is out of date: run `python -m sharingmemory.cli.manual --write`" in result.stderr


def _generate(env: dict[str, str], *, python: str = sys.executable, uid: int | None = None) -> dict[str, str]:
    """What the generator makes in a fresh interpreter with `env` (as `uid`, if given)."""
    script = "import json; from sharingmemory.cli import manual; "
    script += "print(json.dumps({str(k): v for k, v in manual.generated().items()}))"
    result = subprocess.run(
        [python, "-c", script], env=env, cwd="/", capture_output=True, text=True, timeout=60, check=False,
        user=uid, group=uid, extra_groups=None if uid is None else [],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    generated: dict[str, str] = json.loads(result.stdout)
    return generated


@pytest.mark.parametrize(
    "changes",
    [
        {"COLUMNS": "40"},
        {"COLUMNS": "300", "LANG": "C"},
        {"XDG_RUNTIME_DIR": "/run/user/4242"},
        {"SHARINGMEMORY_SOCKET": "/somewhere/else"},
    ],
    ids=["narrow", "wide", "xdg", "override"],
)
def test_the_generator_ignores_terminal_and_environment(changes: dict[str, str]) -> None:
    """Other helpers add options in parallel and the files are regenerated at merge: the bytes
    must depend on the parser alone, not on who regenerates them or where."""
    base = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "XDG_RUNTIME_DIR", "SHARINGMEMORY_SOCKET"}}
    assert _generate({**base, **changes}) == _generate(base)


@pytest.mark.skipif(
    os.getuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root (to drop to uid 65534) and /usr/bin/python3",
)
def test_another_uid_generates_the_same_bytes() -> None:
    """The --socket help names a per-uid default path; the generator must not copy it in."""
    source = str(Path(manual.__file__).resolve().parents[2])
    env = {"PYTHONPATH": source, "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
    as_root = _generate({**env, "HOME": "/root"}, python=SYSTEM_PYTHON)
    as_nobody = _generate(env, python=SYSTEM_PYTHON, uid=NOBODY)
    assert as_nobody == as_root
    assert as_root == {str(k): v for k, v in manual.generated().items()}


def test_every_option_of_every_command_is_in_both_files() -> None:
    man_page = manual.render_man_page()
    completion = manual.render_bash_completion()
    for name, parser in _parsers():
        if name:
            assert f'.SS "{manual._roff(name)}"' in man_page, name
            assert f"        {name})" in completion, name
        for action in manual._options(parser):
            for option in action.option_strings:
                assert f"\\fB{manual._roff(option)}\\fR" in man_page, (name, option)
                assert option in completion, (name, option)


def test_no_line_of_the_man_page_starts_as_a_roff_request_by_accident() -> None:
    """A help text starting with "." or "'" would be read as a request and vanish."""
    assert manual._roff(".hidden") == "\\&.hidden"
    assert manual._roff("'quoted") == "\\&'quoted"
    assert manual._roff("a\\b-c") == "a\\eb\\-c"
    for line in manual.render_man_page().splitlines():
        if line.startswith((".", "'")):
            assert line.split()[0] in {'.\\"', ".TH", ".SH", ".SS", ".TP", ".PP", ".br", ".ad", ".nh", ".hy"}, line


# --- the man page renders ------------------------------------------------------------------------

GROFF = shutil.which("groff")
MAN = shutil.which("man")


@pytest.mark.skipif(GROFF is None, reason="groff is not installed (Debian: groff-base); .ci/run installs it")
def test_man_page_renders_without_a_groff_warning() -> None:
    assert GROFF is not None
    result = subprocess.run(
        [GROFF, "-man", "-ww", "-z", "-Tutf8", str(ROOT / manual.MAN_PAGE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.skipif(MAN is None, reason="man is not installed (Debian: man-db); .ci/run installs it")
def test_man_l_shows_every_command_and_section() -> None:
    assert MAN is not None
    result = subprocess.run(
        [MAN, "-l", str(ROOT / manual.MAN_PAGE)],
        env={**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80", "LC_ALL": "C.UTF-8"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for heading in ("NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "ENVIRONMENT", "FILES", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{heading}\n" in text, heading
    for name, _parser in _parsers()[1:]:
        assert f"sharingmemory {name}" in text, name
    assert "--socket PATH" in text  # \- rendered as a plain hyphen-minus with LC_ALL=C.UTF-8


# --- the completion completes --------------------------------------------------------------------

BASH = shutil.which("bash")


def _complete(*words: str, cwd: Path | None = None) -> list[str]:
    """COMPREPLY for the command line `words` (the last one being completed), from the committed
    file run by a real bash."""
    assert BASH is not None
    script = (
        f"source {ROOT / manual.BASH_COMPLETION}\n"
        f"COMP_WORDS=({' '.join(repr(word) for word in words)})\n"
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n"
        "_sharingmemory\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def _expected(words: tuple[str, ...]) -> list[str]:
    """What the parser says the last word may complete to: the commands before one is named,
    else the options of the command named (or of the root parser)."""
    parsers = dict(_parsers())
    command = next((word for word in words[1:-1] if word in parsers and word), "")
    current = words[-1]
    if current.startswith("-"):
        candidates = [option for action in manual._options(parsers[command]) for option in action.option_strings]
    else:
        candidates = [name for name in parsers if name] if not command else []
    return sorted(candidate for candidate in candidates if candidate.startswith(current))


@needs_bash
@pytest.mark.parametrize(
    "words",
    [
        ("sharingmemory", ""),
        ("sharingmemory", "s"),
        ("sharingmemory", "-q", "wa"),
        ("sharingmemory", "--ver"),
        ("sharingmemory", "serve", "--soc"),
        ("sharingmemory", "watch", "--fo"),
        ("sharingmemory", "install-unit", "--"),
    ],
)
def test_completion_offers_commands_and_their_options(words: tuple[str, ...]) -> None:
    expected = _expected(words)
    assert expected  # each case has something to complete: the test is not vacuous
    assert sorted(_complete(*words)) == expected


@needs_bash
@pytest.mark.parametrize(
    "words",
    [
        ("sharingmemory", "serve", "--interval", ""),  # a value: no option offered as one
        ("sharingmemory", "watch", "--timeout", "--"),
        ("sharingmemory", "watch", "status"),  # one command only
    ],
)
def test_completion_offers_nothing_where_nothing_fits(words: tuple[str, ...]) -> None:
    assert _complete(*words) == []


@needs_bash
@pytest.mark.parametrize("command", ["watch", "read", "status", "serve", "gui"])
def test_completion_completes_file_names_after_socket(command: str, tmp_path: Path) -> None:
    (tmp_path / "SharingMemory").touch()
    (tmp_path / "Sharing-other").touch()
    assert sorted(_complete("sharingmemory", command, "--socket", "Sharing", cwd=tmp_path)) == [
        "Sharing-other",
        "SharingMemory",
    ]


@needs_bash
def test_completion_completes_every_option_of_every_command() -> None:
    for name, parser in _parsers():
        words = ("sharingmemory", name, "-") if name else ("sharingmemory", "-")
        offered = set(_complete(*words))
        expected = {option for action in manual._options(parser) for option in action.option_strings}
        assert offered == expected, name


def test_the_manual_names_no_path_of_whoever_generated_it() -> None:
    for path, text in manual.generated().items():
        assert manual._SOCKET_PLACEHOLDER not in text, path
        assert "/run/user/" not in text, path  # a $XDG_RUNTIME_DIR
        assert f"/tmp/sharingmemory-{os.getuid()}" not in text, path
        assert str(Path.home()) not in text or str(Path.home()) == "/", path


def test_building_the_manual_leaves_the_environment_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARINGMEMORY_SOCKET", "/mine/SharingMemory")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    manual.generated()
    assert os.environ["SHARINGMEMORY_SOCKET"] == "/mine/SharingMemory"
    assert os.environ["XDG_RUNTIME_DIR"] == "/run/user/4242"
    monkeypatch.delenv("SHARINGMEMORY_SOCKET")
    manual.generated()
    assert "SHARINGMEMORY_SOCKET" not in os.environ
