"""The `sharingmemory` command: serve the device, watch the page, read it once, ask the status.

Every failure ends as one line on stderr (`sharingmemory: error: ...`) and a documented exit
status; tracebacks are for bugs only.

Exit status: 0 success; 1 the driver or the system reported an error; 2 bad usage;
3 the driver stopped while `watch` was running; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from . import __version__
from ._client import Device, SharedPage, open_device
from ._driver import MIN_INTERVAL_NS, AccessPolicy, DriverConfig
from ._page import STATE_STOPPED, PageSnapshot
from ._paths import DEVICE_NAME, default_socket_path
from ._private import PrivateDriver
from ._server import DeviceServer, ServerConfig, default_handle_limits, raise_fd_limit
from ._status import DeviceNotConnected, DeviceNotFound, NtStatusError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DRIVER_STOPPED = 3
EXIT_INTERRUPTED = 130

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|ms|s|m)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, None: 1_000_000_000}


class CommandError(Exception):
    """A failure to report as one line, with its exit status."""

    def __init__(self, message: str, exit_status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_status = exit_status


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


# --- serve --------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    policy = AccessPolicy(uids=frozenset({os.getuid(), *args.allow_uid}), gids=frozenset(args.allow_gid))
    max_handles, max_per_uid = default_handle_limits(raise_fd_limit())
    try:
        driver = DriverConfig(
            interval_ns=args.interval, policy=policy,
            max_handles=args.max_handles or max_handles, max_handles_per_uid=args.max_handles_per_uid or max_per_uid,
        )  # fmt: skip
    except ValueError as err:
        raise CommandError(str(err), EXIT_USAGE) from err
    config = ServerConfig(
        socket_path=args.socket or default_socket_path(), driver=driver,
        socket_mode=args.socket_mode, dir_mode=args.dir_mode, create_timeout=args.create_timeout,
    )  # fmt: skip
    with DeviceServer(config) as server:
        server.serve_forever()
    return EXIT_OK


# --- clients ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open(args: argparse.Namespace, *, private_ok: bool = False) -> Iterator[Device]:
    """Open the device named on the command line; with `private_ok` and no driver at the
    default path, start a private driver for this session, as the seed's program does."""
    name = args.socket or DEVICE_NAME
    try:
        device = open_device(name, timeout=args.timeout)
    except DeviceNotFound:
        if not private_ok or args.socket:
            raise
        with PrivateDriver(interval=args.interval) as private:
            print(
                f"sharingmemory: no driver at {default_socket_path()}; started a private driver (pid {private.pid})",
                file=sys.stderr,
            )
            with open_device(private.socket_path, timeout=args.timeout) as device:
                yield device
        return
    with device:
        yield device


def _snapshot_json(snap: PageSnapshot) -> dict[str, Any]:
    data: dict[str, Any] = snap._asdict()
    data["instance_id"] = snap.instance_id.hex()
    data["state_name"] = snap.state_name
    data["local_datetime"] = snap.local_datetime.isoformat()
    data["system_datetime"] = snap.system_datetime.isoformat()
    return data


def _cmd_read(args: argparse.Namespace) -> int:
    with _open(args) as device:
        snap = device.map_shared_memory().read()
    if args.json:
        print(json.dumps(_snapshot_json(snap)))
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


def wait_next_tick(page: SharedPage, last: PageSnapshot, device: Device | None = None) -> PageSnapshot:
    """Sleep until the tick after `last` is in the page and return it (or a stopped snapshot).

    The driver's deadline is known from the page (`monotonic_ns + interval_ns`, on the same
    system-wide CLOCK_MONOTONIC), so the reader sleeps to just past it instead of polling beside
    a 1 Hz writer, and reads once or twice per tick. A driver silent for three intervals and a
    second is asked for its status, which raises DeviceNotConnected when it died.
    """
    interval_s = last.interval_ns / 1e9
    target = last.monotonic_ns + last.interval_ns
    give_up = time.monotonic() + 3 * interval_s + 1.0
    retry = min(0.001, interval_s / 10)
    delay = (target - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9 + 0.0002
    while True:
        if delay > 0:
            time.sleep(delay)
        snap = page.read()
        if snap.tick_count != last.tick_count or snap.state == STATE_STOPPED or snap.instance_id != last.instance_id:
            return snap
        if time.monotonic() > give_up:
            if device is not None:
                device.query_status()  # raises if the driver is gone
            give_up = time.monotonic() + 3 * interval_s + 1.0
        delay = retry


def _cmd_watch(args: argparse.Namespace) -> int:
    with _open(args, private_ok=True) as device:
        page = device.map_shared_memory()
        snap = page.read()
        shown = 0
        while True:
            if snap.state == STATE_STOPPED:
                raise CommandError("the driver stopped", EXIT_DRIVER_STOPPED)
            print(f"{snap.local_datetime:%H:%M:%S}", flush=True)
            shown += 1
            if args.count is not None and shown >= args.count:
                return EXIT_OK
            try:
                snap = wait_next_tick(page, snap, device)
            except DeviceNotConnected as err:
                raise CommandError("the driver stopped", EXIT_DRIVER_STOPPED) from err


# --- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    serve.set_defaults(func=_cmd_serve)

    for name, func, text in (
        ("watch", _cmd_watch, "show the local time from the shared page at each tick"),
        ("read", _cmd_read, "print one snapshot of the shared page"),
        ("status", _cmd_status, "print the driver's handles, page and timer"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--socket", metavar="PATH", help=socket_help)
        sub.add_argument(
            "--timeout", type=float, default=5.0, metavar="SECONDS", help="bound on each request (default 5)"
        )
        if name == "watch":
            sub.add_argument("--count", type=_positive, metavar="N", help="stop after N ticks")
            sub.add_argument(
                "--interval", default="1s", metavar="DURATION", help="timer period of a private driver (default 1s)"
            )
        else:
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
