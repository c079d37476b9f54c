"""The C library calls Python's `os` module does not offer, in one place (ctypes).

Theory of operation. `ctypes.CDLL(None)` is loaded once, here, with `use_errno`, and each call
is wrapped so that it raises `OSError` with the C errno the way the `os` module's own
functions do; no other module touches ctypes. What is here and why:

* `mlock(2)`: the page is locked in RAM, as the seed's non-paged pool is;
* `timerfd_create(2)` / `timerfd_settime(2)`: `os.timerfd_create` only arrives in Python 3.13;
* `prctl(PR_SET_TIMERSLACK)`: how late the kernel may wake the driver's timed waits;
* `futex(2)` FUTEX_WAIT / FUTEX_WAKE on a word of a shared mapping: how readers of a section or
  of the page sleep until a publish or a tick, the waker waking one and each woken reader
  waking two more (the `os` module has no futex);
* `buffer_address`: where a (possibly read-only) buffer lives, for the seed's "address of the
  page" contract; `ctypes.c_char.from_buffer` insists on a writable buffer;
* `statfs(2)`'s f_type (`filesystem_name`), which `os.statvfs` does not report: whether a
  directory is on a pseudo filesystem that can hold no socket.

ctypes releases the GIL around each foreign call, so none of these holds up another thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from typing import Final

TFD_TIMER_ABSTIME: Final = 1
_PR_SET_TIMERSLACK: Final = 29


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _PyBuffer(ctypes.Structure):
    """CPython's `Py_buffer`, filled by PyObject_GetBuffer."""

    _fields_ = [
        ("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    ]  # fmt: skip


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mlock.restype = ctypes.c_int
_libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.timerfd_create.restype = ctypes.c_int
_libc.timerfd_settime.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p)
_libc.timerfd_settime.restype = ctypes.c_int
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_libc.prctl.restype = ctypes.c_int
_libc.statfs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
_libc.statfs.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long

#: futex(2)'s syscall number (glibc has no wrapper); None where this module does not know it.
_SYS_FUTEX: Final = {"x86_64": 202, "aarch64": 98, "riscv64": 98}.get(platform.machine())
_FUTEX_WAIT: Final = 0  # shared, not FUTEX_PRIVATE_FLAG: the word lives in a memfd mapped by several processes
_FUTEX_WAKE: Final = 1
FUTEX_AVAILABLE: Final = _SYS_FUTEX is not None


def _check(result: int) -> int:
    """`result`, or the OSError of the errno the call left when it returned -1."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def buffer_address(obj: object) -> int:
    """The address of the memory behind `obj` (any object with the buffer protocol)."""
    view = _PyBuffer()
    if ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(obj), ctypes.byref(view), 0) != 0:
        raise BufferError("object does not export a buffer")
    try:
        return int(view.buf)
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


def mlock(address: int, length: int) -> None:
    """mlock(2): keep `length` bytes at `address` in RAM; OSError (EPERM, ENOMEM) when refused."""
    _check(_libc.mlock(ctypes.c_void_p(address), length))


def timerfd_create(clock_id: int, flags: int) -> int:
    """timerfd_create(2): a new timerfd on `clock_id`, owned by the caller."""
    return _check(_libc.timerfd_create(clock_id, flags))


def timerfd_settime(fd: int, flags: int, value_ns: int) -> None:
    """timerfd_settime(2) of a one-shot timer: fire at `value_ns` (relative, or absolute with
    TFD_TIMER_ABSTIME); 0 disarms, as an all-zero it_value does."""
    spec = _Itimerspec()
    spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(value_ns, 1_000_000_000)
    _check(_libc.timerfd_settime(fd, flags, ctypes.byref(spec), None))


#: statfs(2) f_type magic numbers (linux/magic.h) of filesystems where no socket can be bound.
_PSEUDO_FILESYSTEMS: Final = {
    0x9FA0: "proc", 0x62656572: "sysfs", 0x63677270: "cgroup2", 0x27E0EB: "cgroup", 0x1CD1: "devpts",
    0x73636673: "securityfs", 0x64626720: "debugfs", 0x74726163: "tracefs", 0xCAFE4A11: "bpf",
    0x6165676C: "pstore", 0xDE5E81E4: "efivarfs", 0x62656570: "configfs", 0x65735543: "fusectl",
    0xF97CFF8C: "selinuxfs",
}  # fmt: skip


def filesystem_name(path: str) -> str | None:
    """The name of the pseudo filesystem `path` is on (proc, sysfs...), or None for any other.
    Raises OSError as statfs(2) does."""
    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86-64; f_type first
    _check(_libc.statfs(os.fsencode(path), buffer))
    f_type = ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF
    return _PSEUDO_FILESYSTEMS.get(f_type)


def set_timer_slack(slack_ns: int) -> None:
    """prctl(PR_SET_TIMERSLACK): how late the kernel may wake this thread's timed waits."""
    _check(_libc.prctl(_PR_SET_TIMERSLACK, slack_ns, 0, 0, 0))


#: What `futex_wait` saw: woken by a FUTEX_WAKE (the caller owes the wake-up chain its pass-on,
#: docs/section-abi.md), the word already differed or a signal came (EAGAIN, EINTR), or the timeout.
FUTEX_WOKEN: Final = 0
FUTEX_CHANGED: Final = 1
FUTEX_TIMED_OUT: Final = 2


def futex_wait(address: int, expected: int, timeout_ns: int | None) -> int:
    """FUTEX_WAIT: sleep while the u32 at `address` holds `expected`, at most `timeout_ns`.

    FUTEX_WOKEN when a FUTEX_WAKE ended the sleep, FUTEX_CHANGED when
    the word already differed (EAGAIN) or a signal interrupted (EINTR; the caller re-reads the
    word anyway), FUTEX_TIMED_OUT. Works on a PROT_READ shared mapping: the kernel only reads
    the word (futex(2)). The GIL is released while it sleeps.
    """
    if _SYS_FUTEX is None:
        raise OSError(errno.ENOSYS, "futex: unknown syscall number on this machine")
    spec = None
    if timeout_ns is not None:
        spec = _Timespec(*divmod(max(0, timeout_ns), 1_000_000_000))
    result = _libc.syscall(
        ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(address), ctypes.c_int(_FUTEX_WAIT),
        ctypes.c_uint32(expected & 0xFFFFFFFF), None if spec is None else ctypes.byref(spec), None, ctypes.c_int(0),
    )  # fmt: skip
    if result == 0:
        return FUTEX_WOKEN
    err = ctypes.get_errno()
    if err in (errno.EAGAIN, errno.EINTR):
        return FUTEX_CHANGED
    if err == errno.ETIMEDOUT:
        return FUTEX_TIMED_OUT
    raise OSError(err, os.strerror(err))


def futex_wake(address: int, count: int = 0x7FFFFFFF) -> int:
    """FUTEX_WAKE: wake up to `count` waiters on the u32 at `address`; how many were woken."""
    if _SYS_FUTEX is None:
        raise OSError(errno.ENOSYS, "futex: unknown syscall number on this machine")
    return int(
        _check(
            _libc.syscall(
                ctypes.c_long(_SYS_FUTEX),
                ctypes.c_void_p(address),
                ctypes.c_int(_FUTEX_WAKE),
                ctypes.c_int(count),
                None,
                None,
                ctypes.c_int(0),
            )
        )
    )
