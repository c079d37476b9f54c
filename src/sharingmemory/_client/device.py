"""The client library: open the device, send IRPs, map the shared page.

Theory of operation. A `Device` is one handle: one SOCK_SEQPACKET connection on which CREATE was
granted. Each method sends one request and waits (with a timeout) for its reply; a `Device` is
safe to share between threads, which take turns. `IOCTL_GIVE_ME_YOUR_MEMORY` brings a read-only
fd of the page, which is mapped PROT_READ and closed at once: from then on the page is read
straight from memory with no call into the driver, the seed's whole point.

Ownership, as the seed's program has it: the `SharedPage` belongs to the `Device` that mapped it
and is unmapped when the device closes. If the driver goes away first, the mapping stays valid
(the kernel keeps the memfd alive while it is mapped) and shows state=stopped; the next request
on the device raises `DeviceNotConnected`.

Trust: before anything the driver says is believed, `trust` checks the socket's directory, the
uid that listens (SO_PEERCRED), the page fd's seals and size and the tick fd's type; whatever
fails raises `UntrustedDevice`.

Lifetime: a fatal error (the driver went away, a timeout, a reply out of step) closes the
connection at once, as the driver does; the mapped page stays readable until `close()`, which
always releases the page, the tick fd and the socket, whatever happened before. Later requests
(`map_shared_memory()` included) raise ValueError, as for a closed file. After os.fork() the
child's copy of a Device is not its handle: the child's requests raise InvalidHandle, and its
`close()` releases only its own copies of the fds, sending nothing (the parent's handle lives
on). A Device collected unclosed releases everything with a ResourceWarning, as an unclosed
file does.

Errors: every failure the driver reports arrives as the typed `NtStatusError` subclass of its
status (`raise_for_status`); OSErrors of the socket are translated in one place (`_os_error`);
bad arguments raise TypeError or ValueError before anything is sent.

Where the parts live: the request plumbing (`_call`, `_send`, `_receive` and the checks of each
reply) is `requests.RequestChannel`, the section methods are `device_sections.DeviceSections`;
both are base classes of `Device`, so a request makes the same calls it did in one class.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
import weakref
from typing import Final, NamedTuple

from .._defs import (
    FILE_WRITE_DATA,
    IOCTL_GIVE_ME_YOUR_MEMORY,
    IOCTL_QUERY_STATUS,
    IOCTL_REGISTER_TICK_EVENT,
    MAX_INPUT_LENGTH,
    MAX_OUTPUT_BUFFER,
    MAX_OUTPUT_LENGTH,
    STATUS_STRUCT_SIZE,
    DriverStatus,
    InsufficientResources,
    InvalidParameter,
    MajorFunction,
    NtStatusError,
    ObjectNameInvalid,
    RemoteProtocolError,
    Request,
    Unsuccessful,
    decode_driver_status,
)
from .._sys import Fd, unix
from .arguments import unsigned
from .device_sections import DeviceSections
from .requests import _os_error
from .shared_page import SharedPage
from .ticks import TickEvent
from .trust import check_directory, check_page_fd, check_peer, check_tick_fd, trusted_uids

DEFAULT_TIMEOUT: Final = 5.0
_POINTER = struct.Struct("<Q")


class IoResult(NamedTuple):
    """A completed DeviceIoControl: `status` (success or a warning such as
    STATUS_BUFFER_OVERFLOW), `information` (bytes of output that are valid) and `output`."""

    status: int
    information: int
    output: bytes


class Device(DeviceSections):
    """One open handle to the SharingMemory device (the seed's `CreateFile` result).

    Use `open_device()` to make one. A context manager; `close()` unmaps the page, releases the
    handle (CLEANUP and CLOSE, or the hang-up) and closes the socket, and is idempotent.
    """

    _page: SharedPage | None = None

    def __init__(
        self,
        path: str,
        access: int,
        timeout: float | None = DEFAULT_TIMEOUT,
        *,
        map: bool = False,
        trusted: frozenset[int] | None = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self._access = access
        self._lock = threading.Lock()
        self._next_id = 1
        uids = trusted_uids(None) if trusted is None else trusted
        check_directory(path, uids)
        try:
            sock = unix.seqpacket_socket()
        except OSError as err:
            raise _os_error(err, path) from err
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except OSError as err:
                raise _os_error(err, path) from err
            except ValueError as err:  # an embedded NUL byte
                raise ObjectNameInvalid(f"{path!r} is not a socket path: {err}") from err
            check_peer(sock, path, uids)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        _DEVICES.add(self)
        try:
            if map:
                self._create_and_map(access)
            else:
                self._call(MajorFunction.IRP_MJ_CREATE, code=access)
        except BaseException:
            self.close(wait=False)
            raise

    def _create_and_map(self, access: int) -> None:
        """CREATE and IOCTL_GIVE_ME_YOUR_MEMORY sent back to back, then both replies read: the
        driver serves a connection's requests in order, so opening and mapping cost one round
        trip instead of two. If CREATE fails, its error is raised (the driver closes the
        connection without reading the second request)."""
        with self._lock:
            create = self._send(Request(MajorFunction.IRP_MJ_CREATE, 0, access))
            give = self._send(Request(MajorFunction.IRP_MJ_DEVICE_CONTROL, 0, IOCTL_GIVE_ME_YOUR_MEMORY, _POINTER.size))
            self._receive(MajorFunction.IRP_MJ_CREATE, create)
            reply = self._receive(MajorFunction.IRP_MJ_DEVICE_CONTROL, give)
        self._adopt_page(reply.fd)

    # --- requests -----------------------------------------------------------------------------

    def device_io_control(self, code: int, input: bytes = b"", output_size: int = 0) -> IoResult:
        """DeviceIoControl: send `code` with `input`, allowing `output_size` bytes of output.

        For IOCTL_GIVE_ME_YOUR_MEMORY the page is mapped into this process and the output is its
        address as a little-endian u64, as in the seed. Raises the NtStatusError subclass of a
        failure status; warnings come back in `IoResult.status`.

        `code` is a 32-bit int, `input` any bytes-like object the protocol can carry (up to
        MAX_INPUT_LENGTH bytes, else InvalidParameter). `output_size` may be generous, as
        Windows callers' buffers often are: any size up to MAX_OUTPUT_BUFFER (16 MiB) is
        accepted, since no answer is longer than a message can carry; a larger one is refused
        with InsufficientResources, as the I/O manager refuses a buffer it cannot allocate.
        Wrong types raise TypeError, negative or out-of-range values ValueError.
        """
        code = unsigned("code", code, 0xFFFFFFFF)
        try:
            data = bytes(memoryview(input))
        except TypeError:
            raise TypeError(f"input must be a bytes-like object, not {type(input).__name__}") from None
        if len(data) > MAX_INPUT_LENGTH:
            raise InvalidParameter(f"input of {len(data)} bytes exceeds the {MAX_INPUT_LENGTH} a request can carry")
        size = unsigned("output_size", output_size, None)
        if size > MAX_OUTPUT_BUFFER:
            raise InsufficientResources(f"an output buffer of {size} bytes is more than {MAX_OUTPUT_BUFFER}")
        length = min(size, MAX_OUTPUT_LENGTH)
        reply = self._call(MajorFunction.IRP_MJ_DEVICE_CONTROL, code=code, input=data, output_length=length)
        if code == IOCTL_GIVE_ME_YOUR_MEMORY:
            page = self._adopt_page(reply.fd)
            output = _POINTER.pack(page.address)
            return IoResult(reply.status, len(output), output)
        if reply.fd is not None:  # tick fds come through _register_tick_event only
            reply.fd.close()
            raise InvalidParameter("driver sent an fd with an unexpected reply")
        return IoResult(reply.status, reply.information, reply.output)

    def _adopt_page(self, fd: Fd | None) -> SharedPage:
        """Map the page fd of a successful IOCTL_GIVE_ME_YOUR_MEMORY (and close the fd). A second
        map on the same handle gets the same page from the driver: the mapping is kept."""
        if fd is None:
            raise Unsuccessful("driver granted the page without sending its fd")
        try:
            if self._page is None or self._page.closed:
                check_page_fd(fd.fileno())
                # The page keeps its device alive (a program may hold only the page): the cycle is
                # the GC's to collect, and Device.__del__ then releases both, with a warning.
                self._page = SharedPage(
                    fd.fileno(), tick_source=self._register_tick_event, port=self._section_port, size_checked=True
                )
            return self._page
        finally:
            fd.close()

    def map_shared_memory(self) -> SharedPage:
        """The shared page, mapped on first call; the same object afterwards (while the
        connection lives: after it is lost, this raises ValueError like any request; the page
        already returned stays readable until close())."""
        page = self._page
        if page is None or page.closed or self._sock is None:
            self.device_io_control(IOCTL_GIVE_ME_YOUR_MEMORY, output_size=_POINTER.size)
            page = self._page
        assert page is not None
        return page

    def _register_tick_event(self) -> TickEvent:
        """IOCTL_REGISTER_TICK_EVENT: this handle's tick fd (the driver's channel, or an older
        driver's eventfd or pipe read end; checked), owned by the returned object. Asked only
        when the page's futex cannot be waited on (a 1.0 page)."""
        fd = self._call(MajorFunction.IRP_MJ_DEVICE_CONTROL, code=IOCTL_REGISTER_TICK_EVENT).fd
        sock = self._sock
        if fd is None or sock is None:
            if fd is not None:
                fd.close()
            raise Unsuccessful("the driver sent no tick fd")
        try:
            check_tick_fd(fd.fileno())
            return TickEvent(fd, sock.fileno())
        except BaseException:
            fd.close()
            raise

    def query_status(self) -> DriverStatus:
        """IOCTL_QUERY_STATUS: the driver's handles, page and timer."""
        result = self.device_io_control(IOCTL_QUERY_STATUS, output_size=STATUS_STRUCT_SIZE)
        try:
            return decode_driver_status(result.output)
        except RemoteProtocolError as err:
            raise Unsuccessful(f"driver status unreadable: {err}") from err

    # --- closing ------------------------------------------------------------------------------

    def close(self, *, wait: bool | None = None) -> None:
        """Unmap the page, close the sections and the socket; the driver releases the handle.
        Idempotent; if the driver is already gone, or the connection was lost to an earlier
        error, the local resources (page, tick fd, socket) are still released and nothing is
        raised. In a child of os.fork() nothing is sent: the handle is the parent's, only this
        process's copies go.

        How long it waits. A handle opened with write access may produce sections, whose names
        another process may want the moment this returns, so by default its close sends CLEANUP
        and CLOSE together and waits for both replies (one round trip): when it returns, the
        driver has stopped its sections and freed their names. A read-only handle's close
        (`wait` left as None) waits for nothing: it closes the socket, and the driver runs the
        same CLEANUP and CLOSE on the hang-up, as for a process that died. The kernel marks the
        hang-up in close(2) itself, and the driver cleans up the connections that hung up before
        it answers a status query or a CREATE at a handle limit (_server/connections.py), so
        neither ever counts a handle whose close() has returned. `wait=True` waits whatever the
        access; `wait=False` never does.
        """
        page, self._page = self._page, None
        if page is not None:
            page.close()  # first: it wakes tick waiters and waits for them to leave
        self._close_sections()
        if self._sock is None:
            return
        if self._inherited:
            self._close_socket()
            return
        if wait is None:
            wait = bool(self._access & FILE_WRITE_DATA)
        with self._lock:
            if not wait:
                self._close_socket()  # the hang-up: the driver's CLEANUP and CLOSE, unanswered
                return
            try:
                cleanup = self._send(Request(MajorFunction.IRP_MJ_CLEANUP, 0))
                close = self._send(Request(MajorFunction.IRP_MJ_CLOSE, 0))
                self._receive(MajorFunction.IRP_MJ_CLEANUP, cleanup)
                self._receive(MajorFunction.IRP_MJ_CLOSE, close)
            except (NtStatusError, ValueError):
                pass
            finally:
                self._close_socket()

    def _after_fork_in_child(self) -> None:
        self._inherited = True
        self._lock = threading.Lock()  # a parent's thread may have held it at fork(2)
        if self._page is not None:
            self._page.after_fork_in_child()

    def __del__(self) -> None:
        if self._sock is not None or self._page is not None:
            # Released with no message sent: the driver sees the hang-up, as for a process that died.
            self._inherited = True
            try:
                self.close()
            finally:
                warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)

    @property
    def closed(self) -> bool:
        """True once close() ran or the connection was lost (the page may still be open)."""
        return self._sock is None

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Device {self.path!r}{' closed' if self.closed else ''}>"


#: Every Device alive in this process, so that a child of os.fork() can mark its copies.
_DEVICES: weakref.WeakSet[Device] = weakref.WeakSet()


def _mark_inherited() -> None:
    for device in list(_DEVICES):
        device._after_fork_in_child()


os.register_at_fork(after_in_child=_mark_inherited)
