"""Small producer and reader programs for the section tests, run as real processes:
`python -m tests.section_programs COMMAND SOCKET NAME` (also under another uid, with the system
python and PYTHONPATH, so it imports only the standard library and sharingmemory).

Every update of `loop` derives all fields from one counter, so a reader can check any snapshot
for consistency alone: see `consistent`.
"""

from __future__ import annotations

import json
import sys

import sharingmemory

FIELDS = (
    sharingmemory.Field("a", "i64", unit="n", doc="the counter"),
    sharingmemory.Field("b", "f64", doc="minus the counter"),
    sharingmemory.Field("s", "str", length=24, doc="the counter in decimal"),
    sharingmemory.Field("odd", "bool"),
)


def values(i: int) -> dict[str, object]:
    return {"a": i, "b": -float(i), "s": str(i), "odd": bool(i & 1)}


def consistent(snap: sharingmemory.Snapshot) -> bool:
    """Whether a snapshot of a `loop` producer is one whole update (or the zero state)."""
    i = snap.updates
    if i == 0:
        return tuple(snap.as_dict().values()) == (0, 0.0, "", False)
    return snap.as_dict() == values(i)


def main(argv: list[str]) -> int:
    command, socket_path, name = argv[:3]
    if command in ("produce", "loop"):
        readers = [int(u) for u in argv[3:]]
        with sharingmemory.open_device(socket_path, "rw") as device:
            section = device.create_section(name, FIELDS, readers_uids=readers)
            if command == "produce":
                section.publish(**values(1))
                print("ready", section.instance_id.hex(), flush=True)
                for line in sys.stdin:
                    section.publish(**json.loads(line))
                    print("published", flush=True)
                return 0
            print("ready", section.instance_id.hex(), flush=True)
            i = 0
            while True:
                i += 1
                section.publish(**values(i))
    if command == "create":
        try:
            with sharingmemory.open_device(socket_path, "rw") as device:
                device.create_section(name, FIELDS)
        except sharingmemory.NtStatusError as err:
            print(type(err).__name__, f"{err.status:#x}")
            return 0
        print("ok")
        return 0
    if command == "read":
        try:
            with sharingmemory.open_device(socket_path) as device:
                snap = device.open_section(name).read()
        except sharingmemory.NtStatusError as err:
            print(type(err).__name__, f"{err.status:#x}")
            return 0
        print("ok", json.dumps(snap.as_dict()))
        return 0
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
