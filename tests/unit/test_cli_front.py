"""The front ends' pure parts: the value checkers, the frame's fit, offsets, `status` wording.

No driver and no terminal: a `PageSnapshot` or a `DriverStatus` made here, text out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import logging
import re
from typing import Any

import pytest

from sharingmemory._defs import STATE_RUNNING, STATE_STOPPED, DriverStatus, PageSnapshot
from sharingmemory._defs.page import datetime_to_filetime, utc_offset_to_bias
from sharingmemory._driver import MAX_INTERVAL_NS, MIN_INTERVAL_NS
from sharingmemory.cli.display import Display, Frame, TerminalDisplay, big_text, can_encode, plain_line, snapshot_json
from sharingmemory.cli.main import JournalFormatter
from sharingmemory.cli.metrics import health, prometheus_text
from sharingmemory.cli.options import parse_duration, parse_positive, parse_timeout
from sharingmemory.cli.session import patience
from sharingmemory.cli.times import PageTimeError, page_times


def snapshot(offset_seconds: int = 0, state: int = STATE_RUNNING) -> PageSnapshot:
    now = dt.datetime(2026, 12, 1, 7, 30, 15, tzinfo=dt.UTC)
    system = datetime_to_filetime(now)
    bias = utc_offset_to_bias(offset_seconds)
    return PageSnapshot(2, system - bias, system, bias, 0, 5_000_000_000, 5, 1_000_000_000, state, 42, b"\x01" * 16)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "UTC+00:00"), (19_815, "UTC+05:30:15"), (-10_807, "UTC-03:00:07"), (1, "UTC+00:00:01"),
     (-19_800, "UTC-05:30"), (50_400, "UTC+14:00"), (-86_399, "UTC-23:59:59"), (86_400, "UTC+24:00"),
     (-90_000, "UTC-25:00"), (10**6, "UTC+277:46:40")],
)  # fmt: skip
def test_utc_offsets_show_their_seconds_and_any_size(seconds: int, text: str) -> None:
    snap = snapshot(seconds)
    times = page_times(snap)
    assert times.offset_text == text
    assert times.local - times.utc == dt.timedelta(seconds=seconds)
    assert times.local_iso().endswith(text.removeprefix("UTC"))
    frame = Frame(snap, None, "/x", None)
    lines = TerminalDisplay(io.StringIO(), io.StringIO(), colour=False).render(frame, 80, 24)
    assert any(text in line for line in lines)
    assert plain_line(frame).startswith(f"{times.local:%H:%M:%S}  tick 5")
    if abs(seconds) < 86_400:  # where datetime itself can hold the offset, the two agree
        assert times.local_iso() == snap.local_datetime.isoformat()


@pytest.mark.parametrize(
    "fields",
    [{"local_time": -(10**18)}, {"local_time": 2**63 - 1}, {"system_time": 2**64 - 1},
     {"local_time": 2650467744000000000}],  # the year 10000
)  # fmt: skip
def test_a_time_no_calendar_can_show_is_one_line(fields: dict[str, Any]) -> None:
    snap = snapshot()._replace(**fields)
    with pytest.raises(PageTimeError, match="is not a time any calendar date can show"):
        page_times(snap)
    with pytest.raises(PageTimeError):
        snapshot_json(snap)


@pytest.mark.parametrize(("width", "height"), [(80, 24), (40, 10), (40, 9), (30, 6), (20, 3), (200, 2), (10, 1)])
@pytest.mark.parametrize("ascii_only", [False, True])
def test_the_frame_fits_the_terminal(width: int, height: int, ascii_only: bool) -> None:
    display = TerminalDisplay(io.StringIO(), io.StringIO(), colour=False, ascii_only=ascii_only)
    frame = Frame(snapshot(19_815), 1_000, "/run/sharingmemory/SharingMemory" * 3, 4242, "new driver: x" * 9)
    lines = display.render(frame, width, height)
    assert 1 <= len(lines) < max(height, 2)  # N lines need N + 1 rows; one line needs no more
    assert all(len(line) <= max(width - 1, 20) for line in lines)
    if ascii_only:
        assert all(line.isascii() for line in lines)
    if height >= 15 and width >= 60:
        assert any("██" in line or "##" in line for line in lines), "the big digits, when they fit"


def test_a_one_line_frame_redraws_in_place_and_ends_with_a_newline() -> None:
    out = io.StringIO()
    display = TerminalDisplay(out, io.StringIO(), colour=False)
    display._draw_inline("a")
    display._draw_inline("b")
    with display:
        pass
    assert out.getvalue().startswith("\ra\x1b[K\x1b[J\rb\x1b[K\x1b[J")
    assert out.getvalue().endswith("\n"), "the shell's prompt starts on a line of its own"
    assert "\n" not in out.getvalue()[:-1], "no newline, so nothing scrolls"


@pytest.mark.parametrize(("encoding", "unicode"), [("utf-8", True), ("ascii", False), ("latin-1", False),
                                                    ("cp1252", False), ("no-such-codec", False)])  # fmt: skip
def test_glyphs_follow_the_encoding(encoding: str, unicode: bool) -> None:
    out = io.TextIOWrapper(io.BytesIO(), encoding=encoding) if encoding != "no-such-codec" else None
    claimed = out if out is not None else type("Out", (), {"encoding": encoding})()
    assert can_encode(claimed, "██●") is unicode
    assert all(line.isascii() for line in big_text("12:34:56", block="##"))


@pytest.mark.parametrize("text", ["1e400s", "1" * 400, "15000m", "86401s", "0.9ms", "1.5 h", "-1", "nan", "inf"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "ns"), [("1ms", MIN_INTERVAL_NS), ("1440m", MAX_INTERVAL_NS), ("0.25", 250_000_000),
                                          ("1." + "0" * 400, 1_000_000_000)])  # fmt: skip
def test_parse_duration_bounds(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "NaN", "0", "-0.0", "86400.1", "1e309", "", "5s"])
def test_parse_timeout_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_timeout(text)


@pytest.mark.parametrize("text", ["9" * 5000, str(2**63), "0", "-1", "1e3", " "])
def test_parse_positive_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_positive(text)


def test_patience_is_three_intervals_and_a_second() -> None:
    assert patience(1_000_000_000) == 4.0
    assert patience(MIN_INTERVAL_NS) == pytest.approx(1.003)


def driver_status(**changes: Any) -> DriverStatus:
    base = DriverStatus(STATE_RUNNING, 2, 1, True, True, 10, 1_000_000_000, 7, b"\x02" * 16, 0, 0)
    return base._replace(**changes)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"page_allocated": False, "timer_running": False, "mapped_handles": 0, "page_state": STATE_STOPPED},
         "idle: no client has the page"),
        ({}, "running"),
        ({"late_ticks": 3, "max_lateness_ns": 2_500_000_000}, "running, late ticks: 3 (worst 2500.0 ms late)"),
        ({"timer_running": False}, "page allocated, timer not running"),
    ],
)  # fmt: skip
def test_status_says_its_state_in_words(changes: dict[str, Any], words: str) -> None:
    assert health(driver_status(**changes)) == words


def test_the_exposition_is_whole_lines_and_down_says_only_up() -> None:
    text = prometheus_text(driver_status(), '/odd "path"\n')
    assert text.endswith("\n") and '{socket="/odd \\"path\\"\\n"}' in text
    assert prometheus_text(None, "/x").splitlines()[-1] == 'sharingmemory_up{socket="/x"} 0'


@pytest.mark.parametrize(
    ("level", "prefix"),
    [(logging.CRITICAL, "<2>"), (logging.ERROR, "<3>"), (logging.WARNING, "<4>"), (logging.INFO, "<6>"),
     (logging.DEBUG, "<7>"), (5, "<7>")],
)  # fmt: skip
def test_journal_lines_carry_a_priority_and_no_timestamp(level: int, prefix: str) -> None:
    record = logging.LogRecord("sharingmemory.driver", level, __file__, 1, "page %s", ("locked",), None)
    line = JournalFormatter().format(record)
    assert line.startswith(prefix) and line.endswith(": page locked")
    assert str(dt.date.today().year) not in line


def test_every_line_of_a_traceback_carries_the_priority() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = JournalFormatter().format(record).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)


@pytest.mark.parametrize("path", ["/tmp/\x1b[2J/S", "/tmp/a\nb", "/tmp/\x1e\r\x85\u2028/S", "/tmp/\x07bell"])
def test_a_hostile_path_neither_breaks_lines_nor_drives_the_terminal(path: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    display = TerminalDisplay(out, err, colour=False)
    display.show(Frame(snapshot(), None, path, None, notice=f"waiting at {path}"))
    display.notice(f"waiting at {path}", None)
    Display(out, err).notice(f"no driver at {path}", None)
    for text in (out.getvalue(), err.getvalue()):
        for line in text.split("\n"):
            own = re.sub(r"\x1b\[(\d*[FKJ]|\?25[lh])|^\r", "", line)  # the display's own cursor moves
            assert own.isprintable(), repr(line)
