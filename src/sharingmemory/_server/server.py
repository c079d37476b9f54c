"""The device server: one event loop that moves bytes and fds between sockets and the driver.

Theory of operation. A single thread runs a `selectors` loop over: the listening socket, one
socket per connection (= one handle), a timerfd for the driver's tick, and a wake-up socket for
signals. Nothing blocks in between, so the tick is never delayed by another thread holding the
GIL, and the driver (which is not thread-safe) is only ever called from here.

The server owns the sockets, the socket file and its lock; the driver owns handles, page and
timer state. Per connection the order is fixed: receive, close any fd the peer sent, decode,
`driver.dispatch`, send the reply (with the page fd, which is then closed here), and drop the
connection when the driver or the protocol says so. Every way a connection can end goes
through `_drop`, which calls `driver.disconnect`: that is the seed's IRP_MJ_CLEANUP on process
death.

A peer that does not read its replies (the send would block) or sends garbage it cannot frame is
dropped; it can never stall the loop or the other clients. Connections that send no CREATE
within `create_timeout` are closed.

Nothing a peer can influence may make the loop wait. Where each system call a peer can touch
stands, and why it cannot wait:

* accept/recvmsg/sendmsg: every socket is O_NONBLOCK; a full peer is EAGAIN and is dropped.
* fds a peer sends: refused by the kernel (SO_PASSRIGHTS off, Linux 6.16+: the sender gets
  EPERM); where that is missing, received fds and sockets with fds still queued are closed by
  `Closer`'s thread, within a budget (see closer.py), never here.
* the tick: the driver writes only to its own end of each handle's tick channel (driver.py).
* the page fd: sent, then closed here: a dup of our own memfd, whose last reference we keep.
* log lines a peer can cause: rate-limited (`PEER_LIMIT`), since stderr may be a pipe nobody
  drains and logging's write is blocking.
* SO_PEERCRED/SO_PEERGROUPS: read from the kernel's copy taken at connect time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from .._defs import NtStatus, RemoteProtocolError, Reply, decode_request, encode_reply
from .._driver import PEER, Completion, Credentials, Driver, DriverConfig, Handle, HandleState
from .._sys import Fd, libc, unix
from .closer import DEFAULT_BUDGET, Closer
from .notify import notify
from .socket_file import SocketFile, check_socket_path
from .timerfd import MonotonicTimer

log = logging.getLogger("sharingmemory.server")

_ACCEPTS_PER_WAKEUP = 64
_MESSAGES_PER_WAKEUP = 8
#: fds the server needs besides its handles: listener, timerfd, wake-up pair, lock, the page
#: (memfd and mmap's dup), one reader fd in flight, logging, and a margin for connections that
#: have not sent CREATE yet.
FD_RESERVE = 64
#: Connections one uid may hold before their CREATE (a burst of honest clients stays far below).
MAX_PENDING_PER_UID = 256
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


class _Connection:
    """One accepted socket and its handle; `idle_deadline` is when it is dropped without CREATE;
    `counted_pending` whether it counts against its uid's MAX_PENDING_PER_UID."""

    __slots__ = ("counted_pending", "handle", "idle_deadline", "sock")

    def __init__(self, sock: socket.socket, handle: Handle, idle_deadline: float) -> None:
        self.sock = sock
        self.handle = handle
        self.idle_deadline = idle_deadline
        self.counted_pending = True


class DeviceServer:
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
        self._want_groups = bool(config.driver.policy.gids)
        self._selector = selectors.DefaultSelector()
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
                self._want_groups = bool(config.policy.gids)
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

    # --- connections --------------------------------------------------------------------------

    def _on_accept(self, _listener: object) -> None:
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                sock, _addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("accept paused: %s; resumes when a connection closes", err.strerror, extra=PEER)
                    self._selector.unregister(self._listener)
                    self._accept_paused = True
                    return
                if err.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                raise
            self._add_connection(sock)

    def _add_connection(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            if self.fds_refused_by_kernel and not self._listener_is_ours:
                unix.refuse_passed_fds(sock)  # for a passed listener's connections made earlier
            pid, uid, gid = unix.peer_credentials(sock)
            groups = unix.peer_groups(sock) if self._want_groups else frozenset[int]()
        except OSError:
            self._close_socket(sock)
            return
        if self._pending_per_uid.get(uid, 0) >= MAX_PENDING_PER_UID:
            # The handle limits count CREATEd handles; this bounds what one uid can hold before
            # CREATE, so an idle-connection flood costs only its own uid the wait for a slot.
            log.info(
                "connection from uid %d refused: %d already waiting for CREATE", uid, MAX_PENDING_PER_UID, extra=PEER
            )
            self._refuse(sock, NtStatus.STATUS_TOO_MANY_OPENED_FILES)
            return
        handle = self.driver.connect(Credentials(pid, uid, gid, groups))
        deadline = self._clock() + self.config.create_timeout
        connection = _Connection(sock, handle, deadline)
        self._connections[sock.fileno()] = connection
        self._pending[sock.fileno()] = connection
        self._pending_per_uid[uid] = self._pending_per_uid.get(uid, 0) + 1
        self._selector.register(sock, selectors.EVENT_READ, self._on_readable)
        self._on_readable(sock)  # a client's CREATE usually arrives with its connect

    def _refuse(self, sock: socket.socket, status: int) -> None:
        """Answer the request a refused connection has already sent (usually its CREATE, sent with
        the connect) with `status`, then close it. Closing with that request unread would reset
        the peer's connection (ECONNRESET) instead of telling it why."""
        with contextlib.suppress(OSError):
            message = self._closer.receive(sock)  # its fds, if any, go to the closer's thread
            if message is not None and message.data and not message.oversized:
                try:
                    request = decode_request(message.data)
                    major, request_id = int(request.major), request.request_id
                except RemoteProtocolError as err:
                    major, request_id = err.major, err.request_id
                unix.send(sock, encode_reply(Reply(major, request_id, status)))
        self._close_socket(sock)

    def _close_socket(self, sock: socket.socket) -> None:
        """Close a peer's socket without ever running the final close of an fd the peer queued
        on it. With SO_PASSRIGHTS off on our own listener, no message on it can carry fds, and
        an AF_UNIX socket's release waits for nothing; otherwise `Closer` decides."""
        if self.fds_refused_by_kernel and self._listener_is_ours:
            sock.close()
        else:
            self._closer.close_connection(sock)

    def _on_readable(self, sock: object) -> None:
        """Serve the requests waiting on one connection, a few at a time: a client that sends
        requests back to back (open and map, CLEANUP and CLOSE) is answered without a trip
        through select() for each, and a busy one cannot keep the loop from the others."""
        assert isinstance(sock, socket.socket)
        connection = self._connections.get(sock.fileno())
        for _ in range(_MESSAGES_PER_WAKEUP):
            if connection is None or self._connections.get(sock.fileno()) is not connection:
                return  # dropped by the last message
            try:
                message = self._closer.receive(sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                log.debug("handle %d: receive failed: %s", connection.handle.handle_id, err)
                self._drop(connection)
                return
            if message is None:
                self._park(connection)
                return
            if message.fds:
                # Requests never carry fds: the closer's thread closes them unread (close(2) of a
                # peer's fd can wait), and the request is refused below.
                log.info(
                    "handle %d (uid %d): %d unexpected fd(s) closed unread",
                    connection.handle.handle_id,
                    connection.handle.credentials.uid,
                    len(message.fds),
                    extra=PEER,
                )
            if not message.data and not message.fds and not message.oversized:
                self._drop(connection)  # end of file: the peer closed or died
                return
            self._handle_message(connection, message)
            self._tick_if_due()

    def _handle_message(self, connection: _Connection, message: unix.Received) -> None:
        if message.oversized:
            self._reply(connection, Reply(0, 0, NtStatus.STATUS_INVALID_PARAMETER), close=True)
            return
        try:
            request = decode_request(message.data)
        except RemoteProtocolError as err:
            log.debug("handle %d: bad request: %s", connection.handle.handle_id, err)
            self._reply(connection, Reply(err.major, err.request_id, err.status), close=err.fatal)
            return
        if message.fds or message.fds_truncated:
            self._reply(connection, Reply(request.major, request.request_id, NtStatus.STATUS_INVALID_PARAMETER))
            return
        try:
            completion = self.driver.dispatch(connection.handle, request)
        except Exception:  # a driver bug must cost one connection, never the server and its clients
            log.exception("handle %d: driver failed on %s", connection.handle.handle_id, request.major.name, extra=PEER)
            completion = Completion(NtStatus.STATUS_UNSUCCESSFUL, close_connection=True)
        if connection.handle.state is not HandleState.NEW:
            self._forget_pending(connection)
        reply = Reply(
            request.major, request.request_id, completion.status, completion.information,
            completion.output, completion.fd is not None,
        )  # fmt: skip
        try:
            self._reply(connection, reply, fd=completion.fd, close=completion.close_connection)
        finally:
            if completion.fd is not None:
                # Cannot block: a dup of the driver's own page file or the client's end of a new
                # tick channel (SHUT_RD on our end: nothing is queued on it), never a peer's fd.
                completion.fd.close()

    def _reply(self, connection: _Connection, reply: Reply, *, fd: Fd | None = None, close: bool = False) -> None:
        try:
            unix.send(connection.sock, encode_reply(reply), fd)
        except OSError as err:  # a full buffer (the peer does not read) or a dead peer
            log.debug("handle %d: reply not sent (%s); dropping", connection.handle.handle_id, err)
            close = True
        if close:
            self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        """End a connection for any reason: the driver's cleanup, then the socket."""
        fileno = connection.sock.fileno()
        if self._connections.pop(fileno, None) is None:
            return
        self._forget_pending(connection)
        if self._parked.pop(fileno, None) is None:
            self._selector.unregister(connection.sock)
        self.driver.disconnect(connection.handle)
        self._close_socket(connection.sock)
        if self._accept_paused:
            self._accept_paused = False
            self._selector.register(self._listener, selectors.EVENT_READ, self._on_accept)

    def _park(self, connection: _Connection) -> None:
        """Leave a connection unread until the closer has room (its next message carries fds).
        Out of `_pending`, so its idle deadline cannot drop it meanwhile (that would queue its
        socket, fds and all, for the closer beyond the budget), but still counted per uid."""
        fileno = connection.sock.fileno()
        self._selector.unregister(connection.sock)
        self._pending.pop(fileno, None)
        self._parked[fileno] = connection
        log.info("closer busy: handle %d left unread until it has room", connection.handle.handle_id, extra=PEER)

    def _unpark(self) -> None:
        parked, self._parked = self._parked, {}
        deadline = self._clock() + self.config.create_timeout  # later than every pending one
        for fileno, connection in parked.items():
            self._selector.register(connection.sock, selectors.EVENT_READ, self._on_readable)
            if connection.counted_pending:
                connection.idle_deadline = deadline
                self._pending[fileno] = connection

    def _forget_pending(self, connection: _Connection) -> None:
        self._pending.pop(connection.sock.fileno(), None)
        if connection.counted_pending:
            connection.counted_pending = False
            uid = connection.handle.credentials.uid
            self._pending_per_uid[uid] -= 1
            if not self._pending_per_uid[uid]:
                del self._pending_per_uid[uid]

    def _next_idle_timeout(self) -> float | None:
        for connection in self._pending.values():
            return max(0.0, connection.idle_deadline - self._clock())
        return None

    def _expire_idle(self) -> None:
        now = self._clock()
        while self._pending:
            connection = next(iter(self._pending.values()))
            if connection.idle_deadline > now:
                return
            log.debug(
                "handle %d: no CREATE within %.1f s; closing", connection.handle.handle_id, self.config.create_timeout
            )
            self._drop(connection)

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
        if self._socket_file is not None:
            self._socket_file.close()
            self._socket_file = None

    @property
    def connection_count(self) -> int:
        return len(self._connections)
