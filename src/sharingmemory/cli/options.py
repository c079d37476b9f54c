"""The command line's vocabulary: value checkers and the options several subcommands share.

Each subcommand's module declares its own arguments (`add_parser`), built from these pieces, so
one option is spelled, checked and documented once.
"""

from __future__ import annotations

import argparse
import math
import re
from decimal import Decimal
from typing import Final

from .._defs import default_socket_path, resolve_device_name
from .._driver import MAX_INTERVAL_NS, MIN_INTERVAL_NS

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|ms|s|m)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, None: 1_000_000_000}


#: The most a request may wait (`--timeout`): a day. Past it the figure is a mistake, not a
#: patient user, and far past it (1e300, inf) poll(2) and settimeout() raise OverflowError.
MAX_TIMEOUT_S: Final = 86_400.0
#: The most ticks `--count` takes: a signed 64-bit count, more than a 1 ms timer gives in 290
#: million years, so the bound refuses only typing accidents.
MAX_COUNT: Final = 2**63 - 1
#: int() of a longer string is refused by Python itself (sys.set_int_max_str_digits); refusing
#: earlier keeps the message ours.
_MAX_DIGITS: Final = 30


def _shown(text: str) -> str:
    """`text` quoted for an error line, cut so a 400-digit typo stays one readable line."""
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}...({len(text)} characters)"


def parse_duration(text: str) -> int:
    """`1s`, `250ms`, `1ms`, `500us`, `2` (seconds) -> nanoseconds, between the driver's 1 ms
    minimum and its one-day maximum (`_driver.MAX_INTERVAL_NS`), so a bad period is a usage error
    here rather than the driver's refusal later.

    Decimal, not float: a 400-digit figure is exact there, where float() would give inf and
    round() an OverflowError."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid duration {_shown(text)} (try 1s, 250ms or 1ms)")
    value, unit = match.groups()
    nanoseconds = Decimal(value) * _UNIT_NS[unit]
    if nanoseconds < MIN_INTERVAL_NS:
        raise argparse.ArgumentTypeError(f"duration {_shown(text)} is shorter than the 1 ms minimum")
    if nanoseconds > MAX_INTERVAL_NS:
        raise argparse.ArgumentTypeError(f"duration {_shown(text)} is longer than the one-day maximum")
    return round(nanoseconds)


def check_duration(text: str) -> str:
    """`text` itself once `parse_duration` accepts it: for options handed on as written (the
    private driver's `--interval`), checked here so a bad one is a usage error at once."""
    parse_duration(text)
    return text.strip()


def parse_octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid mode {text!r} (octal, like 0660)") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"mode {text!r} is out of range")
    return mode


def parse_positive(text: str) -> int:
    """A whole number from 1 to MAX_COUNT (a C int64 on the way to any fixed-size field)."""
    if len(text.strip().lstrip("+-").lstrip("0")) > _MAX_DIGITS:
        raise argparse.ArgumentTypeError(f"number {_shown(text)} is out of range")
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {_shown(text)}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{text} is out of range (at most {MAX_COUNT})")
    return value


def parse_seconds(text: str, what: str = "timeout") -> float:
    """Seconds, finite, above 0 and at most MAX_TIMEOUT_S (a day): NaN compares false with
    everything, so it is refused by name, and inf would reach poll(2) as an OverflowError."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {_shown(text)}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{what} {_shown(text)} is not a positive, finite number of seconds")
    if value > MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"{what} {_shown(text)} is longer than the one-day maximum")
    return value


def parse_timeout(text: str) -> float:
    """A client's --timeout: see `parse_seconds`."""
    return parse_seconds(text)


def parse_create_timeout(text: str) -> float:
    """serve's --create-timeout: see `parse_seconds`."""
    return parse_seconds(text, "create timeout")


def parse_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid id {text!r} (a number)") from None
    if not 0 <= value < 2**32 - 1:
        raise argparse.ArgumentTypeError(f"id {text} is out of range")
    return value


def parse_device_name(text: str) -> str:
    """A client's `--socket`: a socket path, or `\\\\.\\SharingMemory` for the default. Checked
    here, since an empty one would mean "the default" by accident and `\\\\.\\Other` is no
    device of this system (a ValueError traceback from open_device once); returned as written."""
    if not text:
        raise argparse.ArgumentTypeError("an empty socket path (leave --socket out for the default)")
    try:
        resolve_device_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def socket_help() -> str:
    return f"the device's socket (default: {default_socket_path()}, or $SHARINGMEMORY_SOCKET)"


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """--socket and --timeout, which every command that opens the device takes."""
    # Said in words, not as this user's paths: --help and the man page (generated from this
    # parser, the same for every uid) then read alike.
    parser.add_argument(
        "--socket",
        type=parse_device_name,
        metavar="PATH",
        help="the device's socket (default: $SHARINGMEMORY_SOCKET if set, else the system driver's "
        "/run/sharingmemory/SharingMemory, then your own: $XDG_RUNTIME_DIR/sharingmemory/SharingMemory, "
        "or /tmp/sharingmemory-$UID/SharingMemory without XDG_RUNTIME_DIR; root's own is the system one)",
    )
    parser.add_argument(
        "--timeout", type=parse_timeout, default=5.0, metavar="SECONDS", help="bound on each request (default 5)"
    )


def add_private_driver_options(parser: argparse.ArgumentParser) -> None:
    """--interval of the private driver that `watch` and `gui` start when no driver answers."""
    parser.add_argument(
        "--interval",
        default="1s",
        type=check_duration,
        metavar="DURATION",
        help="timer period of a private driver (default 1s)",
    )
