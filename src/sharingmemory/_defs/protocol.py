"""The device wire protocol, version 1: bytes in, messages out, and back. No I/O.

Theory of operation: one connection to the device socket is one handle. Each IRP the seed's
I/O manager would build becomes one request message, each completion one reply message, on a
SOCK_SEQPACKET socket that keeps message boundaries. This module owns the byte layout
(`docs/protocol.md` is its normative description), the size limits and the validation of both
directions. It does not know about sockets, fds or the driver: the only thing that crosses
from the socket layer is a `bytes` object and a flag saying whether an fd came with it.

Whose fault: bytes from the peer that do not parse raise `RemoteProtocolError`, which carries the
status to answer with and whether the connection can go on. Values from our own caller that
cannot be encoded raise `LocalProtocolError` (a ValueError) at once.

Layout (little-endian):

    request  = magic "SM" | version u8 | major u8 | request_id u32 | code u32
               | output_length u32 | input_length u32 | reserved u32 (0) | input
    reply    = magic "SM" | version u8 | major u8 | request_id u32 | status u32
               | flags u32 | information u64 | output_length u32 | reserved u32 | output
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple

from .status import NtStatus

MAGIC: Final = b"SM"
PROTOCOL_VERSION: Final = 1
#: No message in either direction is longer; a receiver reads with a buffer one byte larger
#: and treats a full buffer as oversized, so nothing larger is ever allocated.
MAX_MESSAGE_SIZE: Final = 65536

_REQUEST = struct.Struct("<2sBBIIIII")
_REPLY = struct.Struct("<2sBBIIIQII")
REQUEST_HEADER_SIZE: Final = _REQUEST.size  # 24
REPLY_HEADER_SIZE: Final = _REPLY.size  # 32
MAX_INPUT_LENGTH: Final = MAX_MESSAGE_SIZE - REQUEST_HEADER_SIZE
MAX_OUTPUT_LENGTH: Final = MAX_MESSAGE_SIZE - REPLY_HEADER_SIZE
#: The largest output buffer a client accepts from its caller. A generous buffer is a Windows
#: habit, and no answer is longer than MAX_OUTPUT_LENGTH, so anything up to this is sent as
#: MAX_OUTPUT_LENGTH; beyond it the size is absurd and is refused (InsufficientResources, as
#: the I/O manager answers a buffer it cannot allocate). Client side only: the wire never
#: carries more than MAX_OUTPUT_LENGTH.
MAX_OUTPUT_BUFFER: Final = 16 * 1024 * 1024

#: Reply flag: the reply carries one fd in an SCM_RIGHTS control message.
REPLY_FLAG_FD: Final = 0x1
_KNOWN_REPLY_FLAGS: Final = REPLY_FLAG_FD


class MajorFunction(enum.IntEnum):
    """The IRP major functions this device serves, with their NT numbers."""

    IRP_MJ_CREATE = 0x00
    IRP_MJ_CLOSE = 0x02
    IRP_MJ_DEVICE_CONTROL = 0x0E
    IRP_MJ_CLEANUP = 0x12


class Request(NamedTuple):
    """One IRP from a client. `code` is the desired access for CREATE, the IOCTL code for
    DEVICE_CONTROL, and 0 for CLEANUP and CLOSE."""

    major: MajorFunction
    request_id: int
    code: int = 0
    output_length: int = 0
    input: bytes = b""


class Reply(NamedTuple):
    """The completion of one IRP: `IoStatus.Status`, `IoStatus.Information` and the output.
    `major` echoes the request's major byte, even one this device does not serve."""

    major: int
    request_id: int
    status: int
    information: int = 0
    output: bytes = b""
    has_fd: bool = False


class ProtocolError(Exception):
    """A message that the protocol cannot carry or does not allow; see the two kinds below,
    which say whose fault it is (h11's LocalProtocolError / RemoteProtocolError)."""


class LocalProtocolError(ProtocolError, ValueError):
    """Our own caller asked to encode something the protocol cannot carry."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid message.

    `status` is what to answer with, `request_id` and `major` the values to echo (0 when the
    header was unreadable), and `fatal` says the framing can no longer be trusted: answer, then
    close.
    """

    def __init__(self, message: str, *, status: int, request_id: int = 0, major: int = 0, fatal: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id
        self.major = major
        self.fatal = fatal


def _u32(name: str, value: int) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise LocalProtocolError(f"{name}={value} does not fit an unsigned 32-bit field")
    return value


def encode_request(request: Request) -> bytes:
    """The bytes of one request message; raises LocalProtocolError for values out of range."""
    if len(request.input) > MAX_INPUT_LENGTH:
        raise LocalProtocolError(f"input of {len(request.input)} bytes exceeds {MAX_INPUT_LENGTH}")
    if request.output_length > MAX_OUTPUT_LENGTH:
        raise LocalProtocolError(f"output_length {request.output_length} exceeds {MAX_OUTPUT_LENGTH}")
    header = _REQUEST.pack(
        MAGIC, PROTOCOL_VERSION, MajorFunction(request.major), _u32("request_id", request.request_id),
        _u32("code", request.code), _u32("output_length", request.output_length), len(request.input), 0,
    )  # fmt: skip
    return header + bytes(request.input)


def _check_header(data: bytes, header_size: int, what: str) -> None:
    if len(data) < header_size:
        raise RemoteProtocolError(
            f"{what} of {len(data)} bytes is shorter than its {header_size}-byte header",
            status=NtStatus.STATUS_INVALID_PARAMETER, fatal=True,
        )  # fmt: skip
    if len(data) > MAX_MESSAGE_SIZE:
        raise RemoteProtocolError(
            f"{what} of {len(data)} bytes exceeds the {MAX_MESSAGE_SIZE}-byte maximum",
            status=NtStatus.STATUS_INVALID_PARAMETER, fatal=True,
        )  # fmt: skip
    if data[:2] != MAGIC:
        raise RemoteProtocolError(
            f"{what} magic is {bytes(data[:2])!r}, expected {MAGIC!r}",
            status=NtStatus.STATUS_INVALID_PARAMETER, fatal=True,
        )  # fmt: skip


def decode_request(data: bytes) -> Request:
    """Parse and validate one request message, or raise RemoteProtocolError."""
    _check_header(data, REQUEST_HEADER_SIZE, "request")
    _magic, version, major, request_id, code, output_length, input_length, reserved = _REQUEST.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"protocol version {version} is not supported (this driver speaks {PROTOCOL_VERSION})",
            status=NtStatus.STATUS_REVISION_MISMATCH, request_id=request_id, major=major, fatal=True,
        )  # fmt: skip
    try:
        major_function = MajorFunction(major)
    except ValueError:
        raise RemoteProtocolError(
            f"major function 0x{major:02X} is not served by this device",
            status=NtStatus.STATUS_INVALID_DEVICE_REQUEST,
            request_id=request_id,
            major=major,
        ) from None
    if input_length != len(data) - REQUEST_HEADER_SIZE:
        raise RemoteProtocolError(
            f"input_length {input_length} but {len(data) - REQUEST_HEADER_SIZE} bytes follow the header",
            status=NtStatus.STATUS_INVALID_PARAMETER, request_id=request_id, major=major,
        )  # fmt: skip
    if reserved != 0:
        raise RemoteProtocolError(
            "reserved field is not zero", status=NtStatus.STATUS_INVALID_PARAMETER, request_id=request_id, major=major
        )
    if output_length > MAX_OUTPUT_LENGTH:
        raise RemoteProtocolError(
            f"output_length {output_length} exceeds {MAX_OUTPUT_LENGTH}",
            status=NtStatus.STATUS_INVALID_PARAMETER, request_id=request_id, major=major,
        )  # fmt: skip
    if major_function is not MajorFunction.IRP_MJ_DEVICE_CONTROL and (output_length or input_length):
        raise RemoteProtocolError(
            f"{major_function.name} carries no buffers",
            status=NtStatus.STATUS_INVALID_PARAMETER, request_id=request_id, major=major,
        )  # fmt: skip
    if major_function in (MajorFunction.IRP_MJ_CLEANUP, MajorFunction.IRP_MJ_CLOSE) and code:
        raise RemoteProtocolError(
            f"{major_function.name} has no code",
            status=NtStatus.STATUS_INVALID_PARAMETER, request_id=request_id, major=major,
        )  # fmt: skip
    return Request(major_function, request_id, code, output_length, bytes(data[REQUEST_HEADER_SIZE:]))


def encode_reply(reply: Reply) -> bytes:
    """The bytes of one reply message; raises LocalProtocolError for values out of range."""
    if len(reply.output) > MAX_OUTPUT_LENGTH:
        raise LocalProtocolError(f"output of {len(reply.output)} bytes exceeds {MAX_OUTPUT_LENGTH}")
    if not 0 <= reply.information <= 0xFFFFFFFFFFFFFFFF:
        raise LocalProtocolError(f"information={reply.information} does not fit 64 bits")
    if not 0 <= reply.major <= 0xFF:
        raise LocalProtocolError(f"major={reply.major} does not fit a byte")
    header = _REPLY.pack(
        MAGIC, PROTOCOL_VERSION, reply.major, _u32("request_id", reply.request_id),
        _u32("status", reply.status), REPLY_FLAG_FD if reply.has_fd else 0, reply.information,
        len(reply.output), 0,
    )  # fmt: skip
    return header + bytes(reply.output)


def decode_reply(data: bytes) -> Reply:
    """Parse and validate one reply message, or raise RemoteProtocolError (always fatal: a
    client that cannot parse its driver's answer cannot trust the connection any more)."""
    _check_header(data, REPLY_HEADER_SIZE, "reply")
    fields = _REPLY.unpack_from(data)
    _magic, version, major, request_id, status, flags, information, output_length, reserved = fields
    problem = None
    if version != PROTOCOL_VERSION:
        problem = f"driver speaks protocol version {version}, this client speaks {PROTOCOL_VERSION}"
    elif flags & ~_KNOWN_REPLY_FLAGS or reserved:
        problem = f"reply has unknown flags 0x{flags:08X} or a non-zero reserved field"
    elif output_length != len(data) - REPLY_HEADER_SIZE:
        problem = f"output_length {output_length} but {len(data) - REPLY_HEADER_SIZE} bytes follow"
    if problem is not None:
        status_code = (
            NtStatus.STATUS_REVISION_MISMATCH if version != PROTOCOL_VERSION else NtStatus.STATUS_INVALID_PARAMETER
        )
        raise RemoteProtocolError(problem, status=status_code, request_id=request_id, fatal=True)
    return Reply(
        major, request_id, status, information, bytes(data[REPLY_HEADER_SIZE:]),
        bool(flags & REPLY_FLAG_FD),
    )  # fmt: skip


# --- IOCTL_QUERY_STATUS output -------------------------------------------------------------------

_STATUS_STRUCT = struct.Struct("<IIIIIIQQII16sQQ")
STATUS_STRUCT_SIZE: Final = _STATUS_STRUCT.size  # 80


class DriverStatus(NamedTuple):
    """What `IOCTL_QUERY_STATUS` answers: the driver's handles, page and timer at one moment."""

    page_state: int
    handles: int
    mapped_handles: int
    page_allocated: bool
    timer_running: bool
    ticks: int
    interval_ns: int
    pid: int
    instance_id: bytes
    late_ticks: int = 0
    max_lateness_ns: int = 0


def encode_driver_status(status: DriverStatus) -> bytes:
    """The 80-byte output of IOCTL_QUERY_STATUS; its first u32 is its own size, so a newer
    driver can append fields and an older client still reads the prefix it knows."""
    return _STATUS_STRUCT.pack(
        STATUS_STRUCT_SIZE, status.page_state, status.handles, status.mapped_handles,
        int(status.page_allocated), int(status.timer_running), status.ticks, status.interval_ns,
        status.pid, 0, status.instance_id, status.late_ticks, status.max_lateness_ns,
    )  # fmt: skip


def decode_driver_status(data: bytes) -> DriverStatus:
    """Parse IOCTL_QUERY_STATUS output; raises RemoteProtocolError when it is cut or malformed."""
    if len(data) < STATUS_STRUCT_SIZE:
        raise RemoteProtocolError(
            f"status output of {len(data)} bytes is shorter than {STATUS_STRUCT_SIZE}",
            status=NtStatus.STATUS_BUFFER_OVERFLOW, fatal=False,
        )  # fmt: skip
    size, state, handles, mapped, allocated, running, ticks, interval, pid, _r, iid, late, lateness = (
        _STATUS_STRUCT.unpack_from(data)
    )
    if size < STATUS_STRUCT_SIZE:
        raise RemoteProtocolError(
            f"status struct declares {size} bytes", status=NtStatus.STATUS_INVALID_PARAMETER, fatal=False
        )
    return DriverStatus(
        state, handles, mapped, bool(allocated), bool(running), ticks, interval, pid, iid, late, lateness
    )
