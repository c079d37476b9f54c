"""The page's futex waiters (page ABI 1.1): who is registered, the `waiters` count, the wake.

Theory of operation (docs/page-abi.md, "Waiting for a tick"). A handle that holds the page sends
IOCTL_WAIT_SECTION with the page's instance id (the `time` section's); it is counted once in the
page's `waiters` word however often it asks, and uncounted at its CLEANUP (which a client's
SIGKILL runs too, on the hang-up). After each tick's write, when the count is not 0, the driver
makes one `FUTEX_WAKE(seq's low half, 1)` on its own mapping; the woken reader passes the wake-up
on to the others (the readers' chain, `_client/futex_wait`), so a tick costs the driver one
system call whether one reader waits or a thousand. At the stop: `FUTEX_WAKE(INT_MAX)`, relying on
no chain.

Why the wake can never make the event loop wait: FUTEX_WAKE takes only the futex hash bucket's
spinlock, walks that bucket's queue and marks the first waiter runnable; it never blocks on a
peer, touches no peer's memory and needs no peer to do anything (kernel/futex/waitwake.c
`futex_wake`). A waiter that is SIGSTOPped is still just an entry in the queue: it is woken (made
runnable when continued) like any other, and only the readers behind it in the chain can be
delayed by it, by at most their own wait slice.

Concurrency: none; called from the driver, on the server's one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from .._defs import SEQ_OFFSET, NtStatus, PageWriter
from .._sys import libc
from .handles import Completion, Handle

log = logging.getLogger("sharingmemory.driver")

_ALL: Final = 0x7FFFFFFF


class PageWaiters:
    """The handles registered to be woken at each tick of the page that exists now."""

    def __init__(self, wake: Callable[[int, int], int] | None = None) -> None:
        self._wake = wake or libc.futex_wake
        self._handles: set[int] = set()
        self._writer: PageWriter | None = None
        self._word = 0  # the address of `seq` in the driver's own mapping
        self._warned = False

    def __len__(self) -> int:
        return len(self._handles)

    def attach(self, writer: PageWriter, buffer: object) -> None:
        """A new page: nobody waits on it yet."""
        self._writer, self._word = writer, libc.buffer_address(buffer) + SEQ_OFFSET
        self._handles.clear()
        writer.set_waiters(0)

    def detach(self) -> None:
        """The page is being freed (after `wake_all`): its waiters, if any, are forgotten."""
        self._writer = None
        self._handles.clear()

    def register(self, handle: Handle) -> Completion:
        """IOCTL_WAIT_SECTION with the page's instance id. Only a handle that holds the page may
        wait on it: STATUS_INVALID_DEVICE_STATE otherwise, as IOCTL_REGISTER_TICK_EVENT."""
        writer = self._writer
        if not handle.mapped or writer is None:
            return Completion(NtStatus.STATUS_INVALID_DEVICE_STATE)
        if handle.handle_id not in self._handles:
            self._handles.add(handle.handle_id)
            writer.set_waiters(len(self._handles))
            log.debug("handle %d: waits on the page's futex (%d waiting)", handle.handle_id, len(self._handles))
        return Completion(NtStatus.STATUS_SUCCESS)

    def forget(self, handle_id: int) -> None:
        """CLEANUP's part: the handle no longer counts."""
        if handle_id in self._handles:
            self._handles.discard(handle_id)
            if self._writer is not None:
                self._writer.set_waiters(len(self._handles))
            log.debug("handle %d: no longer waits on the page's futex", handle_id)

    def wake_one(self) -> None:
        """After a tick's write: one wake-up when anyone waits (the chain does the rest)."""
        if self._handles:
            self._wake_safely(1)

    def wake_all(self) -> None:
        """After the stop's write: every waiter, readers of older texts included."""
        if self._writer is not None:
            self._wake_safely(_ALL)

    def _wake_safely(self, count: int) -> None:
        try:
            self._wake(self._word, count)
        except OSError as err:  # ENOSYS on an unknown machine: the waiters' slices end their waits
            if not self._warned:  # once: it would fail the same way at every tick, up to 1,000 a second
                self._warned = True
                log.warning("page futex wake failed: %s; waiters wake at the end of their wait slices", err)
