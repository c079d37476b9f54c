"""Helper process: THREADS readers of the `time` page, each with its own Device handle, waiting
for every tick with SharedPage.wait_next() until standard input closes.

MODE `futex` is the default wait path (page ABI 1.1: each handle registered once, the driver's
tick one FUTEX_WAKE); `channel` asks each handle's tick channel instead (IOCTL_REGISTER_TICK_
EVENT, one send per handle per tick), as a 1.0 driver's readers do. Prints `ready` once every
reader has come back from its first wait (so it is registered), then `done N` (ticks seen).

Usage: python -m benchmarks._tick_waiters SOCKET_PATH THREADS MODE
"""

from __future__ import annotations

import sys
import threading

import sharingmemory


def main(argv: list[str]) -> int:
    socket_path, threads, mode = argv[0], int(argv[1]), argv[2]
    stop = threading.Event()
    ready = threading.Barrier(threads + 1)
    seen = [0] * threads
    devices = [sharingmemory.open_device(socket_path) for _ in range(threads)]

    def reader(index: int) -> None:
        page = devices[index].map_shared_memory()
        if mode == "channel":
            page._futex_asked = True  # what a 1.0 driver's page gets: the tick channel
        page.wait_next(timeout=10)
        ready.wait()
        while not stop.is_set():
            page.wait_next(timeout=10)
            seen[index] += 1

    workers = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    ready.wait()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()
    for worker in workers:
        worker.join(15)
    print(f"done {sum(seen)}", flush=True)
    for device in devices:
        device.close(wait=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
