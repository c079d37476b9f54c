"""The driver: dispatch table, per-handle contexts, the shared page and its timer. No sockets.

Theory of operation. Everything that decides what the device does lives here; the server only
moves bytes and fds. The seed's `DriverEntry` fills `MajorFunction[...]`; ours is the table
`_DISPATCH` below, and IOCTL codes have their own table `_IOCTLS`.

Handles. The server calls `connect()` for each accepted connection and gets a `Handle` in state
NEW. Requests move it along NEW -(CREATE)-> OPEN -(CLEANUP)-> CLEANED -(CLOSE)-> CLOSED; a
request not allowed in the current state is refused with a status and changes nothing. When the
connection drops for any reason, the server calls `disconnect()`, which performs whatever
CLEANUP and CLOSE the client did not send. Every path ends in the same `_cleanup`.

The page. One page per driver, shared by every handle that mapped it. It is created by the first
`IOCTL_GIVE_ME_YOUR_MEMORY`, written at once (the seed calls UpdateTime before IoStartTimer),
then at every deadline of the timer. Invariant: the page exists if and only if at least one
handle is mapped, and the timer runs if and only if the page exists. When the last mapped
handle goes, the driver writes state=stopped, stops the timer and frees the page.

The timer. The driver does not sleep or own a thread: it exposes `timer_deadline` (an absolute
CLOCK_MONOTONIC instant, or None) and the event loop calls `on_timer(now)` when it passes.
Deadlines advance by whole intervals from the first one, so the tick never drifts; when the loop
was so late that deadlines were missed, they are skipped (counted as late), not bunched up.

Waiting for the tick. A handle that holds the page may register as a waiter on the page's futex
(IOCTL_WAIT_SECTION with the page's instance id, page ABI 1.1): each tick then costs one
FUTEX_WAKE whatever the number of waiters (`page_waiters`, which says why it never waits). A
handle may also ask for a tick fd of its own, the 1.0 way, readable after every tick and when
the page stops; why each handle gets its own channel, and why a wake-up never waits, is told in
`tick_events`, which owns the channels. The IOCTL handlers themselves live in `ioctls` (and
`tick_events`); the records they share (`Handle`, `Completion`, `DriverConfig`) in `handles`.
This module keeps what decides the life of handles and of the page: the dispatch tables, the
state machine, the page's reference count and the timer.

Concurrency: none. The driver is called from one thread, the server's event loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from .._defs import (
    FILE_READ_DATA,
    FILE_WRITE_DATA,
    IOCTL_GIVE_ME_YOUR_MEMORY,
    IOCTL_QUERY_STATUS,
    IOCTL_REGISTER_TICK_EVENT,
    IOCTL_WAIT_SECTION,
    STATE_RUNNING,
    STATE_STOPPED,
    VALID_ACCESS_MASK,
    DriverStatus,
    MajorFunction,
    NtStatus,
    PageWriter,
    Request,
    required_access,
)
from .._sys import Fd
from .clock import Clock, SystemClock
from .handles import (
    DEFAULT_INTERVAL_NS,
    MAX_INTERVAL_NS,
    MIN_INTERVAL_NS,
    AccessPolicy,
    Completion,
    Credentials,
    DriverConfig,
    Handle,
    HandleState,
)
from .ioctls import ioctl_give_me_your_memory, ioctl_query_status, ioctl_section
from .memory import SealedMemory
from .page_waiters import PageWaiters
from .peer_log import PEER
from .sections import SECTION_IOCTLS, SectionRegistry
from .tick_events import close_tick_event, ioctl_register_tick_event, signal_tick_events

#: The records of `handles` are re-exported: `driver` still names the whole driver.
__all__ = [
    "DEFAULT_INTERVAL_NS",
    "MAX_INTERVAL_NS",
    "MIN_INTERVAL_NS",
    "AccessPolicy",
    "Completion",
    "Credentials",
    "Driver",
    "DriverConfig",
    "Handle",
    "HandleState",
]

log = logging.getLogger("sharingmemory.driver")


class _Page:
    """The page while it exists: its memory and its one writer, released together."""

    def __init__(self, memory: SealedMemory, writer: PageWriter) -> None:
        self.memory = memory
        self.writer = writer

    def free(self) -> None:
        self.writer.release()
        self.memory.close()


class Driver:
    """The SharingMemory device. See the module docstring for the handle and page life cycles."""

    def __init__(
        self,
        config: DriverConfig | None = None,
        *,
        clock: Clock | None = None,
        memory_factory: Callable[[], SealedMemory] = SealedMemory,
        pid: int | None = None,
        instance_id: bytes | None = None,
    ) -> None:
        self.config = config or DriverConfig()
        self._clock: Clock = clock or SystemClock()
        self._memory_factory = memory_factory
        self.pid = os.getpid() if pid is None else pid
        self.instance_id = os.urandom(16) if instance_id is None else instance_id
        self._handles: dict[int, Handle] = {}
        self._next_handle_id = 1
        self._open_per_uid: dict[int, int] = {}
        self._mapped = 0  # handles with `mapped` set; kept as a count so no path walks all handles
        self._tick_events: dict[int, Fd] = {}  # handle id -> our end of its tick channel
        self.page_waiters = PageWaiters()
        self._page: _Page | None = None
        self._deadline: int | None = None
        self._ticks = 0
        self.late_ticks = 0
        self.max_lateness_ns = 0
        self.unloaded = False
        self.sections = SectionRegistry(self.config.section_limits, self.config.producer_policy)
        log.info(
            "driver loaded: pid %d, instance %s, interval %d ns",
            self.pid,
            self.instance_id.hex(),
            self.config.interval_ns,
        )

    # --- connections and the dispatch table ---------------------------------------------------

    def connect(self, credentials: Credentials) -> Handle:
        """A new connection: a handle in state NEW, not yet counted against any limit."""
        handle = Handle(self._next_handle_id, credentials)
        self._next_handle_id += 1
        self._handles[handle.handle_id] = handle
        return handle

    def dispatch(self, handle: Handle, request: Request) -> Completion:
        """Complete one IRP on `handle`; never raises for anything a peer can send."""
        if self.unloaded:
            return Completion(NtStatus.STATUS_INVALID_DEVICE_STATE, close_connection=True)
        allowed = _ALLOWED[handle.state]
        if request.major not in allowed:
            status = (
                NtStatus.STATUS_INVALID_DEVICE_STATE
                if handle.state is HandleState.OPEN
                else NtStatus.STATUS_INVALID_HANDLE
            )
            return Completion(status)
        return _DISPATCH[request.major](self, handle, request)

    def disconnect(self, handle: Handle) -> None:
        """The connection is gone (closed, peer died): run the CLEANUP and CLOSE it did not send."""
        if handle.state is HandleState.OPEN:
            self._cleanup(handle)
        if handle.state is not HandleState.CLOSED:
            self._close(handle)

    def _dispatch_create(self, handle: Handle, request: Request) -> Completion:
        cred, access = handle.credentials, request.code
        if access == 0 or access & ~VALID_ACCESS_MASK:
            return Completion(NtStatus.STATUS_INVALID_PARAMETER, close_connection=True)
        if not self.config.policy.allows(cred):
            log.info("CREATE refused: uid %d gid %d (pid %d) is not allowed", cred.uid, cred.gid, cred.pid, extra=PEER)
            return Completion(NtStatus.STATUS_ACCESS_DENIED, close_connection=True)
        if self.handle_limit_reached(cred.uid):
            log.warning(
                "CREATE refused: handle limit reached (uid %d has %d)",
                cred.uid,
                self._open_per_uid.get(cred.uid, 0),
                extra=PEER,
            )
            return Completion(NtStatus.STATUS_TOO_MANY_OPENED_FILES, close_connection=True)
        handle.state, handle.granted_access = HandleState.OPEN, access
        self._open_per_uid[cred.uid] = self._open_per_uid.get(cred.uid, 0) + 1
        log.debug(
            "handle %d opened by pid %d uid %d, access %s", handle.handle_id, cred.pid, cred.uid, _access_text(access)
        )
        return Completion(NtStatus.STATUS_SUCCESS)

    def handle_limit_reached(self, uid: int) -> bool:
        """Whether a CREATE by `uid` now would be refused for a handle limit (overall or its
        own). The server asks before a CREATE, to take in the hang-ups already queued first."""
        return (
            self.open_handles >= self.config.max_handles
            or self._open_per_uid.get(uid, 0) >= self.config.max_handles_per_uid
        )

    def _dispatch_device_control(self, handle: Handle, request: Request) -> Completion:
        needed = required_access(request.code)
        if needed & ~handle.granted_access:
            return Completion(NtStatus.STATUS_ACCESS_DENIED)
        handler = _IOCTLS.get(request.code)
        if handler is None:
            return Completion(NtStatus.STATUS_INVALID_DEVICE_REQUEST)
        return handler(self, handle, request)

    def _dispatch_cleanup(self, handle: Handle, request: Request) -> Completion:
        self._cleanup(handle)
        return Completion(NtStatus.STATUS_SUCCESS)

    def _dispatch_close(self, handle: Handle, request: Request) -> Completion:
        if handle.state is HandleState.OPEN:
            self._cleanup(handle)
        self._close(handle)
        return Completion(NtStatus.STATUS_SUCCESS, close_connection=True)

    def _cleanup(self, handle: Handle) -> None:
        """IRP_MJ_CLEANUP: release what the handle holds; the last mapped handle frees the page."""
        log.debug("handle %d: cleanup", handle.handle_id)
        self.sections.handle_gone(handle.handle_id)  # a producer's handle going stops its sections
        self.page_waiters.forget(handle.handle_id)
        close_tick_event(self._tick_events, handle)
        if handle.mapped:
            handle.mapped = False
            self._mapped -= 1
            log.debug("handle %d: page reference dropped", handle.handle_id)
            if self._mapped == 0:
                self._free_page()
        handle.state = HandleState.CLEANED

    def _close(self, handle: Handle) -> None:
        if handle.state is HandleState.CLEANED:
            # Counted until CLOSE, not CLEANUP: a cleaned handle still holds its connection.
            uid = handle.credentials.uid
            self._open_per_uid[uid] -= 1
            if not self._open_per_uid[uid]:
                del self._open_per_uid[uid]
        handle.state = HandleState.CLOSED
        self._handles.pop(handle.handle_id, None)
        log.debug("handle %d closed", handle.handle_id)

    def _take_page_reference(self, handle: Handle) -> None:
        """Count `handle` as holding the page, once however often it asks (see `_cleanup`)."""
        if not handle.mapped:
            handle.mapped = True
            self._mapped += 1
            log.debug("handle %d: page reference taken (%d mapped)", handle.handle_id, self.mapped_handles)

    # --- the page and its timer ---------------------------------------------------------------

    def _allocate_page(self) -> None:
        memory = self._memory_factory()
        try:
            writer = PageWriter(
                memory.buffer, interval_ns=self.config.interval_ns, writer_pid=self.pid, instance_id=self.instance_id
            )
        except BaseException:
            memory.close()
            raise
        self._page = _Page(memory, writer)
        self.page_waiters.attach(writer, memory.buffer)
        log.debug("page allocated")
        realtime_ns, monotonic_ns, bias = self._clock.now()
        writer.update(realtime_ns=realtime_ns, monotonic_ns=monotonic_ns, time_zone_bias=bias)
        self._ticks += 1
        self._deadline = monotonic_ns + self.config.interval_ns
        log.debug("timer started (%d ns)", self.config.interval_ns)

    def _free_page(self) -> None:
        page, self._page = self._page, None
        if page is None:
            return
        self._deadline = None
        log.debug("timer stopped")
        realtime_ns, monotonic_ns, bias = self._clock.now()
        page.writer.stop(realtime_ns=realtime_ns, monotonic_ns=monotonic_ns, time_zone_bias=bias)
        self.page_waiters.wake_all()
        self.page_waiters.detach()
        signal_tick_events(self._tick_events)
        page.free()
        log.debug("page freed")

    @property
    def timer_deadline(self) -> int | None:
        """The CLOCK_MONOTONIC instant (ns) of the next tick, or None while no page exists."""
        return self._deadline

    def on_timer(self, now_monotonic_ns: int | None = None) -> None:
        """The timer routine: write the page if its deadline has passed, then set the next one."""
        deadline = self._deadline
        if deadline is None or self._page is None:
            return
        if now_monotonic_ns is None:
            now_monotonic_ns = self._clock.monotonic_ns()
        if now_monotonic_ns < deadline:
            return
        realtime_ns, monotonic_ns, bias = self._clock.now()
        self._page.writer.update(realtime_ns=realtime_ns, monotonic_ns=monotonic_ns, time_zone_bias=bias)
        self._ticks += 1
        self.page_waiters.wake_one()
        if self._tick_events:
            signal_tick_events(self._tick_events)
        interval = self.config.interval_ns
        lateness = now_monotonic_ns - deadline
        self.max_lateness_ns = max(self.max_lateness_ns, lateness)
        if lateness >= interval:
            self.late_ticks += 1
        self._deadline = deadline + interval * (lateness // interval + 1)

    # --- introspection and unload -------------------------------------------------------------

    @property
    def open_handles(self) -> int:
        """Handles past CREATE and not yet closed (what the limits count)."""
        return sum(self._open_per_uid.values())

    @property
    def mapped_handles(self) -> int:
        """Handles that hold the page; the page exists exactly while this is above zero."""
        return self._mapped

    @property
    def page(self) -> PageWriter | None:
        """The page's writer while the page exists (for tests and the status)."""
        return None if self._page is None else self._page.writer

    def status(self) -> DriverStatus:
        """What IOCTL_QUERY_STATUS reports."""
        page = self._page
        return DriverStatus(
            page_state=STATE_STOPPED if page is None else STATE_RUNNING,
            handles=self.open_handles,
            mapped_handles=self.mapped_handles,
            page_allocated=page is not None,
            timer_running=self._deadline is not None,
            ticks=self._ticks,
            interval_ns=self.config.interval_ns,
            pid=self.pid,
            instance_id=self.instance_id,
            late_ticks=self.late_ticks,
            max_lateness_ns=self.max_lateness_ns,
        )

    def unload(self) -> None:
        """DriverUnload: clean up and close every handle, so the page shows state=stopped."""
        if self.unloaded:
            return
        self._free_page()  # first, so every waiter is woken to state=stopped before its eventfd closes
        for handle in list(self._handles.values()):
            self.disconnect(handle)
        self.unloaded = True
        log.info("driver unloaded")


def _access_text(access: int) -> str:
    return ("r" if access & FILE_READ_DATA else "") + ("w" if access & FILE_WRITE_DATA else "")


_Handler = Callable[[Driver, Handle, Request], Completion]


def ioctl_wait(driver: Driver, handle: Handle, request: Request) -> Completion:
    """IOCTL_WAIT_SECTION: with the page's instance id (the `time` section's), a wait on the
    page's futex; with any other, on that section's (the registry decides)."""
    if request.input == driver.instance_id:
        return driver.page_waiters.register(handle)
    return ioctl_section(driver, handle, request)


#: The seed's `pDriverObject^.MajorFunction[...] := @Dispatch...` lines, as one table.
_DISPATCH: dict[MajorFunction, _Handler] = {
    MajorFunction.IRP_MJ_CREATE: Driver._dispatch_create,
    MajorFunction.IRP_MJ_DEVICE_CONTROL: Driver._dispatch_device_control,
    MajorFunction.IRP_MJ_CLEANUP: Driver._dispatch_cleanup,
    MajorFunction.IRP_MJ_CLOSE: Driver._dispatch_close,
}

#: Which major functions each handle state accepts; anything else is refused unchanged.
_ALLOWED: dict[HandleState, frozenset[MajorFunction]] = {
    HandleState.NEW: frozenset({MajorFunction.IRP_MJ_CREATE}),
    HandleState.OPEN: frozenset(
        {MajorFunction.IRP_MJ_DEVICE_CONTROL, MajorFunction.IRP_MJ_CLEANUP, MajorFunction.IRP_MJ_CLOSE}
    ),
    HandleState.CLEANED: frozenset({MajorFunction.IRP_MJ_CLOSE}),
    HandleState.CLOSED: frozenset(),
}

#: IOCTL code -> handler, checked after the access bits of the code.
_IOCTLS: dict[int, _Handler] = {
    IOCTL_GIVE_ME_YOUR_MEMORY: ioctl_give_me_your_memory,
    IOCTL_QUERY_STATUS: ioctl_query_status,
    IOCTL_REGISTER_TICK_EVENT: ioctl_register_tick_event,
    **dict.fromkeys(SECTION_IOCTLS, ioctl_section),
    IOCTL_WAIT_SECTION: ioctl_wait,
}
