"""Section kill soak: SIGKILL a producer at random instants of its publish loop, many times.

    python -m tests.soak.section_kill --iterations 3000 --readers 2

A real driver; each iteration forks a producer that creates the section `soak` and publishes in
a tight loop (`tests.section_programs.values`: every field derived from one counter), and kills
it after a random 0-3 ms, so the kill lands anywhere, inside publishes included. Reader
processes (one reading with `read()`, the others waiting with `wait_next()`) open every new
instance and check every snapshot with `consistent`; this process is a reader too. Goals:

* torn: 0 (no snapshot mixes two publishes, before the kill or after);
* stuck: 0 (after each kill the section reads stopped within 10 s, every waiter returns, and no
  read gives up);
* collisions: 0 (the name is free for the next producer as soon as the old one reads stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import signal
import sys
import tempfile
import time
from pathlib import Path

import sharingmemory
from tests.section_programs import FIELDS, consistent, values
from tests.soak._figures import Figures
from tests.support import start_driver

NAME = "soak"
BOUND = 10.0  # seconds: longer than this is stuck


def _producer(socket_path: str, ready: int) -> None:
    """The forked producer: create, say ready, publish until killed."""
    try:
        with sharingmemory.open_device(socket_path, "rw") as device:
            section = device.create_section(NAME, FIELDS)
            os.write(ready, b"r")
            i = 0
            while True:
                i += 1
                section.publish(**values(i))
    except sharingmemory.ObjectNameCollision:
        os._exit(3)
    except BaseException:
        os._exit(4)


def _open_new(device: sharingmemory.Device, last: bytes | None, stop: int) -> sharingmemory.Section | None:
    """The next instance of the section (None once `stop` is readable)."""
    while not select.select([stop], [], [], 0)[0]:
        try:
            section = device.open_section(NAME)
        except sharingmemory.ObjectNameNotFound:
            time.sleep(0.0002)
            continue
        assert isinstance(section, sharingmemory.Section)
        if section.instance_id != last:
            return section
        section.close()
    return None


def _reader(socket_path: str, waiting: bool, stop: int, report: int) -> None:
    """A reader process: every instance, every snapshot checked; a JSON report at the end."""
    counts = {"snapshots": 0, "torn": 0, "stuck": 0, "instances": 0}
    last = None
    with sharingmemory.open_device(socket_path) as device:
        while (section := _open_new(device, last, stop)) is not None:
            last = section.instance_id
            counts["instances"] += 1
            deadline = time.monotonic() + 60
            while True:
                try:
                    snap = section.wait_next(timeout=BOUND) if waiting else section.read()
                except (sharingmemory.IoTimeout, sharingmemory.SectionTornError):
                    counts["stuck"] += 1
                    break
                counts["snapshots"] += 1
                counts["torn"] += not consistent(snap)
                if snap.state == "stopped":
                    break
                if time.monotonic() > deadline:
                    counts["stuck"] += 1
                    break
            try:
                final = section.wait_next(timeout=BOUND)  # a stopped section answers at once
                counts["torn"] += not consistent(final)
                counts["stuck"] += final.state != "stopped"
            except sharingmemory.IoTimeout:
                counts["stuck"] += 1
            section.close()
    os.write(report, json.dumps(counts).encode() + b"\n")


def _one_kill(device: sharingmemory.Device, socket_path: str, rng: random.Random) -> tuple[int, int, int, int]:
    """Fork a producer, kill it at a random instant, check what is left: (torn, stuck,
    collisions, publishes it made)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        _producer(socket_path, ready_w)
    os.close(ready_w)
    got = select.select([ready_r], [], [], BOUND)[0] and os.read(ready_r, 1)
    os.close(ready_r)
    if not got:
        _, status = os.waitpid(pid, 0)
        collided = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3
        return 0, int(not collided), int(collided), 0
    section = device.open_section(NAME)
    time.sleep(rng.uniform(0, 0.003))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + BOUND
    while section.state != "stopped" and time.monotonic() < deadline:
        time.sleep(0.0005)
    snap = section.read()
    section.close()
    return int(not consistent(snap)), int(snap.state != "stopped"), 0, snap.updates


def run(iterations: int, readers: int, seed: int) -> int:
    rng = random.Random(seed)
    figures = Figures("section_kill")
    with tempfile.TemporaryDirectory() as tmp, start_driver(Path(tmp), interval="1s", verbosity="") as driver:
        stop_r, stop_w = os.pipe()
        report_r, report_w = os.pipe()
        reader_pids = []
        for index in range(readers):
            pid = os.fork()
            if pid == 0:
                os.close(stop_w)
                try:
                    _reader(driver.socket_path, index > 0, stop_r, report_w)
                finally:
                    os._exit(0)
            reader_pids.append(pid)
        os.close(report_w)
        torn = stuck = collisions = published = 0
        started = time.monotonic()
        with sharingmemory.open_device(driver.socket_path) as device:
            for _ in range(iterations):
                outcome = _one_kill(device, driver.socket_path, rng)
                torn, stuck = torn + outcome[0], stuck + outcome[1]
                collisions, published = collisions + outcome[2], published + outcome[3]
        elapsed = time.monotonic() - started
        os.close(stop_w)
        totals = {"snapshots": 0, "torn": 0, "stuck": 0, "instances": 0}
        with os.fdopen(report_r) as reports:
            for line in reports:
                for key, value in json.loads(line).items():
                    totals[key] += value
        for pid in reader_pids:
            os.waitpid(pid, 0)
    figures.record("producers killed", iterations)
    figures.record("publishes before the kills", published)
    figures.record("instances seen by readers", totals["instances"])
    figures.record("snapshots checked by readers", totals["snapshots"])
    figures.record("torn", torn + totals["torn"], "0", torn + totals["torn"] == 0)
    figures.record("stuck", stuck + totals["stuck"], "0", stuck + totals["stuck"] == 0)
    figures.record("name collisions", collisions, "0", collisions == 0)
    figures.record("seconds", round(elapsed, 1))
    return figures.report()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    print(f"seed {args.seed}")
    with contextlib.suppress(BrokenPipeError):
        return run(args.iterations, args.readers, args.seed)
    return 1


if __name__ == "__main__":
    sys.exit(main())
