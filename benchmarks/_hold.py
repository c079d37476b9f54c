"""Helper process: hold N handles with the page mapped until standard input closes.

A Python client holds two fds per mapped handle (its socket, and the dup of the page fd that
Python's mmap keeps), so holders split large counts over processes within RLIMIT_NOFILE.
Prints `held` once all are open.

Usage: python -m benchmarks._hold SOCKET_PATH N
"""

from __future__ import annotations

import resource
import sys

from sharingmemory import Device, open_device


def main(argv: list[str]) -> int:
    socket_path, count = argv[0], int(argv[1])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    devices: list[Device] = []
    try:
        for _ in range(count):
            device = open_device(socket_path)
            devices.append(device)
            device.map_shared_memory()
        print("held", flush=True)
        sys.stdin.read()
    finally:
        for device in devices:
            device.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
