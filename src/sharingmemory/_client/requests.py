"""The Device's request plumbing: one request out, its reply in, and every check between them.

Theory of operation. A handle's connection carries requests in order and their replies in the
same order; a request gets a fresh id and the reply must name that id and major function, and
say whether it carries an fd exactly when one came with it. Any reply that breaks these rules
means the connection is out of step with the driver, and a connection out of step cannot be
resynchronised: it is closed at once (`_close_socket`), remembering why (`_lost`), and every
later request raises ValueError naming that reason, as for a closed file. A failure status is
raised as its `NtStatusError` subclass; after a fatal one (`_FATAL`, or any failure of CREATE)
the driver has closed its end, so ours goes too. OSErrors of the socket become the library's
exceptions in one place, `_os_error`.

`RequestChannel` is a base class of `Device`, not an object of its own: `_call` is the one
path every request takes, and it stays a method of the device with the same calls it made when
it lived in device.py. It owns no resources beyond the socket the Device hands it; the caller
holds `_lock` around each `_send`/`_receive` pair, so threads take turns on the connection.
"""

from __future__ import annotations

import errno
import socket
import threading
from typing import Final, NamedTuple

from .._defs import (
    AccessDenied,
    DeviceNotConnected,
    DeviceNotFound,
    InsufficientResources,
    InvalidHandle,
    InvalidParameter,
    IoTimeout,
    MajorFunction,
    NtStatus,
    NtStatusError,
    ObjectNameInvalid,
    RemoteProtocolError,
    Request,
    Unsuccessful,
    decode_reply,
    encode_request,
    exception_for,
    raise_for_status,
    status_name,
)
from .._sys import Fd, close_all, unix


class _Completed(NamedTuple):
    """A reply that passed every check: its status (success or a warning), information,
    output, and the fd it brought, now owned by the caller."""

    status: int
    information: int
    output: bytes
    fd: Fd | None


class RequestChannel:
    """The request half of `Device`: its socket, the ids of its requests, and why it was lost.

    `Device.__init__` sets `path`, `_lock` and `_next_id` and hands over the connected socket;
    the class defaults say "no socket yet, nothing lost, not inherited across fork"."""

    path: str
    _lock: threading.Lock
    _next_id: int
    _sock: socket.socket | None = None
    _lost: str = ""  # why the connection closed under the caller, once it has
    _inherited: bool = False  # True in a child of os.fork(): the handle is the parent's

    def _call(
        self,
        major: MajorFunction,
        *,
        code: int = 0,
        input: bytes = b"",
        output_length: int = 0,
    ) -> _Completed:
        """One request and its reply."""
        with self._lock:
            request_id = self._send(Request(major, 0, code, output_length, input))
            return self._receive(major, request_id)

    def _send(self, request: Request) -> int:
        """Send `request` under a fresh id (the caller holds the lock); returns the id."""
        sock = self._usable_socket()
        request_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
        data = encode_request(request._replace(request_id=request_id))
        try:
            unix.send(sock, data)
        except OSError as err:
            self._close_socket()  # a broken connection cannot be resynchronised
            raise _os_error(err, self.path) from err
        return request_id

    def _receive(self, major: MajorFunction, request_id: int) -> _Completed:
        """The reply to request `request_id` (the caller holds the lock), checked against it."""
        sock = self._usable_socket()
        try:
            message = unix.receive(sock)
        except OSError as err:
            self._close_socket()  # a timed-out or broken connection cannot be resynchronised
            raise _os_error(err, self.path) from err
        fd = message.fds[0] if message.fds else None
        problem: NtStatusError | None = None  # the reply is wrong: the connection is out of step
        reply = None
        if message.fds_truncated:  # the kernel dropped fds that found no free slot here
            close_all(message.fds)  # the reply itself was read: the connection stays in step
            raise InsufficientResources(
                "an fd from the driver was lost: this process is out of file descriptors (MSG_CTRUNC)"
            )
        if message.fds[1:]:
            problem = InvalidParameter("driver sent more than one fd")
        elif not message.data:
            problem = DeviceNotConnected(f"the driver at {self.path} closed the connection (stopped or died)")
        elif message.oversized:
            problem = InvalidParameter("driver sent an oversized reply")
        else:
            try:
                reply = decode_reply(message.data)
            except RemoteProtocolError as err:
                problem = exception_for(err.status, f"unreadable reply from the driver: {err}")
            else:
                if reply.request_id != request_id or reply.major != major:
                    problem = InvalidParameter("reply does not match the request")
                elif reply.has_fd != (fd is not None):
                    problem = InvalidParameter("reply's fd flag does not match")
        if problem is not None or reply is None:
            close_all(message.fds)
            self._lost = str(problem)
            self._close_socket()
            raise problem or InvalidParameter("unreadable reply")
        try:
            raise_for_status(reply.status, f"{_MAJOR_NAMES[major]} on {self.path} failed")
        except NtStatusError:
            close_all(message.fds)
            if reply.status in _FATAL or major is MajorFunction.IRP_MJ_CREATE:
                self._lost = f"the driver answered {major.name} with {status_name(reply.status)}"
                self._close_socket()  # the driver has closed its end too
            raise
        return _Completed(reply.status, reply.information, reply.output, fd)

    def _usable_socket(self) -> socket.socket:
        """The socket, or the error that says why there is none (the caller holds the lock)."""
        sock = self._sock
        if sock is not None and not self._inherited:
            return sock
        if self._inherited:
            raise InvalidHandle("this Device was opened by the parent process (before os.fork()): open a new one")
        if self._lost:
            raise ValueError(f"I/O operation on a closed Device (its connection was lost: {self._lost})")
        raise ValueError("I/O operation on a closed Device")

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            self._lost = self._lost or "an earlier request failed"
            sock.close()


#: Statuses after which the connection cannot be used any more (the driver closes it too).
#: STATUS_ACCESS_DENIED is fatal only for CREATE (docs/protocol.md): an IOCTL the handle lacks
#: the access for is refused and the handle goes on.
_FATAL = frozenset({
    NtStatus.STATUS_DEVICE_NOT_CONNECTED, NtStatus.STATUS_IO_TIMEOUT, NtStatus.STATUS_REVISION_MISMATCH,
    NtStatus.STATUS_TOO_MANY_OPENED_FILES,
})  # fmt: skip


#: The names for messages, looked up once: an enum's .name is a descriptor call, on every reply.
_MAJOR_NAMES: Final = {major: major.name for major in MajorFunction}


def _os_error(err: OSError, path: str) -> NtStatusError:
    """The one place where socket OSErrors become the library's NtStatusError subclasses."""
    if isinstance(err, TimeoutError):
        return IoTimeout(f"the driver at {path} did not answer in time")
    if isinstance(err, FileNotFoundError | ConnectionRefusedError | NotADirectoryError):
        return DeviceNotFound(f"no driver is serving {path}")
    if err.errno == errno.EPROTOTYPE:  # a stream or datagram socket: some other program's
        return DeviceNotFound(f"{path} is not a SOCK_SEQPACKET socket: no driver is serving it")
    if isinstance(err, PermissionError):
        return AccessDenied(f"permission denied opening {path}")
    if isinstance(err, BrokenPipeError | ConnectionResetError | ConnectionAbortedError):
        return DeviceNotConnected(f"the driver at {path} went away (stopped or died)")
    if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
        return InsufficientResources(f"{path}: {err.strerror}")
    if err.errno in (errno.ENAMETOOLONG, errno.ELOOP, None):  # None: "AF_UNIX path too long"
        return ObjectNameInvalid(f"{path!r} cannot name a socket: {err.strerror or err}")
    return Unsuccessful(f"{path}: {err.strerror or err}")
