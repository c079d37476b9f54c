"""`status` in words and as Prometheus metrics, read back by prometheus_client's own parser.

The exposition is checked as Prometheus reads it (`prometheus_client.parser`, the reference
parser of the text format), against a real driver in each of its states: idle (no client has
the page), running (a client mapped it), and with no driver at all (`sharingmemory_up 0`, exit 1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DriverProcess, start_driver

parser = pytest.importorskip("prometheus_client.parser", reason="needs prometheus-client (the dev extra)")

REQUIRED = {
    "sharingmemory_up": "gauge",
    "sharingmemory_handles": "gauge",
    "sharingmemory_mapped_handles": "gauge",
    "sharingmemory_ticks": "counter",  # the parser names a counter's family without _total
    "sharingmemory_late_ticks": "counter",
    "sharingmemory_max_lateness_seconds": "gauge",
}


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sharingmemory", "status", *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def samples(text: str) -> dict[str, float]:
    families = list(parser.text_string_to_metric_families(text))
    kinds = {family.name: family.type for family in families}
    for name, kind in REQUIRED.items():
        if name == "sharingmemory_up" or "sharingmemory_handles" in kinds:
            assert kinds.get(name) == kind, (name, kinds)
    for family in families:
        assert family.documentation, f"{family.name} has no HELP"
    return {sample.name: sample.value for family in families for sample in family.samples}


def test_an_idle_driver_is_up_and_says_idle(driver: DriverProcess) -> None:
    result = status("--socket", driver.socket_path, "--prometheus")
    assert result.returncode == 0, result.stderr
    values = samples(result.stdout)
    assert values["sharingmemory_up"] == 1
    assert values["sharingmemory_handles"] == 1  # the asking one
    assert values["sharingmemory_mapped_handles"] == 0
    assert values["sharingmemory_page_allocated"] == 0
    assert values["sharingmemory_ticks_total"] == 0
    text = status("--socket", driver.socket_path)
    assert text.returncode == 0
    assert text.stdout.splitlines()[0].split(None, 1) == ["state", "idle: no client has the page"]
    assert json.loads(status("--socket", driver.socket_path, "--json").stdout)["state"].startswith("idle")


def test_a_running_driver_counts_its_ticks_and_handles(fast_driver: DriverProcess) -> None:
    with fast_driver.open() as device:
        page = device.map_shared_memory()
        for _ in range(3):
            page.wait_next(timeout=10)
        result = status("--socket", fast_driver.socket_path, "--prometheus")
        words = status("--socket", fast_driver.socket_path)
    assert result.returncode == 0, result.stderr
    values = samples(result.stdout)
    assert values["sharingmemory_up"] == 1
    assert values["sharingmemory_handles"] == 2
    assert values["sharingmemory_mapped_handles"] == 1
    assert values["sharingmemory_ticks_total"] >= 3
    assert values["sharingmemory_interval_seconds"] == pytest.approx(0.02)
    assert values["sharingmemory_late_ticks_total"] >= 0
    assert values["sharingmemory_max_lateness_seconds"] >= 0
    state = words.stdout.splitlines()[0]
    assert state.startswith("state") and "running" in state, words.stdout


@pytest.mark.parametrize("where", ["missing-dir/SharingMemory", "not-a-socket"])
def test_no_driver_is_up_0_and_exit_1(tmp_path: Path, where: str) -> None:
    (tmp_path / "not-a-socket").write_text("")
    path = str(tmp_path / where)
    result = status("--socket", path, "--prometheus")
    assert result.returncode == 1
    values = samples(result.stdout)
    assert values == {"sharingmemory_up": 0}
    assert result.stderr.startswith("sharingmemory: error: ") and len(result.stderr.splitlines()) == 1
    assert status("--socket", path).returncode == 1


def test_a_socket_path_with_quotes_is_escaped_in_its_label(tmp_path: Path) -> None:
    odd = tmp_path / 'a "quoted" \\ dir'
    odd.mkdir()
    with start_driver(odd) as driver:
        result = status("--socket", driver.socket_path, "--prometheus")
    assert result.returncode == 0, result.stderr
    families = {family.name: family for family in parser.text_string_to_metric_families(result.stdout)}
    assert families["sharingmemory_up"].samples[0].labels["socket"] == driver.socket_path


def test_status_after_the_driver_stopped_is_exit_1(tmp_path: Path) -> None:
    with start_driver(tmp_path) as driver:
        path = driver.socket_path
        driver.terminate()
    result = status("--socket", path, "--prometheus")
    assert result.returncode == 1
    assert samples(result.stdout) == {"sharingmemory_up": 0}
