"""What the soak suites that run a driver share: its options on their command line, starting it
for one run, the timer figures every such suite reports, and reading their workers' reports."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sharingmemory
from sharingmemory.cli.options import parse_duration
from sharingmemory.cli.private_driver import stop_process
from tests.support import DriverProcess, start_driver

from ._figures import Figures

WORKER_TIMEOUT = 600.0  # seconds a worker may take to report once the conductor waits for it


def add_driver_arguments(parser: argparse.ArgumentParser, *, interval: str) -> None:
    """--interval (default `interval`) and --driver-prefix, which every figure depends on."""
    parser.add_argument("--interval", default=interval, help=f"the driver's timer period (default {interval})")
    parser.add_argument(
        "--driver-prefix", default="", help='run the driver under this command, e.g. "nice -n -5" or "chrt -f 10"'
    )


@contextlib.contextmanager
def soak_driver(suite: str, args: argparse.Namespace, *driver_args: str) -> Iterator[DriverProcess]:
    """The driver of one run, at `args.interval` under `args.driver_prefix`, on a socket in a
    fresh temporary directory; it logs at INFO only (-vv would write a line per request for
    minutes) and is stopped, and the directory removed, at the end."""
    with (
        tempfile.TemporaryDirectory(prefix=f"sharingmemory-{suite}-") as tmp,
        start_driver(
            Path(tmp), *driver_args, interval=args.interval, verbosity="", prefix=shlex.split(args.driver_prefix)
        ) as driver,
    ):
        yield driver


def record_timer(figures: Figures, args: argparse.Namespace, status: sharingmemory.DriverStatus) -> int:
    """The figures about the driver's timer over the run; the interval in ns."""
    interval_ns = parse_duration(args.interval)
    figures.record("timer interval (ms)", interval_ns / 1e6)
    figures.record("driver run under", args.driver_prefix or "(nothing)")
    figures.record("late ticks (late by >= 1 interval)", status.late_ticks, "0", status.late_ticks == 0)
    return interval_ns


def worker_report(process: subprocess.Popen[str], stdin: str | None = None) -> dict[str, Any]:
    """What a worker process reported: the last JSON object it printed, or {"failed": why} when
    it exited with a failure, printed none, or did not finish within WORKER_TIMEOUT (then it is
    stopped, so a hung worker fails its figure instead of hanging the suite)."""
    try:
        out, _ = process.communicate(stdin, timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop_process(process)
        return {"failed": f"no report within {WORKER_TIMEOUT:.0f} s"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if process.returncode == 0 and lines else {"failed": process.returncode}
