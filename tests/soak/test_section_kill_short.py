"""The short version of the section kill soak, run by CI (the full run: docs/reliability.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_section_kill_short() -> None:
    """200 producers SIGKILLed at random instants of their publish loop: zero torn snapshots,
    zero stuck readers or waiters, the name free for the next producer every time."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.soak.section_kill", "--iterations", "200", "--readers", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=200, check=False,
    )  # fmt: skip
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== section_kill: PASS ==" in result.stdout
