"""python -m benchmarks [--smoke] [--only NAME,...] [--out DIR] [--report FILE]

Runs the benchmarks in order, prints each figure as it comes, and writes the markdown report
(default docs/performance.md, figures between its markers) and PNG plots (default
docs/performance/). `--smoke` is the short CI version: small counts, no timing claims.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import open_cycle, peers, read_path, report, scale, sections, syscalls, timer
from ._common import ROOT, Config, Section

BENCHMARKS: dict[str, Callable[[Config], Section]] = {
    "read_path": read_path.run,
    "syscalls": syscalls.run,
    "peers": peers.run,
    "open_cycle": open_cycle.run,
    "timer": timer.run,
    "scale": scale.run,
    "sections": sections.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the short CI version (seconds; figures mean nothing)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", type=Path, help="where PNG plots go (default docs/performance/)")
    parser.add_argument("--report", type=Path, help="the markdown report (default docs/performance.md)")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if not args.only else [name.strip() for name in args.only.split(",")]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    out_dir = args.out or ROOT / "docs" / "performance"
    report_path = args.report or ROOT / "docs" / "performance.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    config = Config(smoke=args.smoke, out_dir=out_dir)
    command = (
        "make bench"
        if not argv and not args.smoke and not args.only
        else shlex.join(["python -m benchmarks", *sys.argv[1:]])
    )
    sections = []
    start = time.perf_counter()
    for name in names:
        print(f"== {name}", flush=True)
        began = time.perf_counter()
        section = BENCHMARKS[name](config)
        section.seconds = time.perf_counter() - began
        sections.append(section)
    total = time.perf_counter() - start
    report.write(sections, command, report_path, total)
    missed = [f.name for s in sections for f in s.figures if f.met is False]
    print(f"== done in {total:.0f} s; report: {report_path}; goals missed: {len(missed)}", flush=True)
    for name in missed:
        print(f"   missed: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
