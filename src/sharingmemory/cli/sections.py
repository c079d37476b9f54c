"""`sharingmemory list` and `publish`, and the section options of `serve`.

`list` prints the live sections like `varnishstat -l` (`--json`: an array of objects with the
keys of `list_sections()`). `publish SECTION --field NAME:TYPE[:UNIT] ...` creates a section and
publishes one update per JSON object read on standard input, so a shell pipeline can share a
live value: a bad line is reported on stderr with its line number and not published (the
previous value stays), and the exit status says whether any line was refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._client import Device, Section, Snapshot, TimeSection, open_device
from .._defs import DEVICE_NAME, Field, ObjectNameInvalid, ObjectNameNotFound
from .._driver import ProducerPolicy, SectionLimits
from .exits import EXIT_DRIVER_STOPPED as EXIT_STOPPED
from .exits import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CommandError
from .options import parse_id, parse_positive, socket_help


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = commands.add_parser("list", help="list the live sections (name, fields, producer, updates)")
    listing.add_argument("--socket", metavar="PATH", help=socket_help())
    listing.add_argument("--json", action="store_true", help="print a JSON array, one object per section")
    listing.set_defaults(func=cmd_list)

    publish = commands.add_parser(
        "publish", help="create a section and publish one update per JSON object read on stdin"
    )
    publish.add_argument("section", metavar="SECTION", help="the section's name: 1-64 of [A-Za-z0-9._-]")
    publish.add_argument(
        "--field",
        dest="fields",
        action="append",
        required=True,
        type=parse_field,
        metavar="NAME:TYPE[:UNIT]",
        help="a field: TYPE is i32 i64 u32 u64 f32 f64 bool or str/LENGTH (e.g. str/16); repeat for each",
    )
    publish.add_argument("--socket", metavar="PATH", help=socket_help())
    publish.add_argument("--reader-uid", type=parse_id, action="append", default=[], help="only this uid may read")
    publish.add_argument("--reader-gid", type=parse_id, action="append", default=[], help="only this gid may read")
    publish.set_defaults(func=cmd_publish)


def parse_field(text: str) -> Field:
    """`NAME:TYPE[:UNIT]`, TYPE `str/LENGTH` for a str, as a Field (argparse's type=)."""
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME:TYPE[:UNIT]")
    name, kind = parts[0], parts[1]
    length = 0
    if kind.startswith("str"):
        size = kind[3:].lstrip("/") or "64"
        if not size.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r}: a str field is str/LENGTH")
        kind, length = "str", int(size)
    try:
        return Field(name, kind, length, unit=parts[2] if len(parts) > 2 else "")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The section options of `serve`, as one block."""
    group = serve.add_argument_group("sections")
    group.add_argument(
        "--allow-producer-uid", type=parse_id, action="append", default=[], metavar="UID",
        help="this uid may create sections too (default: root and the driver's uid); repeatable",
    )  # fmt: skip
    group.add_argument(
        "--allow-producer-gid", type=parse_id, action="append", default=[], metavar="GID",
        help="members (primary or supplementary) of this group may create sections; repeatable",
    )  # fmt: skip
    defaults = SectionLimits()
    group.add_argument("--max-section-size", type=parse_positive, default=defaults.max_section_size, metavar="BYTES",
                       help=f"largest section (default {defaults.max_section_size})")  # fmt: skip
    group.add_argument("--max-section-fields", type=parse_positive, default=defaults.max_fields, metavar="N",
                       help=f"fields per section (default {defaults.max_fields})")  # fmt: skip
    group.add_argument("--max-sections", type=parse_positive, default=defaults.max_sections, metavar="N",
                       help=f"live sections in all (default {defaults.max_sections})")  # fmt: skip
    per_uid = defaults.max_sections_per_uid
    group.add_argument("--max-sections-per-uid", type=parse_positive, default=per_uid, metavar="N",
                       help=f"live sections per uid (default {per_uid})")  # fmt: skip


def serve_config(args: argparse.Namespace, driver_uid: int) -> dict[str, Any]:
    """The DriverConfig keywords of the section options."""
    try:
        limits = SectionLimits(
            max_section_size=args.max_section_size, max_fields=args.max_section_fields,
            max_sections=args.max_sections, max_sections_per_uid=args.max_sections_per_uid,
        )  # fmt: skip
    except ValueError as err:
        raise CommandError(str(err), EXIT_USAGE) from err
    policy = ProducerPolicy(
        uids=frozenset({driver_uid, *args.allow_producer_uid}), gids=frozenset(args.allow_producer_gid)
    )
    return {"producer_policy": policy, "section_limits": limits}


def cmd_list(args: argparse.Namespace) -> int:
    with open_device(args.socket or DEVICE_NAME) as device:
        sections = device.list_sections()
    if args.json:
        print(json.dumps([s.as_dict() for s in sections], indent=2))
        return EXIT_OK
    if not sections:
        print("no sections")
        return EXIT_OK
    width = max(len(s.name) for s in sections)
    for s in sections:
        fields = " ".join(f"{f.name}:{f.type}" + (f"[{f.unit}]" if f.unit else "") for f in s.fields)
        line = f"{s.name:<{width}}  {s.state:<12} pid {s.producer_pid:<7} uid {s.producer_uid:<6} updates {s.updates}"
        print(f"{line}  {fields}")
    return EXIT_OK


def print_section(device: Device, name: str, *, as_json: bool) -> int:
    """`read SECTION`: one snapshot, as a table of name, value and unit, or one JSON object."""
    try:
        section = device.open_section(name)
    except ObjectNameNotFound:
        raise CommandError(f"no section named {name!r} (see: sharingmemory list)", EXIT_ERROR) from None
    except ObjectNameInvalid as err:
        raise CommandError(str(err), EXIT_USAGE) from None
    snap = section.read()
    if as_json:
        print(json.dumps(_snapshot_json(name, section, snap)))
        return EXIT_OK
    width = max(len(f.name) for f in section.fields)
    print(f"{name}  {snap.state}  updates {snap.updates}")
    for item in section.fields:
        print(f"  {item.name:<{width}}  {snap[item.name]!s:>20}  {item.unit}".rstrip())
    return EXIT_OK


def _snapshot_json(name: str, section: Section | TimeSection, snap: Snapshot) -> dict[str, object]:
    """The JSON form of one snapshot, for `read SECTION --json` and `watch SECTION --json`."""
    return {
        "section": name, "state": str(snap.state), "updates": snap.updates, "published_ns": snap.published_ns,
        "instance_id": section.instance_id.hex(), "values": snap.as_dict(),
    }  # fmt: skip


def _frame(name: str, section: Section, snap: Snapshot) -> list[str]:
    width = max(len(f.name) for f in section.fields)
    lines = [f"{name}  {snap.state}  updates {snap.updates}"]
    lines += [f"  {f.name:<{width}}  {snap[f.name]!s:>20}  {f.unit}".rstrip() for f in section.fields]
    return lines


def watch_section(args: argparse.Namespace) -> int:
    """`watch SECTION`: a table of name, value and unit, redrawn at each publish on a terminal,
    one block per publish on a pipe, one JSON object per publish with --json; `--count N` stops
    after N publishes. A stopped section ends it with exit status 3."""
    terminal = sys.stdout.isatty() and not args.json
    with open_device(args.socket or DEVICE_NAME, timeout=args.timeout) as device:
        try:
            section = device.open_section(args.section)
        except ObjectNameNotFound:
            raise CommandError(f"no section named {args.section!r} (see: sharingmemory list)", EXIT_ERROR) from None
        assert isinstance(section, Section)
        snap, shown = section.read(), 0
        while True:
            if args.json:
                print(json.dumps(_snapshot_json(args.section, section, snap)), flush=True)
            else:
                prefix = "\x1b[H\x1b[2J" if terminal else ""  # home and clear: redraw in place
                print(prefix + "\n".join(_frame(args.section, section, snap)) + ("" if terminal else "\n"), flush=True)
            if snap.state == "stopped":
                raise CommandError(f"section {args.section!r} stopped (its producer closed or died)", EXIT_STOPPED)
            if args.count is not None and shown >= args.count:
                return EXIT_OK
            snap = section.wait_next(after=snap)  # after the one shown: no publish lost in between
            shown += 1


def cmd_publish(args: argparse.Namespace) -> int:
    refused = 0
    with open_device(args.socket or DEVICE_NAME, "rw") as device:
        section = device.create_section(
            args.section, args.fields, readers_uids=args.reader_uid, readers_gids=args.reader_gid
        )
        for number, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                try:
                    values = json.loads(line)
                except json.JSONDecodeError as err:  # its str() names "line 1": ours is the one that counts
                    raise ValueError(f"not JSON ({err.msg} at column {err.colno})") from None
                if not isinstance(values, dict):
                    raise ValueError(f"not a JSON object but {type(values).__name__}")
                section.publish(**values)
            except (ValueError, TypeError) as err:
                refused += 1
                print(f"sharingmemory: error: line {number}: {err}; not published", file=sys.stderr, flush=True)
    if refused:
        print(f"sharingmemory: error: {refused} line(s) refused", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
