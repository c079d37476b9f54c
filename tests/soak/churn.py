"""Churn: open/map/read/close cycles from concurrent client processes, many of them SIGKILLed.

    python -m tests.soak.churn --cycles 100000 --workers 6 --kill-fraction 0.25

One real driver (`sharingmemory serve`, INFO logging) and `--workers` client processes. Each
worker runs its share of the cycles. A cycle is either a clean one (open_device, map the page,
read and check a snapshot, close) or, with probability `--kill-fraction`, a forked child that is
SIGKILLed at one of these points:

* before-create: connected, CREATE not sent
* mid-ioctl: IOCTL_GIVE_ME_YOUR_MEMORY sent, its reply (with the page fd) not yet received
* mapped: the page mapped and read, the handle open
* anywhere: looping over clean cycles, killed after a random 0-3 ms

A keeper client holds the page mapped the whole time, so the timer runs throughout. At the end,
with every client gone, the driver must hold exactly the fds it held before (from
/proc/PID/fd), no memfd, an RSS within 2 MiB of the start, zero handles, and its timer must
never have been late by a whole interval (the driver's own late_ticks and max lateness).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import sharingmemory
from sharingmemory import EPOCH_AS_FILETIME, IOCTL_GIVE_ME_YOUR_MEMORY
from sharingmemory._defs.protocol import MajorFunction, Request, encode_request
from sharingmemory.winioctl import FILE_READ_DATA
from tests.support import RawConnection, rss_kib, wait_for

from ._driver import add_driver_arguments, record_timer, soak_driver, worker_report
from ._figures import Figures

PHASES = ("before-create", "mid-ioctl", "mapped", "anywhere")
RSS_GOAL_KIB = 2048


# --- the worker process -------------------------------------------------------------------------


def _clean_cycle(path: str) -> str | None:
    """One open/map/read/close; a problem as text, or None."""
    with sharingmemory.open_device(path, timeout=10) as device:
        snap = device.map_shared_memory().read()
    if snap.state != sharingmemory.STATE_RUNNING:
        return f"page state {snap.state_name}"
    if snap.local_time != snap.system_time - snap.time_zone_bias:
        return "local_time != system_time - time_zone_bias"
    if snap.system_time != snap.realtime_ns // 100 + EPOCH_AS_FILETIME:
        return "system_time != realtime_ns // 100 + EPOCH"
    return None


def _doomed_child(path: str, phase: str, ready: int) -> None:
    """Reach `phase`, say so on `ready`, and wait to be killed."""
    if phase == "anywhere":
        while True:
            _clean_cycle(path)
    held: object
    if phase == "before-create":
        held = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        held.connect(path)
    elif phase == "mid-ioctl":
        held = raw = RawConnection(path, timeout=10)
        raw.request(MajorFunction.IRP_MJ_CREATE, FILE_READ_DATA)
        raw.send_raw(encode_request(Request(MajorFunction.IRP_MJ_DEVICE_CONTROL, 2, IOCTL_GIVE_ME_YOUR_MEMORY, 8)))
    else:
        held = device = sharingmemory.open_device(path, timeout=10)
        device.map_shared_memory().read()
    os.write(ready, b"!")
    time.sleep(60)
    del held


def _killed_cycle(path: str, phase: str, rng: random.Random) -> bool:
    """Fork a child that reaches `phase`, SIGKILL it there; True if it died of the signal."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the doomed child
        os.close(r)
        try:
            _doomed_child(path, phase, w)
        finally:
            os._exit(0)
    os.close(w)
    try:
        if phase == "anywhere":
            time.sleep(rng.uniform(0, 0.003))
        else:
            select.select([r], [], [], 10)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(r)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def worker(path: str, cycles: int, kill_fraction: float, seed: int, phases: list[str]) -> dict[str, Any]:
    rng = random.Random(seed)
    result: dict[str, Any] = {"cycles": 0, "clean": 0, "killed": 0, "not_killed": 0, "problems": {}}
    killed_at = dict.fromkeys(PHASES, 0)
    for _ in range(cycles):
        result["cycles"] += 1
        try:
            if rng.random() < kill_fraction:
                phase = rng.choice(phases)
                if _killed_cycle(path, phase, rng):
                    result["killed"] += 1
                    killed_at[phase] += 1
                else:
                    result["not_killed"] += 1
            else:
                problem = _clean_cycle(path)
                if problem is None:
                    result["clean"] += 1
                else:
                    result["problems"][problem] = result["problems"].get(problem, 0) + 1
        except Exception as err:  # every failure is counted, and the run goes on
            key = f"{type(err).__name__}: {err}"[:120]
            result["problems"][key] = result["problems"].get(key, 0) + 1
    result["killed_at"] = killed_at
    return result


# --- the conductor ------------------------------------------------------------------------------


def _run_workers(path: str, args: argparse.Namespace, cycles: int, workers: int, pid: int) -> tuple[list[Any], int]:
    """Run `workers` worker processes over `cycles` cycles; (their reports, driver's max RSS)."""
    share = -(-cycles // workers)
    processes = []
    for n in range(workers):
        count = min(share, cycles - n * share)
        command = [sys.executable, "-m", "tests.soak.churn", "--worker", path, "--cycles", str(count)]
        command += ["--kill-fraction", str(args.kill_fraction), "--seed", str(args.seed * 1000 + n)]
        command += ["--phases", args.phases]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
    max_rss = 0
    while any(process.poll() is None for process in processes):
        max_rss = max(max_rss, rss_kib(pid))
        time.sleep(0.5)
    return [worker_report(process) for process in processes], max_rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.churn", description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=100_000, help="cycles in all (default 100,000)")
    parser.add_argument("--workers", type=int, default=6, help="concurrent worker processes (default 6)")
    parser.add_argument("--kill-fraction", type=float, default=0.25, help="share of cycles SIGKILLed (default 0.25)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"where the kills happen, comma-separated (default {','.join(PHASES)})",
    )
    add_driver_arguments(parser, interval="20ms")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--worker", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.cycles, args.kill_fraction, args.seed, args.phases.split(","))))
        return 0

    return _report(args, _measure(args))


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the driver and the workers; the raw numbers."""
    m: dict[str, Any] = {}
    with soak_driver("churn", args) as driver:
        fd_dir = f"/proc/{driver.pid}/fd"
        # Warm up (lazy imports, allocator arenas, dict sizes), then take the baseline.
        _run_workers(driver.socket_path, args, min(500, args.cycles), 2, driver.pid)
        m["base_fds"], m["base_rss"] = len(os.listdir(fd_dir)), rss_kib(driver.pid)
        m["load_start"] = os.getloadavg()[0]
        keeper = driver.open()
        first = keeper.map_shared_memory().read()
        started = time.monotonic()
        m["reports"], m["max_rss"] = _run_workers(driver.socket_path, args, args.cycles, args.workers, driver.pid)
        m["elapsed"] = time.monotonic() - started
        m["load_end"] = os.getloadavg()[0]
        m["status"] = keeper.query_status()
        m["ticks"] = keeper.map_shared_memory().read().tick_count - first.tick_count
        keeper.close()
        wait_for(lambda: len(os.listdir(fd_dir)) <= m["base_fds"], timeout=10)
        m["end_fds"], m["end_memfds"], m["end_rss"] = len(os.listdir(fd_dir)), len(driver.memfds()), rss_kib(driver.pid)
        with driver.open() as device:
            m["handles"] = device.query_status().handles - 1  # less the query's own handle
        m["alive"] = driver.process.poll() is None
    return m


def _report(args: argparse.Namespace, m: dict[str, Any]) -> int:
    figures = Figures("churn")
    good = [report for report in m["reports"] if "failed" not in report]
    failed_workers = len(m["reports"]) - len(good)
    cycles = sum(report["cycles"] for report in good)
    killed = sum(report["killed"] for report in good)
    problems: dict[str, int] = {}
    for report in good:
        for key, count in report["problems"].items():
            problems[key] = problems.get(key, 0) + count
    figures.record("workers that failed", failed_workers, "0", not failed_workers)
    figures.record("cycles", cycles, f">= {args.cycles:,}", cycles >= args.cycles)
    figures.record("clean cycles", sum(report["clean"] for report in good))
    figures.record("SIGKILLed cycles", killed)
    share = killed / cycles if cycles else 0.0
    figures.record("SIGKILLed share", round(share, 4), ">= 0.20", share >= 0.20)
    for phase in PHASES:
        figures.record(f"  killed {phase}", sum(report["killed_at"][phase] for report in good))
    figures.record("children that outlived their kill", sum(report["not_killed"] for report in good))
    figures.record("failed cycles", sum(problems.values()), "0", not problems)
    for key, count in sorted(problems.items()):
        figures.record(f"  {key}", count)
    figures.record("seconds", round(m["elapsed"], 1))
    figures.record("load average (1 min) at start / end", f"{m['load_start']:.2f} / {m['load_end']:.2f}")
    figures.record("cycles per second", round(cycles / m["elapsed"]))
    figures.record("driver alive", m["alive"], "True", m["alive"])
    base_fds, end_fds = m["base_fds"], m["end_fds"]
    figures.record("driver fds at start / end", f"{base_fds} / {end_fds}", "equal", end_fds == base_fds)
    figures.record("driver memfds at end", m["end_memfds"], "0", m["end_memfds"] == 0)
    figures.record("driver RSS start / peak / end (KiB)", f"{m['base_rss']} / {m['max_rss']} / {m['end_rss']}")
    growth = m["end_rss"] - m["base_rss"]
    figures.record("driver RSS growth (KiB)", growth, f"<= {RSS_GOAL_KIB}", growth <= RSS_GOAL_KIB)
    figures.record("handles at end", m["handles"], "0", m["handles"] == 0)
    figures.record("ticks seen by the keeper", m["ticks"])
    status = m["status"]
    interval_ns = record_timer(figures, args, status)
    lateness_goal = f"< {interval_ns / 1e6:g}"
    figures.record(
        "max timer lateness (ms)", status.max_lateness_ns / 1e6, lateness_goal, status.max_lateness_ns < interval_ns
    )
    return figures.report(as_json=args.json)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
