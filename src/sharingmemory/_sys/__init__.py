"""Layer 2, the system calls both ends share, named after the calls they make.

`fds`: the `Fd` that owns a descriptor; `unix`: SOCK_SEQPACKET, SCM_RIGHTS and SO_PEERCRED;
`libc`: the few C calls the `os` module lacks (the one home of ctypes). No policy lives here:
what a message means, and whom to trust, is decided above.
"""

from .fds import Fd, close_all

__all__ = ["Fd", "close_all"]
