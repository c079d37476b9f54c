"""Sections as the library shows them: `Field`, a producer's `Section`, a reader's, snapshots.

Theory of operation (docs/section-abi.md). A reader's section is a PROT_READ mapping of a memfd
the driver sealed; reading it is a latch read of that memory, with no system call. A producer's
is the writable mapping it made before the driver sealed the memfd (F_SEAL_FUTURE_WRITE keeps
that one writable); publishing writes the latch copies and then, only when the driver's
`waiters` word says that some reader waits, makes one FUTEX_WAKE of one waiter (the readers
pass it on to the others).

Ownership: a `Section` belongs to the `Device` it came from and is unmapped when that device
closes (for a producer, closing the device is also what stops the section). A reader's mapping
outlives the producer: the section then reads state stopped and keeps the last complete value.

Waiting: `wait_next` sleeps in FUTEX_WAIT on the low half of `seq`, after registering once with
the driver (IOCTL_WAIT_SECTION) so that producers know to wake it. A publish wakes one waiter,
and the wake-up travels down the queue on the readers' time: the waiter `futex_wait`, shared
with the `time` page, tells the rule, its bounds and why the kernel's queue order makes it reach
every reader (docs/section-abi.md, "Waiting for a publish").

This module knows the device only through `_Port`, the three calls it needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import mmap
import operator
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final, NamedTuple, Protocol

from .._defs import (
    IOCTL_CLOSE_SECTION,
    IOCTL_SEAL_SECTION,
    IOCTL_WAIT_SECTION,
    SECTION_REPLY,
    Field,
    IoTimeout,
    NtStatus,
    NtStatusError,
    SectionReader,
    SectionState,
    SectionWriter,
    decode_header,
    decode_schema,
    exception_for,
    layout,
    state_from_code,
)
from .._defs.section import SEQ_OFFSET, WAITERS_OFFSET
from .._sys import Fd, libc
from .futex_wait import FutexWait

_PAGE_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | 0x0010 | fcntl.F_SEAL_SEAL  # 0x10: FUTURE_WRITE
_U32 = struct.Struct("<I")


class _Word(Protocol):
    def __getitem__(self, index: int, /) -> int: ...


class _ClosedWord:
    """The `seq` of a closed section: reading it raises the ValueError a closed section promises."""

    __slots__ = ()

    def __getitem__(self, index: int, /) -> int:
        raise ValueError("the section is closed")


class _NoWord:
    """`seq` on a big-endian machine: matches no snapshot, so every read takes the latch path."""

    __slots__ = ()

    def __getitem__(self, index: int, /) -> int:
        return -2


_CLOSED: Final = _ClosedWord()
_STATES: Final = {0: SectionState.INITIALIZING, 1: SectionState.RUNNING, 2: SectionState.STOPPED}


class IoctlResult(NamedTuple):
    status: int
    output: bytes
    fd: Fd | None


class _Port(Protocol):
    """What a section needs of its device: an IOCTL, and whether the device socket hung up."""

    def ioctl(self, code: int, input: bytes = b"", output_length: int = 0) -> IoctlResult: ...  # noqa: A002

    def hung_up(self) -> bool: ...


class Snapshot(tuple[Any, ...]):
    """One consistent copy of a section: `snap.NAME`, `snap["NAME"]`, `snap.as_dict()`, plus
    `updates` (publishes so far), `published_ns` (CLOCK_REALTIME of the last) and `state`.

    A tuple underneath (updates, published_ns, state, *values), so a read costs one allocation.
    Each section has its own subclass, with a property per field.
    """

    __slots__ = ()
    _index: ClassVar[dict[str, int]] = {}

    @property
    def updates(self) -> int:
        return int(tuple.__getitem__(self, 0))

    @property
    def published_ns(self) -> int:
        return int(tuple.__getitem__(self, 1))

    @property
    def state(self) -> SectionState:
        value = tuple.__getitem__(self, 2)
        assert isinstance(value, SectionState)
        return value

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._index[key])
            except KeyError:
                raise KeyError(key) from None
        return tuple.__getitem__(self, key)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"this section has no field {name!r}")

    def as_dict(self) -> dict[str, Any]:
        """{field name: value}, in the schema's order."""
        return {name: tuple.__getitem__(self, i) for name, i in self._index.items()}

    def __repr__(self) -> str:
        values = " ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"<Snapshot {self.state} updates={self.updates} {values}>"


@functools.lru_cache(maxsize=256)
def snapshot_type(fields: tuple[Field, ...]) -> type[Snapshot]:
    """The Snapshot subclass of a schema: a property per field (names cannot shadow the
    snapshot's own attributes: Field refuses RESERVED_FIELD_NAMES). Cached: making a class
    costs tens of microseconds, and the same schema is opened again and again."""
    index = {item.name: i + 3 for i, item in enumerate(fields)}
    namespace: dict[str, object] = {"__slots__": (), "_index": index}
    for name, i in index.items():
        namespace[name] = property(operator.itemgetter(i))
    return type("Snapshot", (Snapshot,), namespace)


#: Parsing a schema checks every string and offset: done once per distinct schema (bytes are
#: the key, so a changed schema is parsed and checked again), not at every open.
_decode_schema: Final = functools.lru_cache(maxsize=256)(decode_schema)


def _check_fd(fd: Fd, size: int, *, sealed: bool) -> None:
    """Trust no fd: it must be a file of `size` bytes, and a reader's must carry the seals that
    make it read-only for everyone (a fake driver could send an unsealed one)."""
    if os.fstat(fd.fileno()).st_size != size:
        raise exception_for(NtStatus.STATUS_REVISION_MISMATCH, "the section fd's size is not the announced one")
    if sealed and fcntl.fcntl(fd.fileno(), fcntl.F_GET_SEALS) & _PAGE_SEALS != _PAGE_SEALS:
        raise exception_for(NtStatus.STATUS_INVALID_DEVICE_STATE, "the section fd is not sealed read-only")


class Section:
    """A named section, as its producer or one of its readers holds it.

    `name`, `fields` (a tuple of Field), `instance_id` (the driver's: a new producer of the same
    name gets another), `producer_pid`, `producer_uid`, `state`; `read()` a snapshot,
    `wait_next()` / `next_update()` the next publish; a producer also has `publish(**values)`.
    `close()` unmaps (and, for a producer, stops the section); idempotent.
    """

    _map: mmap.mmap | None = None
    _writer: SectionWriter | None = None
    _seq_word: _Word = _CLOSED
    _last_seq = -1
    _last: Snapshot
    _waiting_registered = False
    _seen: int | None = None
    _futex_word: memoryview | None = None
    _waiter: FutexWait | None = None

    def __init__(self, port: _Port, name: str, reply: bytes, fd: Fd | None, *, producer: bool) -> None:
        if fd is None:
            raise exception_for(NtStatus.STATUS_UNSUCCESSFUL, "the driver granted the section without its fd")
        try:
            instance_id, size, section_id, pid, uid = SECTION_REPLY.unpack(reply)
        except struct.error:
            fd.close()
            raise exception_for(NtStatus.STATUS_UNSUCCESSFUL, "unreadable section reply from the driver") from None
        self._port = port
        self._wait_lock = threading.Lock()  # a first wait's registration; never held across a sleep
        self.name = name
        self.instance_id: bytes = instance_id
        self.producer_pid: int = pid
        self.producer_uid: int = uid
        self._section_id = section_id
        self.producer = producer
        with fd:
            _check_fd(fd, size, sealed=not producer)
            prot = mmap.PROT_READ | mmap.PROT_WRITE if producer else mmap.PROT_READ
            self._map = mmap.mmap(fd.fileno(), size, mmap.MAP_SHARED, prot)
        try:
            header = decode_header(self._map)
            start = header.schema_offset
            schema = _decode_schema(
                self._map[start : start + header.schema_size], header.field_count, header.data_size, header.entry_size
            )
            self.fields: tuple[Field, ...] = schema.fields
            args = (schema.fields, schema.offsets, header.data_offset, header.data_size)
            self._reader = SectionReader(self._map, *args)
            self._snapshot = snapshot_type(schema.fields)
            if sys.byteorder == "little":
                self._view = memoryview(self._map)
                self._seq_word = self._view[SEQ_OFFSET : SEQ_OFFSET + 8].cast("Q")
            else:
                self._seq_word = _NoWord()
            self.publish = self._not_publishing
            if producer:
                self._address = libc.buffer_address(self._map)  # for the wake (a reader's waiter has its own)
                # The futex word in native order, as the kernel compares it (the page is little-endian).
                self._futex_word = memoryview(self._map)[SEQ_OFFSET : SEQ_OFFSET + 4].cast("I")
                self._writer = SectionWriter(self._map, *args)
                self._port.ioctl(IOCTL_SEAL_SECTION, _U32.pack(section_id))
                self.publish = self._writer.publisher(time.time_ns, self._wake)
        except BaseException:
            self._release()
            raise

    # --- reading ------------------------------------------------------------------------------

    # The read path, as SharedPage's: the last snapshot is kept with the `seq` it was stable at.
    # While `seq` still holds that value nothing was published, and the driver's stop moves
    # `seq` too, so the snapshot is still the section's content: a read is one 8-byte load.

    def read(self) -> Snapshot:
        """A consistent snapshot (the latch); no system call. ValueError once closed."""
        if self._seq_word[0] == self._last_seq:
            return self._last
        return self._refresh()

    def _refresh(self) -> Snapshot:
        if self._map is None:
            raise ValueError(f"section {self.name} is closed")
        seq, values = self._reader.read_seq()
        state = _STATES.get(values[2], SectionState.STOPPED)  # type: ignore[call-overload]
        snap = tuple.__new__(self._snapshot, (values[0], values[1], state, *values[3:]))
        self._last, self._last_seq = snap, seq
        return snap

    @property
    def state(self) -> SectionState:
        """running, or stopped once the producer closed or died (or the driver unloaded)."""
        if self._map is None:
            raise ValueError(f"section {self.name} is closed")
        return state_from_code(_U32.unpack_from(self._map, 16)[0])

    @property
    def closed(self) -> bool:
        return self._map is None

    # --- publishing ---------------------------------------------------------------------------

    #: `publish(**values)`: one consistent update of the fields named; the others keep their
    #: values. A value of the wrong type, out of range or too long (or an unknown name) raises
    #: ValueError and changes nothing. No system call unless a reader waits; then one FUTEX_WAKE
    #: of one waiter, whatever their number. Returns the update count. A reader's section, or a closed one, raises
    #: ValueError. (Generated per schema by SectionWriter.publisher: a call binds keywords with
    #: no dict.)
    publish: Callable[..., int]

    def _not_publishing(self, **values: object) -> int:
        raise ValueError(f"section {self.name} is not open for publishing")

    def _wake(self) -> None:
        """Wake one waiter: the woken pass the wake-up on (`futex_wait`), so a publish costs one
        system call however many wait. The publish is already visible when this runs, so a wake
        that cannot be made (ENOSYS: a machine whose futex number this library does not know)
        must not turn it into an exception: the waiters then see it at the end of their slice."""
        with contextlib.suppress(OSError):
            libc.futex_wake(self._address + SEQ_OFFSET, 1)

    # --- waiting ------------------------------------------------------------------------------

    def _baseline(self) -> int:
        """The update a wait that starts now waits past: the last one a wait returned, or on
        the first wait the section as it is. Each wait keeps its own copy, so waits running at
        once (threads, tasks) each see the publish; none takes it from another."""
        if self._seen is None:
            self._seen = self.read().updates
        return self._seen

    def _news(self, baseline: int) -> Snapshot | None:
        snap = self.read()
        if snap.state is SectionState.STOPPED or snap.updates != baseline:
            if self._seen is None or snap.updates > self._seen:
                self._seen = snap.updates
            return snap
        return None

    def _register(self) -> FutexWait:
        """The section's one waiter, registered with the driver on the first wait. Under a lock:
        two threads' first waits must share one waiter, which counts this process's sleepers."""
        with self._wait_lock:
            if not self._waiting_registered:
                self._port.ioctl(IOCTL_WAIT_SECTION, self.instance_id)
                self._waiting_registered = True
            waiter, mapping = self._waiter, self._map
            if mapping is None:
                raise ValueError(f"section {self.name} is closed")
            if waiter is None:
                what = f"section {self.name}"
                waiter = self._waiter = FutexWait(mapping, SEQ_OFFSET, WAITERS_OFFSET, self._port.hung_up, what)
            return waiter

    def wait_next(self, timeout: float | None = None, *, after: Snapshot | None = None) -> Snapshot:
        """Block until a publish newer than the last one this method returned (on the first
        call: newer than the section at the call; with `after`: newer than that snapshot), or
        the stop; return its snapshot.

        A stopped section returns at once (check `.state`). Raises IoTimeout (a TimeoutError)
        after `timeout` seconds, DeviceNotConnected if the driver dies meanwhile, ValueError when
        the section is closed before or during the wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = self._register()
        baseline = self._baseline() if after is None else after.updates
        snap = waiter.wait(lambda: self._news(baseline), deadline)
        if snap is None:
            raise IoTimeout(f"no publish to section {self.name} within {timeout} s")
        return snap

    async def next_update(self) -> Snapshot:
        """The asyncio form of `wait_next()`: every task waiting on this section shares one
        watcher thread, however many there are. Bound it with `asyncio.timeout()`."""
        waiter = self._register()
        baseline = self._baseline()
        return await waiter.wait_async(lambda: self._news(baseline))

    # --- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap; a producer's section is stopped first (its readers see state stopped)."""
        if self._map is None:
            return
        if self._writer is not None:
            # A closed or dead device raises: its cleanup has stopped the section already.
            with contextlib.suppress(NtStatusError, ValueError):
                self._port.ioctl(IOCTL_CLOSE_SECTION, _U32.pack(self._section_id))
        self._release()

    def _release(self) -> None:
        self.publish = self._not_publishing
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.close()  # wakes this section's waiters in other threads: they see it closed
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
        futex_word, self._futex_word = self._futex_word, None
        if futex_word is not None:
            futex_word.release()
        word, self._seq_word = self._seq_word, _CLOSED
        if isinstance(word, memoryview):
            word.release()
            self._view.release()
        mapping, self._map = self._map, None
        if mapping is not None:
            # A caller's memoryview of it still alive: the GC unmaps it when that goes.
            with contextlib.suppress(BufferError):
                mapping.close()

    def __enter__(self) -> Section:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "producer" if self.producer else "reader"
        return f"<Section {self.name!r} {role}{' closed' if self.closed else ''}>"


def new_fields(fields: Iterable[Field]) -> tuple[Field, ...]:
    """The schema a producer asks for, checked here first (ValueError, TypeError)."""
    return layout(fields).fields
