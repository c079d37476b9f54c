"""`sharingmemory watch SECTION`: one frame per publish on a pipe or as JSON, --count, the stop."""

from __future__ import annotations

import json
import subprocess
import sys

from sharingmemory import Field
from tests.support import DriverProcess

FIELDS = [Field("temp", "f64", unit="celsius"), Field("mode", "str", length=8)]


def _watch(driver: DriverProcess, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "sharingmemory", "watch", "cpu", "--socket", driver.socket_path, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_watch_json_prints_each_publish_and_counts_them(driver: DriverProcess) -> None:
    with driver.open("rw") as device:
        section = device.create_section("cpu", FIELDS)
        section.publish(temp=1.0, mode="a")
        with _watch(driver, "--json", "--count", "2") as watch:
            assert watch.stdout is not None
            frames = [json.loads(watch.stdout.readline())]  # the section as it is
            for value in (2.0, 3.0):
                section.publish(temp=value)
                frames.append(json.loads(watch.stdout.readline()))
            assert watch.wait(20) == 0
    assert [(f["updates"], f["values"]["temp"], f["state"]) for f in frames] == [
        (1, 1.0, "running"), (2, 2.0, "running"), (3, 3.0, "running"),
    ]  # fmt: skip
    assert frames[0]["values"]["mode"] == "a"


def test_watch_on_a_pipe_prints_tables_and_ends_with_the_producer(driver: DriverProcess) -> None:
    device = driver.open("rw")
    section = device.create_section("cpu", FIELDS)
    section.publish(temp=41.5, mode="auto")
    with _watch(driver) as watch:
        assert watch.stdout is not None and watch.stderr is not None
        first = [watch.stdout.readline() for _ in range(4)]
        assert first[0].startswith("cpu  running  updates 1")
        assert "41.5  celsius" in first[1] and "auto" in first[2]
        device.close()  # the producer goes: the watch shows it and exits 3
        rest = watch.stdout.read()
        assert watch.wait(20) == 3
        assert "cpu  stopped  updates 1" in rest
        assert (
            watch.stderr.read().strip() == "sharingmemory: error: section 'cpu' stopped (its producer closed or died)"
        )


def test_watch_an_unknown_section(driver: DriverProcess) -> None:
    with _watch(driver) as watch:
        assert watch.stderr is not None
        assert watch.wait(20) == 1
        assert watch.stderr.read().startswith("sharingmemory: error: no section named 'cpu'")
