"""The bound on log lines a peer can cause: a burst, then one per period, with a count."""

from __future__ import annotations

import logging

from sharingmemory._driver import PEER, PeerLineLimit


def _record(level: int = logging.INFO, *, peer: bool = True) -> logging.LogRecord:
    record = logging.LogRecord("sharingmemory.driver", level, __file__, 1, "CREATE refused", None, None)
    if peer:
        record.__dict__.update(PEER)
    return record


def test_a_burst_then_one_line_per_period_and_a_count_of_the_rest() -> None:
    now = [0.0]
    limit = PeerLineLimit(burst=3, period=5.0, clock=lambda: now[0])
    assert [limit.filter(_record()) for _ in range(10)] == [True] * 3 + [False] * 7
    now[0] += 5.0
    passed = _record()
    assert limit.filter(passed)
    assert "7 similar line(s) caused by peers suppressed" in str(passed.msg)
    assert not limit.filter(_record())


def test_own_lines_and_debug_lines_are_never_limited() -> None:
    limit = PeerLineLimit(burst=1, period=1e9, clock=lambda: 0.0)
    assert limit.filter(_record())
    assert all(limit.filter(_record(peer=False)) for _ in range(100))  # start, stop, mlock warning
    assert all(limit.filter(_record(logging.DEBUG)) for _ in range(100))  # -vv is for diagnosis
    assert not limit.filter(_record(logging.WARNING))
