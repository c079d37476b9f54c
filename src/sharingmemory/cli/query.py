"""`sharingmemory read` and `status`: one look at the page, or at the driver, and exit.

Neither starts a private driver: the page of a driver that stops at once would tell nothing.
`status` exits 0 whenever a driver answers, idle or running, late ticks or not (its state is in
the output, in words), and 1 when none does, so `sharingmemory status >/dev/null` is a liveness
check; `--prometheus` prints the same look as metrics (`metrics.py` says how to collect them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from .._client import Device
from .._defs import NtStatusError, resolve_device_name
from . import sections
from .display import snapshot_json
from .exits import EXIT_ERROR, EXIT_OK, CommandError
from .metrics import health, prometheus_text, status_lines
from .options import add_client_options
from .session import open_session
from .times import page_times


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    read = commands.add_parser("read", help="print one snapshot of the shared page")
    add_client_options(read)
    read.add_argument("--json", action="store_true", help="one JSON object")
    read.add_argument(
        "section", nargs="?", default="time", metavar="SECTION", help="a section (default: time, the page)"
    )
    read.set_defaults(func=cmd_read)
    status = commands.add_parser(
        "status", help="the driver's state in words (idle, running, late ticks), handles and timer"
    )
    add_client_options(status)
    form = status.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON object")
    form.add_argument(
        "--prometheus",
        action="store_true",
        help="the Prometheus text format, for node_exporter's textfile collector "
        "(sharingmemory_up 0 and exit 1 when no driver answers)",
    )
    status.set_defaults(func=cmd_status)


@contextlib.contextmanager
def _open(args: argparse.Namespace) -> Iterator[Device]:
    with open_session(args.socket, timeout=args.timeout) as session:
        yield session.device


def cmd_read(args: argparse.Namespace) -> int:
    if args.section != "time":
        with _open(args) as device:
            return sections.print_section(device, args.section, as_json=args.json)
    with _open(args) as device:
        snap = device.map_shared_memory().read()
    if args.json:
        print(json.dumps(snapshot_json(snap)))
    else:
        # ISO, not %z: an offset with seconds (TZ=ABC-5:30:15) reads +05:30:15, not +053015.
        stamp = page_times(snap).local_iso(sep=" ", timespec="seconds")
        print(f"{stamp}  tick {snap.tick_count}  {snap.state_name}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.prometheus:
        return _status_prometheus(args)
    with _open(args) as device:
        status = device.query_status()
    if args.json:
        data: dict[str, Any] = status._asdict()
        data["instance_id"] = status.instance_id.hex()
        data["socket"] = device.path
        data["state"] = health(status)
        print(json.dumps(data))
    else:
        print("\n".join(status_lines(status, device.path)))
    return EXIT_OK


def _status_prometheus(args: argparse.Namespace) -> int:
    """The exposition, with `sharingmemory_up 0` when no driver answers (or it refuses us: a
    scrape that cannot see the driver reports it down either way), then the usual error line."""
    try:
        with _open(args) as device:
            status = device.query_status()
            path = device.path
    except NtStatusError as err:
        try:
            path = args.socket or resolve_device_name(None)
        except ValueError:
            path = str(args.socket)
        sys.stdout.write(prometheus_text(None, path))
        raise CommandError(str(err), EXIT_ERROR) from err
    sys.stdout.write(prometheus_text(status, path))
    return EXIT_OK
