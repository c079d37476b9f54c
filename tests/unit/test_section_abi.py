"""The section ABI (docs/section-abi.md) over plain bytearrays: schema encoding, header checks,
the latch under a producer that dies at every store, and hostile schemas. Pure: no I/O."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharingmemory._defs import (
    CreateRequest,
    Field,
    SectionFormatError,
    SectionReader,
    SectionWriter,
    check_section_name,
    decode_create,
    decode_header,
    decode_list,
    decode_schema,
    encode_create,
    encode_schema,
    layout,
    write_new_section,
)
from sharingmemory._defs.section import (
    ENTRY_SIZE,
    HEADER_SIZE,
    MAX_FIELDS,
    MAX_STR_LENGTH,
    RESERVED_FIELD_NAMES,
    SEQ_OFFSET,
    TYPES,
    bump_seq,
)

CPU = (
    Field("temperature", "f64", unit="celsius", doc="package temperature"),
    Field("load", "f64"),
    Field("fan_rpm", "u32", unit="rpm"),
    Field("governor", "str", length=16),
)


def _section(fields: tuple[Field, ...] = CPU) -> tuple[bytearray, SectionWriter, SectionReader]:
    plan = layout(fields)
    buf = bytearray(plan.total_size)
    write_new_section(buf, "sensors.cpu", fields, producer_pid=1, producer_uid=0, instance_id=bytes(16))
    header = decode_header(buf)
    schema = decode_schema(
        memoryview(buf)[header.schema_offset : header.schema_offset + header.schema_size],
        header.field_count,
        header.data_size,
    )
    args = (schema.fields, schema.offsets, header.data_offset, header.data_size)
    return buf, SectionWriter(buf, *args), SectionReader(buf, *args)


# --- names and fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "/", "a/b", "..", "a..b", "../etc", "a\0b", "x" * 65, ".hidden", "-x", "_x", "é", "a b", "a:b"]
)
def test_bad_section_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="section name"):
        check_section_name(name)


@pytest.mark.parametrize("name", ["a", "0", "sensors.cpu", "A-b_c.9", "x" * 64, "time"])
def test_good_section_names_pass(name: str) -> None:
    assert check_section_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "1x", "_x", "a-b", "a.b", "a/b", "..", "a\0", "x" * 65, "é", *sorted(RESERVED_FIELD_NAMES)]
)
def test_bad_field_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="field name"):
        Field(name, "f64")


@pytest.mark.parametrize(
    ("kind", "length"),
    [("f128", 0), ("", 0), ("F64", 0), ("str", 0), ("str", MAX_STR_LENGTH + 1), ("str", -1), ("f64", 4)],
)
def test_bad_types_and_lengths_are_refused(kind: str, length: int) -> None:
    with pytest.raises(ValueError, match=r"type|length|bytes"):
        Field("x", kind, length)


def test_unit_and_doc_limits() -> None:
    with pytest.raises(ValueError, match="unit"):
        Field("x", "f64", unit="u" * 33)
    with pytest.raises(ValueError, match="doc"):
        Field("x", "f64", doc="d" * 513)
    with pytest.raises(ValueError, match="NUL"):
        Field("x", "f64", unit="a\0")
    with pytest.raises(TypeError):
        Field("x", "f64", unit=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        (),
        (Field("a", "f64"), Field("a", "u32")),
        tuple(Field(f"f{i}", "u32") for i in range(MAX_FIELDS + 1)),
        tuple(Field(f"f{i}", "u32") for i in range(5000)),
    ],
    ids=["zero", "duplicate", "one-too-many", "thousands"],
)
def test_hostile_schemas_raise_value_error(fields: tuple[Field, ...]) -> None:
    with pytest.raises(ValueError, match="field"):
        encode_schema(fields)
    with pytest.raises(ValueError, match="field"):
        layout(fields)


def test_non_field_items_are_refused() -> None:
    with pytest.raises(TypeError):
        encode_schema([("a", "f64")])  # type: ignore[list-item]


# --- the schema's encoding ----------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=8)
_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,63}", fullmatch=True).filter(lambda n: n not in RESERVED_FIELD_NAMES)


@st.composite
def _fields(draw: st.DrawFn) -> tuple[Field, ...]:
    names = draw(st.lists(_names, min_size=1, max_size=20, unique=True))
    result = []
    for name in names:
        kind = draw(st.sampled_from(sorted(TYPES)))
        length = draw(st.integers(1, 300)) if kind == "str" else 0
        result.append(Field(name, kind, length, unit=draw(_text), doc=draw(_text)))
    return tuple(result)


@given(_fields())
def test_schema_round_trips(fields: tuple[Field, ...]) -> None:
    plan = layout(fields)
    decoded = decode_schema(encode_schema(fields), len(fields), plan.data_size)
    assert decoded.fields == fields
    assert decoded.offsets == plan.offsets
    assert decoded.skipped == 0


@given(_fields(), st.lists(st.integers(0, 2**32 - 1), max_size=5), st.lists(st.integers(0, 2**32 - 1), max_size=5))
def test_create_request_round_trips(fields: tuple[Field, ...], uids: list[int], gids: list[int]) -> None:
    request = CreateRequest("sensors.cpu", fields, tuple(uids), tuple(gids))
    assert decode_create(encode_create(request)) == request


@given(st.binary(max_size=600), st.integers(0, 40), st.integers(0, 5000))
@settings(max_examples=300)
def test_schema_decoder_on_arbitrary_bytes(data: bytes, count: int, data_size: int) -> None:
    with contextlib.suppress(SectionFormatError):
        decode_schema(data, count, data_size)


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_request_decoders_on_arbitrary_bytes(data: bytes) -> None:
    for decoder in (decode_create, decode_list, decode_header):
        with contextlib.suppress(SectionFormatError, ValueError):
            decoder(data)


@given(_fields(), st.integers(0, 400), st.binary(min_size=1, max_size=8))
@settings(max_examples=300)
def test_schema_decoder_on_corrupted_encodings(fields: tuple[Field, ...], where: int, junk: bytes) -> None:
    """Valid encodings with bytes overwritten: the hostile producer's schema, close to real."""
    data = bytearray(encode_schema(fields))
    where %= len(data)
    data[where : where + len(junk)] = junk
    with contextlib.suppress(SectionFormatError):
        decode_schema(bytes(data), len(fields), layout(fields).data_size)


def test_unknown_types_are_skipped_by_readers() -> None:
    """A newer producer's field type: the reader skips it and keeps the rest (formats grow)."""
    data = bytearray(encode_schema(CPU))
    struct.pack_into("<H", data, ENTRY_SIZE, 99)  # the second field's type code
    decoded = decode_schema(bytes(data), len(CPU), layout(CPU).data_size)
    assert [f.name for f in decoded.fields] == ["temperature", "fan_rpm", "governor"]
    assert decoded.skipped == 1


def test_overlapping_and_misaligned_values_are_refused() -> None:
    data = bytearray(encode_schema(CPU))
    struct.pack_into("<I", data, ENTRY_SIZE + 8, 16)  # load's offset onto temperature's
    with pytest.raises(SectionFormatError, match="overlap"):
        decode_schema(bytes(data), len(CPU), 64)
    struct.pack_into("<I", data, ENTRY_SIZE + 8, 44)  # not 8-aligned
    with pytest.raises(SectionFormatError, match="aligned"):
        decode_schema(bytes(data), len(CPU), 64)


# --- the header ---------------------------------------------------------------------------------


def test_header_describes_the_section() -> None:
    buf, _writer, _reader = _section()
    header = decode_header(buf)
    assert (header.name, header.field_count, header.schema_offset, header.total_size) == (
        "sensors.cpu",
        4,
        HEADER_SIZE,
        4096,
    )


@pytest.mark.parametrize(
    ("offset", "value", "fmt"),
    [
        (0, b"XXXX", "4s"),
        (4, 2, "H"),
        (8, 8192, "I"),
        (56, 4000, "I"),
        (60, 8, "I"),
        (48, 0, "I"),
        (64, 4000, "I"),
        (68, 4000, "I"),
        (80, b"/x", "2s"),
    ],
    ids=["magic", "major", "total", "schema-into-data", "entry-size", "no-fields", "data-offset", "data-size", "name"],
)
def test_bad_headers_are_refused(offset: int, value: object, fmt: str) -> None:
    buf, _writer, _reader = _section()
    struct.pack_into("<" + fmt, buf, offset, value)
    with pytest.raises(SectionFormatError):
        decode_header(buf)


# --- values and the latch -----------------------------------------------------------------------


def test_fields_read_as_zero_until_the_first_publish() -> None:
    _buf, _writer, reader = _section()
    assert reader.read() == (0, 0, 0, 0.0, 0.0, 0, "")


def test_publish_of_a_subset_keeps_the_others() -> None:
    _buf, writer, reader = _section()
    writer.publish({"temperature": 41.5, "load": 0.31, "fan_rpm": 1200, "governor": "schedutil"}, 7)
    writer.publish({"load": 0.5}, 8)
    assert reader.read() == (2, 8, 0, 41.5, 0.5, 1200, "schedutil")


@pytest.mark.parametrize(
    "values",
    [
        {"fan_rpm": -1},
        {"fan_rpm": 2**32},
        {"fan_rpm": 1.5},
        {"fan_rpm": True},
        {"fan_rpm": "12"},
        {"load": "x"},
        {"load": None},
        {"load": 2**1100},
        {"governor": "x" * 17},
        {"governor": "é" * 9},
        {"governor": "a\0b"},
        {"governor": "\ud800"},
        {"governor": 5},
        {"nosuch": 1},
    ],
)
def test_a_bad_value_raises_and_changes_nothing(values: dict[str, object]) -> None:
    buf, writer, reader = _section()
    writer.publish({"temperature": 1.0, "fan_rpm": 3, "governor": "ok"}, 1)
    before = bytes(buf)
    with pytest.raises(ValueError, match=r"\w"):
        writer.publish({"temperature": 99.0, **values}, 2)
    assert bytes(buf) == before
    writer.publish({"load": 2.0}, 3)  # the writer's own copy was not changed either
    assert reader.read() == (2, 3, 0, 1.0, 2.0, 3, "ok")


def test_f32_range() -> None:
    _buf, writer, reader = _section((Field("x", "f32"), Field("flag", "bool"), Field("n", "i32")))
    writer.publish({"x": float("inf"), "flag": True, "n": -(2**31)}, 1)
    assert reader.read()[3:] == (float("inf"), True, -(2**31))
    with pytest.raises(ValueError, match="f32"):
        writer.publish({"x": 1e39}, 2)
    with pytest.raises(ValueError, match="bool"):
        writer.publish({"flag": 1}, 2)


def _crash_states(buf: bytearray, data_offset: int, data_size: int, new: bytearray) -> list[bytearray]:
    """Every state a producer killed inside the publish that turns `buf` into `new` can leave:
    after each 8-byte prefix of the copy it writes (the one `seq` does not name), then after
    its one store of `seq`. The publish must touch nothing else."""
    seq = struct.unpack_from("<Q", buf, SEQ_OFFSET)[0]
    target = data_offset + ((seq + 1) & 1) * data_size
    outside = [
        i
        for i in range(len(buf))
        if not target <= i < target + data_size and i not in range(SEQ_OFFSET, SEQ_OFFSET + 8)
    ]
    assert all(buf[i] == new[i] for i in outside), "the publish wrote outside its copy and seq"
    states = []
    for k in range(0, data_size + 1, 8):
        state = bytearray(buf)
        state[target : target + k] = new[target : target + k]
        states.append(state)
    done = bytearray(states[-1])
    struct.pack_into("<Q", done, SEQ_OFFSET, seq + 1)
    assert done == new
    states.append(done)
    return states


@pytest.mark.parametrize("generated", [False, True], ids=["publish", "publisher"])
def test_a_producer_killed_at_any_store_leaves_a_complete_value(generated: bool) -> None:
    """Four publishes in a row (so both copies take their turn), each a different subset of
    the fields: every state a kill can leave reads as the value before or after, whole."""
    buf, writer, _reader = _section()
    header = decode_header(buf)
    stamps = iter(range(1, 100))
    publisher = writer.publisher(lambda: next(stamps), lambda: None)

    def publish(**values: object) -> None:
        if generated:
            publisher(**values)
        else:
            writer.publish(values, next(stamps))

    publish(temperature=1.0, load=1.0, fan_rpm=1, governor="one")
    expected: list[tuple[object, ...]] = [(1, 1, 0, 1.0, 1.0, 1, "one")]
    changes: list[dict[str, object]] = [
        {"temperature": 2.0},
        {"load": 3.0, "governor": "three"},
        {"fan_rpm": 4},
        {"temperature": 5.0},
    ]
    schema = decode_schema(memoryview(buf)[HEADER_SIZE : HEADER_SIZE + header.schema_size], 4, header.data_size)
    for change in changes:
        old = bytearray(buf)
        publish(**change)
        before = expected[-1]
        after = list(before)
        after[0] = after[1] = len(expected) + 1
        for name, value in change.items():
            after[3 + [f.name for f in schema.fields].index(name)] = value
        expected.append(tuple(after))
        seen = set()
        for state in _crash_states(old, header.data_offset, header.data_size, bytearray(buf)):
            snap = SectionReader(state, schema.fields, schema.offsets, header.data_offset, header.data_size).read()
            assert snap in {before, expected[-1]}, snap
            seen.add(snap)
        assert seen == {before, expected[-1]}


def test_the_drivers_seq_bump_keeps_the_stable_copy() -> None:
    buf, writer, reader = _section()
    writer.publish({"fan_rpm": 5}, 1)
    before = reader.read()
    seq = struct.unpack_from("<Q", buf, SEQ_OFFSET)[0]
    bump_seq(buf)
    assert struct.unpack_from("<Q", buf, SEQ_OFFSET)[0] == seq + 2
    assert reader.read() == before


def test_hostile_str_bytes_are_replaced_not_raised() -> None:
    buf, writer, reader = _section()
    writer.publish({"governor": "ok"}, 1)
    header = decode_header(buf)
    for copy in (header.data_offset, header.data_offset + header.data_size):
        buf[copy + 36 : copy + 38] = b"\xff\xfe"
    assert reader.read()[6] == "\ufffd\ufffd"


def test_list_round_trips() -> None:
    from sharingmemory._defs import SectionInfo, SectionState, encode_list, encode_list_entry

    infos = [
        SectionInfo("a", CPU, 0, 10, SectionState.RUNNING, 3, bytes(range(16))),
        SectionInfo("b.c", CPU[:1], 1000, 11, SectionState.INITIALIZING, 0, bytes(16)),
    ]
    total, decoded = decode_list(encode_list(7, [encode_list_entry(i) for i in infos]))
    assert (total, decoded) == (7, infos)


@pytest.mark.parametrize(
    "names",
    [("temperature", "load"), ("type", "new", "seq", "next", "ValueError"), ("class", "x"), ("lambda", "def")],
    ids=["plain", "shadowing", "keyword", "keywords"],
)
def test_the_generated_publisher(names: tuple[str, ...]) -> None:
    """The per-schema publish: the same latch, the same refusals, whatever the field names."""
    fields = (*(Field(n, "f64") for n in names), Field("n", "u32"), Field("label", "str", length=4))
    buf, writer, reader = _section(fields)
    woken: list[int] = []
    clock = iter(range(100, 200))
    publish = writer.publisher(lambda: next(clock), lambda: woken.append(1))
    assert publish(**{names[0]: 1.5, "n": 3, "label": "ab"}) == 1
    assert reader.read() == (1, 100, 0, 1.5, *(0.0,) * (len(names) - 1), 3, "ab")
    before = bytes(buf)
    for bad in ({"n": -1}, {"n": 1.0}, {names[1]: "x"}, {"label": "abcde"}, {"nosuch": 1}):
        with pytest.raises(ValueError, match=r"\w"):
            publish(**{names[0]: 9.0, **bad})
        assert bytes(buf) == before
    assert not woken
    struct.pack_into("<I", buf, 20, 2)  # the driver says two readers wait
    assert publish(n=4) == 2
    assert woken == [1]
    assert reader.read()[3:] == (1.5, *(0.0,) * (len(names) - 1), 4, "ab")


class _LyingFloat:
    """Claims to be a float (as `Mock(spec=float)` does): the publisher's one-comparison check
    lets it through to struct, which must not turn it into anything but ValueError."""

    __class__ = float  # type: ignore[assignment]


@pytest.mark.parametrize("field", [Field("x", "f64"), Field("x", "f32"), Field("x", "u32"), Field("x", "bool")])
def test_a_value_that_lies_about_its_type_changes_nothing(field: Field) -> None:
    _buf, writer, reader = _section((field, Field("n", "i64")))
    publish = writer.publisher(lambda: 7, lambda: None)
    publish(n=1)
    before = reader.read()
    for liar in (_LyingFloat(), object(), "1.0", None, [1.0]):
        with pytest.raises(ValueError, match=r"\w"):
            publish(x=liar, n=2)
        assert reader.read() == before
    assert publish(n=3) == 2  # the refused publishes did not count
    assert reader.read()[3:] == (before[3], 3)
