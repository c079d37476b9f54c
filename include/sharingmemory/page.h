/*
 * sharingmemory/page.h: the shared page, ABI version 1, for C11 readers.
 *
 * Theory of operation: this header is the C form of the page table in docs/page-abi.md (which
 * is normative, as is the copy in DESIGN.md); src/sharingmemory/_page.py is the Python form, and
 * tests/integration/test_c_client.py checks the two against each other. Every field sits at the
 * offset the table gives it, and the compiler proves so below (_Static_assert on each offsetof):
 * a header that compiles is a header that matches the ABI.
 *
 * The page is one 4096-byte page, little-endian, every field naturally aligned. The driver
 * writes it; readers map it PROT_READ and never write (they cannot: the memfd is sealed).
 *
 * The fields at 24..103 are guarded by a seqlock (`seq`, at 16). They are declared _Atomic so
 * that the reader's loads are atomic loads, which is what makes a seqlock reader a well-defined
 * C11 program instead of a data race (H.-J. Boehm, "Can seqlocks get along with programming
 * language memory models?", MSPC 2012, is the reference for the reader below). The header
 * fields at 0..15 are written once, before the page fd is ever handed out, and are plain.
 *
 * Nothing here does I/O, allocates, or needs anything beyond C11 with <stdatomic.h>. Usage:
 *
 *     const struct sharingmemory_page *page = mmap(NULL, SHARINGMEMORY_PAGE_SIZE, PROT_READ,
 *                                                  MAP_SHARED, fd, 0);
 *     int err = sharingmemory_page_check(page, SHARINGMEMORY_PAGE_SIZE);
 *     struct sharingmemory_snapshot snap;
 *     if (err == 0)
 *         err = sharingmemory_page_read(page, &snap);
 *     if (err != 0)
 *         fprintf(stderr, "%s\n", sharingmemory_strerror(err));
 */
#ifndef SHARINGMEMORY_PAGE_H
#define SHARINGMEMORY_PAGE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* --- constants of the ABI ------------------------------------------------------------------ */

#define SHARINGMEMORY_PAGE_SIZE 4096u
#define SHARINGMEMORY_MAGIC "SHMT" /* the four bytes at offset 0, no terminating zero */
#define SHARINGMEMORY_ABI_MAJOR 1u /* a reader refuses any other major */
#define SHARINGMEMORY_ABI_MINOR 1u /* minors only ever add fields after header_size */
#define SHARINGMEMORY_HEADER_SIZE 112u /* bytes of defined fields in ABI 1.1 (waiters at 104) */
#define SHARINGMEMORY_HEADER_SIZE_1_0 104u /* the smallest header a reader accepts: a 1.0 page's */
#define SHARINGMEMORY_WAITERS 104u /* u32, ABI 1.1: handles registered to be woken at each tick */

#define SHARINGMEMORY_STATE_INITIALIZING 0u
#define SHARINGMEMORY_STATE_RUNNING 1u
#define SHARINGMEMORY_STATE_STOPPED 2u /* the driver is gone or unloading: no more ticks */

/* 1970-01-01T00:00:00Z as a FILETIME (100-ns units since 1601-01-01). */
#define SHARINGMEMORY_EPOCH_AS_FILETIME INT64_C(116444736000000000)
#define SHARINGMEMORY_FILETIME_TICKS_PER_SECOND INT64_C(10000000)

/*
 * How many times the reader tries before it gives up on a page whose `seq` stays odd or keeps
 * moving. A live writer leaves an update within microseconds; only a writer that died between
 * its two increments of `seq` keeps it odd for ever. Define it before including this header to
 * choose another bound; a caller that wants a bound in time rather than in tries retries
 * sharingmemory_page_read itself after a short sleep.
 */
#ifndef SHARINGMEMORY_READ_ATTEMPTS
#define SHARINGMEMORY_READ_ATTEMPTS 1000000L /* as Python's MAX_READ_ATTEMPTS */
#endif

/* What the functions below return: 0, or one of these (negative, so `if (err)` reads well). */
enum sharingmemory_error {
    SHARINGMEMORY_OK = 0,
    SHARINGMEMORY_ERR_SIZE = -1,   /* mapping shorter than a page, or page_size/header_size wrong */
    SHARINGMEMORY_ERR_MAGIC = -2,  /* not "SHMT": not a sharingmemory page at all */
    SHARINGMEMORY_ERR_MAJOR = -3,  /* a page of another ABI major version */
    SHARINGMEMORY_ERR_TORN = -4,   /* seq stayed odd or kept moving: the writer died mid-update? */
};

/* --- the page ----------------------------------------------------------------------------- */

/*
 * The seqlock must work between processes, so its atomics must be lock-free: an atomic that
 * falls back to a lock keeps that lock in the process that uses it, where the writer cannot
 * see it. Lock-free atomics are also what let a read-only mapping work, since a lock-free load
 * of 1, 4 or 8 bytes is a plain load that never writes (a 16-byte "atomic load" on x86-64 is a
 * cmpxchg16b, which would fault on PROT_READ memory: that is why instance_id is read bytewise).
 */
_Static_assert(ATOMIC_CHAR_LOCK_FREE == 2, "the page needs lock-free 8-bit atomics");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2 && sizeof(int) == 4, "the page needs lock-free 32-bit atomics");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && sizeof(long long) == 8,
               "the page needs lock-free 64-bit atomics");
_Static_assert(sizeof(long) != 8 || ATOMIC_LONG_LOCK_FREE == 2,
               "the page needs lock-free 64-bit atomics (uint64_t may be unsigned long)");

/* The page ABI v1 table, field by field. Offsets and types are normative; names match Python. */
struct sharingmemory_page {
    uint8_t magic[4];                  /*  0  ASCII "SHMT" */
    uint16_t abi_major;                /*  4  1 */
    uint16_t abi_minor;                /*  6  1 (a 1.0 page says 0 and ends at 104) */
    uint32_t page_size;                /*  8  4096 */
    uint32_t header_size;              /* 12  112 in ABI 1.1, 104 in 1.0 */
    _Atomic uint64_t seq;              /* 16  seqlock: odd while the writer is inside */
    _Atomic int64_t local_time;        /* 24  FILETIME of local time (the seed's value) */
    _Atomic int64_t system_time;       /* 32  FILETIME of UTC */
    _Atomic int64_t time_zone_bias;    /* 40  UTC minus local, 100-ns units (UTC+8: -288000000000) */
    _Atomic int64_t realtime_ns;       /* 48  CLOCK_REALTIME, ns since the Unix epoch */
    _Atomic int64_t monotonic_ns;      /* 56  CLOCK_MONOTONIC, ns, at the update */
    _Atomic uint64_t tick_count;       /* 64  updates since the page was created (first is 1) */
    _Atomic uint64_t interval_ns;      /* 72  the timer period */
    _Atomic uint32_t state;            /* 80  SHARINGMEMORY_STATE_* */
    _Atomic uint32_t writer_pid;       /* 84  pid of the driver process */
    _Atomic uint8_t instance_id[16];   /* 88  random per driver start */
    /* 104: end of the ABI 1.0 header. Fields after it exist only when header_size covers them. */
    _Atomic uint32_t waiters;          /* 104 ABI 1.1: handles registered to be woken (driver-written) */
    uint8_t reserved0[4];              /* 108 zero */
    /* 112: end of the ABI 1.1 header; the rest of the page is zero. */
};

/*
 * _Atomic T need not have the size and alignment of T in C11; on every ABI we know of it does
 * for these types, and these asserts turn "we know of" into "the compiler checked".
 */
_Static_assert(offsetof(struct sharingmemory_page, magic) == 0, "ABI: magic at 0");
_Static_assert(offsetof(struct sharingmemory_page, abi_major) == 4, "ABI: abi_major at 4");
_Static_assert(offsetof(struct sharingmemory_page, abi_minor) == 6, "ABI: abi_minor at 6");
_Static_assert(offsetof(struct sharingmemory_page, page_size) == 8, "ABI: page_size at 8");
_Static_assert(offsetof(struct sharingmemory_page, header_size) == 12, "ABI: header_size at 12");
_Static_assert(offsetof(struct sharingmemory_page, seq) == 16, "ABI: seq at 16");
_Static_assert(offsetof(struct sharingmemory_page, local_time) == 24, "ABI: local_time at 24");
_Static_assert(offsetof(struct sharingmemory_page, system_time) == 32, "ABI: system_time at 32");
_Static_assert(offsetof(struct sharingmemory_page, time_zone_bias) == 40, "ABI: time_zone_bias at 40");
_Static_assert(offsetof(struct sharingmemory_page, realtime_ns) == 48, "ABI: realtime_ns at 48");
_Static_assert(offsetof(struct sharingmemory_page, monotonic_ns) == 56, "ABI: monotonic_ns at 56");
_Static_assert(offsetof(struct sharingmemory_page, tick_count) == 64, "ABI: tick_count at 64");
_Static_assert(offsetof(struct sharingmemory_page, interval_ns) == 72, "ABI: interval_ns at 72");
_Static_assert(offsetof(struct sharingmemory_page, state) == 80, "ABI: state at 80");
_Static_assert(offsetof(struct sharingmemory_page, writer_pid) == 84, "ABI: writer_pid at 84");
_Static_assert(offsetof(struct sharingmemory_page, instance_id) == 88, "ABI: instance_id at 88");
_Static_assert(offsetof(struct sharingmemory_page, waiters) == SHARINGMEMORY_WAITERS, "ABI: waiters at 104");
_Static_assert(sizeof(struct sharingmemory_page) == SHARINGMEMORY_HEADER_SIZE, "ABI: header is 112 bytes");
_Static_assert(_Alignof(struct sharingmemory_page) <= SHARINGMEMORY_PAGE_SIZE, "ABI: a page aligns the header");

/* --- a reader's copy ------------------------------------------------------------------------ */

/* One consistent copy of the guarded fields (and the seq it was taken at); plain values. */
struct sharingmemory_snapshot {
    uint64_t seq;
    int64_t local_time;
    int64_t system_time;
    int64_t time_zone_bias;
    int64_t realtime_ns;
    int64_t monotonic_ns;
    uint64_t tick_count;
    uint64_t interval_ns;
    uint32_t state;
    uint32_t writer_pid;
    uint8_t instance_id[16];
};

/* A one-line English description of a return value of the functions below. */
static inline const char *sharingmemory_strerror(int err)
{
    switch (err) {
    case SHARINGMEMORY_OK:
        return "success";
    case SHARINGMEMORY_ERR_SIZE:
        return "the page is too short or declares a wrong page_size/header_size";
    case SHARINGMEMORY_ERR_MAGIC:
        return "the page's magic is not \"SHMT\": not a sharingmemory page";
    case SHARINGMEMORY_ERR_MAJOR:
        return "the page's ABI major version is not 1: this reader does not know it";
    case SHARINGMEMORY_ERR_TORN:
        return "the page writer did not finish an update (driver died mid-write?)";
    default:
        return "unknown sharingmemory error";
    }
}

/*
 * Refuse what is not an ABI-1 page: `mapped_length` bytes are mapped at `page`. A newer minor
 * is accepted (it only adds fields after header_size). Check once, right after mmap: the header
 * never changes while the page exists. Returns 0 or a negative sharingmemory_error.
 */
static inline int sharingmemory_page_check(const struct sharingmemory_page *page, size_t mapped_length)
{
    static const uint8_t magic[4] = {'S', 'H', 'M', 'T'}; /* SHARINGMEMORY_MAGIC without its '\0' */
    size_t i;

    if (mapped_length < SHARINGMEMORY_PAGE_SIZE)
        return SHARINGMEMORY_ERR_SIZE;
    for (i = 0; i < sizeof magic; i++)
        if (page->magic[i] != magic[i])
            return SHARINGMEMORY_ERR_MAGIC;
    if (page->abi_major != SHARINGMEMORY_ABI_MAJOR)
        return SHARINGMEMORY_ERR_MAJOR;
    if (page->page_size != SHARINGMEMORY_PAGE_SIZE || page->header_size < SHARINGMEMORY_HEADER_SIZE_1_0 ||
        page->header_size > SHARINGMEMORY_PAGE_SIZE)
        return SHARINGMEMORY_ERR_SIZE;
    return SHARINGMEMORY_OK;
}

/*
 * Whether the page offers the futex wait of ABI 1.1 (docs/page-abi.md, "Waiting for a tick"):
 * a `waiters` field the driver keeps, and one FUTEX_WAKE on `seq`'s low half after each tick.
 * A 1.0 page (minor 0, header_size 104) does not: wait on the tick channel, or by the deadline.
 */
static inline int sharingmemory_page_has_waiters(const struct sharingmemory_page *page)
{
    return page->abi_minor >= 1 && page->header_size >= SHARINGMEMORY_WAITERS + 4;
}

/*
 * Take a consistent snapshot of the guarded fields by the seqlock protocol; never blocks or
 * slows the writer. Returns 0, or SHARINGMEMORY_ERR_TORN after SHARINGMEMORY_READ_ATTEMPTS tries
 * (the writer stayed inside an update: it died there, or it was descheduled mid-update and the
 * caller may try again after a short sleep). `*out` is unspecified unless 0 is returned.
 *
 * Why each ordering (the writer increments seq, stores the fields, increments seq again):
 *  - seq0 is an acquire load, so no field load below can be performed before it: a field that
 *    was stored before the writer's even seq0 is what the loads see, or something newer.
 *  - the fields are relaxed atomic loads: atomic, so no single field is ever torn and there is
 *    no data race in the C11 sense; relaxed, since their mutual order does not matter.
 *  - the acquire fence after them keeps them from being performed after the load of seq1: if
 *    any of them saw a store of a later update, that update's first increment is visible to
 *    the seq1 load, which then differs from seq0, and the copy is thrown away.
 * On x86-64 every one of these is a plain mov (the fences cost only a compiler barrier); on
 * aarch64 they become ldar / dmb ishld. See docs/page-abi.md, "Memory ordering", for what the
 * writer must do in turn.
 */
static inline int sharingmemory_page_read(const struct sharingmemory_page *page, struct sharingmemory_snapshot *out)
{
    long attempt;
    size_t i;

    for (attempt = 0; attempt < SHARINGMEMORY_READ_ATTEMPTS; attempt++) {
        uint64_t seq0 = atomic_load_explicit(&page->seq, memory_order_acquire);
        if (seq0 & 1u)
            continue; /* the writer is inside an update */
        out->local_time = atomic_load_explicit(&page->local_time, memory_order_relaxed);
        out->system_time = atomic_load_explicit(&page->system_time, memory_order_relaxed);
        out->time_zone_bias = atomic_load_explicit(&page->time_zone_bias, memory_order_relaxed);
        out->realtime_ns = atomic_load_explicit(&page->realtime_ns, memory_order_relaxed);
        out->monotonic_ns = atomic_load_explicit(&page->monotonic_ns, memory_order_relaxed);
        out->tick_count = atomic_load_explicit(&page->tick_count, memory_order_relaxed);
        out->interval_ns = atomic_load_explicit(&page->interval_ns, memory_order_relaxed);
        out->state = atomic_load_explicit(&page->state, memory_order_relaxed);
        out->writer_pid = atomic_load_explicit(&page->writer_pid, memory_order_relaxed);
        for (i = 0; i < sizeof out->instance_id; i++)
            out->instance_id[i] = atomic_load_explicit(&page->instance_id[i], memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&page->seq, memory_order_relaxed) == seq0) {
            out->seq = seq0;
            return SHARINGMEMORY_OK;
        }
    }
    return SHARINGMEMORY_ERR_TORN;
}

/*
 * The page's state alone: one aligned u32, atomic by itself, so it needs no seqlock (the same
 * shortcut as Python's read_state). Use it to notice a stopped driver cheaply.
 */
static inline uint32_t sharingmemory_page_state(const struct sharingmemory_page *page)
{
    return atomic_load_explicit(&page->state, memory_order_acquire);
}

/* Whole seconds since the Unix epoch of a FILETIME (floor division, also before 1970). */
static inline int64_t sharingmemory_filetime_to_unix_seconds(int64_t filetime)
{
    int64_t ticks = filetime - SHARINGMEMORY_EPOCH_AS_FILETIME;
    int64_t seconds = ticks / SHARINGMEMORY_FILETIME_TICKS_PER_SECOND;
    if (ticks % SHARINGMEMORY_FILETIME_TICKS_PER_SECOND < 0)
        seconds -= 1;
    return seconds;
}

#endif /* SHARINGMEMORY_PAGE_H */
