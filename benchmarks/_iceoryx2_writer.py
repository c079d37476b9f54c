"""Helper process: an iceoryx2 blackboard with one 64-byte value, updated every second, as a
writer process would keep a live value. Prints `ready` once readers can open it; exits when its
standard input closes (so that iceoryx2 removes its shared memory on the way out).

Usage: python -m benchmarks._iceoryx2_writer SERVICE_NAME
"""

from __future__ import annotations

import ctypes
import select
import sys
import time

import iceoryx2 as iox2


class Value(ctypes.Structure):
    """64 bytes, like a small struct a user would share (a counter and seven 64-bit fields)."""

    _fields_ = [("seq", ctypes.c_uint64), ("fields", ctypes.c_int64 * 7)]


KEY = ctypes.c_uint64(0)


def main(argv: list[str]) -> int:
    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    service = node.service_builder(iox2.ServiceName.new(argv[0])).blackboard_creator(ctypes.c_uint64)
    service = service.add(KEY, Value()).create()
    writer = service.writer_builder().create()
    entry = writer.entry(KEY, Value)
    counter = 1
    entry.update_with_copy(Value(seq=counter))
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 1.0)[0]:
        counter += 1
        entry.update_with_copy(Value(seq=counter, fields=(ctypes.c_int64 * 7)(time.time_ns())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
