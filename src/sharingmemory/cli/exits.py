"""The command line's exit statuses and its one-line failure, shared by every subcommand.

The statuses are defined here once; `--help`, the man page and the README say them from
`EXIT_STATUS_TEXT`.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_DRIVER_STOPPED: Final = 3
EXIT_INTERRUPTED: Final = 130

#: Each status and what it means, in the order they are documented.
EXIT_MEANINGS: Final = {
    EXIT_OK: "ok",
    EXIT_ERROR: "error",
    EXIT_USAGE: "bad usage",
    EXIT_DRIVER_STOPPED: "the driver stopped during watch",
    EXIT_INTERRUPTED: "interrupted",
}
EXIT_STATUS_TEXT: Final = ", ".join(f"{status} {meaning}" for status, meaning in EXIT_MEANINGS.items())


def printable(text: str) -> str:
    """`text` with the characters that would break a line or drive the terminal (newline, ESC,
    and the others str.splitlines breaks at or isprintable refuses) written as Python escapes:
    a socket path is any bytes but NUL, and it must neither split a one-line error nor clear
    the screen of the live display."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class CommandError(Exception):
    """A failure to report as one line (`sharingmemory: error: MESSAGE`), with its exit status."""

    def __init__(self, message: str, exit_status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_status = exit_status
