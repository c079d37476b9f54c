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
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import warnings
import weakref
from collections.abc import Iterable
from typing import Final, NamedTuple

from .._defs import (
    IOCTL_CREATE_SECTION,
    IOCTL_GIVE_ME_YOUR_MEMORY,
    IOCTL_LIST_SECTIONS,
    IOCTL_OPEN_SECTION,
    IOCTL_QUERY_STATUS,
    IOCTL_REGISTER_TICK_EVENT,
    MAX_INPUT_LENGTH,
    MAX_OUTPUT_BUFFER,
    MAX_OUTPUT_LENGTH,
    STATUS_STRUCT_SIZE,
    AccessDenied,
    CreateRequest,
    DeviceNotConnected,
    DeviceNotFound,
    DriverStatus,
    Field,
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
    SectionInfo,
    Unsuccessful,
    decode_driver_status,
    decode_list,
    decode_reply,
    encode_create,
    encode_request,
    exception_for,
    raise_for_status,
    status_name,
)
from .._sys import Fd, close_all, unix
from .arguments import unsigned
from .section import IoctlResult, Section
from .shared_page import SharedPage
from .ticks import TickEvent
from .time_section import TimeSection
from .trust import check_directory, check_page_fd, check_peer, check_tick_fd, trusted_uids

DEFAULT_TIMEOUT: Final = 5.0
_POINTER = struct.Struct("<Q")


class IoResult(NamedTuple):
    """A completed DeviceIoControl: `status` (success or a warning such as
    STATUS_BUFFER_OVERFLOW), `information` (bytes of output that are valid) and `output`."""

    status: int
    information: int
    output: bytes


class _Completed(NamedTuple):
    """A reply that passed every check: its status (success or a warning), information,
    output, and the fd it brought, now owned by the caller."""

    status: int
    information: int
    output: bytes
    fd: Fd | None


class Device:
    """One open handle to the SharingMemory device (the seed's `CreateFile` result).

    Use `open_device()` to make one. A context manager; `close()` sends CLEANUP and CLOSE,
    unmaps the page and closes the socket, and is idempotent.
    """

    _sock: socket.socket | None = None
    _page: SharedPage | None = None
    _lost: str = ""  # why the connection closed under the caller, once it has
    _inherited: bool = False  # True in a child of os.fork(): the handle is the parent's

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
                self._page = SharedPage(fd.fileno(), tick_source=self._register_tick_event)
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
        """IOCTL_REGISTER_TICK_EVENT: this handle's tick fd (an eventfd or a pipe's read end,
        checked), owned by the returned object."""
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

    # --- closing ------------------------------------------------------------------------------

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

    def close(self, *, wait: bool = True) -> None:
        """CLEANUP and CLOSE, then unmap the page and close the socket. Idempotent; if the driver
        is already gone, or the connection was lost to an earlier error, the local resources
        (page, tick fd, socket) are still released and nothing is raised. In a child of
        os.fork() nothing is sent: the handle is the parent's, only this process's copies go.

        Both requests are sent before either reply is read: the driver handles them in order,
        so the close costs one round trip, and when it returns the driver has released the
        handle (a status query from anywhere no longer counts it). With `wait=False` the replies
        are not awaited: the driver completes both as it reads them (or on the hang-up, as for
        a process that died), and this call costs no round trip at all.
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
        with self._lock:
            try:
                cleanup = self._send(Request(MajorFunction.IRP_MJ_CLEANUP, 0))
                close = self._send(Request(MajorFunction.IRP_MJ_CLOSE, 0))
                if wait:
                    self._receive(MajorFunction.IRP_MJ_CLEANUP, cleanup)
                    self._receive(MajorFunction.IRP_MJ_CLOSE, close)
            except (NtStatusError, ValueError):
                pass
            finally:
                self._close_socket()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            self._lost = self._lost or "an earlier request failed"
            sock.close()

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

    # --- sections (docs/section-abi.md; the work is in section.py) ----------------------------

    _sections: tuple[Section, ...] = ()

    def create_section(
        self,
        name: str,
        fields: Iterable[Field],
        *,
        readers_uids: Iterable[int] = (),
        readers_gids: Iterable[int] = (),
    ) -> Section:
        """NtCreateSection: a new named section this handle produces, live while the handle is
        open. Needs a handle opened with access "w" or "rw". Raises ObjectNameInvalid,
        ObjectNameCollision, AccessDenied, SectionTooBig, QuotaExceeded; ValueError for a
        field list that breaks the schema rules (duplicate names, none, too many)."""
        try:
            data = encode_create(CreateRequest(name, tuple(fields), tuple(readers_uids), tuple(readers_gids)))
        except ValueError as err:
            if "section name" in str(err):
                raise ObjectNameInvalid(str(err)) from None
            raise
        result = self._section_port.ioctl(IOCTL_CREATE_SECTION, data, 64)
        return self._keep(Section(self._section_port, name, result.output, result.fd, producer=True))

    def open_section(self, name: str) -> Section | TimeSection:
        """NtOpenSection + NtMapViewOfSection(PAGE_READONLY): a section mapped read-only and
        sealed; `time` is the driver's own page. Raises ObjectNameNotFound, ObjectNameInvalid,
        AccessDenied (outside the section's readers)."""
        if name == "time":
            return TimeSection(self.map_shared_memory())
        result = self._section_port.ioctl(IOCTL_OPEN_SECTION, str(name).encode("utf-8", "replace"), 64)
        return self._keep(Section(self._section_port, name, result.output, result.fd, producer=False))

    def list_sections(self) -> list[SectionInfo]:
        """Every live section this handle may read: name, fields, producer_uid, producer_pid,
        state, updates (and instance_id)."""
        found: list[SectionInfo] = []
        while True:
            result = self._section_port.ioctl(IOCTL_LIST_SECTIONS, _U32.pack(len(found)), MAX_OUTPUT_LENGTH)
            try:
                total, entries = decode_list(result.output)
            except ValueError as err:
                raise exception_for(NtStatus.STATUS_UNSUCCESSFUL, f"unreadable section list: {err}") from err
            found += entries
            if len(found) >= total or not entries:
                return found

    @property
    def _section_port(self) -> _SectionPort:
        return _SectionPort(self)

    def _keep(self, section: Section) -> Section:
        self._sections = (*(s for s in self._sections if not s.closed), section)
        return section

    def _close_sections(self) -> None:
        sections, self._sections = self._sections, ()
        for section in sections:
            section.close()


class _SectionPort:
    """The three calls a Section makes on its device (section.py's `_Port`)."""

    def __init__(self, device: Device) -> None:
        self._device = device

    def ioctl(self, code: int, input: bytes = b"", output_length: int = 0) -> IoctlResult:
        reply = self._device._call(
            MajorFunction.IRP_MJ_DEVICE_CONTROL, code=code, input=input, output_length=output_length
        )
        return IoctlResult(reply.status, reply.output, reply.fd)

    def hung_up(self) -> bool:
        sock = self._device._sock
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), _POLLRDHUP)
        return any(events & (select.POLLHUP | select.POLLERR | _POLLRDHUP) for _fd, events in poller.poll(0))


_U32 = struct.Struct("<I")
_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)


#: Statuses after which the connection cannot be used any more (the driver closes it too).
#: STATUS_ACCESS_DENIED is fatal only for CREATE (docs/protocol.md): an IOCTL the handle lacks
#: the access for is refused and the handle goes on.
_FATAL = frozenset({
    NtStatus.STATUS_DEVICE_NOT_CONNECTED, NtStatus.STATUS_IO_TIMEOUT, NtStatus.STATUS_REVISION_MISMATCH,
    NtStatus.STATUS_TOO_MANY_OPENED_FILES,
})  # fmt: skip


#: The names for messages, looked up once: an enum's .name is a descriptor call, on every reply.
_MAJOR_NAMES: Final = {major: major.name for major in MajorFunction}

#: Every Device alive in this process, so that a child of os.fork() can mark its copies.
_DEVICES: weakref.WeakSet[Device] = weakref.WeakSet()


def _mark_inherited() -> None:
    for device in list(_DEVICES):
        device._after_fork_in_child()


os.register_at_fork(after_in_child=_mark_inherited)


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
