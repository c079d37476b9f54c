"""The command line as the README and docs/ write it: the exit statuses, the commands, the links.

The statuses are defined once (`cli.exits`) and the documents must say them in the same words;
every concrete `sharingmemory ...` command, in a code block or inline, must parse (`serve -vv`, as the
docs wrote it, was a usage error once); and no link leaves the repository.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sharingmemory.cli.exits import EXIT_STATUS_TEXT
from sharingmemory.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(?:sh|console|bash)?\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`(sharingmemory [^`]+)`")


def flat(path: Path) -> str:
    return " ".join(path.read_text().split())


@pytest.mark.parametrize("name", ["README.md", "docs/troubleshooting.md"])
def test_the_exit_statuses_are_said_as_defined(name: str) -> None:
    assert f"Exit status: {EXIT_STATUS_TEXT}." in flat(ROOT / name)


def test_the_help_says_them_too() -> None:
    assert EXIT_STATUS_TEXT in " ".join(build_parser().format_help().split())


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        for block in [*SHELL_BLOCK.findall(text), "\n".join(INLINE.findall(" ".join(text.split())))]:
            for line in block.replace("\\\n", " ").splitlines():
                command = line.split(" #", 1)[0].strip().removeprefix("$ ")
                words = command.split()
                if not words or words[0] != "sharingmemory":
                    continue
                if any(mark in command for mark in ("[", "...", "PATH", "|", "options")):
                    continue  # a synopsis, not a command
                found.append((path.name, command.split(";")[0].split(">")[0].strip()))
    return found


COMMANDS = documented_commands()


def test_the_documents_hold_commands_to_check() -> None:
    assert len(COMMANDS) >= 8, COMMANDS  # the extraction itself works


@pytest.mark.parametrize(("document", "command"), COMMANDS)
def test_every_documented_command_parses(document: str, command: str) -> None:
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as stop:  # --help and --version exit 0 by design; a usage error exits 2
        assert stop.code == 0, f"{document}: {command!r} is a usage error"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_no_link_leaves_the_repository(path: Path) -> None:
    text = path.read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if target.startswith(("http://", "https://", "#")):
            continue
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{path.name} links outside the repository: {target}"
        assert resolved.exists(), f"{path.name} links to a missing file: {target}"
    assert "../shared" not in text
