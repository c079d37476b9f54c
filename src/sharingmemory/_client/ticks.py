"""Waiting for the next tick: the client's side of IOCTL_REGISTER_TICK_EVENT.

Theory of operation. The seed's program polled the page every 1000 ms beside a writer that also
ticked every 1000 ms, so it skipped or repeated a second. Ours waits for the tick instead. On a
page of ABI 1.1 the wait is the page's futex (`futex_wait`: one FUTEX_WAKE per tick for the
driver, whatever the number of waiters); this module is the wait on a 1.0 driver's page, or
when the futex registration is refused, with the same guarantees:

* With a tick fd from the driver (`TickEvent`: its SEQPACKET channel, or an older driver's
  eventfd or pipe), a reader blocks in poll(2) until the driver
  signals, then reads the page. The same poll also watches the device socket for POLLRDHUP, so
  a driver that dies without writing state=stopped ends the wait at once with
  DeviceNotConnected instead of a wait that never ends.
* Without one (a page mapped from a bare fd), `SharedPage.wait_next` sleeps to the next deadline
  which the page itself gives (`monotonic_ns + interval_ns` on the system-wide CLOCK_MONOTONIC),
  then re-reads in short steps until the tick is there.

The tick fd is the client's own (one per handle, see the driver), so no other client can steal
or fake its wake-ups; a spurious wake-up costs one page read and is otherwise harmless, because
the page's `tick_count`, not what the fd carries, decides whether a tick happened. The fd is
treated only as "readable: look at the page" and drained with one 4096-byte read, which serves
a channel (one byte a wake-up), an eventfd (8 bytes) and a pipe (any number of bytes) alike.

Many waiters, one fd. Threads and asyncio tasks may wait on one page at once. Draining is what
could lose a wake-up (a waiter that looked at the page, then another waiter drains the signal
it was about to poll for), so exactly one waiter at a time, the leader, polls and drains; the
others wait on a condition that the leader notifies after each wake-up (a generation count,
under the same lock as their look at the page, so no notification falls between the look and
the wait). The leader is a thread in poll(2) or an event loop with readers on the fds; when it
leaves (timeout, cancellation), the next waiter takes over. `close()` wakes every waiter through
a pipe in the leader's poll set and closes the fds only after the last one has left, so a
waiter never polls an fd number that was closed and perhaps reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar

from .._defs import PageSnapshot
from .._sys import Fd

_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
_HANGUP = select.POLLHUP | select.POLLERR | _POLLRDHUP
#: poll(2) takes an int of milliseconds; a longer wait is made of several.
_MAX_POLL_MS: Final = 2**31 - 1
#: How long `close()` waits for waiters to leave before it gives up closing the fds itself (they
#: leave at once when woken; the fds are then closed when this object is collected).
_CLOSE_GRACE: Final = 5.0

T = TypeVar("T")


class TickClosedError(ValueError):
    """The tick fd was closed (its page or device closed) while, or before, a waiter waited."""


class TickEvent:
    """A tick fd (channel, eventfd or pipe) the driver signals at each tick, owned by this
    object, plus the device socket whose hang-up means the driver is gone. Safe to wait on from several threads
    and event loops at once; `close()` is idempotent and wakes every waiter."""

    def __init__(self, fd: Fd, device_fd: int) -> None:
        """Take ownership of `fd`; `device_fd` stays the device's (only polled, never closed)."""
        self._owner = fd
        self._fd = fd.fileno()
        self._device_fd = device_fd
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake = (Fd(wake_r), Fd(wake_w))
        self._poll = select.poll()  # only the leader polls it, so it is never polled twice at once
        self._poll.register(self._fd, select.POLLIN)
        self._poll.register(device_fd, _POLLRDHUP)
        self._poll.register(wake_r, select.POLLIN)
        self._cond = threading.Condition(threading.Lock())
        self._generation = 0  # counts the leader's wake-ups; followers wait for it to move
        self._leader: object = None  # None, _THREAD, or the event loop holding the readers
        self._futures: dict[asyncio.Future[None], asyncio.AbstractEventLoop] = {}
        self._waiters = 0
        self._closed = False
        self._hung_up = False

    # --- under the lock -----------------------------------------------------------------------

    def _drain(self) -> None:
        """Forget the signals already counted: the page is about to be read anyway. Only when
        poll(2) says readable, so the read cannot block even if someone else cleared
        O_NONBLOCK on a description we share."""
        if self._poll_now(self._fd):
            with contextlib.suppress(BlockingIOError, InterruptedError):
                os.read(self._fd, 4096)

    def _poll_now(self, fd: int) -> int:
        probe = select.poll()
        probe.register(fd, select.POLLIN | _POLLRDHUP)
        ready = probe.poll(0)
        return ready[0][1] if ready else 0

    def _woken(self) -> None:
        """After a wake-up of the leader: note a hang-up, drain, and let every follower look."""
        if self._poll_now(self._device_fd) & _HANGUP:
            self._hung_up = True
        self._drain()
        self._generation += 1
        self._cond.notify_all()
        futures, self._futures = self._futures, {}
        for future, loop in futures.items():
            if loop is _running_loop():
                _resolve(future)
            else:
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody awaits
                    loop.call_soon_threadsafe(_resolve, future)

    def _look(self, news: Callable[[], T | None]) -> T | None:
        """One look at the page for a waiter (under the lock)."""
        if self._closed:
            raise TickClosedError("the tick fd was closed")
        if self._leader is None:
            self._drain()  # the leader drains before it looks, so no signal is lost
        result = news()
        if result is None and self._hung_up:
            raise ConnectionResetError("the driver hung up")
        return result

    # --- waiting ------------------------------------------------------------------------------

    def wait_for(self, news: Callable[[], T | None], deadline: float | None) -> T | None:
        """Call `news()` at each tick until it returns something, and return that; None once
        `deadline` (time.monotonic()) passes. Raises ConnectionResetError when the device socket
        hung up and `news()` has nothing, TickClosedError when closed meanwhile."""
        with self._cond:
            if self._closed:
                raise TickClosedError("the tick fd was closed")
            self._waiters += 1
        try:
            while True:
                with self._cond:
                    result = self._look(news)
                    if result is not None:
                        return result
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    if self._leader is not None:
                        self._follow(self._generation, remaining)
                        continue
                    self._leader = _THREAD
                try:
                    millis = -1 if remaining is None else min(_MAX_POLL_MS, int(remaining * 1000 + 0.999))
                    self._poll.poll(millis)
                finally:
                    with self._cond:
                        self._leader = None
                        self._woken()
        finally:
            with self._cond:
                self._waiters -= 1
                self._cond.notify_all()

    def _follow(self, generation: int, remaining: float | None) -> None:
        """Wait (holding the lock) until the leader's next wake-up, its leaving, or close()."""
        self._cond.wait_for(lambda: self._generation != generation or self._leader is None or self._closed, remaining)

    async def wait_for_async(self, news: Callable[[], T | None]) -> T:
        """The asyncio form of `wait_for`, with no deadline: bound it with asyncio.timeout()."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                result = self._look(news)
                if result is not None:
                    return result
                if self._leader is None:
                    self._leader = loop
                    loop.add_reader(self._fd, self._on_readable, loop)
                    loop.add_reader(self._device_fd, self._on_readable, loop)
                future: asyncio.Future[None] = loop.create_future()
                self._futures[future] = loop
            try:
                await future
            finally:
                with self._cond:
                    self._futures.pop(future, None)
                    if self._leader is loop and not any(other is loop for other in self._futures.values()):
                        self._stop_reading(loop)  # the last waiter of this loop left: hand over
                        self._cond.notify_all()

    def _on_readable(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._cond:
            if self._leader is loop:
                self._stop_reading(loop)
                self._woken()

    def _stop_reading(self, loop: asyncio.AbstractEventLoop) -> None:
        self._leader = None
        loop.remove_reader(self._fd)
        loop.remove_reader(self._device_fd)

    # --- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Wake every waiter (they get TickClosedError), wait for them to leave, then close the fds.
        Idempotent. Readers an event loop holds are removed on that loop, before the close."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):
                os.write(self._wake[1].fileno(), b"\0")  # out of the leader's poll(2)
            self._woken()
            self._cond.wait_for(lambda: self._waiters == 0, _CLOSE_GRACE)
            if self._waiters:
                return  # a waiter that does not leave: its fds are closed when it is collected
            leader = self._leader
            if isinstance(leader, asyncio.AbstractEventLoop) and leader is not _running_loop():
                with contextlib.suppress(RuntimeError):  # a closed loop holds no readers any more
                    leader.call_soon_threadsafe(self._close_on, leader)
                    return
            elif isinstance(leader, asyncio.AbstractEventLoop):
                self._stop_reading(leader)
        self._close_fds()

    def _close_on(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._cond:
            if self._leader is loop:
                self._stop_reading(loop)
        self._close_fds()

    def _close_fds(self) -> None:
        self._owner.close()
        for fd in self._wake:
            fd.close()

    def after_fork_in_child(self) -> None:
        """Close this process's copies of the fds without taking the lock, which a parent's
        thread may have held at fork(2) (no thread of the parent exists here to release it)."""
        self._cond = threading.Condition(threading.Lock())
        self._closed = True
        self._waiters = 0
        self._leader = None
        self._futures = {}
        self._close_fds()


_THREAD: Final = object()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


#: The longest sleep between two looks at a page without a tick fd: the page's own fields
#: (a huge interval, a deadline far away) are the driver's to write and never trusted with more.
MAX_SLEEP: Final = 1.0


def next_deadline_delay(last: PageSnapshot) -> float:
    """Seconds until just after the tick that should follow `last` (may be negative), at most
    MAX_SLEEP whatever the page says."""
    target = last.monotonic_ns + last.interval_ns + 200_000  # 0.2 ms past the deadline
    return min(MAX_SLEEP, (target - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9)


def retry_step(last: PageSnapshot) -> float:
    """How long to wait between re-reads once the deadline has passed without a tick: between
    0.1 ms and 1 ms whatever the page's interval says."""
    return max(0.0001, min(0.001, last.interval_ns / 1e10))
