"""The page's times as the front ends show them, from fields that are untrusted input.

`PageSnapshot.local_datetime` is an aware `datetime`, and `datetime` refuses offsets of 24 hours
or more, though POSIX allows a zone like `ABC-24` (tzset(3): hours up to 24, and glibc goes
further), and refuses years past 9999, which a page written by a faulty or hostile driver may
hold. The front ends need neither limit to say what the page says: they show the wall-clock
time and the offset side by side, as the seed's program shows the FILETIME it reads, so a zone
at or past 24 hours displays as it is (`UTC+24:00`), and a time no calendar can show becomes
one `PageTimeError` line instead of a traceback.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Final

from .._defs import PageSnapshot
from .exits import CommandError

_FILETIME_EPOCH: Final = _dt.datetime(1601, 1, 1)


class PageTimeError(CommandError):
    """A time in the page that no calendar date can show (before year 1601 or past 9999):
    a faulty or hostile driver wrote it. One line, exit status 1, like every failure."""


@dataclass(frozen=True)
class PageTimes:
    """The page's local wall-clock time, its UTC time (both naive) and the offset between them
    that the page's bias says (`local - utc`, Windows' bias negated)."""

    local: _dt.datetime
    utc: _dt.datetime
    offset: _dt.timedelta

    @property
    def offset_text(self) -> str:
        """`UTC+05:30`, or `UTC+05:30:15` when the offset has seconds."""
        return "UTC" + iso_offset(self.offset)

    def local_iso(self, sep: str = "T", timespec: str = "auto") -> str:
        """ISO 8601 local time with its offset, as `datetime.isoformat` writes an aware one,
        for any offset the page may hold."""
        return self.local.isoformat(sep=sep, timespec=timespec) + iso_offset(self.offset)

    def utc_iso(self) -> str:
        return self.utc.isoformat() + "+00:00"


def iso_offset(offset: _dt.timedelta) -> str:
    """`+05:30`, `-03:00:07`: hours and minutes, and seconds when there are any (strftime's
    %z would run them into the minutes: `+053015`). Sub-second parts are not shown."""
    seconds = int(offset.total_seconds())  # toward zero, so -0.5 s is +00:00, not -00:00:01
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{sign}{hours:02}:{minutes:02}" + (f":{seconds:02}" if seconds else "")


def _from_filetime(filetime: int, field: str) -> _dt.datetime:
    try:
        return _FILETIME_EPOCH + _dt.timedelta(microseconds=filetime // 10)
    except (OverflowError, ValueError):
        raise PageTimeError(f"the page's {field} ({filetime}) is not a time any calendar date can show") from None


def page_times(snap: PageSnapshot) -> PageTimes:
    """The times of `snap`, or PageTimeError when its FILETIMEs are out of range."""
    local = _from_filetime(snap.local_time, "local_time")
    utc = _from_filetime(snap.system_time, "system_time")
    return PageTimes(local, utc, _dt.timedelta(microseconds=-snap.time_zone_bias // 10))
