"""Helper process: THREADS clients that open the device, map the page, read it and close, as fast
as they can, until standard input closes. Prints {"cycles": N, "errors": N} at the end.

Usage: python -m benchmarks._load SOCKET_PATH THREADS
"""

from __future__ import annotations

import json
import sys
import threading

from sharingmemory import NtStatusError, open_device


def main(argv: list[str]) -> int:
    socket_path, threads = argv[0], int(argv[1])
    done = threading.Event()
    counts = [0] * threads
    errors = [0] * threads

    def client(index: int) -> None:
        while not done.is_set():
            try:
                with open_device(socket_path, timeout=10) as device:
                    device.map_shared_memory().read()
                counts[index] += 1
            except (NtStatusError, OSError):
                errors[index] += 1

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    print("started", flush=True)
    sys.stdin.read()
    done.set()
    for worker in workers:
        worker.join(15)
    print(json.dumps({"cycles": sum(counts), "errors": sum(errors)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
