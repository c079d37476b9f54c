"""The command line's vocabulary: value checkers and the options several subcommands share.

Each subcommand's module declares its own arguments (`add_parser`), built from these pieces, so
one option is spelled, checked and documented once.
"""

from __future__ import annotations

import argparse
import re

from .._defs import default_socket_path
from .._driver import MIN_INTERVAL_NS

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|ms|s|m)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, None: 1_000_000_000}


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


def parse_octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid mode {text!r} (octal, like 0660)") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"mode {text!r} is out of range")
    return mode


def parse_positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def parse_positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def parse_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid id {text!r} (a number)") from None
    if not 0 <= value < 2**32 - 1:
        raise argparse.ArgumentTypeError(f"id {text} is out of range")
    return value


def socket_help() -> str:
    return f"the device's socket (default: {default_socket_path()}, or $SHARINGMEMORY_SOCKET)"


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """--socket and --timeout, which every command that opens the device takes."""
    parser.add_argument("--socket", metavar="PATH", help=socket_help())
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="bound on each request (default 5)"
    )
