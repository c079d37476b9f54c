"""The `sharingmemory` command: the root parser, logging, and the one way every failure ends.

Each subcommand lives in its own module and declares its own arguments (`add_parser`); this
module only assembles them. Every failure ends as one line on stderr
(`sharingmemory: error: ...`) and an exit status from `exits`; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__
from .._defs import NtStatusError
from . import gui, install, query, sections, serve, watch
from .exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_STATUS_TEXT, EXIT_USAGE, CommandError

#: The subcommands, in the order `--help` lists them.
COMMANDS = (serve, install, watch, query, gui, sections)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sharingmemory",
        description="Share a live page of memory (the local time, written at every tick) "
        "between a driver daemon and its readers.",
        epilog=f"Exit status: {EXIT_STATUS_TEXT}.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: every resource)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(commands)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    if args.command == "serve" and not args.quiet:
        level = min(level, logging.INFO)  # a daemon says when it starts and stops
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)


def _fail(message: str, status: int) -> int:
    """The one form of every failure: `sharingmemory: error: MESSAGE` on stderr, and `status`."""
    print(f"sharingmemory: error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    # Ctrl-C is documented to end every command (130): a process started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result: int = args.func(args)
        return result
    except CommandError as err:
        return _fail(str(err), err.exit_status)
    except NtStatusError as err:
        return _fail(str(err), EXIT_ERROR)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR
