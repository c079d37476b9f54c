"""The `sharingmemory` command: the parser, and the small subcommands (read, status).

`serve` and `install-unit` have their front ends in `_serve` and `_install`, `watch` in
`_watch`, `gui` in `_gui`; this module wires arguments to them. Every failure ends as one line
on stderr (`sharingmemory: error: ...`) and a documented exit status; tracebacks are for bugs.

Exit status: 0 success; 1 the driver or the system reported an error; 2 bad usage;
3 the driver stopped while `watch` was running; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from .. import __version__
from .._client import Device
from .._defs import NtStatusError, default_socket_path
from .._driver import MIN_INTERVAL_NS
from .display import snapshot_json
from .exits import EXIT_DRIVER_STOPPED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError
from .install import cmd_install_unit
from .serve import cmd_serve
from .session import open_session
from .watch import DriverStopped, WatchOptions, run_watch

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|ms|s|m)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, None: 1_000_000_000}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_duration(text: str) -> int:
    """`1s`, `250ms`, `1ms`, `500us`, `2` (seconds) -> nanoseconds; at least 1 ms."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (try 1s, 250ms or 1ms)")
    value, unit = match.groups()
    nanoseconds = round(float(value) * _UNIT_NS[unit])
    if nanoseconds < MIN_INTERVAL_NS:
        raise argparse.ArgumentTypeError(f"duration {text!r} is shorter than the 1 ms minimum")
    return nanoseconds


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid mode {text!r} (octal, like 0660)") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"mode {text!r} is out of range")
    return mode


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid id {text!r} (a number)") from None
    if not 0 <= value < 2**32 - 1:
        raise argparse.ArgumentTypeError(f"id {text} is out of range")
    return value


# --- clients ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open(args: argparse.Namespace) -> Iterator[Device]:
    """Open the device named on the command line; `read` and `status` never start a private
    driver, since the page of a driver that stops at once would tell nothing."""
    with open_session(args.socket, timeout=args.timeout) as session:
        yield session.device


def _cmd_read(args: argparse.Namespace) -> int:
    with _open(args) as device:
        snap = device.map_shared_memory().read()
    if args.json:
        print(json.dumps(snapshot_json(snap)))
    else:
        print(f"{snap.local_datetime:%Y-%m-%d %H:%M:%S%z}  tick {snap.tick_count}  {snap.state_name}")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    with _open(args) as device:
        status = device.query_status()
    data: dict[str, Any] = status._asdict()
    data["instance_id"] = status.instance_id.hex()
    data["socket"] = device.path
    if args.json:
        print(json.dumps(data))
    else:
        for key, value in data.items():
            print(f"{key:16} {value}")
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace) -> int:
    options = WatchOptions(
        socket=args.socket, timeout=args.timeout, interval=args.interval,
        count=args.count, as_json=args.json, follow=args.follow,
    )  # fmt: skip
    try:
        run_watch(options)
    except DriverStopped as err:
        raise CommandError(str(err), EXIT_DRIVER_STOPPED) from err
    return EXIT_OK


def _cmd_gui(args: argparse.Namespace) -> int:
    from .gui import GuiOptions, GuiUnavailable, run_gui  # tkinter and its window, only when asked for

    try:
        run_gui(GuiOptions(socket=args.socket, timeout=args.timeout, interval=args.interval, count=args.count))
    except GuiUnavailable as err:
        raise CommandError(f"error: {err}") from err
    return EXIT_OK


# --- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sharingmemory",
        description="Share a live page of memory (the local time, written at every tick) "
        "between a driver daemon and its readers.",
        epilog="Exit status: 0 ok, 1 error, 2 bad usage, 3 driver stopped during watch, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: every resource)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    socket_help = f"the device's socket (default: {default_socket_path()}, or $SHARINGMEMORY_SOCKET)"

    serve = commands.add_parser("serve", help="run the driver daemon in the foreground")
    serve.add_argument("--socket", metavar="PATH", help=socket_help)
    serve.add_argument(
        "--interval",
        type=parse_duration,
        default=1_000_000_000,
        metavar="DURATION",
        help="timer period: 1s, 250ms, 1ms (default 1s)",
    )
    serve.add_argument(
        "--allow-uid",
        type=_id,
        action="append",
        default=[],
        metavar="UID",
        help="also let this uid open the device (repeatable)",
    )
    serve.add_argument(
        "--allow-gid",
        type=_id,
        action="append",
        default=[],
        metavar="GID",
        help="also let this primary gid open the device (repeatable)",
    )
    serve.add_argument(
        "--max-handles",
        type=_positive,
        metavar="N",
        help="open handles at most, overall (default: the open-file limit, raised to its hard limit, "
        "less a reserve of 64, halved since a handle may hold two fds)",
    )
    serve.add_argument(
        "--max-handles-per-uid",
        type=_positive,
        metavar="N",
        help="open handles at most per uid (default: half of --max-handles' default)",
    )
    serve.add_argument(
        "--create-timeout",
        type=_positive_seconds,
        default=5.0,
        metavar="SECONDS",
        help="close a connection that sends no CREATE within this time (default 5)",
    )
    serve.add_argument(
        "--socket-mode", type=_octal_mode, default=0o660, metavar="MODE", help="mode of the socket file (default 0660)"
    )
    serve.add_argument(
        "--dir-mode",
        type=_octal_mode,
        default=0o750,
        metavar="MODE",
        help="mode of a socket directory it creates (default 0750)",
    )
    serve.add_argument(
        "--check-config",
        action="store_true",
        help="check the options and the service manager's environment, print 'configuration OK' and exit; "
        "creates and binds nothing",
    )
    serve.set_defaults(func=cmd_serve)

    install = commands.add_parser(
        "install-unit",
        help="write sharingmemory.service and sharingmemory.socket for systemd",
        description="Write the systemd units that run this Python's `-m sharingmemory serve` as a "
        "socket-activated service, then print the systemctl commands that start it.",
    )
    install.add_argument("--user", action="store_true", help="units for your user's manager (systemctl --user)")
    install.add_argument(
        "--dir",
        metavar="DIR",
        help="where to write them (default /etc/systemd/system, with --user ~/.config/systemd/user)",
    )
    install.add_argument("--force", action="store_true", help="replace existing units that differ")
    install.set_defaults(func=cmd_install_unit)

    for name, func, text in (
        ("watch", _cmd_watch, "show the local time from the shared page at each tick"),
        ("read", _cmd_read, "print one snapshot of the shared page"),
        ("status", _cmd_status, "print the driver's handles, page and timer"),
        ("gui", _cmd_gui, "the Kernel Timer window: the local time from the shared page at each tick"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--socket", metavar="PATH", help=socket_help)
        sub.add_argument(
            "--timeout", type=float, default=5.0, metavar="SECONDS", help="bound on each request (default 5)"
        )
        if name in ("watch", "gui"):
            sub.add_argument(
                "--count", type=_positive, metavar="N", help="stop after N ticks" if name == "watch" else
                "close the window by itself after N ticks",
            )  # fmt: skip
            sub.add_argument(
                "--interval", default="1s", metavar="DURATION", help="timer period of a private driver (default 1s)"
            )
        if name == "watch":
            sub.add_argument("--json", action="store_true", help="one JSON object per tick (JSON Lines)")
            sub.add_argument(
                "--follow",
                action="store_true",
                help="when the driver stops, wait for a new one at the same path and go on "
                "(waits for the first one too; never starts a private driver)",
            )
        elif name != "gui":
            sub.add_argument("--json", action="store_true", help="one JSON object")
        sub.set_defaults(func=func)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    if args.command == "serve" and not args.quiet:
        level = min(level, logging.INFO)  # a daemon says when it starts and stops
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)


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
        print(f"sharingmemory: {err}", file=sys.stderr)
        return err.exit_status
    except NtStatusError as err:
        print(f"sharingmemory: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR
