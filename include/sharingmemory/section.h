/*
 * sharingmemory/section.h: named, self-describing sections, ABI version 1, for C11 readers.
 *
 * Theory of operation: this header is the C form of docs/section-abi.md (normative);
 * src/sharingmemory/_defs/section.py is the Python form, and tests/integration/test_c_section.py
 * checks the two against each other. A section is a header (144 bytes), a schema table that
 * names and types every field, and two copies of the values written by a latch: a reader copies
 * copy `seq & 1` and keeps it if `seq` did not move; the producer writes the other copy, then
 * adds 1 to `seq`. A producer killed at any instant leaves the copy that `seq` names complete,
 * so a reader never spins on a dead producer nor sees a torn value.
 *
 * Every byte of a section is untrusted (its producer can write anything into it): every offset
 * and length is checked against the mapped length before use, by sharingmemory_section_check
 * (once, after mmap) and sharingmemory_section_field (per entry). Readers never write.
 *
 * The copy is read with relaxed atomic loads of 8-byte words between two acquire loads of `seq`
 * (H.-J. Boehm, "Can seqlocks get along with programming language memory models?", MSPC 2012),
 * so the reader is a well-defined C11 program; data_offset and data_size are multiples of 8.
 *
 *     int err = sharingmemory_section_check(base, length);
 *     uint8_t copy[...data_size...];
 *     if (err == 0)
 *         err = sharingmemory_section_read(base, copy, sizeof copy);
 *     for (uint32_t i = 0; err == 0 && i < sharingmemory_section_field_count(base); i++)
 *         sharingmemory_section_field(base, length, i, &field);  // then the value at copy + offset
 */
#ifndef SHARINGMEMORY_SECTION_H
#define SHARINGMEMORY_SECTION_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SHARINGMEMORY_SECTION_MAGIC "SHMS"
#define SHARINGMEMORY_SECTION_ABI_MAJOR 1u
#define SHARINGMEMORY_SECTION_HEADER_SIZE 144u
#define SHARINGMEMORY_SECTION_ENTRY_SIZE 32u /* in 1.0; readers step by the header's entry_size */
#define SHARINGMEMORY_SECTION_COPY_HEADER 16u /* updates u64, published_ns i64 */
#define SHARINGMEMORY_SECTION_MAX_FIELDS 1024u
#define SHARINGMEMORY_SECTION_MAX_SIZE (16u * 1024u * 1024u)

/* Header offsets (docs/section-abi.md, "The header"). */
#define SHARINGMEMORY_SECTION_TOTAL_SIZE 8u
#define SHARINGMEMORY_SECTION_HEADER_SIZE_AT 12u
#define SHARINGMEMORY_SECTION_STATE 16u /* written by the driver only */
#define SHARINGMEMORY_SECTION_WAITERS 20u /* registered waiters; > 1: a reader woken with news FUTEX_WAKEs 2 on seq */
#define SHARINGMEMORY_SECTION_FANOUT 2u  /* wake-ups each woken waiter passes on (section-abi.md) */
#define SHARINGMEMORY_SECTION_PRODUCER_PID 24u
#define SHARINGMEMORY_SECTION_PRODUCER_UID 28u
#define SHARINGMEMORY_SECTION_INSTANCE_ID 32u
#define SHARINGMEMORY_SECTION_FIELD_COUNT 48u
#define SHARINGMEMORY_SECTION_SCHEMA_OFFSET 52u
#define SHARINGMEMORY_SECTION_SCHEMA_SIZE 56u
#define SHARINGMEMORY_SECTION_ENTRY_SIZE_AT 60u
#define SHARINGMEMORY_SECTION_DATA_OFFSET 64u
#define SHARINGMEMORY_SECTION_DATA_SIZE 68u
#define SHARINGMEMORY_SECTION_SEQ 72u /* u64; its low 32 bits are the futex word */
#define SHARINGMEMORY_SECTION_NAME 80u /* char[64], NUL-padded */

#define SHARINGMEMORY_SECTION_STATE_INITIALIZING 0u
#define SHARINGMEMORY_SECTION_STATE_RUNNING 1u
#define SHARINGMEMORY_SECTION_STATE_STOPPED 2u /* and any value a reader does not know */

enum sharingmemory_field_type {
    SHARINGMEMORY_I32 = 1, SHARINGMEMORY_I64 = 2, SHARINGMEMORY_U32 = 3, SHARINGMEMORY_U64 = 4,
    SHARINGMEMORY_F32 = 5, SHARINGMEMORY_F64 = 6, SHARINGMEMORY_BOOL = 7, SHARINGMEMORY_STR = 8,
};

/* Errors of this header's functions (negative, so 0 is success). */
enum {
    SHARINGMEMORY_SECTION_EFORMAT = -1,  /* not a section of this ABI, or inconsistent */
    SHARINGMEMORY_SECTION_ETORN = -2,    /* the producer published on every attempt */
    SHARINGMEMORY_SECTION_ESKIP = -3,    /* a field of a type this reader does not know: skip it */
    SHARINGMEMORY_SECTION_ERANGE = -4,   /* buffer too small, or index out of range */
};

/* One schema entry, checked; the strings point into the mapping and are `*_length` bytes long. */
struct sharingmemory_section_field {
    uint16_t type;
    uint32_t length;       /* value bytes: 4, 8, 1, or a str's maximum */
    uint32_t value_offset; /* inside a copy */
    const char *name;
    const char *unit;
    const char *doc;
    uint16_t name_length, unit_length, doc_length;
};

static inline uint32_t sharingmemory_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t sharingmemory_le64(const uint8_t *p)
{
    return (uint64_t)sharingmemory_le32(p) | (uint64_t)sharingmemory_le32(p + 4) << 32;
}

static inline uint16_t sharingmemory_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

/* The header checks of docs/section-abi.md: 0, or SHARINGMEMORY_SECTION_EFORMAT. */
static inline int sharingmemory_section_check(const void *base, size_t length)
{
    const uint8_t *b = base;
    if (length < SHARINGMEMORY_SECTION_HEADER_SIZE || memcmp(b, SHARINGMEMORY_SECTION_MAGIC, 4) != 0 ||
        sharingmemory_le16(b + 4) != SHARINGMEMORY_SECTION_ABI_MAJOR)
        return SHARINGMEMORY_SECTION_EFORMAT;
    uint64_t total = sharingmemory_le32(b + SHARINGMEMORY_SECTION_TOTAL_SIZE);
    uint64_t header = sharingmemory_le32(b + SHARINGMEMORY_SECTION_HEADER_SIZE_AT);
    uint64_t count = sharingmemory_le32(b + SHARINGMEMORY_SECTION_FIELD_COUNT);
    uint64_t schema = sharingmemory_le32(b + SHARINGMEMORY_SECTION_SCHEMA_OFFSET);
    uint64_t schema_size = sharingmemory_le32(b + SHARINGMEMORY_SECTION_SCHEMA_SIZE);
    uint64_t entry = sharingmemory_le32(b + SHARINGMEMORY_SECTION_ENTRY_SIZE_AT);
    uint64_t data = sharingmemory_le32(b + SHARINGMEMORY_SECTION_DATA_OFFSET);
    uint64_t data_size = sharingmemory_le32(b + SHARINGMEMORY_SECTION_DATA_SIZE);
    if (total != length || total % 4096u || total > SHARINGMEMORY_SECTION_MAX_SIZE)
        return SHARINGMEMORY_SECTION_EFORMAT;
    if (header < SHARINGMEMORY_SECTION_HEADER_SIZE || schema < header || schema + schema_size > data)
        return SHARINGMEMORY_SECTION_EFORMAT;
    if (count < 1 || count > SHARINGMEMORY_SECTION_MAX_FIELDS || entry < SHARINGMEMORY_SECTION_ENTRY_SIZE ||
        entry % 4u || count * entry > schema_size)
        return SHARINGMEMORY_SECTION_EFORMAT;
    if (data % 8u || data_size % 8u || data_size < SHARINGMEMORY_SECTION_COPY_HEADER || data + 2 * data_size > total)
        return SHARINGMEMORY_SECTION_EFORMAT;
    return 0;
}

static inline uint32_t sharingmemory_section_get(const void *base, uint32_t offset)
{
    return sharingmemory_le32((const uint8_t *)base + offset);
}

static inline uint32_t sharingmemory_section_state(const void *base)
{
    /* One aligned u32 that only the driver writes: an atomic load, no latch needed. */
    const _Atomic uint32_t *state = (const _Atomic uint32_t *)((const uint8_t *)base + SHARINGMEMORY_SECTION_STATE);
    return atomic_load_explicit(state, memory_order_acquire);
}

/* Entry `index` of a checked section, itself checked: 0, SHARINGMEMORY_SECTION_ESKIP for an
 * unknown type (its bounds are still checked), or SHARINGMEMORY_SECTION_EFORMAT/ERANGE. */
static inline int sharingmemory_section_field(const void *base, uint32_t index, struct sharingmemory_section_field *f)
{
    const uint8_t *b = base;
    uint32_t count = sharingmemory_section_get(base, SHARINGMEMORY_SECTION_FIELD_COUNT);
    uint32_t schema_size = sharingmemory_section_get(base, SHARINGMEMORY_SECTION_SCHEMA_SIZE);
    uint32_t entry_size = sharingmemory_section_get(base, SHARINGMEMORY_SECTION_ENTRY_SIZE_AT);
    uint32_t data_size = sharingmemory_section_get(base, SHARINGMEMORY_SECTION_DATA_SIZE);
    const uint8_t *schema = b + sharingmemory_section_get(base, SHARINGMEMORY_SECTION_SCHEMA_OFFSET);
    if (index >= count)
        return SHARINGMEMORY_SECTION_ERANGE;
    const uint8_t *e = schema + (size_t)index * entry_size;
    uint64_t strings = (uint64_t)count * entry_size;
    uint32_t at[3] = {sharingmemory_le32(e + 12), sharingmemory_le32(e + 16), sharingmemory_le32(e + 20)};
    uint16_t len[3] = {sharingmemory_le16(e + 24), sharingmemory_le16(e + 26), sharingmemory_le16(e + 28)};
    for (int i = 0; i < 3; i++) /* inside the string area, NUL-terminated */
        if (at[i] < strings || (uint64_t)at[i] + len[i] >= schema_size || schema[at[i] + len[i]] != 0)
            return SHARINGMEMORY_SECTION_EFORMAT;
    f->type = sharingmemory_le16(e);
    f->length = sharingmemory_le32(e + 4);
    f->value_offset = sharingmemory_le32(e + 8);
    f->name = (const char *)schema + at[0], f->name_length = len[0];
    f->unit = (const char *)schema + at[1], f->unit_length = len[1];
    f->doc = (const char *)schema + at[2], f->doc_length = len[2];
    if (f->value_offset < SHARINGMEMORY_SECTION_COPY_HEADER || (uint64_t)f->value_offset + f->length > data_size)
        return SHARINGMEMORY_SECTION_EFORMAT;
    uint32_t size = 0;
    switch (f->type) {
    case SHARINGMEMORY_I32: case SHARINGMEMORY_U32: case SHARINGMEMORY_F32: size = 4; break;
    case SHARINGMEMORY_I64: case SHARINGMEMORY_U64: case SHARINGMEMORY_F64: size = 8; break;
    case SHARINGMEMORY_BOOL: size = 1; break;
    case SHARINGMEMORY_STR: return f->length >= 1 ? 0 : SHARINGMEMORY_SECTION_EFORMAT;
    default: return SHARINGMEMORY_SECTION_ESKIP;
    }
    return f->length == size && f->value_offset % size == 0 ? 0 : SHARINGMEMORY_SECTION_EFORMAT;
}

/* A consistent copy of the values (the latch) into `copy`, which holds data_size bytes. */
static inline int sharingmemory_section_read(const void *base, void *copy, size_t copy_size)
{
    const uint8_t *b = base;
    uint32_t data = sharingmemory_section_get(base, SHARINGMEMORY_SECTION_DATA_OFFSET);
    uint32_t data_size = sharingmemory_section_get(base, SHARINGMEMORY_SECTION_DATA_SIZE);
    const _Atomic uint64_t *seq = (const _Atomic uint64_t *)(b + SHARINGMEMORY_SECTION_SEQ);
    if (copy_size < data_size)
        return SHARINGMEMORY_SECTION_ERANGE;
    for (int attempt = 0; attempt < 100000; attempt++) {
        uint64_t s = atomic_load_explicit(seq, memory_order_acquire);
        const _Atomic uint64_t *words = (const _Atomic uint64_t *)(b + data + (s & 1u) * data_size);
        for (uint32_t i = 0; i < data_size / 8u; i++) {
            uint64_t w = atomic_load_explicit(&words[i], memory_order_relaxed);
            memcpy((uint8_t *)copy + 8u * i, &w, 8);
        }
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(seq, memory_order_relaxed) == s)
            return 0;
    }
    return SHARINGMEMORY_SECTION_ETORN;
}

#endif /* SHARINGMEMORY_SECTION_H */
