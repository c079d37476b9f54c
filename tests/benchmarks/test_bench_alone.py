"""One benchmark run alone (`python -m benchmarks.NAME`), as one compares a branch's hot paths:
it prints its figures and writes nothing, above all not the report in docs/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _alone(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=55, check=False,
    )  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("module", "figure"), [("read_path", "SharedPage.read()"), ("open_cycle", "floor: connect")])
def test_a_benchmark_alone_prints_its_figures_and_writes_no_report(module: str, figure: str, tmp_path: Path) -> None:
    report = ROOT / "docs" / "performance.md"
    before = report.read_bytes()
    result = _alone(module, "--smoke", "--out", str(tmp_path / "plots"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert figure in result.stdout
    assert result.stdout.splitlines()[-1].startswith(f"== {module}: ")
    assert report.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["plots"]


def test_a_benchmark_alone_refuses_an_unknown_option_in_its_own_name() -> None:
    result = _alone("read_path", "--only", "x")
    assert result.returncode == 2
    assert "usage: python -m benchmarks.read_path" in result.stderr
