"""The short versions of the soak suites, run by CI: each must print its figures and exit 0.

The full versions (documented with their figures in docs/reliability.md) take minutes; these
take seconds and check the same goals on fewer cycles.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# CI machines are shared: a 250 ms tick keeps "never a whole interval late" about the driver,
# not about a neighbour's burst of CPU. The full runs use 20 ms (churn) and 50 ms (fuzz).
INTERVAL = ("--interval", "250ms")


def _run_suite(module: str, *args: str, timeout: float = 100) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"tests.soak.{module}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": PASS ==" in result.stdout
    return result.stdout


@pytest.mark.slow
def test_seqlock_torture_short() -> None:
    """One million checked reads by three readers against the writer at full speed. Before the
    writer stored `seq` with one 8-byte store, this found a few torn snapshots per million."""
    _run_suite("seqlock_torture", "--reads", "1000000", "--readers", "3")


@pytest.mark.slow
def test_churn_short() -> None:
    """3,000 cycles from four workers, a quarter of them SIGKILLed: no fd, memfd, handle or RSS
    left behind, and the timer never a whole interval late."""
    _run_suite("churn", "--cycles", "3000", "--workers", "4", *INTERVAL)


@pytest.mark.slow
def test_fuzz_short() -> None:
    """30,000 hostile messages and 200 idle connections while a reader watches every tick."""
    flood = ["--flood-rounds", "1", "--flood-connections", "200", "--create-timeout", "1"]
    _run_suite("fuzz", "--messages", "30000", *flood, *INTERVAL)


def test_attack_short() -> None:
    """Every attack of tests/soak/attack.py against both drivers, each held for a moment, and a
    short log flood: no tick missed or late, every status answered."""
    _run_suite("attack", "--hold", "0.2", "--flood", "1500", "--interval", "100ms")
