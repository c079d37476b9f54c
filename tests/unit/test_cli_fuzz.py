"""Arbitrary option values at every client command: one line and status 2 (refused by the
parser) or 1 (refused at run time), never an exception, and nothing else on stdout.

In-process (`cli.main.main`), against a socket path where no driver runs, so no command gets
further than opening the device: what is checked is that no value gets past the parser into a
place that raises something other than the documented failures. Hypothesis drives the values.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharingmemory.cli.main import main

NOWHERE = "/nonexistent-sharingmemory-test/SharingMemory"

numbers = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=0, max_value=10**500).map(lambda n: f"{n}s"),
    st.sampled_from(["1e400s", "15000m", "86400s", "0.5ms", "1 ms", "nan", "-inf", "0x10", "1_000", "٣"]),
)
values = st.one_of(numbers, st.text(max_size=40))
OPTIONS = {
    "read": ["--timeout", "--socket"],
    "status": ["--timeout", "--socket"],
    "watch": ["--timeout", "--count", "--interval", "--socket"],
    "gui": ["--timeout", "--count", "--interval", "--socket"],
}
cases = st.sampled_from(sorted(OPTIONS)).flatmap(
    lambda command: st.tuples(st.just(command), st.sampled_from(OPTIONS[command]), values)
)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases)
def test_any_value_is_one_line_and_a_status(case: tuple[str, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    command, option, value = case
    argv = [command, f"{option}={value}"]
    if option != "--socket":
        argv += ["--socket", NOWHERE]
    with pytest.MonkeyPatch.context() as patch:  # gui fails at once, wherever the suite runs
        patch.delenv("DISPLAY", raising=False)
        patch.delenv("WAYLAND_DISPLAY", raising=False)
        status, out, err = run(argv, capsys)
    assert status in (1, 2), (argv, status, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sharingmemory") and ": error: " in lines[0], (argv, err)
    assert out == ""
