"""The device server: one event loop that moves bytes and fds between sockets and the driver.

Theory of operation. A single thread runs a `selectors` loop over: the listening socket, one
socket per connection (= one handle), a timerfd for the driver's tick, and a wake-up socket for
signals. Nothing blocks in between, so the tick is never delayed by another thread holding the
GIL, and the driver (which is not thread-safe) is only ever called from here.

The server owns the sockets, the socket file and its lock; the driver owns handles, page and
timer state. What happens on each connection (receive, close any fd the peer sent, decode,
`driver.dispatch`, reply, drop), and why nothing a peer can influence may make the loop wait,
is told in connections.py, which owns it; this module keeps the loop, the tick's timerfd, the
watchdog, signals, reload and shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import select
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from .._driver import Driver, DriverConfig
from .._sys import libc, unix
from .closer import DEFAULT_BUDGET, Closer
from .connections import MAX_PENDING_PER_UID, ConnectionHandling, _Connection
from .notify import notify
from .socket_file import SocketFile, check_socket_path
from .timerfd import MonotonicTimer

__all__ = [
    "FDS_PER_HANDLE",
    "FD_RESERVE",
    "MAX_PENDING_PER_UID",
    "DeviceServer",
    "ServerConfig",
    "default_handle_limits",
    "raise_fd_limit",
]

log = logging.getLogger("sharingmemory.server")

#: fds the server needs besides its handles: listener, timerfd, wake-up pair, lock, the page
#: (memfd and mmap's dup), one reader fd in flight, logging, and a margin for connections that
#: have not sent CREATE yet.
FD_RESERVE = 64
#: fds one handle may hold at most: its socket and its tick channel's end.
FDS_PER_HANDLE = 2


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (each handle costs fds, see
    `FDS_PER_HANDLE`) and return the soft limit now in force. Never raises: a limit that cannot
    be raised is used as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as err:
            log.warning("open-file limit stays at %d: %s", soft, err)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def default_handle_limits(fd_limit: int) -> tuple[int, int]:
    """(max handles overall, max handles per uid) that fit in `fd_limit` open files: what is
    left after `FD_RESERVE`, divided by `FDS_PER_HANDLE`; one uid may take half of that, so
    another allowed user (or root) can still open the device."""
    overall = max(1, (fd_limit - FD_RESERVE) // FDS_PER_HANDLE)
    return overall, max(1, overall // 2)


@dataclass(frozen=True)
class ServerConfig:
    """Where and how the device is served. Modes apply to what the server creates itself."""

    socket_path: str
    driver: DriverConfig = field(default_factory=DriverConfig)
    socket_mode: int = 0o660
    dir_mode: int = 0o750
    create_timeout: float = 5.0
    # Seconds between WATCHDOG=1 notifications (half the service's WatchdogSec=); None: no watchdog.
    watchdog_interval: float | None = None
    # Turn SO_PASSRIGHTS off where the kernel has it; False exercises the closer thread alone,
    # as on kernels before 6.16 (`serve --no-passrights`, for tests).
    refuse_fds: bool = True
    # The group the socket and a directory it creates get (`serve --socket-group`); None: ours.
    socket_group: int | None = None
    # Whether `dir_mode` (and the group) were asked for explicitly: an existing directory that
    # differs is then refused, not used as it is.
    enforce_dir: bool = False
    # fds the closer thread may hold at once (see closer.py); None: its default.
    closer_budget: int | None = None


class DeviceServer(ConnectionHandling):
    """The daemon: binds the device socket, runs the loop, unloads the driver on the way out.

    Use as a context manager, or call `close()`; `serve_forever()` returns after SIGTERM/SIGINT
    (when `handle_signals`) or `stop()`. `listener`, when given, is an already listening socket
    (socket activation): the server neither binds nor unlinks it.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        driver: Driver | None = None,
        listener: socket.socket | None = None,
        handle_signals: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_reload: Callable[[], tuple[DriverConfig, str]] | None = None,
    ) -> None:
        """`on_reload`, called on SIGHUP, re-reads what may change while the driver runs and
        returns the driver's new configuration and what it re-read, for the log line."""
        self.config = config
        self._on_reload = on_reload
        self._reload_requested = False
        self._clock = clock
        self._handle_signals = handle_signals
        self._socket_file: SocketFile | None = None
        self._connections: dict[int, _Connection] = {}
        # Connections still waiting for CREATE, oldest first: their deadlines are in insertion
        # order (one constant timeout), so the loop looks at the head only and a tick never
        # costs more with many open handles.
        self._pending: dict[int, _Connection] = {}
        self._pending_per_uid: dict[int, int] = {}
        # Connections left unread because their next message carries fds and the closer has no
        # room (see closer.py); they keep their slots (and so their limits) until then.
        self._parked: dict[int, _Connection] = {}
        self._closer = Closer(config.closer_budget or DEFAULT_BUDGET, on_room=self._wake)
        self.fds_refused_by_kernel = False
        self._listener_is_ours = listener is None
        self._selector = selectors.DefaultSelector()
        self._hangups = select.epoll()
        self._stopping: str | None = None
        self._accept_paused = False
        self._armed: int | None = None
        self._timer = MonotonicTimer()
        self._wake_r, self._wake_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            if listener is None:
                path = check_socket_path(config.socket_path)
                self._socket_file = SocketFile(
                    path, dir_mode=config.dir_mode, group=config.socket_group, enforce=config.enforce_dir
                )
                listener = unix.seqpacket_socket()
                try:
                    self._socket_file.bind(listener, config.socket_mode)
                    listener.listen(socket.SOMAXCONN)
                except BaseException:
                    listener.close()
                    raise
                self.socket_path = path
            else:
                self.socket_path = config.socket_path
            self._listener = listener
            if config.refuse_fds:
                # Inherited by every socket accept() returns, and covers a message sent between
                # connect and accept (tried on 6.18); a passed listener may hold connections made
                # before this, which is why `_add_connection` sets it again.
                self.fds_refused_by_kernel = unix.refuse_passed_fds(listener)
            listener.setblocking(False)
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ, self._on_accept)
            self._selector.register(self._timer.fileno(), selectors.EVENT_READ, self._on_timer)
            self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wakeup)
            self.driver = driver or Driver(config.driver)
        except BaseException:
            self._release()
            raise
        log.info(
            "device %s ready (driver pid %d; peers' fds %s)",
            self.socket_path,
            os.getpid(),
            "refused by the kernel (SO_PASSRIGHTS)" if self.fds_refused_by_kernel else "closed off the loop",
        )

    def __enter__(self) -> DeviceServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the loop -----------------------------------------------------------------------------

    def stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to finish; safe from a signal handler or another thread."""
        self._stopping = reason
        self._wake()

    def _wake(self) -> None:
        """Make select() return; from any thread. Non-blocking: a full pair is awake already."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Run until stopped; then unload the driver (state=stopped) and close every handle."""
        previous: dict[signal.Signals, object] = {}
        if self._handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
            previous_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        with contextlib.suppress(OSError):  # not fatal: the tick is a timerfd; slack touches other waits
            libc.set_timer_slack(1)
        notify(f"READY=1\nSTATUS=serving {self.socket_path}\nMAINPID={os.getpid()}")
        if self.config.watchdog_interval is not None:
            self._watchdog_deadline = self._clock() + self.config.watchdog_interval
        if ready is not None:
            ready()
        try:
            while self._stopping is None:
                self._run_once()
        finally:
            log.info("driver stopping: %s", self._stopping or "error")
            notify(f"STOPPING=1\nSTATUS=stopping: {self._stopping or 'error'}")
            if self._handle_signals:
                signal.set_wakeup_fd(previous_wakeup)
                for signum, handler in previous.items():
                    signal.signal(signum, handler)  # type: ignore[arg-type]
            self.close()

    def _run_once(self) -> None:
        """One round: wait, then run the callbacks of what is ready, the tick before each.

        The tick is checked before every callback, not only when the timerfd's turn comes: one
        select() can return a hundred busy connections, and a tick queued behind all of them
        was measured 7-14 ms late under 100 opening clients (benchmarks/timer.py). Checked
        before each, it waits for one request at most; the check is one clock_gettime.
        """
        timeout = self._watchdog_timeout(self._next_idle_timeout())
        for key, _mask in self._selector.select(timeout):
            self._tick_if_due()
            callback: Callable[[object], None] = key.data
            callback(key.fileobj)
        self._expire_idle()
        if self._reload_requested:
            self.reload()
        if self._parked and self._closer.has_room():
            self._unpark()
        self._sync_timer()
        self._feed_watchdog()

    # --- the service manager's watchdog (sd_watchdog_enabled(3)) ------------------------------

    _watchdog_deadline: float | None = None
    _watchdog_status = ""

    def _watchdog_timeout(self, timeout: float | None) -> float | None:
        """`timeout`, shortened so that select returns in time for the next WATCHDOG=1."""
        if self._watchdog_deadline is None:
            return timeout
        until = max(0.0, self._watchdog_deadline - self._clock())
        return until if timeout is None else min(timeout, until)

    def _feed_watchdog(self) -> None:
        """Send WATCHDOG=1 when due. Only the loop sends it, between two rounds of callbacks, so a
        loop stuck in a callback or a system call stops the pings and the service manager kills
        and restarts the driver. The status line rides along when the handle count changed."""
        interval = self.config.watchdog_interval
        if self._watchdog_deadline is None or interval is None:
            return
        now = self._clock()
        if now < self._watchdog_deadline:
            return
        status = f"serving {self.socket_path}, {len(self._connections)} handle(s) open"
        notify("WATCHDOG=1" if status == self._watchdog_status else f"WATCHDOG=1\nSTATUS={status}")
        self._watchdog_status = status
        self._watchdog_deadline = now + interval

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop(signal.Signals(signum).name)

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP: the conventional "re-read your configuration", never a reason to exit. Only
        a flag here; the loop does the work between two rounds (`reload`)."""
        self._reload_requested = True
        self._wake()

    def reload(self) -> str:
        """Re-read what can change at run time: the local time zone (tzset(3): a changed
        /etc/localtime or zone rules show at the next tick) and whatever `on_reload` re-reads
        (group names). Everything else needs a restart. Returns the log line."""
        self._reload_requested = False
        time.tzset()
        zone = f"time zone re-read ({time.strftime('%Z %z')})"
        done = [zone]
        if self._on_reload is not None:
            try:
                config, what = self._on_reload()
            except Exception as err:  # a bad edit must not take the driver down with it
                done.append(f"the rest kept: {err}")
            else:
                self.driver.config = config
                done.append(what)
        line = "SIGHUP: " + "; ".join(done) + "; other settings need a restart"
        log.info("%s", line)
        return line

    def _on_wakeup(self, _sock: object) -> None:
        try:
            while self._wake_r.recv(256):
                pass
        except BlockingIOError:
            pass

    def _on_timer(self, _fd: object) -> None:
        self._timer.acknowledge()
        self._armed = None  # a fired timerfd is disarmed: force _sync_timer to re-arm it
        self._tick_if_due()

    def _tick_if_due(self) -> None:
        """Run the driver's timer routine if its deadline has passed, and re-arm the timerfd
        (which also clears an expiry it may hold, so select() does not report it again)."""
        deadline = self.driver.timer_deadline
        if deadline is None:
            return
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if now >= deadline:
            self.driver.on_timer(now)
            self._sync_timer()

    def _sync_timer(self) -> None:
        deadline = self.driver.timer_deadline
        if deadline != self._armed:
            self._timer.arm(deadline)
            self._armed = deadline

    # --- shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        """DriverUnload: unload the driver, close every connection and the socket. Idempotent."""
        driver = getattr(self, "driver", None)
        if driver is not None:
            driver.unload()
        for connection in list(self._connections.values()):
            self._drop(connection)
        self._closer.stop()
        self._release()

    def _release(self) -> None:
        for closable in (getattr(self, "_listener", None), self._wake_r, self._wake_w):
            if closable is not None:
                closable.close()
        self._timer.close()
        with contextlib.suppress(OSError, ValueError):
            self._selector.close()
        self._hangups.close()
        if self._socket_file is not None:
            self._socket_file.close()
            self._socket_file = None

    @property
    def connection_count(self) -> int:
        return len(self._connections)
