"""What every benchmark shares: the result records, timing loops, percentiles and a driver."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import DriverProcess, start_driver

from sharingmemory.cli.private_driver import stop_process

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Config:
    """How a run is sized: `smoke` is the short CI version (seconds, no timing claims)."""

    smoke: bool
    out_dir: Path


@dataclass
class Figure:
    """One measured figure; `ratio` is value / baseline (same run), `goal` a bound on it."""

    name: str
    value: float
    unit: str
    baseline: str = ""
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None

    def line(self) -> str:
        text = f"  {self.name}: {fmt(self.value)} {self.unit}"
        if self.ratio is not None:
            text += f"  ({self.ratio:.2f}x {self.baseline})"
        if self.goal:
            text += f"  goal {self.goal}: {'met' if self.met else 'MISSED'}"
        return text


@dataclass
class Section:
    """One benchmark's results: figures for the table, notes and plots for the report."""

    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        print(figure.line(), flush=True)
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


def fmt(value: float) -> str:
    """A figure with three significant digits, without exponent for the usual ranges."""
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def ns_per_call(func: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Nanoseconds per call of `func`: the best of `repeat` loops of `number` calls (the least
    disturbed loop on a shared machine; the loop's own overhead is included, as a caller pays it)."""
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e9


def seconds_each(func: Callable[[], object], count: int) -> list[float]:
    """Wall time of each of `count` calls of `func`, in seconds."""
    times = []
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        func()
        times.append(clock() - start)
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def ratio_figure(
    section: Section, name: str, value: float, unit: str, *, vs: tuple[str, float], goal: float | None
) -> Figure:
    """A figure with its ratio to the baseline `vs` = (name, value) of the same run; `goal` is the
    largest ratio allowed (None: reported only)."""
    baseline_name, baseline = vs
    ratio = value / baseline if baseline else float("inf")
    if goal is None:
        return section.add(Figure(name, value, unit, baseline_name, ratio))
    return section.add(Figure(name, value, unit, baseline_name, ratio, f"<= {goal:g}x", ratio <= goal))


@contextlib.contextmanager
def driver(*args: str, interval: str = "1s", prefix: Sequence[str] = ()) -> Iterator[DriverProcess]:
    """A real `sharingmemory serve` in a private directory, logging at INFO only (a benchmark
    must not pay for per-handle debug lines)."""
    with (
        tempfile.TemporaryDirectory(prefix="smbench-") as tmp,
        start_driver(Path(tmp), *args, interval=interval, prefix=prefix, verbosity="") as process,
    ):
        yield process


def python_module(module: str, *args: str) -> list[str]:
    """The command line that runs `benchmarks.<module>` with this interpreter from the repo root."""
    return [sys.executable, "-m", f"benchmarks.{module}", *args]


def spawn(
    module: str, *args: str, stdout: int | None = subprocess.PIPE, stdin: int | None = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """Start a helper module of the suite in its own process (its own GIL, as real peers have)."""
    return subprocess.Popen(python_module(module, *args), cwd=ROOT, stdout=stdout, stdin=stdin)


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Close a helper's standard input (its signal to finish), then SIGTERM it if it lingers."""
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_process(process, timeout)


def run_alone(run: Callable[[Config], Section], argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.NAME [--smoke] [--out DIR]`: one benchmark, its figures printed as
    they come and nothing else written: no report, and plots in a temporary directory unless
    --out names one, so that comparing a branch never rewrites docs/performance.md."""
    module = sys.modules[run.__module__]  # __main__ under -m; its spec still has the real name
    name = module.__spec__.name if module.__spec__ is not None else run.__module__
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=(module.__doc__ or "").split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the short CI version (seconds; figures mean nothing)")
    parser.add_argument("--out", type=Path, help="where its plots go (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        out_dir = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="smbench-")))
        out_dir.mkdir(parents=True, exist_ok=True)
        section = run(Config(smoke=args.smoke, out_dir=out_dir))
    missed = [figure.name for figure in section.figures if figure.met is False]
    print(f"== {section.key}: {len(section.figures)} figures, goals missed: {len(missed)}", flush=True)
    return 0


def machine_description() -> dict[str, str]:
    """What the report says about the machine the figures come from."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return {
        "CPU": f"{model}, {os.cpu_count()} logical CPUs",
        "memory": memory,
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "load average at start": load,
    }
