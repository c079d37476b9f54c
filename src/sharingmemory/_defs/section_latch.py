"""Sections' values: the latch writer (the producer's) and reader (anyone's), over any buffer.

Theory of operation in `section` and docs/section-abi.md: readers read copy `seq & 1` and accept
it if `seq` did not move; the producer writes the other copy, the one nobody reads, and then moves
`seq` on by one to name it. A producer killed at any instruction leaves the copy `seq` names
complete.
"""

from __future__ import annotations

import functools
import keyword
import math
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from .section import (
    COPY_HEADER_SIZE,
    MAX_READ_ATTEMPTS,
    SEQ_OFFSET,
    TYPES,
    WAITERS_OFFSET,
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


@functools.lru_cache(maxsize=256)
def _copy_plan(fields: tuple[Field, ...], offsets: tuple[int, ...]) -> tuple[struct.Struct, tuple[int, ...]]:
    """How to read and write one whole copy: a struct of the copy header, then every known
    field at its offset with pad bytes between (a snapshot costs one unpack_from), and for each
    field in declaration order its index in that struct's output. Cached by schema: the same
    section is opened again and again, and its plan is a third of an open's own CPU."""
    ranked = sorted(range(len(fields)), key=lambda i: offsets[i])
    parts, position = ["<Qq"], COPY_HEADER_SIZE
    for i in ranked:
        item, offset = fields[i], offsets[i]
        if offset > position:
            parts.append(f"{offset - position}x")
        parts.append(f"{item.length}s" if item.type == "str" else TYPES[item.type].fmt)
        position = offset + item.length
    rank = {field_index: r for r, field_index in enumerate(ranked)}
    return struct.Struct("".join(parts)), tuple(rank[i] + 2 for i in range(len(fields)))


class SectionWriter:
    """The producer's side of the latch over its writable mapping. One writer per section, not
    thread-safe (the latch's rule). Keeps its own copy of the values and of `seq`, so it never
    reads the shared page back: a reader cannot steer it (readers cannot write anyway).

    Cost: a publish packs one whole copy with one precompiled struct (the copy readers do not
    look at, so struct's zero-then-fill of its target is harmless there) and stores `seq` once,
    through a one-item 'Q' view: one 8-byte store. The copy it writes is two publishes old, so
    it is written whole, from the writer's own list of every current value."""

    def __init__(self, buffer: object, fields: Sequence[Field], offsets: Sequence[int], data_offset: int,
                 data_size: int) -> None:  # fmt: skip
        view = memoryview(buffer)  # type: ignore[arg-type]
        if view.readonly or data_offset + 2 * data_size > len(view):
            raise ValueError("SectionWriter needs the writable mapping of its section")
        self._view = view
        self._seq_word = view[SEQ_OFFSET : SEQ_OFFSET + 8].cast("Q")
        self._waiters = view[WAITERS_OFFSET : WAITERS_OFFSET + 4].cast("I")
        self._seq = _SEQ.unpack_from(view, SEQ_OFFSET)[0]
        self._copies = (data_offset, data_offset + data_size)
        self._struct, order = _copy_plan(tuple(fields), tuple(offsets))
        self._pack_into = self._struct.pack_into
        self._values: tuple[object, ...] = self._struct.unpack_from(view, data_offset + (self._seq & 1) * data_size)
        self._slots: dict[str, tuple[int, type | None, float | None, float | None, str, int]] = {}
        for item, index in zip(fields, order, strict=True):
            exact, low, high = _FAST.get(item.type, (None, None, None))
            self._slots[item.name] = (index, exact, low, high, item.type, item.length)

    @property
    def updates(self) -> int:
        updates = self._values[0]
        assert isinstance(updates, int)  # the copy header's u64, as struct unpacks it
        return updates

    def publish(self, values: Mapping[str, object], published_ns: int) -> int:
        """One consistent update of the fields named in `values`; the others keep their values.
        Every value is checked first: a bad one raises ValueError and nothing changes.
        Returns the new update count."""
        new = list(self._values)
        slots = self._slots
        for name, value in values.items():
            slot = slots.get(name)
            if slot is None:
                raise ValueError(f"no field {name!r} in this section")
            index, exact, low, high = slot[0], slot[1], slot[2], slot[3]
            # The common cases inline (an exact float, an int in range); the rest, and every
            # refusal, through _check_value.
            if type(value) is exact and (low is None or low <= value <= high):  # type: ignore[operator]
                new[index] = value
            else:
                new[index] = _check_value(name, slot[4], slot[5], value)
        updates = self.updates + 1
        new[0], new[1] = updates, published_ns
        self._values = tuple(new)
        seq = self._seq + 1
        self._pack_into(self._view, self._copies[seq & 1], *new)  # readers are on copy (seq - 1) & 1
        self._seq_word[0] = seq if _LITTLE else _le64(seq)  # now they read the copy just written
        self._seq = seq
        return int(updates)

    def publisher(self, now: Callable[[], int], wake: Callable[[], object]) -> Callable[..., int]:
        """`publish` as a function with one keyword parameter per field, generated for this
        schema (as namedtuple and dataclasses generate theirs): the call binds its arguments with
        no dict, each given value is checked inline, then the latch is written as `publish` does.
        `now()` gives published_ns; `wake()` runs after the write when the section's `waiters`
        word is not 0. Falls back to `publish` for names Python cannot take as parameters
        (keywords) and on big-endian machines. ValueError as `publish`; unknown names too."""
        names = list(self._slots)
        if not _LITTLE or any(keyword.iskeyword(n) or n.startswith("_") for n in names):

            def generic(**values: object) -> int:
                updates = self.publish(values, now())
                if self._waiters[0]:
                    wake()
                return updates

            return generic
        scope: dict[str, object] = {
            "_M": _MISSING, "_self": self, "_check": _check_value, "_now": now, "_wake": wake,
            "_word": self._seq_word, "_waiters": self._waiters, "_pack": self._pack_into, "_view": self._view,
            "_copies": self._copies, "_struct_error": struct.error, "_unknown_field": _unknown_field,
        }  # fmt: skip
        # Every name the body uses starts with "_", which no field name can: a field called
        # `type`, `new` or `seq` shadows nothing.
        lines = [f"def publish(*, {', '.join(f'{n}=_M' for n in names)}, **_unknown):"]
        lines.append("    if _unknown:\n        _unknown_field(_unknown)")
        # Each value is checked into its own parameter (a missing one takes the current value),
        # and only after every check passes is anything written: a refusal changes nothing. The
        # common case costs one comparison a field: a value of the exact type (and, for ints, in
        # range) skips the branch; the sentinel of a missing field is an `object`, never an exact
        # type, so it is told apart inside the branch. The copy is packed from those locals, in
        # copy order, with no list in between. `updates` moves in step with `seq` (both by one a
        # publish, here and in `publish`), so it is `seq` plus the offset they had at the start.
        scope["_delta"] = self.updates - self._seq
        lines.append("    _v = _self._values")
        lines.append("    try:")  # free in 3.11 unless it raises; see the except below
        order = [""] * len(names)
        for position, name in enumerate(names):
            index, exact, low, high, kind, length = self._slots[name]
            order[index - 2] = name
            scope[f"_t{position}"], scope[f"_lo{position}"], scope[f"_hi{position}"] = exact, low, high
            check = f"_check({name!r}, {kind!r}, {length}, {name})"
            if exact is None:  # str: always through _check, which encodes
                lines.append(f"        {name} = _v[{index}] if {name} is _M else {check}")
                continue
            slow = f"{name}.__class__ is not _t{position}"
            if low is not None:
                slow += f" or not _lo{position} <= {name} <= _hi{position}"
            lines.append(f"        if {slow}:")
            lines.append(f"            {name} = _v[{index}] if {name} is _M else {check}")
        values = ", ".join(order)
        lines += [
            "        _seq = _self._seq + 1",
            "        _updates = _seq + _delta",
            "        _ns = _now()",
            f"        _pack(_view, _copies[_seq & 1], _updates, _ns, {values})",  # the copy readers are not on
            # An object whose __class__ lies (Mock(spec=float) does) passes the one comparison
            # and fails in a range check or in struct: nothing was written that readers see.
            "    except (TypeError, _struct_error) as _error:",
            "        raise ValueError(f'a value that is not what it claims: {_error}') from None",
            "    _word[0] = _seq",  # one 8-byte store: now they read the copy just written
            "    _self._seq = _seq",
            f"    _self._values = (_updates, _ns, {values})",
            "    if _waiters[0]:",
            "        _wake()",
            "    return _updates",
        ]
        exec("\n".join(lines), scope)
        function = scope["publish"]
        assert callable(function)
        return function

    def release(self) -> None:
        self._waiters.release()
        self._seq_word.release()
        self._view.release()


_MISSING: Final = object()


def _unknown_field(values: Mapping[str, object]) -> None:
    raise ValueError(f"no field {next(iter(values))!r} in this section")


_LITTLE: Final = sys.byteorder == "little"
#: Per type: the exact Python type accepted without a call, and its inclusive range.
_FAST: Final[dict[str, tuple[type, float | None, float | None]]] = {
    "f64": (float, None, None),
    "f32": (float, -_F32_MAX, _F32_MAX),
    "bool": (bool, None, None),
    **{kind: (int, low, high) for kind, (low, high) in _INT_RANGES.items()},
}


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
        self._struct, self._order = _copy_plan(tuple(fields), tuple(offsets))
        self._strs = tuple(i for i, item in enumerate(fields) if item.type == "str")
        self._in_order = self._order == tuple(range(2, 2 + len(fields)))
        view.release()

    def read_raw(self) -> tuple[int, tuple[object, ...]]:
        """One consistent copy by the latch: (the seq it was stable at, (updates, published_ns,
        *values in copy order)). The first try is written out: it is the only one a reader needs
        unless the producer published during the copy."""
        buffer = self._buffer
        unpack, seq_of, copies = self._struct.unpack_from, _SEQ.unpack_from, self._copies
        seq = seq_of(buffer, SEQ_OFFSET)[0]  # type: ignore[arg-type]
        values = unpack(buffer, copies[seq & 1])  # type: ignore[arg-type]
        if seq_of(buffer, SEQ_OFFSET)[0] == seq:  # type: ignore[arg-type]
            return seq, values
        for _ in range(MAX_READ_ATTEMPTS):
            seq = seq_of(buffer, SEQ_OFFSET)[0]  # type: ignore[arg-type]
            values = unpack(buffer, copies[seq & 1])  # type: ignore[arg-type]
            if seq_of(buffer, SEQ_OFFSET)[0] == seq:  # type: ignore[arg-type]
                return seq, values
        raise SectionTornError("the producer published on every read attempt")

    def read_seq(self) -> tuple[int, tuple[object, ...]]:
        """(seq, (updates, published_ns, state code, *values in declaration order))."""
        seq, raw = self.read_raw()
        head = (raw[0], raw[1], read_state(self._buffer))
        if self._in_order and not self._strs:
            return seq, head + raw[2:]
        result: list[object] = [*head, *(raw[i] for i in self._order)]
        for index in self._strs:
            value = result[3 + index]
            assert isinstance(value, bytes)
            result[3 + index] = value.split(b"\0", 1)[0].decode("utf-8", "replace")
        return seq, tuple(result)

    def read(self) -> tuple[object, ...]:
        """(updates, published_ns, state code, *values in declaration order)."""
        return self.read_seq()[1]
