"""Sections on the wire: the IOCTL payloads of create, open and list (docs/section-abi.md).

Pure, like `section`: bytes in, records out. What a peer sends is untrusted: decoding raises
ValueError for a bad section name (the driver answers STATUS_OBJECT_NAME_INVALID) and
SectionFormatError for anything else malformed (STATUS_INVALID_PARAMETER).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .section import (
    MAX_SECTION_SIZE,
    STATE_CODES,
    Field,
    SectionFormatError,
    SectionState,
    check_section_name,
    decode_schema,
    encode_schema,
    layout,
    state_from_code,
)

# --- the driver's requests ----------------------------------------------------------------------

_CREATE = struct.Struct("<HHHHII")  # version, name_len, uid count, gid count, field_count, schema_size
CREATE_VERSION: Final = 1
#: The answer to create and open: instance_id, total_size, section id (the producer's handle for
#: seal and close), producer_pid, producer_uid.
SECTION_REPLY = struct.Struct("<16sIIII")
_LIST_HEAD = struct.Struct("<II")  # sections in all, entries in this reply
_LIST_ENTRY = struct.Struct(
    "<HHIIIIQ16s"
)  # entry size, name_len, state, uid, pid, field_count, updates, instance, then schema_size
_U32S = struct.Struct("<I")


@dataclass(frozen=True)
class CreateRequest:
    name: str
    fields: tuple[Field, ...]
    reader_uids: tuple[int, ...] = ()
    reader_gids: tuple[int, ...] = ()


MAX_READER_IDS: Final = 64


def encode_create(request: CreateRequest) -> bytes:
    check_section_name(request.name)
    if len(request.reader_uids) > MAX_READER_IDS or len(request.reader_gids) > MAX_READER_IDS:
        raise ValueError(f"at most {MAX_READER_IDS} reader uids and gids each")
    for ident in (*request.reader_uids, *request.reader_gids):
        if not isinstance(ident, int) or isinstance(ident, bool) or not 0 <= ident < 2**32:
            raise ValueError(f"reader id {ident!r} is not a uid/gid")
    schema = encode_schema(request.fields)
    name = request.name.encode("ascii")
    ids = struct.pack(
        f"<{len(request.reader_uids) + len(request.reader_gids)}I", *request.reader_uids, *request.reader_gids
    )
    head = _CREATE.pack(CREATE_VERSION, len(name), len(request.reader_uids), len(request.reader_gids),
                        len(request.fields), len(schema))  # fmt: skip
    return head + name + ids + schema


def decode_create(data: bytes) -> CreateRequest:
    """Parse a create request. ValueError for a bad name (STATUS_OBJECT_NAME_INVALID);
    SectionFormatError for anything else malformed (STATUS_INVALID_PARAMETER)."""
    if len(data) < _CREATE.size:
        raise SectionFormatError("create request shorter than its header")
    version, name_len, n_uids, n_gids, count, schema_size = _CREATE.unpack_from(data, 0)
    if version != CREATE_VERSION:
        raise SectionFormatError(f"create request version {version}")
    if n_uids > MAX_READER_IDS or n_gids > MAX_READER_IDS:
        raise SectionFormatError("too many reader ids")
    ids_at = _CREATE.size + name_len
    schema_at = ids_at + 4 * (n_uids + n_gids)
    if schema_at + schema_size != len(data):
        raise SectionFormatError("create request lengths do not add up")
    try:
        name = data[_CREATE.size : ids_at].decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("section name is not ASCII") from None
    check_section_name(name)
    ids = struct.unpack_from(f"<{n_uids + n_gids}I", data, ids_at)
    schema = decode_schema(data[schema_at:], count, MAX_SECTION_SIZE)
    if schema.skipped:
        raise SectionFormatError("create request has fields of unknown types")
    canonical = layout(schema.fields)
    if canonical.offsets != schema.offsets:
        raise SectionFormatError("create request's value offsets are not the canonical layout")
    return CreateRequest(name, schema.fields, tuple(ids[:n_uids]), tuple(ids[n_uids:]))


@dataclass(frozen=True)
class SectionInfo:
    """One entry of IOCTL_LIST_SECTIONS (and of `Device.list_sections()`)."""

    name: str
    fields: tuple[Field, ...]
    producer_uid: int
    producer_pid: int
    state: SectionState
    updates: int
    instance_id: bytes

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "fields": [
                {"name": f.name, "type": f.type, "length": f.length, "unit": f.unit, "doc": f.doc} for f in self.fields
            ],
            "producer_uid": self.producer_uid,
            "producer_pid": self.producer_pid,
            "state": str(self.state),
            "updates": self.updates,
            "instance_id": self.instance_id.hex(),
        }


def encode_list_entry(info: SectionInfo) -> bytes:
    schema = encode_schema(info.fields)
    name = info.name.encode("ascii")
    size = _LIST_ENTRY.size + 4 + len(name) + len(schema)
    size += -size % 4
    head = _LIST_ENTRY.pack(size, len(name), STATE_CODES[info.state], info.producer_uid, info.producer_pid,
                            len(info.fields), info.updates, info.instance_id)  # fmt: skip
    entry = head + _U32S.pack(len(schema)) + name + schema
    return entry + bytes(size - len(entry))


def encode_list(total: int, entries: Sequence[bytes]) -> bytes:
    return _LIST_HEAD.pack(total, len(entries)) + b"".join(entries)


LIST_HEAD_SIZE: Final = _LIST_HEAD.size


def decode_list(data: bytes) -> tuple[int, list[SectionInfo]]:
    """(sections in all, the entries of this reply); SectionFormatError when malformed."""
    if len(data) < _LIST_HEAD.size:
        raise SectionFormatError("section list shorter than its header")
    total, count = _LIST_HEAD.unpack_from(data, 0)
    position, result = _LIST_HEAD.size, []
    for _ in range(count):
        if position + _LIST_ENTRY.size + 4 > len(data):
            raise SectionFormatError("section list entry runs past the reply")
        size, name_len, state, uid, pid, field_count, updates, instance = _LIST_ENTRY.unpack_from(data, position)
        (schema_size,) = _U32S.unpack_from(data, position + _LIST_ENTRY.size)
        name_at = position + _LIST_ENTRY.size + 4
        schema_at = name_at + name_len
        if size < _LIST_ENTRY.size + 4 or position + size > len(data) or schema_at + schema_size > position + size:
            raise SectionFormatError("section list entry lengths do not add up")
        try:
            name = check_section_name(data[name_at:schema_at].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise SectionFormatError("section list entry has an invalid name") from None
        schema = decode_schema(data[schema_at : schema_at + schema_size], field_count, MAX_SECTION_SIZE)
        result.append(SectionInfo(name, schema.fields, uid, pid, state_from_code(state), updates, bytes(instance)))
        position += size
    return total, result
