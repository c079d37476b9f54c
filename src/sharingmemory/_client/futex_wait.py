"""Waiting on a futex word of a shared mapping: the one waiter of sections and of the `time` page.

Theory of operation (docs/section-abi.md "Waiting for a publish", docs/page-abi.md "Waiting for
a tick": one rule for both). The waker (a producer's publish, the driver's tick) makes one
`FUTEX_WAKE(word, 1)` when the mapping's `waiters` count is not 0, whatever the number of
waiters: its cost does not grow with them. The wake-up then travels down the queue, paid for by
the readers: a reader whose FUTEX_WAIT returned 0 (woken, not EAGAIN, EINTR or ETIMEDOUT) and
whose word has moved (news: a publish, a tick, a stop) first passes it on with
`FUTEX_WAKE(word, _FANOUT)`, then reads. A reader woken with no news had gone back to sleep on
the new value when the chain reached it: it does not pass on, and the chain ends there.

Why that reaches every reader asleep on the old value before any that re-slept: the kernel
queues futex waiters of equal priority in FIFO order. `__futex_queue` (kernel/futex/core.c;
`__queue_me` in kernel/futex.c before 5.16) adds each waiter to the hash bucket's plist with
`prio = min(current->normal_prio, MAX_RT_PRIO)`: "all RT-threads are woken first in priority
order, and the others are woken last, in FIFO order", and `futex_wake` walks that list from its
head. So, for ordinary (non-RT) readers, the re-sleepers are all behind the old sleepers, and a
chain of news-bearing links wakes the old ones first. A real-time reader jumps the queue; it
then passes on like any other, so it costs the chain nothing but its own order.

A reader that never passes on (hostile, or written to the previous text of the ABI, where the
producer requeued) holds up those behind it: each FUTEX_WAIT is therefore bounded
(`WAIT_SLICE`), which bounds that delay, and a futex cannot watch the device socket, so after a
sleep that brought nothing the socket is checked for a hang-up: a driver SIGKILLed (it writes
no state=stopped) is noticed within one slice.

`close()` from another thread wakes this mapping's waiters (FUTEX_WAKE needs only read access to
the word): they find the waiter closed and raise ValueError. The wake reaches other processes'
readers of the same memfd too (for them a spurious wake-up with no news: one look at the page,
no pass-on), so it is made only when a thread of this process is asleep on the word. asyncio
tasks share one watcher thread per waiter (`section_async.AsyncWake`), so any number of tasks
costs one thread.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import struct
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar

from .._defs import DeviceNotConnected
from .._sys import libc
from .section_async import AsyncWake

T = TypeVar("T")

#: The longest single FUTEX_WAIT: how soon a waiter notices a driver that died without a word,
#: and the most a reader that keeps a wake-up to itself delays the others.
WAIT_SLICE: Final = 0.25
#: Wake-ups each woken reader passes on: the chain covers n waiters in about log2(n) steps.
_FANOUT: Final = 2
_U32 = struct.Struct("<I")  # `waiters`: a little-endian count, as the ABI stores it
#: The futex word as the kernel compares it: a native u32 (on a little-endian machine, the low
#: half of the little-endian `seq`).
_WORD = struct.Struct("=I")


class FutexWait:
    """The bounded waits of any number of threads and asyncio tasks on one futex word.

    `mapping` is the section's or the page's (only read); `word_offset` the futex word (low half
    of `seq`), `waiters_offset` the u32 its owner counts registered waiters in; `hung_up()` says
    whether the device socket hung up; `what` names the mapping in error messages.
    """

    def __init__(
        self, mapping: mmap.mmap, word_offset: int, waiters_offset: int, hung_up: Callable[[], bool], what: str
    ) -> None:
        self._map: mmap.mmap | None = mapping
        self._word = libc.buffer_address(mapping) + word_offset
        self._word_offset = word_offset
        self._waiters_offset = waiters_offset
        self._hung_up = hung_up
        self._what = what
        self._async: AsyncWake | None = None
        self._lock = threading.Lock()
        self._sleepers = 0  # this process's threads inside `sleep` now

    def current_word(self) -> int | None:
        """The futex word as it is now, read before looking for news (a wake between moves it);
        None once closed."""
        mapping = self._map
        if mapping is None:
            return None
        try:
            return int(_WORD.unpack_from(mapping, self._word_offset)[0])
        except ValueError:  # the mapping was closed under us by its owner
            return None

    def sleep(self, word: int, seconds: float) -> None:
        """One bounded FUTEX_WAIT while the word holds `word`; when a wake-up ended it and the
        word has moved, pass the wake-up on to `_FANOUT` more before anything else (the chain's
        speed is each link's first instructions). Not when nobody else can be asleep: `waiters`
        counts one handle at most (every handle the wake found asleep had registered before it
        slept, so the count already included it) and no other thread of this process sleeps
        here (the driver counts handles, and one handle may have many waiting threads). That
        saves a system call on the lone waiter's path."""
        with self._lock:
            self._sleepers += 1
        try:
            woken = libc.futex_wait(self._word, word, int(seconds * 1e9)) == libc.FUTEX_WOKEN
        except OSError as err:  # EFAULT: unmapped by a close meanwhile; the caller sees it closed
            if err.errno != errno.EFAULT:
                raise
            woken = False
        finally:
            with self._lock:
                self._sleepers -= 1
                others = self._sleepers
        mapping = self._map
        if not woken or mapping is None:
            return
        try:
            news = _WORD.unpack_from(mapping, self._word_offset)[0] != word
            many = others > 0 or _U32.unpack_from(mapping, self._waiters_offset)[0] > 1
        except ValueError:
            return
        if news and many:
            libc.futex_wake(self._word, _FANOUT)

    def _word_or_closed(self, slept: bool) -> int:
        word = self.current_word()
        if word is None:
            raise ValueError(f"{self._what} was closed while waiting" if slept else f"{self._what} is closed")
        return word

    def _check(self, slept: bool) -> None:
        """After a sleep that brought no news: a driver SIGKILLed writes no state=stopped."""
        if slept and self._hung_up():
            raise DeviceNotConnected(f"the driver died while waiting on {self._what}")

    def wait(self, news: Callable[[], T | None], deadline: float | None) -> T | None:
        """`news()` once, then after each sleep until it returns something, which is returned;
        None once `deadline` (time.monotonic()) passes. ValueError when closed, before or during
        the wait; DeviceNotConnected when the device socket hung up and `news()` has nothing."""
        slept = False
        while True:
            word = self._word_or_closed(slept)  # before the look: a wake between them moves it
            found = news()
            if found is not None:
                return found
            self._check(slept)
            slept = True
            remaining = WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - time.monotonic())
            if remaining <= 0:
                return None
            self.sleep(word, remaining)

    async def wait_async(self, news: Callable[[], T | None]) -> T:
        """The asyncio form of `wait`, with no deadline: bound it with asyncio.timeout(). Every
        task waiting here shares one watcher thread."""
        if self._async is None:
            self._async = AsyncWake(self.sleep, self.current_word, WAIT_SLICE)
        slept = False
        while True:
            word = self._word_or_closed(slept)
            found = news()
            if found is not None:
                return found
            self._check(slept)
            slept = True
            await self._async.after(word)

    def close(self) -> None:
        """Forget the mapping (before its owner unmaps it) and, when a thread of this process
        sleeps on the word, wake every waiter, so that waits in other threads end with
        ValueError now, not at the end of their slice. The wake reaches the other processes'
        readers too (a spurious wake-up for them: no news, no pass-on), so a close with nobody
        of ours asleep, the common case, makes none: readers closing one after another must not
        wake each other. Idempotent."""
        if self._map is None:
            return
        self._map = None
        with self._lock:
            sleeping = self._sleepers
        if sleeping:
            with contextlib.suppress(OSError):  # ENOSYS: they see the close at the end of their slice
                libc.futex_wake(self._word)
