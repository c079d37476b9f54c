"""The page's memory: a sealed, locked memfd of one page (the seed's non-paged pool + MDL).

Theory of operation: `SealedMemory` owns three things, acquired in this order and released in
the reverse one: the memfd, the driver's writable shared mapping of it, and the mlock on that
mapping. Seals are added after the driver has mapped it: F_SEAL_SHRINK | F_SEAL_GROW |
F_SEAL_FUTURE_WRITE | F_SEAL_SEAL. FUTURE_WRITE is the one that lets the driver keep its own
writable mapping while no one else can ever get one (memfd_create(2), fcntl(2)); plain
F_SEAL_WRITE would fail with EBUSY while that mapping exists. The seals, not the fd's open mode,
are what protect the page: any holder of the fd can reopen it through /proc/self/fd/N.

Clients get a separate O_RDONLY open file of the same memfd (`open_reader_fd` dups it), so
even the fd they receive cannot be used to write; the seals back that up.

This module does no socket I/O and knows nothing of handles: the driver decides when a page
exists, this module only makes one correctly and frees it completely.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
from typing import Final

from .._defs import PAGE_SIZE
from .._sys import libc

log = logging.getLogger("sharingmemory.driver")

MFD_NOEXEC_SEAL: Final = 0x0008  # linux 6.3; refused with EINVAL by older kernels
F_SEAL_FUTURE_WRITE: Final = 0x0010  # linux 5.1; not exported by Python's fcntl module
PAGE_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL


def _memfd_create(name: str) -> int:
    base = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        return os.memfd_create(name, base | MFD_NOEXEC_SEAL)
    except OSError as err:
        if err.errno != 22:  # EINVAL: a kernel without MFD_NOEXEC_SEAL
            raise
        return os.memfd_create(name, base)


class SealedMemory:
    """One sealed page: the memfd, the driver's writable mapping, and its lock in RAM.

    `buffer` is the driver's writable view; `close()` is idempotent, never raises, and releases
    in reverse order (mapping, then fd). A failure half-way through construction releases what
    was already acquired before the exception leaves.
    """

    _fd: int = -1
    _reader_fd: int = -1
    _map: mmap.mmap | None = None
    locked: bool = False

    def __init__(self, name: str = "SharingMemory") -> None:
        try:
            self._fd = _memfd_create(name)
            log.debug("memfd %d created (%d bytes)", self._fd, PAGE_SIZE)
            os.ftruncate(self._fd, PAGE_SIZE)
            self._map = mmap.mmap(self._fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            log.debug("memfd %d mapped writable into the driver", self._fd)
            self.locked = self._lock(self._map)
            fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, PAGE_SEALS)
            log.debug("memfd %d sealed (shrink, grow, future-write, seal)", self._fd)
            # One O_RDONLY open file for all clients, opened once: each client gets a dup of it,
            # so a map costs a dup(2), not a path walk through /proc.
            self._reader_fd = os.open(f"/proc/self/fd/{self._fd}", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _lock(mapping: mmap.mmap) -> bool:
        """mlock the page as the seed's non-paged pool is; a refusal is a warning, not a failure."""
        try:
            libc.mlock(libc.buffer_address(mapping), PAGE_SIZE)
        except OSError as err:
            log.warning("page not locked in memory: mlock failed: %s (see RLIMIT_MEMLOCK)", err.strerror)
            return False
        log.debug("page locked in memory (mlock)")
        return True

    @property
    def fd(self) -> int:
        """The memfd, owned by this object: do not close it; -1 once closed."""
        return self._fd

    @property
    def buffer(self) -> mmap.mmap:
        """The driver's writable mapping; raises ValueError once closed."""
        if self._map is None:
            raise ValueError("SealedMemory is closed")
        return self._map

    def open_reader_fd(self) -> int:
        """A new O_RDONLY, close-on-exec descriptor of the page for one client; the caller owns it."""
        if self._reader_fd < 0:
            raise ValueError("SealedMemory is closed")
        return os.dup(self._reader_fd)  # non-inheritable, as every fd Python creates

    def close(self) -> None:
        """Unmap (which also unlocks) and close the memfd. Idempotent; never raises."""
        mapping, self._map = self._map, None
        if mapping is not None:
            try:
                mapping.close()
                log.debug("page unmapped from the driver")
            except (BufferError, OSError) as err:  # an export still alive: the GC frees it later
                log.warning("page mapping not closed: %s", err)
        reader, self._reader_fd = self._reader_fd, -1
        if reader >= 0:
            os.close(reader)
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
            log.debug("memfd %d closed", fd)
