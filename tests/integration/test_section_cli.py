"""The section commands: `publish` fed good and bad lines, `list`, `read SECTION`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sharingmemory import Field
from tests.support import DriverProcess, wait_for

FIELD_ARGS = ("--field", "temp:f64:celsius", "--field", "fan:u32:rpm", "--field", "mode:str/8", "--field", "on:bool")


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sharingmemory", *args],
        input=stdin, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def _updates(driver: DriverProcess, name: str) -> int:
    with driver.open() as device:
        return next((s.updates for s in device.list_sections() if s.name == name), -1)


def test_publish_shares_a_pipelines_values_and_refuses_bad_lines(driver: DriverProcess) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sharingmemory", "publish", "cpu", "--socket", driver.socket_path, *FIELD_ARGS],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdin is not None and process.stderr is not None
    lines = [
        '{"temp": 41.5, "fan": 1200, "mode": "auto", "on": true}',  # 1: good
        "not json",  # 2
        '{"fan": -1}',  # 3: out of range
        '{"mode": "much too long"}',  # 4: too long
        '{"nosuch": 1}',  # 5: no such field
        "[1, 2]",  # 6: not an object
        '{"fan": 1.5}',  # 7: wrong type
        "",  # blank lines are skipped
        '{"temp": 42.0}',  # 9: good, a subset
    ]
    process.stdin.write("\n".join(lines) + "\n")
    process.stdin.flush()
    assert wait_for(lambda: _updates(driver, "cpu") == 2, timeout=20)
    with driver.open() as device:
        assert device.open_section("cpu").read().as_dict() == {"temp": 42.0, "fan": 1200, "mode": "auto", "on": True}
    process.stdin.close()
    assert process.wait(20) == 1
    errors = process.stderr.read().splitlines()
    process.stderr.close()
    assert [line.split(":")[2].strip() for line in errors[:-1]] == [f"line {n}" for n in (2, 3, 4, 5, 6, 7)], errors
    assert all(line.startswith("sharingmemory: error: ") for line in errors)
    assert "line 2: not JSON (Expecting value at column 1)" in errors[0], errors  # no "line 1" of json's own
    assert "line 6: not a JSON object but list" in errors[4], errors
    assert errors[-1] == "sharingmemory: error: 6 line(s) refused"
    assert wait_for(lambda: _updates(driver, "cpu") == -1)  # stopped when publish exited


def test_publish_with_only_good_lines_exits_0(driver: DriverProcess) -> None:
    result = run("publish", "ok", "--socket", driver.socket_path, "--field", "n:i64", stdin='{"n": 1}\n{"n": 2}\n')
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    ("field", "message"),
    [("n", "NAME:TYPE"), ("n:f128", "unknown type"), ("1n:f64", "field name"), ("n:str/x", "str/LENGTH")],
)
def test_publish_refuses_bad_fields_as_usage_errors(driver: DriverProcess, field: str, message: str) -> None:
    result = run("publish", "x", "--socket", driver.socket_path, "--field", field)
    assert result.returncode == 2
    assert message in result.stderr


def test_publish_to_a_taken_or_invalid_name(driver: DriverProcess) -> None:
    with driver.open("rw") as device:
        device.create_section("taken", [Field("n", "i64")])
        for name, message in (("taken", "OBJECT_NAME_COLLISION"), ("time", "OBJECT_NAME_COLLISION"), ("a/b", "name")):
            result = run("publish", name, "--socket", driver.socket_path, "--field", "n:i64")
            assert result.returncode == 1
            assert result.stderr.startswith("sharingmemory: error: ") and message in result.stderr
            assert len(result.stderr.splitlines()) == 1


def test_list_and_read(driver: DriverProcess) -> None:
    assert run("list", "--socket", driver.socket_path).stdout.strip() == "no sections"
    process = subprocess.Popen(
        [sys.executable, "-m", "sharingmemory", "publish", "cpu", "--socket", driver.socket_path, *FIELD_ARGS],
        stdin=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdin is not None
    process.stdin.write('{"temp": 41.5, "mode": "auto"}\n')
    process.stdin.flush()
    assert wait_for(lambda: _updates(driver, "cpu") == 1, timeout=20)
    (entry,) = json.loads(run("list", "--socket", driver.socket_path, "--json").stdout)
    assert set(entry) >= {"name", "fields", "producer_uid", "producer_pid", "state", "updates"}
    assert (entry["name"], entry["producer_pid"], entry["state"], entry["updates"]) == (
        "cpu",
        process.pid,
        "running",
        1,
    )
    assert entry["fields"][0] == {"name": "temp", "type": "f64", "length": 8, "unit": "celsius", "doc": ""}
    text = run("list", "--socket", driver.socket_path).stdout
    assert text.startswith("cpu") and "temp:f64[celsius]" in text
    snap = json.loads(run("read", "cpu", "--socket", driver.socket_path, "--json").stdout)
    assert snap["values"] == {"temp": 41.5, "fan": 0, "mode": "auto", "on": False}
    assert (snap["state"], snap["updates"]) == ("running", 1)
    table = run("read", "cpu", "--socket", driver.socket_path).stdout
    assert "41.5  celsius" in table and "auto" in table
    assert "running" in run("read", "--socket", driver.socket_path).stdout  # the page, as before
    missing = run("read", "nosuch", "--socket", driver.socket_path)
    assert (missing.returncode, missing.stderr.count("\n")) == (1, 1)
    assert missing.stderr.startswith("sharingmemory: error: no section named 'nosuch'")
    process.stdin.close()
    assert process.wait(20) == 0
