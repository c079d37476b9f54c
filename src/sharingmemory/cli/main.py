"""The `sharingmemory` command: the root parser, logging, and the one way every failure ends.

Each subcommand lives in its own module and declares its own arguments (`add_parser`); this
module only assembles them. Every failure ends as one line on stderr
(`sharingmemory: error: ...`) and an exit status from `exits`; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Final, NoReturn

from .. import __version__
from .._defs import NtStatusError
from . import gui, install, query, sections, serve, watch
from .exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_STATUS_TEXT, EXIT_USAGE, CommandError, printable

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
    _add_verbosity(parser, "")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(commands)
    for subparser in commands.choices.values():
        _add_verbosity(subparser, "sub_")
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, prefix: str) -> None:
    """-v and -q, before the subcommand (`sharingmemory -v serve`) or after it (`serve -vv`, as
    the docs write it). Each level has its own dest: argparse copies a subparser's namespace
    over its parent's, so a shared dest would let one level's default erase the other's flag."""
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", dest=f"{prefix}verbose", action="count", default=0,
        help="more log output (-vv: every resource)",
    )  # fmt: skip
    verbosity.add_argument(
        "-q", "--quiet", dest=f"{prefix}quiet", action="store_true", help="errors only, and no notices"
    )


def _merge_verbosity(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fold the subcommand's -v/-q into the root's: counts add up, and -q with -v is refused at
    whichever levels they were given."""
    args.verbose += getattr(args, "sub_verbose", 0)
    args.quiet = args.quiet or getattr(args, "sub_quiet", False)
    if args.quiet and args.verbose:
        parser.error("argument -q/--quiet: not allowed with argument -v/--verbose")


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    if args.command == "serve" and not args.quiet:
        level = min(level, logging.INFO)  # a daemon says when it starts and stops
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if stderr_is_journal(os.environ) else logging.Formatter(_LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


_LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def stderr_is_journal(environ: dict[str, str] | os._Environ[str]) -> bool:
    """Whether stderr is connected to journald: systemd sets JOURNAL_STREAM to `DEV:INODE` of the
    stream it gave the service, and a process whose stderr is still that stream (same device and
    inode per fstat(2)) may use the journal's conventions, per systemd.exec(5). A child whose
    stderr was redirected inherits the variable but not the stream, hence the comparison."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        wanted = (int(device), int(inode))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False
    return (stat.st_dev, stat.st_ino) == wanted


class JournalFormatter(logging.Formatter):
    """A line as journald wants it on a stream, sd-daemon(3): a `<N>` syslog priority prefix
    (so `journalctl -p warning` finds warnings) and no timestamp (the journal adds its own)."""

    #: logging's levels as syslog(3) priorities: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG.
    PRIORITIES = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

    def __init__(self) -> None:
        super().__init__("%(name)s %(levelname)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = next((value for level, value in self.PRIORITIES if record.levelno >= level), 7)
        if record.levelno >= logging.CRITICAL:
            priority = 2  # LOG_CRIT
        # A traceback spans lines, and journald reads each line as its own entry: each one gets
        # the prefix, or the continuation lines would fall to the default priority.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def _fail(message: str, status: int) -> int:
    """The one form of every failure: `sharingmemory: error: MESSAGE` on stderr, and `status`;
    one line however odd the message's parts (`exits.printable`)."""
    print(f"sharingmemory: error: {printable(message)}", file=sys.stderr)
    return status


#: errnos that only a write to a file gives (write(2)): the command's output, since the device
#: is a socket and the commands write no other file.
_OUTPUT_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _describe_os_error(err: OSError) -> str:
    if err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    if err.errno in _OUTPUT_ERRNOS:
        return f"cannot write the output: {err.strerror}"
    return str(err.strerror or err)


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null after a write to it failed, so the interpreter's own flush at
    exit does not fail a second time with an "Exception ignored" traceback (the recipe of
    Python's signal documentation, "Note on SIGPIPE")."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A path or a zone name the terminal's encoding (LANG=C, latin-1) cannot show comes out
        # escaped, not as a UnicodeEncodeError; the displays pick ASCII glyphs themselves.
        sys.stdout.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    _merge_verbosity(parser, args)
    _configure_logging(args)
    # Ctrl-C is documented to end every command (130): a process started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result: int = args.func(args)
        try:
            sys.stdout.flush()  # here, where a full disk (ENOSPC: `read > /dev/full`) is reported
        except BrokenPipeError:
            raise
        except OSError as err:
            _silence_stdout()
            return _fail(_describe_os_error(err), EXIT_ERROR)
        return result
    except CommandError as err:
        return _fail(str(err), err.exit_status)
    except NtStatusError as err:
        return _fail(str(err), EXIT_ERROR)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()  # the reader went away (`| head`): not worth a line, as for cat(1)
        return EXIT_ERROR
    except OSError as err:
        _silence_stdout()
        return _fail(_describe_os_error(err), EXIT_ERROR)
