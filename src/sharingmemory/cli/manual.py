"""The man page and the bash completion, generated from the argparse parser so they never drift.

    python -m sharingmemory.cli.manual --write   # regenerate share/ in the current directory
    python -m sharingmemory.cli.manual --check   # exit 1 if the files there are out of date

The wheel installs the two files as data files (`share/man/man1/sharingmemory.1`,
`share/bash-completion/completions/sharingmemory` under the environment's prefix). They are
committed, generated, and checked by a test, rather than built at install time, so that an sdist
or a distro build needs no Python import of the package to get them.

The output depends on the parser alone: no date, no terminal width, and the one help text that
depends on who runs it (the default socket path, per uid and `$XDG_RUNTIME_DIR`) is replaced by
a pointer to FILES, so root and any user generate the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from .. import __version__
from .._defs import ENV_SOCKET
from .main import build_parser as _build_parser

MAN_PAGE = Path("share/man/man1/sharingmemory.1")
BASH_COMPLETION = Path("share/bash-completion/completions/sharingmemory")
REGENERATE = "python -m sharingmemory.cli.manual --write"

#: Metavars whose value is a file system path: bash completes file names for them.
PATH_METAVARS = frozenset({"PATH", "DIR", "FILE"})

# Sections that argparse has no place for. Kept to what every version of the code guarantees;
# the details live in docs/operations.md and docs/fleet.md.
_ENVIRONMENT = [
    ("SHARINGMEMORY_SOCKET", "The device's socket path, when no --socket is given."),
    ("XDG_RUNTIME_DIR", "Where a user's default socket lives ($XDG_RUNTIME_DIR/sharingmemory/SharingMemory)."),
    ("NO_COLOR", "When set, watch draws its frame without colour."),
    ("LISTEN_FDS, LISTEN_PID", "A socket passed by systemd (socket activation, sd_listen_fds(3)); serve uses it."),
    ("NOTIFY_SOCKET, WATCHDOG_USEC", "serve reports readiness and pings the watchdog (sd_notify(3))."),
]
_FILES = [
    ("/run/sharingmemory/SharingMemory", "The system driver's socket (root's default)."),
    ("$XDG_RUNTIME_DIR/sharingmemory/SharingMemory", "A user session's default socket."),
    ("/tmp/sharingmemory-UID/SharingMemory", "The default socket of a user with no XDG_RUNTIME_DIR."),
    ("PATH.lock", "Held by the driver serving PATH, so that a second driver on it is refused."),
]
_SEE_ALSO = "systemd.socket(5), systemd.service(5), sd_notify(3), sd_listen_fds(3), memfd_create(2), unix(7)"


#: What the default socket path is while the parser is built for the manual: help texts show the
#: default, which depends on the uid and `$XDG_RUNTIME_DIR`; the manual shows this instead.
_SOCKET_PLACEHOLDER = "/sharingmemory-manual-placeholder/SharingMemory"


@contextlib.contextmanager
def _fixed_environment() -> Iterator[None]:
    """The environment a parser's help may read, fixed: the same for root and for any user."""
    saved = {name: os.environ.get(name) for name in (ENV_SOCKET, "XDG_RUNTIME_DIR")}
    os.environ[ENV_SOCKET] = _SOCKET_PLACEHOLDER
    os.environ.pop("XDG_RUNTIME_DIR", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build_parser() -> argparse.ArgumentParser:
    """`sharingmemory.cli.main.build_parser()`, built in the fixed environment."""
    with _fixed_environment():
        return _build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) for each subcommand, in --help order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                yield name, helps.get(name, ""), subparser


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS]


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's help with %(default)s and friends expanded, as --help shows it, less what
    depends on the uid that runs the generator."""
    text = argparse.HelpFormatter(parser.prog)._expand_help(action)
    return text.replace(_SOCKET_PLACEHOLDER, "see FILES")


# --- the man page -------------------------------------------------------------------------------


def _roff(text: str) -> str:
    """Text safe in a roff line: backslashes escaped, hyphens as \\- (so options copy-paste as
    ASCII hyphen-minus), and a leading control character neutralised."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _option_term(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{_roff(name)}\\fR" for name in action.option_strings)
    if _takes_value(action):
        metavar = action.metavar or action.dest.upper()
        names += f" \\fI{_roff(str(metavar))}\\fR"
    return names


def _synopsis_item(action: argparse.Action) -> str:
    name = f"\\fB{_roff(max(action.option_strings, key=len))}\\fR"  # the long form reads best
    if _takes_value(action):
        name += f" \\fI{_roff(str(action.metavar or action.dest.upper()))}\\fR"
    return f"[{name}]"


def render_man_page(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or build_parser()
    prog = parser.prog
    lines = [
        f'.\\" Generated by `{REGENERATE}` from the argparse parser: do not edit.',
        f'.TH {prog.upper()} 1 "" "{prog} {__version__}" "User Commands"',
        ".SH NAME",
        f"{prog} \\- {_roff(parser.description or '')}",
        ".SH SYNOPSIS",
        ".ad l",  # left-aligned and unhyphenated: a synopsis is copied, not read as prose
        ".nh",
        f"\\fB{prog}\\fR [\\fIoptions\\fR] \\fICOMMAND\\fR [\\fIcommand options\\fR]",
    ]
    for name, _summary, subparser in _subcommands(parser):
        items = " ".join(_synopsis_item(a) for a in _options(subparser) if "-h" not in a.option_strings)
        lines += [".br", f"\\fB{prog} {_roff(name)}\\fR {items}".rstrip()]
    lines += [".ad", ".hy", ".SH DESCRIPTION", _roff(parser.description or "")]
    lines += [".SH OPTIONS"]
    for action in _options(parser):
        lines += [".TP", _option_term(action), _roff(_help(parser, action))]
    lines += [".SH COMMANDS"]
    for name, summary, subparser in _subcommands(parser):
        lines += [f'.SS "{_roff(name)}"', _roff(summary + ".")]
        if subparser.description:
            lines += [".PP", _roff(subparser.description)]
        for action in _options(subparser):
            lines += [".TP", _option_term(action), _roff(_help(subparser, action))]
    lines += [".SH ENVIRONMENT"]
    for name, text in _ENVIRONMENT:
        lines += [".TP", f"\\fB{_roff(name)}\\fR", _roff(text)]
    lines += [".SH FILES"]
    for name, text in _FILES:
        lines += [".TP", f"\\fI{_roff(name)}\\fR", _roff(text)]
    if parser.epilog:
        lines += [".SH EXIT STATUS", _roff(parser.epilog)]
    lines += [".SH SEE ALSO", _roff(_SEE_ALSO)]
    return "\n".join(lines) + "\n"


# --- bash completion ----------------------------------------------------------------------------


def _words(actions: Sequence[argparse.Action]) -> str:
    return " ".join(name for action in actions for name in action.option_strings)


def _value_cases(parser: argparse.ArgumentParser, indent: str) -> list[str]:
    """`case $prev` arms: file names after a path option, its choices after one that has them,
    nothing after any other option that takes a value (so no option is offered as its value)."""
    arms = []
    for action in _options(parser):
        if not _takes_value(action):
            continue
        pattern = "|".join(action.option_strings)
        if action.choices is not None:
            reply = f'COMPREPLY=($(compgen -W "{" ".join(map(str, action.choices))}" -- "$cur"))'
        elif str(action.metavar) in PATH_METAVARS:
            reply = 'COMPREPLY=($(compgen -f -- "$cur"))'
        else:
            reply = "COMPREPLY=()"
        arms.append(f"{indent}{pattern}) {reply}; return ;;")
    return arms


def render_bash_completion(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or build_parser()
    prog = parser.prog
    function = "_" + prog.replace("-", "_")
    commands = list(_subcommands(parser))
    names = " ".join(name for name, _, _ in commands)
    lines = [
        f"# bash completion for {prog}. Generated by `{REGENERATE}` from the argparse parser: do not edit.",
        f"{function}()",
        "{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local command="" options i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        f'        case "${{COMP_WORDS[i]}}" in {"|".join(name for name, _, _ in commands)}) '
        'command="${COMP_WORDS[i]}"; break ;; esac',
        "    done",
        '    case "$command" in',
    ]
    for name, _summary, subparser in commands:
        lines += [f"        {name})", '            case "$prev" in']
        lines += _value_cases(subparser, "                ")
        lines += ["            esac", f'            options="{_words(_options(subparser))}" ;;']
    lines += ["        *)", '            case "$prev" in']
    lines += _value_cases(parser, "                ")
    lines += [
        "            esac",
        f'            options="{_words(_options(parser))}" ;;',
        "    esac",
        '    if [[ "$cur" == -* ]]; then',
        '        COMPREPLY=($(compgen -W "$options" -- "$cur"))',
        '    elif [[ -z "$command" ]]; then',
        f'        COMPREPLY=($(compgen -W "{names}" -- "$cur"))',
        "    else",
        "        COMPREPLY=()",
        "    fi",
        "}",
        f"complete -F {function} {prog}",
    ]
    return "\n".join(lines) + "\n"


# --- the command --------------------------------------------------------------------------------


def generated() -> dict[Path, str]:
    """Every generated file, by its path relative to the repository root."""
    parser = build_parser()
    return {MAN_PAGE: render_man_page(parser), BASH_COMPLETION: render_bash_completion(parser)}


def stale(root: Path) -> list[Path]:
    """The generated files under `root` that are missing or differ from what the parser makes now."""
    out = []
    for path, text in generated().items():
        try:
            current = (root / path).read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != text:
            out.append(path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sharingmemory.cli.manual", description=(__doc__ or "").split("\n")[0]
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write the files under --root")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file under --root is out of date")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    args = parser.parse_args(argv)
    if args.check:
        paths = stale(args.root)
        for path in paths:
            print(f"{path} is out of date: run `{REGENERATE}` at the repository root", file=sys.stderr)
        return 1 if paths else 0
    for path, text in generated().items():
        target = args.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
