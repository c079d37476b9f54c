"""6. Scale: 1,000 concurrent handles with the page mapped (10,000 where RLIMIT_NOFILE allows).

Driver RSS per handle, and the cost of one tick at N handles over its cost at 1 handle (measured
by `_serve_instrumented`: the real server and driver with a stopwatch around the tick; the
handles are held by this process, each with the page mapped).
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sharingmemory import Device, open_device
from sharingmemory.cli.private_driver import stop_process

from ._common import Config, Figure, Section, median, percentile, run_alone, spawn, stop
from ._plots import line_chart

GOAL = 1.2
HANDLES_PER_HOLDER = 4_000
INTERVAL_NS = 10_000_000


def run(config: Config) -> Section:
    section = Section("scale", "6. Scale: handles with the page mapped; RSS per handle and tick cost")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = hard if hard != resource.RLIM_INFINITY else 1 << 20
    targets = [100] if config.smoke else [1_000] + ([10_000] if limit >= 10_000 + 256 else [])
    if not config.smoke and len(targets) == 1:
        section.note(f"10,000 handles skipped: RLIMIT_NOFILE hard limit is {limit}")
    settle = 1.0 if config.smoke else 3.0
    devices: list[Device] = []
    holders: list[subprocess.Popen[bytes]] = []
    held = 1  # this process holds the first handle
    rss_points, cost_points = [], []
    with tempfile.TemporaryDirectory(prefix="smbench-scale-") as tmp:
        socket_path, out_path = str(Path(tmp) / "dev.sock"), Path(tmp) / "ticks.json"
        server = spawn("_serve_instrumented", socket_path, str(INTERVAL_NS), str(out_path))
        try:
            assert server.stdout is not None
            server.stdout.readline()
            base_rss = _rss_kib(server.pid)
            devices.append(open_device(socket_path))
            devices[0].map_shared_memory()
            one_cost, one_rss = _tick_costs(server, out_path, settle), _rss_kib(server.pid)
            section.add(Figure("tick cost at 1 handle: median", one_cost[0], "us"))
            section.add(Figure("driver RSS at 1 handle", one_rss / 1024, "MiB"))
            rss_points.append((1.0, one_rss / 1024))
            cost_points.append((1.0, one_cost[0]))
            for target in targets:
                held = _grow(holders, held, target, socket_path)
                cost, rss = _tick_costs(server, out_path, settle), _rss_kib(server.pid)
                _add_figures(section, target, cost, rss, one=(one_cost, one_rss))
                rss_points.append((float(target), rss / 1024))
                cost_points.append((float(target), cost[0]))
            section.note(
                f"driver RSS before any handle: {base_rss / 1024:.1f} MiB; ticks every {INTERVAL_NS // 1_000_000} ms"
            )
        finally:
            for device in devices:
                device.close()
            for holder in holders:
                stop(holder, timeout=60)
            stop_process(server, 30)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    path = line_chart(
        config.out_dir / "scale.png", "Driver at N mapped handles", "handles", "MiB / us",
        {"driver RSS (MiB)": rss_points, "tick cost median (us)": cost_points},
    )  # fmt: skip
    if path is not None:
        section.plots.append(path)
    return section


def _grow(holders: list[subprocess.Popen[bytes]], held: int, target: int, socket_path: str) -> int:
    """Start holder processes until `target` handles are open with the page mapped (this process
    holds the first one). A Python client needs two fds per mapped handle: chunks stay far below
    RLIMIT_NOFILE. Returns the handles held now."""
    while held < target:
        chunk = min(HANDLES_PER_HOLDER, target - held)
        holder = spawn("_hold", socket_path, str(chunk), stdin=subprocess.PIPE)
        holders.append(holder)
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != b"held":
            raise RuntimeError(f"a holder could not open {chunk} handles")
        held += chunk
    return held


def _add_figures(
    section: Section, target: int, cost: tuple[float, float], rss: int, *, one: tuple[tuple[float, float], int]
) -> None:
    (one_median, _), one_rss = one
    per_handle = (rss - one_rss) * 1024 / (target - 1)
    section.add(Figure(f"driver RSS at {target:,} handles", rss / 1024, "MiB"))
    section.add(Figure(f"driver RSS per handle at {target:,}", per_handle / 1024, "KiB"))
    ratio = cost[0] / one_median
    section.add(
        Figure(f"tick cost at {target:,} handles: median", cost[0], "us", "tick at 1 handle", ratio,
               f"<= {GOAL:g}x", ratio <= GOAL)
    )  # fmt: skip
    section.add(Figure(f"tick cost at {target:,} handles: p99", cost[1], "us"))


def _tick_costs(server: subprocess.Popen[bytes], out_path: Path, settle: float) -> tuple[float, float]:
    """(median, p99) of the tick's duration in us over `settle` seconds from now."""
    server.send_signal(signal.SIGUSR1)  # drop what was collected while handles were opening
    time.sleep(settle)
    out_path.unlink(missing_ok=True)
    server.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not out_path.exists() or not out_path.stat().st_size:
        if time.monotonic() > deadline:
            raise RuntimeError("the instrumented driver wrote no tick durations")
        time.sleep(0.02)
    time.sleep(0.05)
    durations = [d / 1e3 for d in json.loads(out_path.read_text())]
    return median(durations), percentile(durations, 99)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError("VmRSS")


if __name__ == "__main__":
    sys.exit(run_alone(run))
