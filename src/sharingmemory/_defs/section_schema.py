"""Sections: the schema table, the half of the section ABI that describes fields (docs/section-abi.md).

Theory of operation: a section describes itself. Between its header (`section`) and its two
copies of the values lies a schema table, one 32-byte entry per field (type, length, where the
value lives inside a copy, and where its name, unit and doc strings lie), then those strings.
The driver encodes the table from the producer's `Field` list, and the same bytes travel in the
create request; every reader decodes it at open, from a mapping a producer may have scribbled on.

Everything the table can say is checked in one place: a `Field` refuses at construction what the
ABI forbids (names, types, lengths, text limits), `check_fields` refuses bad lists, and
`decode_schema` refuses any entry that points outside the table or the copy, misaligns or
overlaps a value, or breaks a Field rule, with `SectionFormatError` and never IndexError or
struct.error. The module knows nothing of the header, the file's size or the latch: `section`
places the table in the file, `section_latch` reads and writes the values it describes.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .status import RevisionMismatch

ENTRY_SIZE: Final = 32
COPY_HEADER_SIZE: Final = 16  # updates u64, published_ns i64

#: Hard limits of the format; the driver's limits (DriverConfig) may be lower.
MAX_FIELDS: Final = 1024
MAX_STR_LENGTH: Final = 4096
MAX_UNIT_LENGTH: Final = 32
MAX_DOC_LENGTH: Final = 512

_ENTRY = struct.Struct("<HHIIIIIHHHH")  # type, flags, length, value_offset, name/unit/doc offsets, lengths
assert _ENTRY.size == ENTRY_SIZE

_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")

#: Field names a snapshot would shadow (its attributes and methods): refused at creation.
RESERVED_FIELD_NAMES: Final = frozenset(
    {"as_dict", "count", "get", "index", "items", "keys", "published_ns", "state", "updates", "values"}
)


class SectionFormatError(RevisionMismatch):
    """A section file or schema that does not follow docs/section-abi.md."""


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


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def value_offsets(fields: Sequence[Field]) -> tuple[tuple[int, ...], int]:
    """Declaration order, each value naturally aligned, after the copy header."""
    offsets, position = [], COPY_HEADER_SIZE
    for item in fields:
        position = round_up(position, item.align)
        offsets.append(position)
        position += item.length
    return tuple(offsets), position


# --- the schema table ---------------------------------------------------------------------------


def encode_schema(fields: Iterable[Field]) -> bytes:
    """The schema table: one 32-byte entry per field, then the strings (each NUL-terminated),
    offsets relative to the table's start. The same bytes travel in the create request."""
    checked = check_fields(fields)
    offsets, _end = value_offsets(checked)
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
