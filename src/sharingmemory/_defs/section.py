"""Sections: the pure ABI of a named, self-describing shared mapping (docs/section-abi.md).

Theory of operation: this module is the executable form of `docs/section-abi.md` (normative;
`include/sharingmemory/section.h` mirrors it). A section file is a header, a schema table that
describes every field, and two copies of the values. It works over any buffer (the driver's and
the producer's writable mmaps, a reader's read-only one, a `bytearray` in a unit test) and does
no I/O: time comes in as an argument.

This module owns the header (its fields, their offsets, the state word and `seq`) and the
layout of the whole file; the schema table (`Field`, its codec and its checks) lives in
`section_schema` and is re-exported here, so `section` still names the whole ABI.

Who writes what. The driver writes the header and the schema before the producer gets the fd,
and afterwards only `state` and `waiters` (and a bump of `seq` when it stops the section, so
that a reader about to sleep on `seq` sees it move). The producer writes `seq` and the two copies.
Readers never write: their mapping is PROT_READ of a sealed memfd.

The latch (after Linux's `raw_write_seqcount_latch`, with one store of `seq` a publish). A reader
loads `seq`, reads copy `seq & 1`, and accepts it if `seq` did not move meanwhile. The producer
writes the *other* copy, the one no reader is on, and then adds 1 to `seq`, which hands the
readers the copy just written. While `seq` holds a value, the copy it names is never written, so
a producer killed at any instruction leaves that copy complete: readers neither spin nor see a
torn value, and they read the last complete publish. (The first form of this ABI wrote both
copies, with two stores of `seq`; readers follow the same rule for either.)

Everything a reader parses is untrusted (a producer can scribble over its own header): decoding
checks every offset and length against the mapped size, and raises `SectionFormatError` (a
`RevisionMismatch`) for anything else, never IndexError or struct.error.
"""

from __future__ import annotations

import enum
import re
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from .section_schema import (
    COPY_HEADER_SIZE,
    ENTRY_SIZE,
    MAX_DOC_LENGTH,
    MAX_FIELDS,
    MAX_STR_LENGTH,
    MAX_UNIT_LENGTH,
    RESERVED_FIELD_NAMES,
    TYPES,
    DecodedSchema,
    Field,
    SectionFormatError,
    check_fields,
    decode_schema,
    encode_schema,
    round_up,
    value_offsets,
)
from .status import InvalidDeviceState

#: The whole section ABI: this module's header half and the schema half it re-exports.
__all__ = [
    "ABI_MAJOR",
    "ABI_MINOR",
    "ALIGN",
    "COPY_HEADER_SIZE",
    "ENTRY_SIZE",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_DOC_LENGTH",
    "MAX_FIELDS",
    "MAX_NAME_LENGTH",
    "MAX_READ_ATTEMPTS",
    "MAX_SECTION_SIZE",
    "MAX_STR_LENGTH",
    "MAX_UNIT_LENGTH",
    "PAGE_SIZE",
    "RESERVED_FIELD_NAMES",
    "SEQ_OFFSET",
    "STATE_CODES",
    "STATE_OFFSET",
    "TYPES",
    "WAITERS_OFFSET",
    "DecodedSchema",
    "Field",
    "Header",
    "Layout",
    "SectionFormatError",
    "SectionState",
    "SectionTornError",
    "bump_seq",
    "check_fields",
    "check_section_name",
    "decode_header",
    "decode_schema",
    "encode_schema",
    "layout",
    "read_state",
    "read_waiters",
    "state_from_code",
    "write_new_section",
    "write_state",
    "write_waiters",
]

MAGIC: Final = b"SHMS"
ABI_MAJOR: Final = 1
ABI_MINOR: Final = 0
HEADER_SIZE: Final = 144
PAGE_SIZE: Final = 4096
ALIGN: Final = 64

SEQ_OFFSET: Final = 72
STATE_OFFSET: Final = 16
WAITERS_OFFSET: Final = 20

#: Hard limits of the format (the schema's are in section_schema); the driver's may be lower.
MAX_NAME_LENGTH: Final = 64
MAX_SECTION_SIZE: Final = 16 * 1024 * 1024

#: A reader that sees `seq` move this many times in a row gives up (SectionTornError).
MAX_READ_ATTEMPTS: Final = 100_000

# magic, major, minor, total_size, header_size, state, waiters, producer_pid, producer_uid,
# instance_id, field_count, schema_offset, schema_size, entry_size, data_offset, data_size, seq, name
_HEADER = struct.Struct("<4sHHIIIIII16sIIIIIIQ64s")
_SEQ = struct.Struct("<Q")
_U32 = struct.Struct("<I")
assert _HEADER.size == HEADER_SIZE

_SECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class SectionState(enum.StrEnum):
    """The state word, written by the driver only. A str, so `snap.state == "running"` holds."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    STOPPED = "stopped"


STATE_CODES: Final = {SectionState.INITIALIZING: 0, SectionState.RUNNING: 1, SectionState.STOPPED: 2}
_STATE_BY_CODE: Final = {code: state for state, code in STATE_CODES.items()}


def state_from_code(code: int) -> SectionState:
    """The state of a state word; a value this reader does not know reads as stopped (the
    conservative answer: a reader never waits on a section it cannot understand)."""
    return _STATE_BY_CODE.get(code, SectionState.STOPPED)


class SectionTornError(InvalidDeviceState):
    """`seq` moved on every one of MAX_READ_ATTEMPTS reads: a producer publishing without pause
    faster than this reader can copy. A dead producer never causes it (the latch)."""


def check_section_name(name: object) -> str:
    """`name` if it is a valid section name (1-64 of [A-Za-z0-9._-], starting with a letter or
    digit, no `..`); ValueError otherwise (the driver answers STATUS_OBJECT_NAME_INVALID)."""
    if not isinstance(name, str) or not _SECTION_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"section name {name!r} is not 1-64 of [A-Za-z0-9._-] starting with a letter or digit")
    return name


# --- layout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where everything of a section lives: the schema's size, the copies' offset and size, the
    total file size, and each field's offset inside a copy."""

    fields: tuple[Field, ...]
    offsets: tuple[int, ...]
    schema_size: int
    data_offset: int
    data_size: int
    total_size: int

    @property
    def copy_offsets(self) -> tuple[int, int]:
        return self.data_offset, self.data_offset + self.data_size


def layout(fields: Iterable[Field]) -> Layout:
    """The canonical layout of a schema (what the driver writes into every new section)."""
    checked = check_fields(fields)
    schema = encode_schema(checked)
    offsets, end = value_offsets(checked)
    data_offset = round_up(HEADER_SIZE + len(schema), ALIGN)
    data_size = round_up(end, ALIGN)
    total = round_up(data_offset + 2 * data_size, PAGE_SIZE)
    return Layout(checked, offsets, len(schema), data_offset, data_size, total)


# --- the header ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The header's fields (the part a reader checks once, at open)."""

    total_size: int
    state: int
    producer_pid: int
    producer_uid: int
    instance_id: bytes
    field_count: int
    schema_offset: int
    schema_size: int
    entry_size: int
    data_offset: int
    data_size: int
    name: str


def write_new_section(
    buffer: object, name: str, fields: Iterable[Field], *, producer_pid: int, producer_uid: int, instance_id: bytes
) -> Layout:
    """Zero `buffer` and write a new section into it: header (state initializing, seq 0), schema,
    and two zeroed copies, so every field reads as zero, False or "" until the first publish."""
    check_section_name(name)
    plan = layout(fields)
    view = memoryview(buffer)  # type: ignore[arg-type]
    if view.readonly or len(view) != plan.total_size:
        raise ValueError(f"a section of this schema needs a writable buffer of {plan.total_size} bytes")
    if len(instance_id) != 16:
        raise ValueError("instance_id must be 16 bytes")
    view[:] = bytes(len(view))
    _HEADER.pack_into(
        view, 0, MAGIC, ABI_MAJOR, ABI_MINOR, plan.total_size, HEADER_SIZE, 0, 0, producer_pid, producer_uid,
        instance_id, len(plan.fields), HEADER_SIZE, plan.schema_size, ENTRY_SIZE, plan.data_offset, plan.data_size,
        0, name.encode("ascii"),
    )  # fmt: skip
    view[HEADER_SIZE : HEADER_SIZE + plan.schema_size] = encode_schema(plan.fields)
    view.release()
    return plan


def decode_header(buffer: object) -> Header:
    """Check and parse the header of a section buffer; SectionFormatError for anything off."""
    view = memoryview(buffer)  # type: ignore[arg-type]
    if len(view) < HEADER_SIZE:
        raise SectionFormatError(f"section is {len(view)} bytes, shorter than its header")
    (magic, major, _minor, total, header_size, state, _waiters, pid, uid, instance, count, schema_offset,
     schema_size, entry_size, data_offset, data_size, _seq, raw_name) = _HEADER.unpack_from(view, 0)  # fmt: skip
    if magic != MAGIC:
        raise SectionFormatError(f"section magic is {magic!r}, expected {MAGIC!r}")
    if major != ABI_MAJOR:
        raise SectionFormatError(f"section ABI major version is {major}, this reader knows {ABI_MAJOR}")
    if total != len(view) or total % PAGE_SIZE or total > MAX_SECTION_SIZE:
        raise SectionFormatError(f"section declares {total} bytes, {len(view)} are mapped")
    if header_size < HEADER_SIZE or schema_offset < header_size or schema_offset + schema_size > data_offset:
        raise SectionFormatError("section header, schema and data overlap")
    if not 1 <= count <= MAX_FIELDS or entry_size < ENTRY_SIZE or entry_size % 4 or count * entry_size > schema_size:
        raise SectionFormatError(f"section declares {count} schema entries of {entry_size} bytes")
    if data_offset % 8 or data_size % 8 or data_size < COPY_HEADER_SIZE or data_offset + 2 * data_size > total:
        raise SectionFormatError(f"section copies at {data_offset} of {data_size} bytes do not fit")
    try:
        name = raw_name.rstrip(b"\0").decode("ascii")
        check_section_name(name)
    except (UnicodeDecodeError, ValueError):
        raise SectionFormatError(f"section name {raw_name!r} is invalid") from None
    return Header(total, state, pid, uid, bytes(instance), count, schema_offset, schema_size, entry_size,
                  data_offset, data_size, name)  # fmt: skip


def read_state(buffer: object) -> int:
    """The state word alone (one aligned u32: no latch needed)."""
    return int(_U32.unpack_from(buffer, STATE_OFFSET)[0])  # type: ignore[arg-type]


def read_waiters(buffer: object) -> int:
    return int(_U32.unpack_from(buffer, WAITERS_OFFSET)[0])  # type: ignore[arg-type]


def write_state(buffer: object, state: SectionState) -> None:
    """The driver's store of the state word."""
    _U32.pack_into(buffer, STATE_OFFSET, STATE_CODES[state])  # type: ignore[arg-type]


def write_waiters(buffer: object, waiters: int) -> None:
    _U32.pack_into(buffer, WAITERS_OFFSET, waiters)  # type: ignore[arg-type]


def _le64(value: int) -> int:
    """`value` as the native u64 whose bytes are its little-endian form."""
    return value if sys.byteorder == "little" else int.from_bytes(value.to_bytes(8, "little"), "big")


def bump_seq(buffer: object) -> None:
    """The driver's one store to `seq`, when it stops a section: +2 keeps the parity (so the
    stable copy stays the same) and makes a reader about to sleep on `seq` see it move."""
    view = memoryview(buffer)  # type: ignore[arg-type]
    word = view[SEQ_OFFSET : SEQ_OFFSET + 8].cast("Q")
    try:
        word[0] = _le64((_SEQ.unpack_from(view, SEQ_OFFSET)[0] + 2) & 0xFFFFFFFFFFFFFFFF)
    finally:
        word.release()
        view.release()
