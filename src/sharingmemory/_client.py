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
status; OSErrors of the socket are translated in one place (`_translate_os_error`).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, NamedTuple, Protocol

from . import _unix
from ._ioctl import (
    FILE_READ_DATA,
    FILE_WRITE_DATA,
    IOCTL_GIVE_ME_YOUR_MEMORY,
    IOCTL_QUERY_STATUS,
    IOCTL_REGISTER_TICK_EVENT,
)
from ._page import PAGE_SIZE, SEQ_OFFSET, STATE_STOPPED, PageSnapshot, check_header, read_snapshot, read_state
from ._paths import DEVICE_NAME, resolve_device_name
from ._protocol import (
    STATUS_STRUCT_SIZE,
    DriverStatus,
    MajorFunction,
    RemoteProtocolError,
    Request,
    decode_driver_status,
    decode_reply,
    encode_request,
)
from ._status import (
    AccessDenied,
    DeviceNotConnected,
    DeviceNotFound,
    IoTimeout,
    NtStatus,
    NtStatusError,
    exception_for,
    is_error,
)
from ._ticks import TickEvent, next_deadline_delay, retry_step

DEFAULT_TIMEOUT: Final = 5.0
_POINTER = struct.Struct("<Q")
_ACCESS = {"r": FILE_READ_DATA, "w": FILE_WRITE_DATA, "rw": FILE_READ_DATA | FILE_WRITE_DATA}


class IoResult(NamedTuple):
    """A completed DeviceIoControl: `status` (success or a warning such as
    STATUS_BUFFER_OVERFLOW), `information` (bytes of output that are valid) and `output`."""

    status: int
    information: int
    output: bytes


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    ]  # fmt: skip


def _buffer_address(obj: object) -> int:
    """The address of a (possibly read-only) buffer: ctypes' from_buffer wants a writable one."""
    view = _PyBuffer()
    if ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(obj), ctypes.byref(view), 0) != 0:
        raise BufferError("object does not export a buffer")
    try:
        return int(view.buf)
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


class _Word(Protocol):
    """What the read path indexes to get the page's live `seq`: a one-item 'Q' memoryview."""

    def __getitem__(self, index: int, /) -> int: ...


class _ClosedWord:
    """Stands in for the `seq` view of a closed SharedPage, so that the read path needs no
    closed check of its own: indexing it raises the ValueError a closed page promises."""

    __slots__ = ()

    def __getitem__(self, index: int, /) -> int:
        raise ValueError("SharedPage is closed")


class _NoWord:
    """The `seq` view where the page's byte order is not the machine's: it never matches a
    snapshot's seq, so every read takes the full seqlock path."""

    __slots__ = ()

    def __getitem__(self, index: int, /) -> int:
        return -1


_CLOSED_WORD: Final = _ClosedWord()
#: No snapshot yet: its seq (-1) matches no u64, so the first read takes the full path.
_NO_SNAPSHOT: Final = PageSnapshot(-1, 0, 0, 0, 0, 0, 0, 0, 0, 0, bytes(16))


class SharedPage:
    """The driver's page, mapped read-only into this process.

    Owns one PROT_READ, MAP_SHARED mapping (the fd it came from is closed as soon as it is
    mapped). `read()` and `local_time()` never make a system call. The mapping outlives the
    driver: after the driver stops, `read().state` is STATE_STOPPED. `close()` unmaps; it is
    idempotent, and the owning `Device` calls it when it closes.
    """

    _map: mmap.mmap | None = None
    _view: memoryview | None = None
    _seq_word: _Word = _CLOSED_WORD
    _last: PageSnapshot = _NO_SNAPSHOT
    _tick_event: TickEvent | None = None
    _tick_source: Callable[[], TickEvent] | None = None
    _seen_tick: int | None = None

    def __init__(self, fd: int, *, tick_source: Callable[[], TickEvent] | None = None) -> None:
        """Map the page behind `fd` (the caller keeps and closes `fd`) and check its header.
        `tick_source`, when given, is asked once for the tick eventfd that `wait_next` uses."""
        self._tick_source = tick_source
        if os.fstat(fd).st_size != PAGE_SIZE:
            raise exception_for(NtStatus.STATUS_REVISION_MISMATCH, "the page fd is not one page long")
        self._map = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            check_header(self._map)
            self.address: int = _buffer_address(self._map)
            if sys.byteorder == "little":
                # seq read as one aligned 8-byte load (memoryview's memcpy), as the writer stores it.
                self._view = memoryview(self._map)
                self._seq_word = self._view[SEQ_OFFSET : SEQ_OFFSET + 8].cast("Q")
            else:
                self._seq_word = _NoWord()
        except BaseException:
            self.close()
            raise

    # The read path. The page changes only at a tick (1 ms apart at the fastest), and reads
    # come far more often, so the last snapshot is kept: when `seq` still holds the value the
    # snapshot was taken at (an even one, by the seqlock), the writer has not started an update
    # since, so the snapshot is the page as it is at that load, a consistent read in one aligned
    # 8-byte load. Otherwise the full seqlock read runs (read_snapshot, with its bounded
    # retries and PageTornError). The snapshot is an immutable tuple, so handing the same one to
    # several callers or threads is safe; a thread that races a refresh gets a snapshot that was
    # current at its own load. Closing swaps `_seq_word` for an object that raises, so the
    # fast path carries no closed check. Measured in benchmarks/ (docs/performance.md).

    def read(self) -> PageSnapshot:
        """A consistent snapshot of every field (seqlock); raises ValueError once closed."""
        last = self._last
        if self._seq_word[0] == last[0]:
            return last
        return self._refresh()

    def local_time(self) -> int:
        """The seed's value alone: local time as a FILETIME, read consistently."""
        last = self._last
        if self._seq_word[0] == last[0]:
            return last[1]
        return self._refresh()[1]

    def _refresh(self) -> PageSnapshot:
        mapping = self._map
        if mapping is None:
            raise ValueError("SharedPage is closed")
        self._last = snap = read_snapshot(mapping)
        return snap

    @property
    def state(self) -> int:
        """The page's state field: running, or stopped once the driver is gone."""
        if self._map is None:
            raise ValueError("SharedPage is closed")
        return read_state(self._map)

    @property
    def closed(self) -> bool:
        return self._map is None

    # --- waiting for the tick -----------------------------------------------------------------

    def wait_next(self, timeout: float | None = None) -> PageSnapshot:
        """Block until the page holds a tick newer than the last one this method returned (on
        the first call: newer than the page at the call) and return its snapshot.

        A stopped page is returned at once (check `.state`). Raises TimeoutError after `timeout`
        seconds, DeviceNotConnected when the driver dies without writing state=stopped. Uses the
        driver's tick eventfd when the page came from a Device (no polling), else sleeps to the
        deadline the page announces.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        event = self._ensure_tick_event()
        while True:
            if event is not None:
                event.drain()
            snap = self._next_or_none()
            if snap is not None:
                return snap
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no tick within {timeout} s")
            if event is None:
                delay = next_deadline_delay(self.read())
                delay = delay if delay > 0 else retry_step(self.read())
                time.sleep(delay if remaining is None else min(delay, remaining))
                continue
            try:
                event.wait(remaining)
            except ConnectionResetError as err:
                snap = self._next_or_none()
                if snap is not None:
                    return snap
                raise DeviceNotConnected("the driver died (no state=stopped was written)") from err

    async def next_update(self) -> PageSnapshot:
        """The asyncio form of `wait_next()`: await the next tick without blocking the loop.
        Bound it with `asyncio.timeout()` or `asyncio.wait_for()`."""
        import asyncio

        event = self._ensure_tick_event()
        while True:
            if event is not None:
                event.drain()
            snap = self._next_or_none()
            if snap is not None:
                return snap
            if event is None:
                delay = next_deadline_delay(self.read())
                await asyncio.sleep(delay if delay > 0 else retry_step(self.read()))
                continue
            try:
                await event.wait_async()
            except ConnectionResetError as err:
                snap = self._next_or_none()
                if snap is not None:
                    return snap
                raise DeviceNotConnected("the driver died (no state=stopped was written)") from err

    def _next_or_none(self) -> PageSnapshot | None:
        """The current snapshot if it is news for `wait_next` (a newer tick, or stopped)."""
        snap = self.read()
        if self._seen_tick is None:
            self._seen_tick = snap.tick_count
        if snap.state == STATE_STOPPED or snap.tick_count != self._seen_tick:
            self._seen_tick = snap.tick_count
            return snap
        return None

    def _ensure_tick_event(self) -> TickEvent | None:
        if self._tick_event is None and self._tick_source is not None:
            source, self._tick_source = self._tick_source, None  # asked once, success or not
            try:
                self._tick_event = source()
            except (NtStatusError, ValueError):
                return None
        return self._tick_event

    def close(self) -> None:
        """Unmap the page and close the tick eventfd. Idempotent."""
        event, self._tick_event = self._tick_event, None
        if event is not None:
            event.close()
        word, self._seq_word = self._seq_word, _CLOSED_WORD
        if isinstance(word, memoryview):
            word.release()  # the views first: an mmap with exported buffers cannot close
        view, self._view = self._view, None
        if view is not None:
            view.release()
        mapping, self._map = self._map, None
        if mapping is not None:
            mapping.close()

    def __enter__(self) -> SharedPage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Device:
    """One open handle to the SharingMemory device (the seed's `CreateFile` result).

    Use `open_device()` to make one. A context manager; `close()` sends CLEANUP and CLOSE,
    unmaps the page and closes the socket, and is idempotent.
    """

    _sock: socket.socket | None = None

    def __init__(self, path: str, access: int, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._next_id = 1
        self._page: SharedPage | None = None
        sock = _unix.seqpacket_socket()
        try:
            sock.settimeout(timeout)
            with _translate_os_error(path):
                sock.connect(path)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        try:
            self._call(MajorFunction.IRP_MJ_CREATE, code=access)
        except BaseException:
            self._close_socket()
            raise

    # --- requests -----------------------------------------------------------------------------

    def device_io_control(self, code: int, input: bytes = b"", output_size: int = 0) -> IoResult:
        """DeviceIoControl: send `code` with `input`, allowing `output_size` bytes of output.

        For IOCTL_GIVE_ME_YOUR_MEMORY the page is mapped into this process and the output is its
        address as a little-endian u64, as in the seed. Raises the NtStatusError subclass of a
        failure status; warnings come back in `IoResult.status`.
        """
        status, information, output, fd = self._call(
            MajorFunction.IRP_MJ_DEVICE_CONTROL, code=code, input=input, output_length=output_size
        )
        if fd is not None:
            try:
                if code != IOCTL_GIVE_ME_YOUR_MEMORY:  # tick eventfds come through _register_tick_event
                    raise exception_for(NtStatus.STATUS_INVALID_PARAMETER, "driver sent an fd with an unexpected reply")
                if self._page is None or self._page.closed:
                    self._page = SharedPage(fd, tick_source=self._register_tick_event)
            finally:
                os.close(fd)
            output = _POINTER.pack(self._page.address)
            information = len(output)
        elif code == IOCTL_GIVE_ME_YOUR_MEMORY:
            raise exception_for(NtStatus.STATUS_UNSUCCESSFUL, "driver granted the page without sending its fd")
        return IoResult(status, information, output)

    def map_shared_memory(self) -> SharedPage:
        """The shared page, mapped on first call; the same object afterwards."""
        if self._page is None or self._page.closed:
            self.device_io_control(IOCTL_GIVE_ME_YOUR_MEMORY, output_size=_POINTER.size)
        assert self._page is not None
        return self._page

    def _register_tick_event(self) -> TickEvent:
        """IOCTL_REGISTER_TICK_EVENT: this handle's tick eventfd, owned by the returned object."""
        _status, _information, _output, fd = self._call(
            MajorFunction.IRP_MJ_DEVICE_CONTROL, code=IOCTL_REGISTER_TICK_EVENT
        )
        sock = self._sock
        if fd is None or sock is None:
            if fd is not None:
                os.close(fd)
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
    ) -> tuple[int, int, bytes, int | None]:
        """One request and its reply: (status, information, output, fd or None)."""
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
            with _translate_os_error(self.path):
                _unix.send(sock, data)
        except NtStatusError:
            self._close_socket()  # a broken connection cannot be resynchronised
            raise
        return request_id

    def _receive(self, major: MajorFunction, request_id: int) -> tuple[int, int, bytes, int | None]:
        """The reply to request `request_id` (the caller holds the lock), checked against it."""
        sock = self._sock
        if sock is None:
            raise ValueError("I/O operation on a closed Device")
        try:
            with _translate_os_error(self.path):
                message = _unix.receive(sock)
        except NtStatusError:
            self._close_socket()  # a timed-out or broken connection cannot be resynchronised
            raise
        fd = message.fds[0] if message.fds else None
        try:
            if message.fds[1:] or message.fds_truncated:
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
            _unix.close_fds(message.fds)
            if err.status in _FATAL or major is MajorFunction.IRP_MJ_CREATE:
                self._close_socket()  # the driver has closed its end too
            raise
        except BaseException:
            _unix.close_fds(message.fds)
            self._close_socket()
            raise
        return reply.status, reply.information, reply.output, fd

    # --- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """CLEANUP and CLOSE, then unmap the page and close the socket. Idempotent; if the driver
        is already gone, the local resources are still released and nothing is raised.

        Both requests are sent before either reply is read: the driver handles them in order,
        so the close costs one round trip, and when it returns the driver has released the
        handle (a status query from anywhere no longer counts it).
        """
        if self._sock is None:
            return
        page, self._page = self._page, None
        if page is not None:
            page.close()
        with self._lock:
            try:
                cleanup = self._send(Request(MajorFunction.IRP_MJ_CLEANUP, 0))
                close = self._send(Request(MajorFunction.IRP_MJ_CLOSE, 0))
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


#: Statuses after which the connection cannot be used any more (the driver closes it too).
_FATAL = frozenset({
    NtStatus.STATUS_DEVICE_NOT_CONNECTED, NtStatus.STATUS_IO_TIMEOUT, NtStatus.STATUS_REVISION_MISMATCH,
    NtStatus.STATUS_ACCESS_DENIED, NtStatus.STATUS_TOO_MANY_OPENED_FILES,
})  # fmt: skip


@contextmanager
def _translate_os_error(path: str) -> Iterator[None]:
    """The one place where socket OSErrors become the library's NtStatusError subclasses."""
    try:
        yield
    except TimeoutError as err:
        raise IoTimeout(f"the driver at {path} did not answer in time") from err
    except (FileNotFoundError, ConnectionRefusedError) as err:
        raise DeviceNotFound(f"no driver is serving {path}") from err
    except PermissionError as err:
        raise AccessDenied(f"permission denied opening {path}") from err
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as err:
        raise DeviceNotConnected(f"the driver at {path} went away (stopped or died)") from err
    except OSError as err:
        raise NtStatusError(f"{path}: {err.strerror or err}", status=NtStatus.STATUS_UNSUCCESSFUL) from err


def open_device(
    name: str | os.PathLike[str] = DEVICE_NAME, access: str = "r", *, timeout: float | None = DEFAULT_TIMEOUT
) -> Device:
    """Open the device, as the seed's program calls CreateFile("\\\\.\\SharingMemory").

    `name` is `\\\\.\\SharingMemory` (the default socket path, see `default_socket_path`) or a
    socket path. `access` is "r", "w" or "rw". `timeout` bounds every request, in seconds.
    Raises DeviceNotFound when no driver serves the path, AccessDenied when this user may not
    open it, and ValueError for a bad argument.
    """
    try:
        mask = _ACCESS[access]
    except (KeyError, TypeError):
        raise ValueError(f"access must be 'r', 'w' or 'rw', not {access!r}") from None
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be positive or None")
    return Device(resolve_device_name(name), mask, timeout)
