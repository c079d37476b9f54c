"""`sharingmemory read` and `status`: one look at the page, or at the driver, and exit.

Neither starts a private driver: the page of a driver that stops at once would tell nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from typing import Any

from .._client import Device
from . import sections
from .display import snapshot_json
from .exits import EXIT_OK
from .options import add_client_options
from .session import open_session


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    read = commands.add_parser("read", help="print one snapshot of the shared page")
    add_client_options(read)
    read.add_argument("--json", action="store_true", help="one JSON object")
    read.add_argument(
        "section", nargs="?", default="time", metavar="SECTION", help="a section (default: time, the page)"
    )
    read.set_defaults(func=cmd_read)
    status = commands.add_parser("status", help="print the driver's handles, page and timer")
    add_client_options(status)
    status.add_argument("--json", action="store_true", help="one JSON object")
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
        print(f"{snap.local_datetime:%Y-%m-%d %H:%M:%S%z}  tick {snap.tick_count}  {snap.state_name}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
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
