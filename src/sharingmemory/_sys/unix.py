"""The socket system calls both ends of the device share: SEQPACKET, SCM_RIGHTS, SO_PEERCRED.

Theory of operation: thin, named after the calls they make (recvmsg, sendmsg, SO_PEERCRED), so a
reader who knows the man pages recognises them. Two rules are enforced here, once, for the
server and the client alike:

* Every fd that arrives is received close-on-exec (MSG_CMSG_CLOEXEC; `socket.recv_fds` cannot
  pass it, CPython gh-107898) and is either handed to the caller, who then owns it, or closed
  before the function returns. MSG_CTRUNC (the kernel dropped fds that did not fit) is reported.
* A message longer than the protocol's maximum is detected without being allocated: the buffer
  is one byte larger than the maximum, and MSG_TRUNC or a full buffer means "oversized".
"""

from __future__ import annotations

import array
import socket
import struct
from typing import NamedTuple

from .._defs import MAX_MESSAGE_SIZE
from .fds import Fd

_UCRED = struct.Struct("3i")
# Plain ints: the socket module's flags are IntFlag members, whose `&` costs a Python call on a
# path that runs for every message.
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
_INT_SIZE = array.array("i").itemsize
_MAX_FDS = 4  # room for a few fds, so a sender's extra fds are received (and closed), not lost
_ANCILLARY_SIZE = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)


class Received(NamedTuple):
    """One message and the fds that came with it; `oversized` and `fds_truncated` say the
    message broke a limit (its data is then not to be trusted)."""

    data: bytes
    fds: list[Fd]
    oversized: bool
    fds_truncated: bool


def seqpacket_socket() -> socket.socket:
    """A close-on-exec AF_UNIX SOCK_SEQPACKET socket."""
    return socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer at connect time, from SO_PEERCRED (unix(7))."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def receive(sock: socket.socket) -> Received:
    """One message and the fds that came with it. Raises OSError as recvmsg does; an empty
    `data` with no fds is end of file."""
    data, ancdata, flags, _addr = sock.recvmsg(MAX_MESSAGE_SIZE + 1, _ANCILLARY_SIZE, _MSG_CMSG_CLOEXEC)
    fds: list[Fd] = []
    for level, kind, payload in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            usable = len(payload) - len(payload) % _INT_SIZE
            fds.extend(map(Fd, array.array("i", payload[:usable])))
    oversized = bool(flags & _MSG_TRUNC) or len(data) > MAX_MESSAGE_SIZE
    return Received(data, fds, oversized, bool(flags & _MSG_CTRUNC))


def send(sock: socket.socket, data: bytes, fd: Fd | None = None) -> None:
    """Send one message, with `fd` attached by SCM_RIGHTS when given (the caller keeps it)."""
    if fd is None:
        sock.sendmsg([data])
    else:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd.fileno()]))])
