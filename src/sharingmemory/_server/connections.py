"""The server's connections: accepting them, serving their requests, and the rules for peers' fds.

Theory of operation. Each accepted socket is one handle (`_Connection`). Per connection the
order is fixed: receive, close any fd the peer sent, decode, `driver.dispatch`, send the reply
(with the page fd, which is then closed here), and drop the connection when the driver or the
protocol says so. Every way a connection can end goes
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
* the tick: the driver writes only to its own end of each handle's tick channel (_driver/tick_events.py).
* the page fd: sent, then closed here: a dup of our own memfd, whose last reference we keep.
* log lines a peer can cause: rate-limited (`PEER_LIMIT`), since stderr may be a pipe nobody
  drains and logging's write is blocking.
* SO_PEERCRED/SO_PEERGROUPS: read from the kernel's copy taken at connect time.
* the look for hang-ups before a status or a CREATE at the limit (`_take_in_hangups`):
  epoll_wait with timeout 0 on a set of hang-ups alone, and a gone peer's queue, which cannot
  grow.

This module owns everything that happens on a connection's socket, from accept to `_drop`: the
per-uid bound on connections waiting for CREATE, the idle deadline, parking a connection while
the closer has no room, and where a peer's fds are closed. `ConnectionHandling` is a base class
of `DeviceServer` (server.py), not an object of its own: the loop registers these methods with
its selector as they are, so a message costs the same calls it did when they lived in one class.
The loop, the timer and the watchdog stay in server.py.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import select
import selectors
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._defs import (
    IOCTL_QUERY_STATUS,
    MajorFunction,
    NtStatus,
    RemoteProtocolError,
    Reply,
    Request,
    decode_request,
    encode_reply,
)
from .._driver import PEER, Completion, Credentials, Driver, Handle, HandleState
from .._sys import Fd, unix
from .closer import Closer

if TYPE_CHECKING:
    from .server import ServerConfig

log = logging.getLogger("sharingmemory.server")

_ACCEPTS_PER_WAKEUP = 64
_MESSAGES_PER_WAKEUP = 8
#: Connections one uid may hold before their CREATE (a burst of honest clients stays far below).
MAX_PENDING_PER_UID = 256


class _Connection:
    """One accepted socket and its handle; `idle_deadline` is when it is dropped without CREATE;
    `counted_pending` whether it counts against its uid's MAX_PENDING_PER_UID."""

    __slots__ = ("counted_pending", "handle", "idle_deadline", "sock")

    def __init__(self, sock: socket.socket, handle: Handle, idle_deadline: float) -> None:
        self.sock = sock
        self.handle = handle
        self.idle_deadline = idle_deadline
        self.counted_pending = True


class ConnectionHandling:
    """The connection half of `DeviceServer`: what it does with each socket a peer connects.

    It keeps no state of its own; the attributes below are set up by `DeviceServer.__init__`
    and named here so the methods type-check where they are written.
    """

    config: ServerConfig
    driver: Driver
    fds_refused_by_kernel: bool
    _clock: Callable[[], float]
    _closer: Closer
    _selector: selectors.BaseSelector
    #: Every connection again, registered for its hang-up alone (no EPOLLIN), so that looking for
    #: the connections whose peer has gone costs one call and one entry per gone peer, however
    #: many live ones have requests waiting (`_take_in_hangups`).
    _hangups: select.epoll
    _listener: socket.socket
    _listener_is_ours: bool
    _accept_paused: bool
    _connections: dict[int, _Connection]
    _pending: dict[int, _Connection]
    _pending_per_uid: dict[int, int]
    _parked: dict[int, _Connection]
    #: The loop's tick check (`DeviceServer._tick_if_due`), run after each message.
    _tick_if_due: Callable[[], None]
    #: True while `_take_in_hangups` serves other connections (it does not nest).
    _taking_in_hangups: bool = False

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
            # Always: any gid list may ask (the access policy, the producer policy, or a section's
            # readers, which a producer names long after this connection was made). One getsockopt.
            groups = unix.peer_groups(sock)
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
        self._hangups.register(sock.fileno(), _HUNG_UP)
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
        if _counts_other_handles(request) and (
            request.major is not MajorFunction.IRP_MJ_CREATE
            or self.driver.handle_limit_reached(connection.handle.credentials.uid)
        ):
            self._take_in_hangups(connection)
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

    def _take_in_hangups(self, asking: _Connection) -> None:
        """Run the cleanup of every connection that has hung up, before answering `asking`.

        A reader's `close()` does not wait for the driver (client/device.py): it closes its
        socket, and the driver learns of it from the hang-up. The kernel marks the hang-up in
        close(2) itself, before the client can send anything else, so it is visible when any
        later request arrives, from any process; but the loop may serve the later request first
        (a CREATE is read at accept, several connections are ready at once). The two answers
        that depend on other handles would then count one that is gone: a CREATE at the handle
        limit would be refused, and a status would count the closed handle.

        So before those two the server takes one non-blocking look at a second epoll set in
        which every connection is registered for its hang-up alone (EPOLLRDHUP, and HUP and
        ERR, which epoll always reports), and finishes the connections whose peer has gone:
        what they queued before going, then the hang-up (`_drop`, which takes them out of the
        set). The look costs one epoll_wait and one entry per gone peer, never one per live
        connection: a first form polled every ready connection, so a burst of status queries
        from n connections cost n x n (500 connections asking 4 times each: 350-490 ms of the
        driver's CPU against 30-50 ms without any look; 29-40 ms with this one).
        It is work the next rounds would do anyway, and it ends: a peer that has gone cannot
        queue more. Live connections are left to the loop: serving their requests here could
        bring another CREATE at the limit, which does not look again (this does not nest).
        """
        if self._taking_in_hangups:
            return
        self._taking_in_hangups = True
        served = 0
        try:
            for fileno, _events in self._hangups.poll(0):
                connection = self._connections.get(fileno)
                if connection is None or connection is asking:
                    continue
                served += 1
                while self._connections.get(fileno) is connection and fileno not in self._parked:
                    self._on_readable(connection.sock)
        finally:
            self._taking_in_hangups = False
        if served:
            log.debug("handle %d: %d hung-up connection(s) cleaned up first", asking.handle.handle_id, served)

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
        self._hangups.unregister(fileno)  # now: the closer thread may close the socket later
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


def _counts_other_handles(request: Request) -> bool:
    """A CREATE (the handle limits) or a status query (the handle and page counts)."""
    major = request.major
    return major is MajorFunction.IRP_MJ_CREATE or (
        major is MajorFunction.IRP_MJ_DEVICE_CONTROL and request.code == IOCTL_QUERY_STATUS
    )


#: epoll(7) events of a peer that has closed its end (unix(7): the socket is shut down both ways).
_HUNG_UP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
