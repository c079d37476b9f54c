"""The command line's exit statuses and its one-line failure, shared by every subcommand.

Exit status: 0 success; 1 the driver or the system reported an error; 2 bad usage;
3 the driver stopped while `watch` was running; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DRIVER_STOPPED = 3
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A failure to report as one line, with its exit status."""

    def __init__(self, message: str, exit_status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_status = exit_status
