"""2. Zero system calls on the read path, counted by strace around a reader's loop."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ._common import ROOT, Config, Figure, Section, driver, python_module, run_alone
from ._syscall_reader import BEGIN_MARK, END_MARK


def count_read_syscalls(socket_path: str, reads: int) -> tuple[int, list[str]]:
    """System calls a reader process makes while it does `reads` read() + local_time() pairs on
    a mapped page: (count, the calls). Needs strace."""
    strace = shutil.which("strace")
    if strace is None:
        raise FileNotFoundError("strace is not installed")
    with tempfile.TemporaryDirectory(prefix="smbench-strace-") as tmp:
        log = Path(tmp) / "trace"
        command = [strace, "-f", "-qq", "-o", str(log), *python_module("_syscall_reader", socket_path, str(reads))]
        subprocess.run(command, cwd=ROOT, check=True, timeout=120, stdin=subprocess.DEVNULL)
        lines = log.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if BEGIN_MARK in line)
    end = next(i for i, line in enumerate(lines) if END_MARK in line)
    calls = [line for line in lines[begin + 1 : end] if "(" in line]
    return len(calls), calls


def run(config: Config) -> Section:
    section = Section("syscalls", "2. System calls on the read path (strace)")
    if shutil.which("strace") is None:
        section.note("strace is not installed: skipped")
        return section
    many = 1_000 if config.smoke else 100_000
    with driver(interval="10ms") as process:
        few_count, _ = count_read_syscalls(process.socket_path, 10)
        many_count, calls = count_read_syscalls(process.socket_path, many)
    section.add(Figure("system calls during 10 reads", few_count, "calls"))
    section.add(
        Figure(
            f"system calls during {many:,} reads",
            many_count,
            "calls",
            goal="no more than during 10 reads",
            met=many_count <= few_count,
        )
    )
    if calls:
        section.note("calls seen: " + "; ".join(calls[:5]))
    section.note(
        "Each read is a read() and a local_time() on a page whose driver ticks every 10 ms, so the loop also "
        "takes the full seqlock path after every tick. Checked in CI by tests/integration/test_read_path_syscalls.py."
    )
    return section


if __name__ == "__main__":
    sys.exit(run_alone(run))
