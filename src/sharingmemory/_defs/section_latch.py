"""Sections' values: the latch writer (the producer's) and reader (anyone's), over any buffer.

Theory of operation in `section` and docs/section-abi.md: `seq` odd while copy 0 changes, even
while copy 1 changes; a reader reads copy `seq & 1` and accepts it if `seq` did not move. A
producer killed at any instruction leaves the copy `seq` names complete.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Final

from .section import (
    COPY_HEADER_SIZE,
    MAX_READ_ATTEMPTS,
    SEQ_OFFSET,
    TYPES,
    Field,
    SectionFormatError,
    SectionTornError,
    _le64,
    read_state,
)

_SEQ = struct.Struct("<Q")
_COPY_HEADER = struct.Struct("<Qq")
_F32_MAX: Final = 3.4028234663852886e38
_INT_RANGES: Final = {
    "i32": (-(2**31), 2**31 - 1),
    "i64": (-(2**63), 2**63 - 1),
    "u32": (0, 2**32 - 1),
    "u64": (0, 2**64 - 1),
}


# --- values: the latch writer and reader --------------------------------------------------------


def _copy_struct(fields: Sequence[Field], offsets: Sequence[int], data_size: int) -> struct.Struct:
    """One struct for a whole copy: the copy header, then every known field at its offset with
    pad bytes between, so a snapshot costs one unpack_from."""
    parts, position = ["<Qq"], COPY_HEADER_SIZE
    for item, offset in sorted(zip(fields, offsets, strict=True), key=lambda pair: pair[1]):
        if offset > position:
            parts.append(f"{offset - position}x")
        parts.append(f"{item.length}s" if item.type == "str" else TYPES[item.type].fmt)
        position = offset + item.length
    del data_size
    return struct.Struct("".join(parts))


def _copy_order(fields: Sequence[Field], offsets: Sequence[int]) -> tuple[int, ...]:
    """For each field in declaration order, its index in the copy struct's output."""
    ranked = sorted(range(len(fields)), key=lambda i: offsets[i])
    position = {field_index: rank for rank, field_index in enumerate(ranked)}
    return tuple(position[i] + 2 for i in range(len(fields)))


class SectionWriter:
    """The producer's side of the latch over its writable mapping. One writer per section, not
    thread-safe (the latch's rule). Keeps its own copy of the values and of `seq`, so it never
    reads the shared page back: a reader cannot steer it (readers cannot write anyway)."""

    def __init__(self, buffer: object, fields: Sequence[Field], offsets: Sequence[int], data_offset: int,
                 data_size: int) -> None:  # fmt: skip
        view = memoryview(buffer)  # type: ignore[arg-type]
        if view.readonly or data_offset + 2 * data_size > len(view):
            raise ValueError("SectionWriter needs the writable mapping of its section")
        self._view = view
        self._seq_word = view[SEQ_OFFSET : SEQ_OFFSET + 8].cast("Q")
        self._seq = _SEQ.unpack_from(view, SEQ_OFFSET)[0]
        self._copy0 = data_offset
        self._copy1 = data_offset + data_size
        self._size = data_size
        self._data = bytearray(view[self._copy0 + (self._seq & 1) * data_size :][:data_size])
        self._updates = _COPY_HEADER.unpack_from(self._data, 0)[0]
        self._packers: dict[str, tuple[int, str, int, struct.Struct]] = {}
        for item, offset in zip(fields, offsets, strict=True):
            fmt = f"<{item.length}s" if item.type == "str" else "<" + TYPES[item.type].fmt
            self._packers[item.name] = (offset, item.type, item.length, struct.Struct(fmt))

    @property
    def updates(self) -> int:
        return int(self._updates)

    def publish(self, values: Mapping[str, object], published_ns: int) -> int:
        """One consistent update of the fields named in `values`; the others keep their values.
        Every value is checked first: a bad one raises ValueError and nothing changes.
        Returns the new update count."""
        data = self._data
        packers = self._packers
        staged = []
        for name, value in values.items():
            spec = packers.get(name)
            if spec is None:
                raise ValueError(f"no field {name!r} in this section")
            staged.append((spec, _check_value(name, spec[1], spec[2], value)))
        for (offset, _kind, _length, packer), value in staged:
            packer.pack_into(data, offset, value)
        self._updates += 1
        _COPY_HEADER.pack_into(data, 0, self._updates, published_ns)
        view, word, size = self._view, self._seq_word, self._size
        self._seq += 1
        word[0] = _le64(self._seq)  # odd: readers use copy 1 while copy 0 changes
        view[self._copy0 : self._copy0 + size] = data
        self._seq += 1
        word[0] = _le64(self._seq)  # even: readers use copy 0 while copy 1 changes
        view[self._copy1 : self._copy1 + size] = data
        return int(self._updates)

    @property
    def seq_address_view(self) -> memoryview:
        """The `seq` word, for the futex wake (its low half is the futex word)."""
        return self._seq_word

    def release(self) -> None:
        self._seq_word.release()
        self._view.release()


def _check_value(name: str, kind: str, length: int, value: object) -> object:
    """`value` ready for struct, or ValueError naming the field: wrong type, range, length."""
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{name}: a str field needs a str, not {type(value).__name__}")
        raw = value.encode("utf-8", "strict") if value.isascii() else _utf8(name, value)
        if len(raw) > length:
            raise ValueError(f"{name}: {len(raw)} UTF-8 bytes, the field holds {length}")
        if b"\0" in raw:
            raise ValueError(f"{name}: a str value may not contain NUL")
        return raw
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: a bool field needs True or False, not {type(value).__name__}")
        return value
    if isinstance(value, bool):
        raise ValueError(f"{name}: a {kind} field needs a number, not a bool")
    if kind in _INT_RANGES:
        if not isinstance(value, int):
            raise ValueError(f"{name}: a {kind} field needs an int, not {type(value).__name__}")
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            raise ValueError(f"{name}: {value} is out of range for {kind}")
        return value
    if not isinstance(value, int | float):
        raise ValueError(f"{name}: a {kind} field needs a float, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name}: {value} is out of range for {kind}") from None
    if kind == "f32" and math.isfinite(number) and abs(number) > _F32_MAX:
        raise ValueError(f"{name}: {value} is out of range for f32")
    return number


def _utf8(name: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name}: not encodable as UTF-8 (lone surrogate?)") from None


class SectionReader:
    """A reader's side of the latch over any buffer (read-only mmap): never writes, never spins
    on a dead producer. `read()` returns (updates, published_ns, state, *values in declaration
    order) with str values decoded (invalid UTF-8 from a hostile producer is replaced)."""

    def __init__(self, buffer: object, fields: Sequence[Field], offsets: Sequence[int], data_offset: int,
                 data_size: int) -> None:  # fmt: skip
        view = memoryview(buffer)  # type: ignore[arg-type]
        if data_offset + 2 * data_size > len(view):
            raise SectionFormatError("section copies lie outside the mapping")
        self._buffer = buffer
        self._copies = (data_offset, data_offset + data_size)
        self._struct = _copy_struct(fields, offsets, data_size)
        self._order = _copy_order(fields, offsets)
        self._strs = tuple(i for i, item in enumerate(fields) if item.type == "str")
        view.release()

    def read_raw(self) -> tuple[object, ...]:
        """One consistent copy by the latch: (updates, published_ns, *values in copy order)."""
        buffer = self._buffer
        unpack, seq_of, copies = self._struct.unpack_from, _SEQ.unpack_from, self._copies
        for _ in range(MAX_READ_ATTEMPTS):
            seq = seq_of(buffer, SEQ_OFFSET)[0]  # type: ignore[arg-type]
            values = unpack(buffer, copies[seq & 1])  # type: ignore[arg-type]
            if seq_of(buffer, SEQ_OFFSET)[0] == seq:  # type: ignore[arg-type]
                return tuple(values)
        raise SectionTornError("the producer published on every read attempt")

    def read(self) -> tuple[object, ...]:
        raw = self.read_raw()
        state = read_state(self._buffer)
        result: list[object] = [raw[0], raw[1], state, *(raw[i] for i in self._order)]
        for index in self._strs:
            value = result[3 + index]
            assert isinstance(value, bytes)
            result[3 + index] = value.split(b"\0", 1)[0].decode("utf-8", "replace")
        return tuple(result)
