"""The shared page as a client maps it: read-only, read with no system call, waited on per tick.

Theory of operation. A `SharedPage` owns one PROT_READ, MAP_SHARED mapping of the driver's
sealed memfd (the fd it came from is closed as soon as it is mapped). The mapping outlives the
driver: the kernel keeps the memfd while it is mapped, and a driver that unloads writes
state=stopped into it first. The read path is built for cost (docs/performance.md): between
ticks a read is one aligned 8-byte load of `seq` compared with the last snapshot's; after a tick
it is the full seqlock read of `_page.read_snapshot`. Waiting for the tick (`wait_next`,
`next_update`): on a page of ABI 1.1 or later, FUTEX_WAIT on `seq`'s low half after one
registration (IOCTL_WAIT_SECTION with the page's instance id, through the `port` the owning
`Device` passes in), the waiter sections use too (`futex_wait`: the driver's tick costs it one
FUTEX_WAKE whatever the number of waiters, and the readers pass the wake-up on). From a 1.0
driver, or when that registration is refused, the handle's tick fd from `ticks`, asked for once
through `tick_source`. Either way any number of threads and asyncio tasks may wait at once, and
each returns the first tick newer than the newest one any wait had returned when it began (so
concurrent waiters all get the same tick, and one waiter alone sees every tick).

Trust: a page from a Device is a sealed memfd of one page (`trust.check_page_fd`, run by the
Device), so it can never be truncated under the mapping (no SIGBUS) or written by anyone but
the driver; the fields the driver writes are still only data, and nothing read from them
raises anything undocumented.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from .._defs import (
    IOCTL_WAIT_SECTION,
    PAGE_SIZE,
    SEQ_OFFSET,
    STATE_STOPPED,
    DeviceNotConnected,
    InsufficientResources,
    IoTimeout,
    NtStatusError,
    PageSnapshot,
    RevisionMismatch,
    check_header,
    read_snapshot,
    read_state,
    waiters_offset,
)
from .._sys import libc
from .arguments import wait_timeout
from .futex_wait import FutexWait
from .ticks import TickClosedError, TickEvent, next_deadline_delay, retry_step


class _Word(Protocol):
    """What the read path indexes to get the page's live `seq`: a one-item 'Q' memoryview."""

    def __getitem__(self, index: int, /) -> int: ...


class _Port(Protocol):
    """What the futex wait needs of the owning device (section.py's `_Port`): an IOCTL that
    raises NtStatusError on failure, and whether the device socket hung up."""

    def ioctl(self, code: int, input: bytes = b"", output_length: int = 0) -> object: ...  # noqa: A002

    def hung_up(self) -> bool: ...


class _ClosedWord:
    """Stands in for the `seq` view of a closed SharedPage, so that the read path needs no
    closed check of its own: indexing it raises the ValueError a closed page promises."""

    __slots__ = ()

    def __getitem__(self, index: int, /) -> int:
        raise ValueError("SharedPage is closed")


class _NoWord:
    """The `seq` view where the page's byte order is not the machine's: it never matches a
    snapshot's seq, so every read takes the full seqlock path."""

    __slots__ = ()

    def __getitem__(self, index: int, /) -> int:
        return -1


_CLOSED_WORD: Final = _ClosedWord()
#: No snapshot yet: its seq (-1) matches no u64, so the first read takes the full path.
_NO_SNAPSHOT: Final = PageSnapshot(-1, 0, 0, 0, 0, 0, 0, 0, 0, 0, bytes(16))


def _deadline(timeout: float | None) -> float | None:
    """time.monotonic() at which a wait of `timeout` seconds ends; None: never."""
    seconds = wait_timeout(timeout)
    return None if seconds is None else time.monotonic() + seconds


class SharedPage:
    """The driver's page, mapped read-only into this process.

    Owns one PROT_READ, MAP_SHARED mapping (the fd it came from is closed as soon as it is
    mapped). `read()` and `local_time()` never make a system call. The mapping outlives the
    driver: after the driver stops, `read().state` is STATE_STOPPED. `close()` unmaps; it is
    idempotent, and the owning `Device` calls it when it closes.
    """

    _map: mmap.mmap | None = None
    _view: memoryview | None = None
    _seq_word: _Word = _CLOSED_WORD
    _last: PageSnapshot = _NO_SNAPSHOT
    _tick_event: TickEvent | None = None
    _tick_source: Callable[[], TickEvent] | None = None
    _tick_asked: bool = False
    _seen_tick: int | None = None
    _port: _Port | None = None
    _futex: FutexWait | None = None
    _futex_asked: bool = False

    def __init__(
        self,
        fd: int,
        *,
        tick_source: Callable[[], TickEvent] | None = None,
        port: _Port | None = None,
        size_checked: bool = False,
    ) -> None:
        """Map the page behind `fd` (the caller keeps and closes `fd`) and check its size and
        header (RevisionMismatch). A page from a Device has had its seals and size checked
        already (`trust.check_page_fd`, hence `size_checked`: one fstat(2) per open, not two);
        an fd passed here by hand is the caller's to vouch for.
        `port`, when given, registers the futex wait (ABI 1.1) once; `tick_source`, when given,
        is asked once for the tick fd that `wait_next` uses otherwise."""
        if type(fd) is not int:
            raise TypeError(f"fd must be an int, not {type(fd).__name__}")
        self._tick_source = tick_source
        self._port = port
        self._source_lock = threading.Lock()
        try:
            if not size_checked and os.fstat(fd).st_size != PAGE_SIZE:
                raise RevisionMismatch("the page fd is not one page long")
            self._map = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        except OSError as err:  # EBADF, EMFILE (mmap keeps a dup), ENOMEM
            raise InsufficientResources(f"the page cannot be mapped: {err.strerror or err}") from err
        try:
            check_header(self._map)
            if sys.byteorder == "little":
                # seq read as one aligned 8-byte load (memoryview's memcpy), as the writer stores it.
                self._view = memoryview(self._map)
                self._seq_word = self._view[SEQ_OFFSET : SEQ_OFFSET + 8].cast("Q")
            else:
                self._seq_word = _NoWord()
        except BaseException:
            self.close()
            raise

    @property
    def address(self) -> int:
        """Where the page is mapped in this process (the seed's `g_pUserAddress`)."""
        if self._map is None:
            raise ValueError("SharedPage is closed")
        return libc.buffer_address(self._map)

    # The read path. The page changes only at a tick (1 ms apart at the fastest), and reads
    # come far more often, so the last snapshot is kept: when `seq` still holds the value the
    # snapshot was taken at (an even one, by the seqlock), the writer has not started an update
    # since, so the snapshot is the page as it is at that load, a consistent read in one aligned
    # 8-byte load. Otherwise the full seqlock read runs (read_snapshot, with its bounded
    # retries and PageTornError). The snapshot is an immutable tuple, so handing the same one to
    # several callers or threads is safe; a thread that races a refresh gets a snapshot that was
    # current at its own load. Closing swaps `_seq_word` for an object that raises, so the
    # fast path carries no closed check. Measured in benchmarks/ (docs/performance.md).

    def read(self) -> PageSnapshot:
        """A consistent snapshot of every field (seqlock); raises ValueError once closed."""
        last = self._last
        if self._seq_word[0] == last[0]:
            return last
        return self._refresh()

    def local_time(self) -> int:
        """The seed's value alone: local time as a FILETIME, read consistently."""
        last = self._last
        if self._seq_word[0] == last[0]:
            return last[1]
        return self._refresh()[1]

    def _refresh(self) -> PageSnapshot:
        mapping = self._map
        if mapping is None:
            raise ValueError("SharedPage is closed")
        self._last = snap = read_snapshot(mapping)
        return snap

    @property
    def state(self) -> int:
        """The page's state field: running, or stopped once the driver is gone."""
        if self._map is None:
            raise ValueError("SharedPage is closed")
        return read_state(self._map)

    @property
    def closed(self) -> bool:
        return self._map is None

    # --- waiting for the tick -----------------------------------------------------------------

    def wait_next(self, timeout: float | None = None) -> PageSnapshot:
        """Block until the page holds a tick newer than the newest one this method (in any
        thread or task) had returned when the call began (on the first call: newer than the
        page at the call) and return its snapshot.

        A stopped page is returned at once (check `.state`). Raises IoTimeout (a TimeoutError)
        after `timeout` seconds (None or math.inf: no limit; 0 or less: look once),
        DeviceNotConnected when the driver dies without writing state=stopped, ValueError when
        the page is closed before or during the wait (from another thread, say). Uses the
        page's futex (ABI 1.1) or the driver's tick fd when the page came from a Device (no polling), else sleeps to the
        deadline the page announces. Safe to call from several threads at once.
        """
        deadline = _deadline(timeout)
        futex = self._ensure_futex()
        news = self._news_after(self._seen_tick)
        if futex is not None:
            snap = futex.wait(news, deadline)
            if snap is None:
                raise IoTimeout(f"no tick within {timeout} s")
            return snap
        event = self._ensure_tick_event()
        if event is not None:
            try:
                snap = event.wait_for(news, deadline)
            except TickClosedError:
                raise ValueError("SharedPage was closed while waiting") from None
            except ConnectionResetError as err:
                return self._after_hang_up(err, news)
            if snap is None:
                raise IoTimeout(f"no tick within {timeout} s")
            return snap
        while True:
            snap = news()
            if snap is not None:
                return snap
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise IoTimeout(f"no tick within {timeout} s")
            delay = self._sleep_before_next()
            time.sleep(delay if remaining is None else min(delay, remaining))

    async def next_update(self) -> PageSnapshot:
        """The asyncio form of `wait_next()`: await the next tick without blocking the loop.
        Any number of tasks (and threads) may wait at once. Bound it with `asyncio.timeout()`
        or `asyncio.wait_for()`."""
        import asyncio

        futex = self._ensure_futex()
        news = self._news_after(self._seen_tick)
        if futex is not None:
            return await futex.wait_async(news)
        event = self._ensure_tick_event()
        if event is not None:
            try:
                return await event.wait_for_async(news)
            except TickClosedError:
                raise ValueError("SharedPage was closed while waiting") from None
            except ConnectionResetError as err:
                return self._after_hang_up(err, news)
        while True:
            snap = news()
            if snap is not None:
                return snap
            await asyncio.sleep(self._sleep_before_next())

    def _news_after(self, seen: int | None) -> Callable[[], PageSnapshot | None]:
        """The look at the page one wait makes at each wake-up: the snapshot when it holds a
        tick other than `seen` (the newest returned when the wait began), or is stopped."""
        if seen is None:  # the first wait of this page: news is a tick newer than now
            seen = self.read().tick_count
            if self._seen_tick is None:
                self._seen_tick = seen

        def news() -> PageSnapshot | None:
            snap = self.read()
            if snap.state == STATE_STOPPED or snap.tick_count != seen:
                self._seen_tick = snap.tick_count
                return snap
            return None

        return news

    def _sleep_before_next(self) -> float:
        """Without a tick fd: seconds to sleep until just past the deadline the page announces,
        or a short step when that deadline has passed without a tick."""
        snap = self.read()
        delay = next_deadline_delay(snap)
        return delay if delay > 0 else retry_step(snap)

    def _after_hang_up(self, err: ConnectionResetError, news: Callable[[], PageSnapshot | None]) -> PageSnapshot:
        """The driver's socket hung up: a stopped page is news to return, anything else means
        the driver died without writing state=stopped."""
        snap = news()
        if snap is not None:
            return snap
        raise DeviceNotConnected("the driver died (no state=stopped was written)") from err

    def _ensure_futex(self) -> FutexWait | None:
        """The futex wait, registered once (success or not) on the first wait: only on a page of
        ABI 1.1 or later (a 1.0 driver has no `waiters` and no wake-up), and only if the driver
        accepts the registration; None otherwise, and the tick fd serves. `_futex_asked` is set
        only once the attempt is over, so a second thread's first wait, arriving meanwhile,
        waits for its outcome on the lock instead of taking the channel."""
        if self._futex is None and not self._futex_asked and self._port is not None:
            with self._source_lock:
                if not self._futex_asked:
                    try:
                        self._futex = self._register_futex()
                    finally:
                        self._futex_asked = True
        return self._futex

    def _register_futex(self) -> FutexWait | None:
        port, mapping = self._port, self._map
        offset = None if mapping is None else waiters_offset(mapping)
        if port is None or mapping is None or offset is None:
            return None
        try:
            port.ioctl(IOCTL_WAIT_SECTION, self.read().instance_id)
        except (NtStatusError, ValueError, OSError):  # refused, or the device is gone
            return None
        return FutexWait(mapping, SEQ_OFFSET, offset, port.hung_up, "SharedPage")

    def _ensure_tick_event(self) -> TickEvent | None:
        if self._tick_event is None and self._tick_source is not None and not self._tick_asked:
            with self._source_lock:  # two threads' first waits ask once between them
                # Asked once, success or not. The source stays referenced: it is the owning
                # device's method, and a program may hold only the page.
                source, asked, self._tick_asked = self._tick_source, self._tick_asked, True
                if not asked:
                    try:
                        self._tick_event = source()
                    except (NtStatusError, ValueError, OSError):  # no tick fd: wait by the deadline
                        return None
        return self._tick_event

    def after_fork_in_child(self) -> None:
        """In a child of os.fork(): new locks (a parent's thread may have held them), and the
        child's copy of the tick fd closed. That fd shares its open file description with the
        parent's, so a child draining it would take the parent's wake-ups; the child's waits
        go by the page's deadline instead (the futex registration is the parent's handle's:
        the child does not use it either)."""
        self._source_lock = threading.Lock()
        self._port, self._futex, self._futex_asked = None, None, True
        event, self._tick_event = self._tick_event, None
        if event is not None:
            event.after_fork_in_child()

    def close(self) -> None:
        """Close the tick fd (waking any waiter, who gets ValueError, and waiting for them to
        leave), and wake the futex waiters (they get ValueError too), then unmap the page.
        Idempotent."""
        self._tick_source = None
        self._port = None
        futex, self._futex = self._futex, None
        if futex is not None:
            futex.close()
        event, self._tick_event = self._tick_event, None
        if event is not None:
            event.close()
        word, self._seq_word = self._seq_word, _CLOSED_WORD
        if isinstance(word, memoryview):
            word.release()  # the views first: an mmap with exported buffers cannot close
        view, self._view = self._view, None
        if view is not None:
            view.release()
        mapping, self._map = self._map, None
        if mapping is not None:
            mapping.close()

    def __enter__(self) -> SharedPage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
