"""The shared page: ABI version 1, its seqlock, and FILETIME conversions.

Theory of operation: this module is the executable form of the page table in `docs/page-abi.md`
(normative; C readers are written from it, `include/sharingmemory/page.h` mirrors it). It works
over any buffer: a writable `mmap` in the driver, a read-only one in a client, a `bytearray` in a
unit test. It does no I/O and reads no clock; the driver passes every time value in.

The seqlock: the writer makes `seq` odd, stores the fields at 24..103, makes `seq` even. A reader
loads `seq`, retries while it is odd, copies the fields, loads `seq` again and retries if it moved.
With one writer this never blocks the writer and never shows a reader a torn snapshot. A writer
that dies inside an update leaves `seq` odd forever; the reader gives up after a bounded number of
tries instead of spinning for ever (`PageTornError`).
"""

from __future__ import annotations

import datetime as _dt
import struct
import sys
from typing import Final, NamedTuple

from .status import InvalidDeviceState, RevisionMismatch

PAGE_SIZE: Final = 4096
MAGIC: Final = b"SHMT"
ABI_MAJOR: Final = 1
ABI_MINOR: Final = 1
#: Bytes of defined fields this writer writes (1.1: `waiters` added at 104).
HEADER_SIZE: Final = 112
#: The smallest header a reader accepts: ABI 1.0's, from a driver that has no `waiters`.
HEADER_SIZE_1_0: Final = 104

STATE_INITIALIZING: Final = 0
STATE_RUNNING: Final = 1
STATE_STOPPED: Final = 2
STATE_NAMES: Final = {STATE_INITIALIZING: "initializing", STATE_RUNNING: "running", STATE_STOPPED: "stopped"}

#: 1970-01-01T00:00:00Z as a FILETIME (100-ns units since 1601-01-01).
EPOCH_AS_FILETIME: Final = 116444736000000000
FILETIME_TICKS_PER_SECOND: Final = 10_000_000

#: The seals every page fd carries (fcntl(2)): its size can never change, no new writable
#: mapping can ever be made, and no seal can be removed. A client refuses a page without them.
#: The values of <linux/fcntl.h>, written out: this module does no I/O and imports no fcntl.
F_SEAL_SEAL: Final = 0x0001
F_SEAL_SHRINK: Final = 0x0002
F_SEAL_GROW: Final = 0x0004
F_SEAL_FUTURE_WRITE: Final = 0x0010  # linux 5.1; not exported by Python's fcntl module
PAGE_SEALS: Final = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL

SEQ_OFFSET: Final = 16
#: u32, ABI 1.1: handles registered to be woken at each tick (written by the driver, outside
#: the seqlock: one aligned u32 store, read alone). The futex word is `seq`'s low half.
WAITERS_OFFSET: Final = 104
_HEADER = struct.Struct("<4sHHII")  # magic, abi_major, abi_minor, page_size, header_size at 0
_SEQ = struct.Struct("<Q")  # at 16
# seq plus every field it guards, read in one call so a snapshot costs one unpack (16..103).
_GUARDED = struct.Struct("<Qqqqqq QQII16s")
_FIELDS = struct.Struct("<qqqqq QQII16s")  # the guarded fields alone, at 24
_STATE = struct.Struct("<I")  # at 80
_STATE_OFFSET: Final = 80

assert _HEADER.size == 16
assert _GUARDED.size == WAITERS_OFFSET - SEQ_OFFSET == HEADER_SIZE_1_0 - SEQ_OFFSET

_DAY: Final = _dt.timedelta(days=1)
_FILETIME_EPOCH: Final = _dt.datetime(1601, 1, 1)

#: A reader that sees `seq` odd or moving this many times in a row gives up (PageTornError).
MAX_READ_ATTEMPTS: Final = 1_000_000


class PageTornError(InvalidDeviceState):
    """The writer stayed inside an update for `MAX_READ_ATTEMPTS` reads in a row.

    Only a writer that died between its two increments of `seq` causes this; a live writer leaves
    the odd state within microseconds.
    """


class PageSnapshot(NamedTuple):
    """One consistent copy of the page's fields, named as in the ABI table.

    A plain tuple underneath, so taking a snapshot costs one allocation; the conversions to
    `datetime` are computed only when asked for.
    """

    seq: int
    local_time: int
    system_time: int
    time_zone_bias: int
    realtime_ns: int
    monotonic_ns: int
    tick_count: int
    interval_ns: int
    state: int
    writer_pid: int
    instance_id: bytes

    # Every field is the driver's to write and nothing here trusts it: a value no datetime can
    # hold gives ValueError (documented), never OverflowError or a crash.

    @property
    def local_datetime(self) -> _dt.datetime:
        """The seed's value, local time, as an aware `datetime` in the driver's UTC offset.

        A legal POSIX zone may lie 24 hours or more from UTC (`TZ=ABC-24`; POSIX allows up to
        24:59:59), which no `datetime.tzinfo` can carry (its offset must be under 24 h): then
        the local wall-clock time comes back naive, and `utc_offset` still gives the offset.
        Raises ValueError when `local_time` is outside what a datetime can hold (years 1..9999).
        """
        offset = self.utc_offset
        if -_DAY < offset < _DAY:
            return filetime_to_datetime(self.local_time, tz=_dt.timezone(offset))
        return filetime_to_datetime(self.local_time).replace(tzinfo=None)

    @property
    def system_datetime(self) -> _dt.datetime:
        """The same instant in UTC; ValueError when `system_time` is outside a datetime's range."""
        return filetime_to_datetime(self.system_time)

    @property
    def utc_offset(self) -> _dt.timedelta:
        """The driver's local offset from UTC (local minus UTC), of any size the page holds."""
        return _dt.timedelta(microseconds=-self.time_zone_bias // 10)

    @property
    def state_name(self) -> str:
        """`initializing`, `running`, `stopped`, or `unknown(N)` for a newer driver's state."""
        return STATE_NAMES.get(self.state, f"unknown({self.state})")


#: Builds a PageSnapshot from the tuple `unpack_from` returns without the generated
#: `__new__`'s argument parsing: the cheapest way to name a tuple (`_make` goes through an iterable).
_new_tuple: Final = tuple.__new__


def _make_snapshot(fields: tuple[object, ...]) -> PageSnapshot:
    return _new_tuple(PageSnapshot, fields)


def check_header(buffer: object) -> None:
    """Refuse a buffer that is not an ABI-1 page: wrong magic, major version, size or header.

    Raises RevisionMismatch, whose message says what was found; a newer minor is accepted.
    """
    # The view is released before anything is raised: a traceback keeps this frame's locals, and
    # an export still alive would keep the caller from closing its mmap (BufferError).
    with memoryview(buffer) as view:  # type: ignore[arg-type]
        length = len(view)
        header = _HEADER.unpack_from(view, 0) if length >= PAGE_SIZE else None
    if header is None:
        raise RevisionMismatch(f"page is {length} bytes, the ABI needs {PAGE_SIZE}")
    magic, major, _minor, page_size, header_size = header
    if magic != MAGIC:
        raise RevisionMismatch(f"page magic is {magic!r}, expected {MAGIC!r}")
    if major != ABI_MAJOR:
        raise RevisionMismatch(f"page ABI major version is {major}, this reader knows {ABI_MAJOR}")
    if page_size != PAGE_SIZE or not HEADER_SIZE_1_0 <= header_size <= PAGE_SIZE:
        raise RevisionMismatch(f"page declares page_size={page_size} header_size={header_size}")


def waiters_offset(buffer: object) -> int | None:
    """Where the page's `waiters` count is (ABI 1.1 and later), or None for a 1.0 page, whose
    driver knows no futex wake-up: its readers wait on the tick channel instead. Call after
    `check_header`."""
    with memoryview(buffer) as view:  # type: ignore[arg-type]
        _magic, _major, minor, _page_size, header_size = _HEADER.unpack_from(view, 0)
    return WAITERS_OFFSET if minor >= 1 and header_size >= WAITERS_OFFSET + 4 else None


def read_snapshot(buffer: object) -> PageSnapshot:
    """A consistent snapshot of the page, by the seqlock protocol; never blocks the writer.

    `buffer` supports the buffer protocol (mmap, bytes, memoryview). The header is not re-checked
    here: check it once with `check_header` when the page is mapped.
    """
    # The first try is written out: it is the only one a live writer ever needs, and it costs
    # one unpack of seq and fields, one re-read of seq and one tuple.
    fields = _unpack_guarded(buffer, SEQ_OFFSET)  # type: ignore[arg-type]
    seq = fields[0]
    if not seq & 1 and _unpack_seq(buffer, SEQ_OFFSET)[0] == seq:  # type: ignore[arg-type]
        return _new_tuple(PageSnapshot, fields)
    for _ in range(MAX_READ_ATTEMPTS - 1):
        fields = _unpack_guarded(buffer, SEQ_OFFSET)  # type: ignore[arg-type]
        seq = fields[0]
        if not seq & 1 and _unpack_seq(buffer, SEQ_OFFSET)[0] == seq:  # type: ignore[arg-type]
            return _make_snapshot(fields)
    raise PageTornError("the page writer did not finish an update (driver died mid-write?)")


_unpack_guarded: Final = _GUARDED.unpack_from
_unpack_seq: Final = _SEQ.unpack_from


class PageWriter:
    """The single writer of one page. Not thread-safe: one writer per page is the seqlock's rule.

    The writer keeps its own copy of `seq` and `tick_count`, so it never reads the page back and
    a client can never steer it by what the page holds.
    """

    __slots__ = (
        "_buffer", "_instance_id", "_interval_ns", "_seq", "_seq_word", "_tick_count", "_waiters", "_writer_pid",
    )  # fmt: skip

    def __init__(self, buffer: object, *, interval_ns: int, writer_pid: int, instance_id: bytes) -> None:
        """Zero the page and write the header with state=initializing and seq 0."""
        view = memoryview(buffer)  # type: ignore[arg-type]
        if view.readonly or len(view) != PAGE_SIZE:
            raise ValueError(f"PageWriter needs a writable buffer of {PAGE_SIZE} bytes")
        if len(instance_id) != 16:
            raise ValueError("instance_id must be 16 bytes")
        self._buffer = view
        # `seq` is stored through a one-item 'Q' view: one aligned 8-byte store. struct.pack_into
        # must not be used for it: it zeroes its target before writing (CPython's
        # s_pack_internal), so a reader could see seq go through 0, an even value, in the middle
        # of an update, and accept a torn snapshot (tests/soak/seqlock_torture.py caught it).
        self._seq_word = view[SEQ_OFFSET : SEQ_OFFSET + 8].cast("Q")
        self._waiters = view[WAITERS_OFFSET : WAITERS_OFFSET + 4].cast("I")
        self._seq = 0
        self._tick_count = 0
        self._interval_ns = interval_ns
        self._writer_pid = writer_pid
        self._instance_id = bytes(instance_id)
        view[:] = bytes(PAGE_SIZE)
        _HEADER.pack_into(view, 0, MAGIC, ABI_MAJOR, ABI_MINOR, PAGE_SIZE, HEADER_SIZE)
        self._store(0, 0, 0, 0, STATE_INITIALIZING)

    @property
    def tick_count(self) -> int:
        """Updates written so far (the first `update` makes it 1)."""
        return self._tick_count

    def update(self, *, realtime_ns: int, monotonic_ns: int, time_zone_bias: int) -> None:
        """Write one tick: the instant `realtime_ns` with its local-time bias, state=running."""
        self._tick_count += 1
        self._store(realtime_ns, monotonic_ns, time_zone_bias, self._tick_count, STATE_RUNNING)

    def stop(self, *, realtime_ns: int, monotonic_ns: int, time_zone_bias: int) -> None:
        """Write state=stopped with the instant of the stop; `tick_count` does not move."""
        self._store(realtime_ns, monotonic_ns, time_zone_bias, self._tick_count, STATE_STOPPED)

    def set_waiters(self, count: int) -> None:
        """Write `waiters` (ABI 1.1): how many handles are registered to be woken at each tick.
        One aligned u32 store outside the seqlock: readers read it alone, as a hint whether to
        pass a wake-up on."""
        self._waiters[0] = _le32(count)

    @property
    def waiters(self) -> int:
        """The count last written by `set_waiters` (the driver's own, never read from a peer)."""
        return _le32(self._waiters[0])

    def release(self) -> None:
        """Drop the buffer exports so their owner (an mmap) can close. Idempotent."""
        self._seq_word.release()
        self._waiters.release()
        self._buffer.release()

    def _store(self, realtime_ns: int, monotonic_ns: int, bias: int, ticks: int, state: int) -> None:
        system_time = realtime_ns // 100 + EPOCH_AS_FILETIME if realtime_ns else 0
        local_time = system_time - bias if realtime_ns else 0
        buf = self._buffer
        self._seq += 1
        self._seq_word[0] = _le64(self._seq)
        _FIELDS.pack_into(
            buf, 24, local_time, system_time, bias, realtime_ns, monotonic_ns,
            ticks, self._interval_ns, state, self._writer_pid, self._instance_id,
        )  # fmt: skip
        self._seq += 1
        self._seq_word[0] = _le64(self._seq)


def _le64(value: int) -> int:
    """`value` as the native u64 whose bytes are its little-endian form (the page's byte order)."""
    return value if sys.byteorder == "little" else int.from_bytes(value.to_bytes(8, "little"), "big")


def _le32(value: int) -> int:
    """`value` as the native u32 whose bytes are its little-endian form (its own inverse)."""
    return value if sys.byteorder == "little" else int.from_bytes(value.to_bytes(4, "little"), "big")


def read_state(buffer: object) -> int:
    """The page's state field alone (a single aligned u32, so no seqlock is needed for it)."""
    return int(_STATE.unpack_from(buffer, _STATE_OFFSET)[0])  # type: ignore[arg-type]


def filetime_to_datetime(filetime: int, tz: _dt.tzinfo = _dt.UTC) -> _dt.datetime:
    """A FILETIME (100-ns units since 1601-01-01) as an aware datetime in `tz`, to the microsecond.

    The FILETIME is taken to be wall-clock time in `tz`: the page's `local_time` with the driver's
    offset, or `system_time` with UTC (the default).
    """
    if type(filetime) is not int:  # bool and float are refused too: a FILETIME is an integer
        raise TypeError(f"a FILETIME is an int, not {type(filetime).__name__}")
    if not isinstance(tz, _dt.tzinfo):
        raise TypeError(f"tz must be a datetime.tzinfo, not {type(tz).__name__}")
    try:
        return (_FILETIME_EPOCH + _dt.timedelta(microseconds=filetime // 10)).replace(tzinfo=tz)
    except OverflowError:  # beyond a timedelta's or a datetime's range
        raise ValueError(f"FILETIME {filetime} is outside the years 1..9999 a datetime can hold") from None


def datetime_to_filetime(value: _dt.datetime) -> int:
    """The FILETIME of an aware datetime (as UTC); naive datetimes are refused as ambiguous."""
    if not isinstance(value, _dt.datetime):
        raise TypeError(f"datetime_to_filetime needs a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime_to_filetime needs an aware datetime")
    try:
        utc = value.astimezone(_dt.UTC)
    except OverflowError:  # an instant whose UTC form falls outside years 1..9999
        raise ValueError(f"{value!r} has no UTC form a datetime can hold") from None
    delta = utc.replace(tzinfo=None) - _FILETIME_EPOCH
    return (delta.days * 86_400 + delta.seconds) * FILETIME_TICKS_PER_SECOND + delta.microseconds * 10


def bias_to_timezone(time_zone_bias: int) -> _dt.timezone:
    """The fixed-offset timezone of a Windows bias (UTC minus local, in 100-ns units).

    ValueError for a bias of 24 hours or more, which `datetime.timezone` cannot represent
    (`PageSnapshot.local_datetime` handles that case itself)."""
    try:
        return _dt.timezone(_dt.timedelta(microseconds=-time_zone_bias // 10))
    except OverflowError:
        raise ValueError(f"time zone bias {time_zone_bias} is out of any range") from None


def utc_offset_to_bias(utc_offset_seconds: int) -> int:
    """A POSIX `tm_gmtoff` (seconds east of UTC) as a Windows bias: UTC+8 gives -288000000000."""
    return -utc_offset_seconds * FILETIME_TICKS_PER_SECOND
