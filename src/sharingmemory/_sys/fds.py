"""An owned file descriptor: whoever holds the `Fd` owns the fd, and no docstring needs to say so.

Theory of operation. A bare int cannot say who must close it, so every fd that crosses a
function boundary in this package travels as an `Fd` (jeepney's `WrappedFD`, trio's
`_FdHolder`):

* `close()` closes it once; later calls do nothing, so a reused fd number is never closed twice
  (the number is forgotten before `os.close` runs, so not even a failing close can repeat);
* `detach()` hands the number on and gives up ownership (to `mmap`, a `socket`, another owner);
* an `Fd` collected while still open closes its fd and emits a `ResourceWarning`, as an unclosed
  file does: a leak becomes visible (and an error under the test suite's warning filter)
  instead of silently holding a descriptor for ever.
"""

from __future__ import annotations

import contextlib
import os
import warnings


class Fd:
    """One open file descriptor and the duty to close it. A context manager."""

    __slots__ = ("__weakref__", "_fd")

    def __init__(self, fd: int) -> None:
        """Take ownership of `fd`, an open descriptor number."""
        self._fd = -1  # first: __del__ of a refused argument finds nothing to close
        if type(fd) is not int or fd < 0:  # bool is an int, and never a descriptor
            raise ValueError(f"not a file descriptor: {fd!r}")
        self._fd = fd

    def fileno(self) -> int:
        """The number, still owned here; ValueError once closed or detached."""
        if self._fd < 0:
            raise ValueError("I/O operation on a closed Fd")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def detach(self) -> int:
        """Give up ownership and return the number: the caller must close it now."""
        fd = self.fileno()
        self._fd = -1
        return fd

    def dup(self) -> Fd:
        """A new, close-on-exec descriptor of the same open file, owned by the returned Fd."""
        return Fd(os.dup(self.fileno()))

    def close(self) -> None:
        """Close the fd; idempotent. An error from close(2) (EIO, say) is not raised: the number
        is released either way (close(2), "Dealing with error returns"), so there is nothing a
        caller could retry."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Fd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._fd >= 0:
            fd = self._fd
            self.close()  # first: a warning turned into an error must not keep the fd open
            warnings.warn(f"unclosed file descriptor {fd}", ResourceWarning, stacklevel=1, source=self)

    def __repr__(self) -> str:
        return f"<Fd {self._fd}>" if self._fd >= 0 else "<Fd closed>"


def close_all(fds: list[Fd]) -> None:
    """Close every fd of `fds`; for the paths that refuse what arrived."""
    for fd in fds:
        fd.close()
