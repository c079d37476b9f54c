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

Errors: every failure the driver reports arrives as the typed `NtStatusError` subclass of its
status; OSErrors of the socket are translated in one place (`_os_error`).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Final, NamedTuple

from .._defs import (
    DEVICE_NAME,
    FILE_READ_DATA,
    FILE_WRITE_DATA,
    IOCTL_CREATE_SECTION,
    IOCTL_GIVE_ME_YOUR_MEMORY,
    IOCTL_LIST_SECTIONS,
    IOCTL_OPEN_SECTION,
    IOCTL_QUERY_STATUS,
    IOCTL_REGISTER_TICK_EVENT,
    STATUS_STRUCT_SIZE,
    AccessDenied,
    CreateRequest,
    DeviceNotConnected,
    DeviceNotFound,
    DriverStatus,
    Field,
    IoTimeout,
    MajorFunction,
    NtStatus,
    NtStatusError,
    ObjectNameInvalid,
    RemoteProtocolError,
    Request,
    SectionInfo,
    decode_driver_status,
    decode_list,
    decode_reply,
    encode_create,
    encode_request,
    exception_for,
    is_error,
    resolve_device_name,
)
from .._defs.protocol import MAX_OUTPUT_LENGTH
from .._sys import Fd, close_all, unix
from .section import IoctlResult, Section
from .shared_page import SharedPage
from .ticks import TickEvent
from .time_section import TimeSection

DEFAULT_TIMEOUT: Final = 5.0
_POINTER = struct.Struct("<Q")
_ACCESS = {"r": FILE_READ_DATA, "w": FILE_WRITE_DATA, "rw": FILE_READ_DATA | FILE_WRITE_DATA}


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

    def __init__(self, path: str, access: int, timeout: float | None = DEFAULT_TIMEOUT, *, map: bool = False) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._next_id = 1
        self._page: SharedPage | None = None
        sock = unix.seqpacket_socket()
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except OSError as err:
                raise _os_error(err, path) from err
        except BaseException:
            sock.close()
            raise
        self._sock = sock
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
        """
        reply = self._call(MajorFunction.IRP_MJ_DEVICE_CONTROL, code=code, input=input, output_length=output_size)
        if code == IOCTL_GIVE_ME_YOUR_MEMORY:
            page = self._adopt_page(reply.fd)
            output = _POINTER.pack(page.address)
            return IoResult(reply.status, len(output), output)
        if reply.fd is not None:  # tick eventfds come through _register_tick_event only
            reply.fd.close()
            raise exception_for(NtStatus.STATUS_INVALID_PARAMETER, "driver sent an fd with an unexpected reply")
        return IoResult(reply.status, reply.information, reply.output)

    def _adopt_page(self, fd: Fd | None) -> SharedPage:
        """Map the page fd of a successful IOCTL_GIVE_ME_YOUR_MEMORY (and close the fd). A second
        map on the same handle gets the same page from the driver: the mapping is kept."""
        if fd is None:
            raise exception_for(NtStatus.STATUS_UNSUCCESSFUL, "driver granted the page without sending its fd")
        try:
            if self._page is None or self._page.closed:
                self._page = SharedPage(fd.fileno(), tick_source=self._register_tick_event)
            return self._page
        finally:
            fd.close()

    def map_shared_memory(self) -> SharedPage:
        """The shared page, mapped on first call; the same object afterwards."""
        if self._page is None or self._page.closed:
            self.device_io_control(IOCTL_GIVE_ME_YOUR_MEMORY, output_size=_POINTER.size)
        assert self._page is not None
        return self._page

    def _register_tick_event(self) -> TickEvent:
        """IOCTL_REGISTER_TICK_EVENT: this handle's tick eventfd, owned by the returned object."""
        fd = self._call(MajorFunction.IRP_MJ_DEVICE_CONTROL, code=IOCTL_REGISTER_TICK_EVENT).fd
        sock = self._sock
        if fd is None or sock is None:
            if fd is not None:
                fd.close()
            raise exception_for(NtStatus.STATUS_UNSUCCESSFUL, "the driver sent no tick eventfd")
        return TickEvent(fd, sock.fileno())

    def query_status(self) -> DriverStatus:
        """IOCTL_QUERY_STATUS: the driver's handles, page and timer."""
        result = self.device_io_control(IOCTL_QUERY_STATUS, output_size=STATUS_STRUCT_SIZE)
        try:
            return decode_driver_status(result.output)
        except RemoteProtocolError as err:
            raise exception_for(NtStatus.STATUS_UNSUCCESSFUL, f"driver status unreadable: {err}") from err

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
        sock = self._sock
        if sock is None:
            raise ValueError("I/O operation on a closed Device")
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
        sock = self._sock
        if sock is None:
            raise ValueError("I/O operation on a closed Device")
        try:
            message = unix.receive(sock)
        except OSError as err:
            self._close_socket()  # a timed-out or broken connection cannot be resynchronised
            raise _os_error(err, self.path) from err
        fd = message.fds[0] if message.fds else None
        try:
            if message.fds_truncated:  # the kernel dropped fds that found no free slot here
                raise exception_for(
                    NtStatus.STATUS_INSUFFICIENT_RESOURCES,
                    "an fd from the driver was lost: this process is out of file descriptors (MSG_CTRUNC)",
                )
            if message.fds[1:]:
                raise exception_for(NtStatus.STATUS_INVALID_PARAMETER, "driver sent more than one fd")
            if not message.data:
                raise DeviceNotConnected(f"the driver at {self.path} closed the connection (stopped or died)")
            if message.oversized:
                raise exception_for(NtStatus.STATUS_INVALID_PARAMETER, "driver sent an oversized reply")
            try:
                reply = decode_reply(message.data)
            except RemoteProtocolError as err:
                raise exception_for(err.status, f"unreadable reply from the driver: {err}") from err
            if reply.request_id != request_id or reply.major != major:
                raise exception_for(NtStatus.STATUS_INVALID_PARAMETER, "reply does not match the request")
            if reply.has_fd != (fd is not None):
                raise exception_for(NtStatus.STATUS_INVALID_PARAMETER, "reply's fd flag does not match")
            if is_error(reply.status):
                raise exception_for(reply.status, f"{major.name} on {self.path} failed")
        except NtStatusError as err:
            close_all(message.fds)
            if err.status in _FATAL or major is MajorFunction.IRP_MJ_CREATE:
                self._close_socket()  # the driver has closed its end too
            raise
        except BaseException:
            close_all(message.fds)
            self._close_socket()
            raise
        return _Completed(reply.status, reply.information, reply.output, fd)

    # --- closing ------------------------------------------------------------------------------

    def close(self, *, wait: bool = True) -> None:
        """CLEANUP and CLOSE, then unmap the page and close the socket. Idempotent; if the driver
        is already gone, the local resources are still released and nothing is raised.

        Both requests are sent before either reply is read: the driver handles them in order,
        so the close costs one round trip, and when it returns the driver has released the
        handle (a status query from anywhere no longer counts it). With `wait=False` the replies
        are not awaited: the driver completes both as it reads them (or on the hang-up, as for
        a process that died), and this call costs no round trip at all.
        """
        if self._sock is None:
            return
        page, self._page = self._page, None
        if page is not None:
            page.close()
        self._close_sections()
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
            sock.close()

    @property
    def closed(self) -> bool:
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
_FATAL = frozenset({
    NtStatus.STATUS_DEVICE_NOT_CONNECTED, NtStatus.STATUS_IO_TIMEOUT, NtStatus.STATUS_REVISION_MISMATCH,
    NtStatus.STATUS_ACCESS_DENIED, NtStatus.STATUS_TOO_MANY_OPENED_FILES,
})  # fmt: skip


def _os_error(err: OSError, path: str) -> NtStatusError:
    """The one place where socket OSErrors become the library's NtStatusError subclasses."""
    if isinstance(err, TimeoutError):
        return IoTimeout(f"the driver at {path} did not answer in time")
    if isinstance(err, FileNotFoundError | ConnectionRefusedError):
        return DeviceNotFound(f"no driver is serving {path}")
    if isinstance(err, PermissionError):
        return AccessDenied(f"permission denied opening {path}")
    if isinstance(err, BrokenPipeError | ConnectionResetError | ConnectionAbortedError):
        return DeviceNotConnected(f"the driver at {path} went away (stopped or died)")
    return NtStatusError(f"{path}: {err.strerror or err}", status=NtStatus.STATUS_UNSUCCESSFUL)


def open_device(
    name: str | os.PathLike[str] = DEVICE_NAME,
    access: str = "r",
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    map: bool = False,
) -> Device:
    """Open the device, as the seed's program calls CreateFile("\\\\.\\SharingMemory").

    `name` is `\\\\.\\SharingMemory` (the default socket path, see `default_socket_path`) or a
    socket path. `access` is "r", "w" or "rw". `timeout` bounds every request, in seconds.
    `map=True` also maps the page, with CREATE and IOCTL_GIVE_ME_YOUR_MEMORY sent together (one
    round trip for both); `map_shared_memory()` then returns it at once.
    Raises DeviceNotFound when no driver serves the path, AccessDenied when this user may not
    open it, and ValueError for a bad argument.

        >>> with open_device(map=True) as device:  # doctest: +SKIP
        ...     print(device.map_shared_memory().read().local_datetime)
    """
    try:
        mask = _ACCESS[access]
    except (KeyError, TypeError):
        raise ValueError(f"access must be 'r', 'w' or 'rw', not {access!r}") from None
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be positive or None")
    return Device(resolve_device_name(name), mask, timeout, map=map)
