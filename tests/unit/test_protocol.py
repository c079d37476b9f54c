"""The wire protocol, sans IO: round trips, validation, and arbitrary bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sharingmemory._defs.protocol import (
    MAX_INPUT_LENGTH,
    MAX_MESSAGE_SIZE,
    MAX_OUTPUT_LENGTH,
    REPLY_HEADER_SIZE,
    REQUEST_HEADER_SIZE,
    STATUS_STRUCT_SIZE,
    DriverStatus,
    LocalProtocolError,
    MajorFunction,
    ProtocolError,
    RemoteProtocolError,
    Reply,
    Request,
    decode_driver_status,
    decode_reply,
    decode_request,
    encode_driver_status,
    encode_reply,
    encode_request,
)
from sharingmemory._defs.status import NtStatus

u32 = st.integers(0, 0xFFFFFFFF)
requests = st.one_of(
    st.builds(Request, st.just(MajorFunction.IRP_MJ_CREATE), u32, u32, st.just(0), st.just(b"")),
    st.builds(
        Request,
        st.sampled_from([MajorFunction.IRP_MJ_CLEANUP, MajorFunction.IRP_MJ_CLOSE]),
        u32,
        st.just(0),
        st.just(0),
        st.just(b""),
    ),
    st.builds(
        Request,
        st.just(MajorFunction.IRP_MJ_DEVICE_CONTROL),
        u32,
        u32,
        st.integers(0, MAX_OUTPUT_LENGTH),
        st.binary(max_size=300),
    ),
)
replies = st.builds(
    Reply, st.integers(0, 255), u32, u32, st.integers(0, 2**64 - 1), st.binary(max_size=300), st.booleans()
)


@given(requests)
def test_request_round_trip(request: Request) -> None:
    assert decode_request(encode_request(request)) == request


@given(replies)
def test_reply_round_trip(reply: Reply) -> None:
    assert decode_reply(encode_reply(reply)) == reply


def test_request_layout_is_the_documented_one() -> None:
    data = encode_request(Request(MajorFunction.IRP_MJ_DEVICE_CONTROL, 7, 0x00226000, 8, b"ab"))
    assert REQUEST_HEADER_SIZE == 24
    assert data == b"SM\x01\x0e" + struct.pack("<IIIII", 7, 0x00226000, 8, 2, 0) + b"ab"


def test_reply_layout_is_the_documented_one() -> None:
    data = encode_reply(Reply(0x0E, 7, 0, 8, b"\x00\x10" + bytes(6), True))
    assert REPLY_HEADER_SIZE == 32
    assert data[:32] == b"SM\x01\x0e" + struct.pack("<IIIQII", 7, 0, 1, 8, 8, 0)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_the_protocol_error(data: bytes) -> None:
    """The fuzz rule of h11: either it parses, or RemoteProtocolError escapes; nothing else."""
    try:
        decode_request(data)
    except RemoteProtocolError as err:
        assert err.status in NtStatus._value2member_map_
    try:
        decode_reply(data)
    except RemoteProtocolError as err:
        assert err.fatal


@given(requests)
def test_every_truncation_and_every_extension_is_refused(request: Request) -> None:
    data = encode_request(request)
    for cut in range(len(data)):
        with pytest.raises(RemoteProtocolError):
            decode_request(data[:cut])
    with pytest.raises(RemoteProtocolError):
        decode_request(data + b"\0")


@given(st.binary(min_size=REQUEST_HEADER_SIZE, max_size=100))
def test_any_bytes_behind_a_valid_magic_and_version(tail: bytes) -> None:
    data = b"SM\x01" + tail[3:]
    try:
        request = decode_request(data)
    except RemoteProtocolError:
        return
    assert encode_request(request) == data  # what parses is exactly what encodes back


@pytest.mark.parametrize(
    ("mutate", "status", "fatal"),
    [
        (lambda d: d[:10], NtStatus.STATUS_INVALID_PARAMETER, True),
        (lambda d: b"XX" + d[2:], NtStatus.STATUS_INVALID_PARAMETER, True),
        (lambda d: d[:2] + b"\x02" + d[3:], NtStatus.STATUS_REVISION_MISMATCH, True),
        (lambda d: d[:3] + b"\x05" + d[4:], NtStatus.STATUS_INVALID_DEVICE_REQUEST, False),
        (lambda d: d[:16] + struct.pack("<I", 99) + d[20:], NtStatus.STATUS_INVALID_PARAMETER, False),
        (lambda d: d[:20] + b"\x01\0\0\0" + d[24:], NtStatus.STATUS_INVALID_PARAMETER, False),
        (
            lambda d: d[:12] + struct.pack("<I", MAX_OUTPUT_LENGTH + 1) + d[16:],
            NtStatus.STATUS_INVALID_PARAMETER,
            False,
        ),
        (lambda d: d + bytes(MAX_MESSAGE_SIZE), NtStatus.STATUS_INVALID_PARAMETER, True),
    ],
)
def test_bad_requests_get_the_documented_status(mutate: object, status: int, fatal: bool) -> None:
    assert callable(mutate)
    good = encode_request(Request(MajorFunction.IRP_MJ_DEVICE_CONTROL, 9, 0x00226000, 8))
    with pytest.raises(RemoteProtocolError) as info:
        decode_request(mutate(good))
    assert (info.value.status, info.value.fatal) == (status, fatal)
    if not fatal:
        assert info.value.request_id == 9  # echoed so the client can match the answer


def test_buffers_on_majors_that_have_none_are_refused() -> None:
    data = bytearray(encode_request(Request(MajorFunction.IRP_MJ_CREATE, 1, 1)))
    struct.pack_into("<I", data, 12, 8)
    with pytest.raises(RemoteProtocolError, match="carries no buffers"):
        decode_request(bytes(data))


def test_encoding_refuses_what_the_wire_cannot_carry() -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(Request(MajorFunction.IRP_MJ_DEVICE_CONTROL, 1, 0, 0, bytes(MAX_INPUT_LENGTH + 1)))
    with pytest.raises(LocalProtocolError):
        encode_request(Request(MajorFunction.IRP_MJ_CREATE, 2**32, 1))
    with pytest.raises(LocalProtocolError):
        encode_reply(Reply(256, 1, 0))


def test_driver_status_round_trip_and_prefix() -> None:
    status = DriverStatus(1, 3, 2, True, True, 99, 10**9, 1234, bytes(range(16)), 1, 5000)
    data = encode_driver_status(status)
    assert len(data) == STATUS_STRUCT_SIZE == 80
    assert decode_driver_status(data) == status
    assert decode_driver_status(data + b"future fields") == status
    with pytest.raises(RemoteProtocolError):
        decode_driver_status(data[:40])


def test_both_protocol_errors_share_a_base() -> None:
    """Whose fault differs (ours: a ValueError at once; the peer's: a status to answer), but a
    caller that only wants "the protocol refused it" catches one class."""
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ValueError)
    assert not issubclass(RemoteProtocolError, ValueError)
    with pytest.raises(ProtocolError):
        encode_request(Request(MajorFunction.IRP_MJ_CREATE, 2**32))
