"""section.h and read_section.c against Python: a C reader prints a Python producer's values."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory._defs import section as abi
from tests.support import DriverProcess

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "include" / "sharingmemory" / "section.h"
SOURCE = ROOT / "examples" / "c" / "read_section.c"
CC = shutil.which("cc")

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (`cc`) on PATH: the C examples cannot be built")

FIELDS = [
    sharingmemory.Field("temperature", "f64", unit="celsius"),
    sharingmemory.Field("load", "f32"),
    sharingmemory.Field("fan_rpm", "u32", unit="rpm"),
    sharingmemory.Field("delta", "i32"),
    sharingmemory.Field("big", "u64"),
    sharingmemory.Field("offset", "i64", unit="ns"),
    sharingmemory.Field("on", "bool"),
    sharingmemory.Field("governor", "str", length=16),
]
VALUES = {
    "temperature": 41.5, "load": 0.25, "fan_rpm": 1200, "delta": -7, "big": 2**64 - 1, "offset": -(2**63),
    "on": True, "governor": "schedutil",
}  # fmt: skip


@pytest.fixture(scope="module")
def read_section(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("c") / "read_section"
    assert CC is not None
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", f"-I{ROOT / 'include'}"]
    result = subprocess.run([CC, *flags, "-o", str(output), str(SOURCE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    pedantic = subprocess.run(
        [CC, "-std=c11", "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c", str(HEADER)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert pedantic.returncode == 0, pedantic.stderr
    return output


def _run(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(program), *args], capture_output=True, text=True, timeout=30, check=False)


def test_the_c_reader_prints_a_python_producers_values(driver: DriverProcess, read_section: Path) -> None:
    with driver.open("rw") as device:
        section = device.create_section("sensors.cpu", FIELDS)
        section.publish(**VALUES)
        section.publish(fan_rpm=1300)
        result = _run(read_section, "sensors.cpu", driver.socket_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "section sensors.cpu state running updates 2"
    assert lines[1:] == [
        "temperature\t41.5\tcelsius",
        "load\t0.25\t",
        "fan_rpm\t1300\trpm",
        "delta\t-7\t",
        f"big\t{2**64 - 1}\t",
        f"offset\t{-(2**63)}\tns",
        "on\ttrue\t",
        "governor\tschedutil\t",
    ]


def test_the_c_reader_reports_a_missing_section(driver: DriverProcess, read_section: Path) -> None:
    result = _run(read_section, "nosuch", driver.socket_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "read_section: nosuch: no such section\n"
    assert _run(read_section, "x" * 65, driver.socket_path).returncode == 2
    assert _run(read_section).returncode == 2


def test_the_headers_offsets_are_the_pythons() -> None:
    defines = dict(re.findall(r"#define (SHARINGMEMORY_SECTION_\w+) (\d+)u", HEADER.read_text()))
    assert int(defines["SHARINGMEMORY_SECTION_HEADER_SIZE"]) == abi.HEADER_SIZE
    assert int(defines["SHARINGMEMORY_SECTION_ENTRY_SIZE"]) == abi.ENTRY_SIZE
    assert int(defines["SHARINGMEMORY_SECTION_SEQ"]) == abi.SEQ_OFFSET
    assert int(defines["SHARINGMEMORY_SECTION_STATE"]) == abi.STATE_OFFSET
    assert int(defines["SHARINGMEMORY_SECTION_WAITERS"]) == abi.WAITERS_OFFSET
    assert int(defines["SHARINGMEMORY_SECTION_MAX_FIELDS"]) == abi.MAX_FIELDS
    codes = dict(re.findall(r"SHARINGMEMORY_(\w+) = (\d)", HEADER.read_text()))
    assert {name.lower(): int(code) for name, code in codes.items()} == {n: t.code for n, t in abi.TYPES.items()}
