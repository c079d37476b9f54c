"""Sections: the pure ABI of a named, self-describing shared mapping (docs/section-abi.md).

Theory of operation: this module is the executable form of `docs/section-abi.md` (normative;
`include/sharingmemory/section.h` mirrors it). A section file is a header, a schema table that
describes every field, and two copies of the values. It works over any buffer (the driver's and
the producer's writable mmaps, a reader's read-only one, a `bytearray` in a unit test) and does
no I/O: time comes in as an argument.

Who writes what. The driver writes the header and the schema before the producer gets the fd,
and afterwards only `state` and `waiters` (and a bump of `seq` when it stops the section, so
that a reader about to sleep on `seq` sees it move). The producer writes `seq` and the two copies.
Readers never write: their mapping is PROT_READ of a sealed memfd.

The latch (Linux's `raw_write_seqcount_latch`). The producer makes `seq` odd and writes copy 0,
then makes `seq` even and writes copy 1. A reader loads `seq`, reads copy `seq & 1` (the one the
producer is not inside), and accepts it if `seq` did not move meanwhile. A producer killed at any
instruction therefore leaves one complete copy, the one `seq`'s low bit names: readers neither
spin nor see a torn value, and they read the last complete publish.

Everything a reader parses is untrusted (a producer can scribble over its own header): decoding
checks every offset and length against the mapped size, and raises `SectionFormatError` (a
`RevisionMismatch`) for anything else, never IndexError or struct.error.
"""

from __future__ import annotations

import enum
import itertools
import re
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .status import InvalidDeviceState, RevisionMismatch

MAGIC: Final = b"SHMS"
ABI_MAJOR: Final = 1
ABI_MINOR: Final = 0
HEADER_SIZE: Final = 144
ENTRY_SIZE: Final = 32
COPY_HEADER_SIZE: Final = 16  # updates u64, published_ns i64
PAGE_SIZE: Final = 4096
ALIGN: Final = 64

SEQ_OFFSET: Final = 72
STATE_OFFSET: Final = 16
WAITERS_OFFSET: Final = 20

#: Hard limits of the format; the driver's limits (DriverConfig) may be lower.
MAX_NAME_LENGTH: Final = 64
MAX_FIELDS: Final = 1024
MAX_STR_LENGTH: Final = 4096
MAX_UNIT_LENGTH: Final = 32
MAX_DOC_LENGTH: Final = 512
MAX_SECTION_SIZE: Final = 16 * 1024 * 1024

#: A reader that sees `seq` move this many times in a row gives up (SectionTornError).
MAX_READ_ATTEMPTS: Final = 100_000

# magic, major, minor, total_size, header_size, state, waiters, producer_pid, producer_uid,
# instance_id, field_count, schema_offset, schema_size, entry_size, data_offset, data_size, seq, name
_HEADER = struct.Struct("<4sHHIIIIII16sIIIIIIQ64s")
_ENTRY = struct.Struct("<HHIIIIIHHHH")  # type, flags, length, value_offset, name/unit/doc offsets, lengths
_SEQ = struct.Struct("<Q")
_U32 = struct.Struct("<I")
assert _HEADER.size == HEADER_SIZE
assert _ENTRY.size == ENTRY_SIZE

_SECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")

#: Field names a snapshot would shadow (its attributes and methods): refused at creation.
RESERVED_FIELD_NAMES: Final = frozenset(
    {"as_dict", "count", "get", "index", "items", "keys", "published_ns", "state", "updates", "values"}
)


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


class SectionFormatError(RevisionMismatch):
    """A section file or schema that does not follow docs/section-abi.md."""


class SectionTornError(InvalidDeviceState):
    """`seq` moved on every one of MAX_READ_ATTEMPTS reads: a producer publishing without pause
    faster than this reader can copy. A dead producer never causes it (the latch)."""


# --- types --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Type:
    code: int
    fmt: str  # struct format of one value (str: "{length}s")
    size: int
    align: int


TYPES: Final = {
    "i32": _Type(1, "i", 4, 4),
    "i64": _Type(2, "q", 8, 8),
    "u32": _Type(3, "I", 4, 4),
    "u64": _Type(4, "Q", 8, 8),
    "f32": _Type(5, "f", 4, 4),
    "f64": _Type(6, "d", 8, 8),
    "bool": _Type(7, "?", 1, 1),
    "str": _Type(8, "s", 0, 1),
}
_TYPE_BY_CODE: Final = {t.code: name for name, t in TYPES.items()}


@dataclass(frozen=True)
class Field:
    """One field of a section: `name`, `type` (i32 i64 u32 u64 f32 f64 bool str), `length`
    (the UTF-8 byte maximum of a str; the value size otherwise), `unit` and `doc` (free text).

    Construction checks every rule of docs/section-abi.md and raises ValueError (or TypeError
    for a non-str argument), so a hostile schema never reaches the driver as such.
    """

    name: str
    type: str
    length: int = 0
    unit: str = ""
    doc: str = ""

    def __post_init__(self) -> None:
        for attr in ("name", "type", "unit", "doc"):
            if not isinstance(getattr(self, attr), str):
                raise TypeError(f"Field {attr} must be a str, not {type(getattr(self, attr)).__name__}")
        if not isinstance(self.length, int) or isinstance(self.length, bool):
            raise TypeError("Field length must be an int")
        if not _FIELD_NAME.fullmatch(self.name):
            raise ValueError(f"field name {self.name!r} is not [A-Za-z][A-Za-z0-9_]{{0,63}}")
        if self.name in RESERVED_FIELD_NAMES:
            raise ValueError(f"field name {self.name!r} would shadow a snapshot attribute")
        kind = TYPES.get(self.type)
        if kind is None:
            raise ValueError(f"field {self.name}: unknown type {self.type!r} (one of {' '.join(TYPES)})")
        if self.type == "str":
            if not 1 <= self.length <= MAX_STR_LENGTH:
                raise ValueError(f"field {self.name}: a str needs length 1..{MAX_STR_LENGTH}, not {self.length}")
        elif self.length == 0:
            object.__setattr__(self, "length", kind.size)
        elif self.length != kind.size:
            raise ValueError(f"field {self.name}: a {self.type} is {kind.size} bytes, not {self.length}")
        _check_text(self.unit, MAX_UNIT_LENGTH, f"field {self.name}: unit")
        _check_text(self.doc, MAX_DOC_LENGTH, f"field {self.name}: doc")

    @property
    def align(self) -> int:
        return TYPES[self.type].align


def _check_text(text: str, limit: int, what: str) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not encodable as UTF-8") from None
    if size > limit:
        raise ValueError(f"{what} is {size} UTF-8 bytes, the limit is {limit}")
    if "\0" in text:
        raise ValueError(f"{what} contains NUL")


def check_section_name(name: object) -> str:
    """`name` if it is a valid section name (1-64 of [A-Za-z0-9._-], starting with a letter or
    digit, no `..`); ValueError otherwise (the driver answers STATUS_OBJECT_NAME_INVALID)."""
    if not isinstance(name, str) or not _SECTION_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"section name {name!r} is not 1-64 of [A-Za-z0-9._-] starting with a letter or digit")
    return name


def check_fields(fields: Iterable[Field]) -> tuple[Field, ...]:
    """The fields as a tuple, refusing none, too many, non-Field items and duplicate names."""
    result = tuple(fields)
    if not result:
        raise ValueError("a section needs at least one field")
    if len(result) > MAX_FIELDS:
        raise ValueError(f"a section has at most {MAX_FIELDS} fields, not {len(result)}")
    seen: set[str] = set()
    for item in result:
        if not isinstance(item, Field):
            raise TypeError(f"fields must be Field objects, not {type(item).__name__}")
        if item.name in seen:
            raise ValueError(f"duplicate field name {item.name!r}")
        seen.add(item.name)
    return result


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


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _value_offsets(fields: Sequence[Field]) -> tuple[tuple[int, ...], int]:
    """Declaration order, each value naturally aligned, after the copy header."""
    offsets, position = [], COPY_HEADER_SIZE
    for item in fields:
        position = _round_up(position, item.align)
        offsets.append(position)
        position += item.length
    return tuple(offsets), position


def layout(fields: Iterable[Field]) -> Layout:
    """The canonical layout of a schema (what the driver writes into every new section)."""
    checked = check_fields(fields)
    schema = encode_schema(checked)
    offsets, end = _value_offsets(checked)
    data_offset = _round_up(HEADER_SIZE + len(schema), ALIGN)
    data_size = _round_up(end, ALIGN)
    total = _round_up(data_offset + 2 * data_size, PAGE_SIZE)
    return Layout(checked, offsets, len(schema), data_offset, data_size, total)


# --- the schema table ---------------------------------------------------------------------------


def encode_schema(fields: Iterable[Field]) -> bytes:
    """The schema table: one 32-byte entry per field, then the strings (each NUL-terminated),
    offsets relative to the table's start. The same bytes travel in the create request."""
    checked = check_fields(fields)
    offsets, _end = _value_offsets(checked)
    strings = bytearray()
    entries = bytearray()
    base = ENTRY_SIZE * len(checked)

    def add(text: str) -> tuple[int, int]:
        raw = text.encode("utf-8")
        where = base + len(strings)
        strings.extend(raw + b"\0")
        return where, len(raw)

    for item, value_offset in zip(checked, offsets, strict=True):
        name_at, name_len = add(item.name)
        unit_at, unit_len = add(item.unit)
        doc_at, doc_len = add(item.doc)
        entries += _ENTRY.pack(
            TYPES[item.type].code,
            0,
            item.length,
            value_offset,
            name_at,
            unit_at,
            doc_at,
            name_len,
            unit_len,
            doc_len,
            0,
        )
    return bytes(entries + strings)


@dataclass(frozen=True)
class DecodedSchema:
    """A decoded schema: the fields a reader knows, with their value offsets, and how many
    entries of unknown types it skipped (a newer producer's, per the ABI's growth rule)."""

    fields: tuple[Field, ...]
    offsets: tuple[int, ...]
    skipped: int


def decode_schema(
    data: bytes | memoryview, field_count: int, data_size: int, entry_size: int = ENTRY_SIZE
) -> DecodedSchema:
    """Parse a schema table of `field_count` entries against copies of `data_size` bytes.

    Raises SectionFormatError for anything outside docs/section-abi.md: an entry or string out
    of the table, a string that is not UTF-8 or not NUL-terminated, a value outside the copy or
    misaligned, two values overlapping, a field that breaks Field's rules, duplicate names.
    Entries of an unknown type are skipped (their bytes still may not overlap a known field).
    """
    view = memoryview(data)
    if not 1 <= field_count <= MAX_FIELDS:
        raise SectionFormatError(f"schema has {field_count} fields (1..{MAX_FIELDS})")
    if entry_size < ENTRY_SIZE or entry_size % 4:
        raise SectionFormatError(f"schema entry size {entry_size} is not a multiple of 4 >= {ENTRY_SIZE}")
    if field_count * entry_size > len(view):
        raise SectionFormatError("schema entries run past the table")

    def text(offset: int, length: int, what: str) -> str:
        if offset < field_count * entry_size or offset + length >= len(view):
            raise SectionFormatError(f"{what} lies outside the schema's string area")
        if view[offset + length] != 0:
            raise SectionFormatError(f"{what} is not NUL-terminated")
        try:
            return bytes(view[offset : offset + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise SectionFormatError(f"{what} is not UTF-8") from None

    fields, offsets, spans, skipped = [], [], [], 0
    for index in range(field_count):
        code, _flags, length, value_offset, name_at, unit_at, doc_at, name_len, unit_len, doc_len, _r = (
            _ENTRY.unpack_from(view, index * entry_size)
        )
        type_name = _TYPE_BY_CODE.get(code)
        if value_offset < COPY_HEADER_SIZE or value_offset + length > data_size:
            raise SectionFormatError(f"field {index}: value at {value_offset}+{length} is outside the copy")
        spans.append((value_offset, value_offset + length))
        if type_name is None:
            skipped += 1
            continue
        name = text(name_at, name_len, f"field {index} name")
        try:
            item = Field(
                name, type_name, length, text(unit_at, unit_len, f"{name} unit"), text(doc_at, doc_len, f"{name} doc")
            )
        except (TypeError, ValueError) as err:
            raise SectionFormatError(f"field {index}: {err}") from None
        if value_offset % item.align:
            raise SectionFormatError(f"field {name}: offset {value_offset} is not {item.align}-aligned")
        fields.append(item)
        offsets.append(value_offset)
    spans.sort()
    for (_a, end), (start, _b) in itertools.pairwise(spans):
        if start < end:
            raise SectionFormatError("two fields' values overlap")
    if len({f.name for f in fields}) != len(fields):
        raise SectionFormatError("duplicate field names")
    if not fields:
        raise SectionFormatError("schema has no field this reader knows")
    return DecodedSchema(tuple(fields), tuple(offsets), skipped)


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
