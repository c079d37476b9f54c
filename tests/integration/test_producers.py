"""examples/producers/system.py: a real producer of load, memory and hwmon temperatures."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import DriverProcess, wait_for

SYSTEM = Path(__file__).resolve().parents[2] / "examples" / "producers" / "system.py"


@pytest.fixture(scope="module")
def system() -> ModuleType:
    spec = importlib.util.spec_from_file_location("system_producer", SYSTEM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise LookupError(key)


def test_the_system_producer_publishes_what_proc_says(driver: DriverProcess) -> None:
    command = [sys.executable, str(SYSTEM), "--socket", driver.socket_path, "--interval", "0.05", "--count", "400"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process, driver.open() as device:

        def opened() -> bool:
            return any(s.name == "system" for s in device.list_sections())

        assert wait_for(opened, timeout=20), process.stderr
        section = device.open_section("system")
        snap = section.wait_next(timeout=20)
        assert snap.mem_total == _meminfo("MemTotal")
        assert 0 <= snap.load1 < 10_000 and snap.runnable >= 1
        assert section.wait_next(timeout=20).updates > snap.updates
        process.terminate()
        process.wait(20)
        assert wait_for(lambda: section.state == "stopped")


def test_hwmon_sensors_become_celsius_fields(system: ModuleType, tmp_path: Path) -> None:
    chip = tmp_path / "hwmon0"
    chip.mkdir()
    (chip / "name").write_text("coretemp\n")
    (chip / "temp1_input").write_text("42500\n")
    (chip / "temp2_input").write_text("garbage\n")
    (tmp_path / "hwmon1").mkdir()  # no name: skipped
    sensors = system.hwmon_sensors(tmp_path)
    assert list(sensors) == ["temp_coretemp_temp1", "temp_coretemp_temp2"]
    fields = {f.name: f for f in system.fields(sensors)}
    assert fields["temp_coretemp_temp1"].unit == "celsius"
    values = system.sample(sensors)
    assert values["temp_coretemp_temp1"] == 42.5
    assert values["temp_coretemp_temp2"] != values["temp_coretemp_temp2"]  # NaN: unreadable
