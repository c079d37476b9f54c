"""Helper process for the zero-syscall check: map the page, then read it N times between two
marker system calls that strace shows (`access("/smbench-read-begin")` and `-end`).

Usage: python -m benchmarks._syscall_reader SOCKET_PATH N
"""

from __future__ import annotations

import os
import sys

from sharingmemory import open_device

BEGIN_MARK = "/smbench-read-begin"
END_MARK = "/smbench-read-end"


def main(argv: list[str]) -> int:
    socket_path, count = argv[0], int(argv[1])
    with open_device(socket_path) as device:
        page = device.map_shared_memory()
        read, local_time = page.read, page.local_time
        for _ in range(1000):  # warm up: first-use allocations happen outside the window
            read()
            local_time()
        os.access(BEGIN_MARK, os.F_OK)
        for _ in range(count):
            read()
            local_time()
        os.access(END_MARK, os.F_OK)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
