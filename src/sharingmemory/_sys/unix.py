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
import errno
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
#: The most fds one SCM_RIGHTS message can carry (SCM_MAX_FD, include/net/scm.h). A receiver
#: that must never run the final close of a peer's fd receives all of them: the fds that do not
#: fit the control buffer are dropped by the kernel *in the receiver's own recvmsg* (fput).
SCM_MAX_FD = 253
#: unix(7) SO_PASSRIGHTS (Linux 6.16): 0 makes the kernel refuse SCM_RIGHTS to this socket with
#: EPERM at the sender, so no fd ever reaches us; accepted sockets inherit it from the listener.
SO_PASSRIGHTS = 83
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_MSG_PEEK_DONTWAIT = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
#: The control buffer for every fd one message can carry, computed once: the server receives
#: each request with it (a CMSG_SPACE call per message is a C call for a constant).
_ALL_FDS_ANCILLARY_SIZE = socket.CMSG_SPACE(SCM_MAX_FD * _INT_SIZE)
_QUEUED_ANCILLARY_SIZE = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(SCM_MAX_FD * _INT_SIZE)


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


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """The peer's supplementary groups at connect time, from SO_PEERGROUPS (Linux 4.13+): what
    `usermod -aG` gives a user, which SO_PEERCRED's one gid does not show. Empty where the
    kernel lacks the option."""
    for count in (64, 65536):  # NGROUPS_MAX is 65536; ERANGE says the first guess was short
        try:
            raw = sock.getsockopt(_SOL_SOCKET, SO_PEERGROUPS, count * _INT_SIZE)
        except OSError as err:
            if err.errno == errno.ERANGE:
                continue
            if err.errno in (errno.ENOPROTOOPT, errno.EINVAL):
                return frozenset()
            raise
        return frozenset(array.array("i", raw[: len(raw) - len(raw) % _INT_SIZE]))
    return frozenset()


def refuse_passed_fds(sock: socket.socket) -> bool:
    """Set SO_PASSRIGHTS to 0 on `sock`: whether the kernel has the option (6.16+)."""
    try:
        sock.setsockopt(_SOL_SOCKET, SO_PASSRIGHTS, 0)
    except OSError as err:
        if err.errno in (errno.ENOPROTOOPT, errno.EINVAL):
            return False
        raise
    return True


def next_carries_fds(sock: socket.socket) -> bool:
    """Whether the next queued message carries fds, without taking them: a MSG_PEEK with no
    control buffer reports MSG_CTRUNC and drops only the peeked duplicates, whose fput is never
    the final one (the queued message still holds its references). BlockingIOError when empty."""
    _data, _anc, flags, _addr = sock.recvmsg(1, 0, _MSG_PEEK_DONTWAIT)
    return bool(flags & _MSG_CTRUNC)


def receive(sock: socket.socket, *, max_fds: int = _MAX_FDS) -> Received:
    """One message and the fds that came with it (up to `max_fds`; the kernel closes the rest).
    Raises OSError as recvmsg does; an empty `data` with no fds is end of file."""
    if max_fds == _MAX_FDS:
        ancillary = _ANCILLARY_SIZE
    elif max_fds == SCM_MAX_FD:
        ancillary = _ALL_FDS_ANCILLARY_SIZE
    else:
        ancillary = socket.CMSG_SPACE(max_fds * _INT_SIZE)
    data, ancdata, flags, _addr = sock.recvmsg(MAX_MESSAGE_SIZE + 1, ancillary, _MSG_CMSG_CLOEXEC)
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


def stop_receiving(sock: socket.socket) -> None:
    """shutdown(SHUT_RD), so that the peer's sends fail with EPIPE and the queue can only shrink,
    and SO_PASSCRED, so that `receive_queued` can tell a queued message from end of file: after
    SHUT_RD both read as 0 bytes, but every queued message then carries SCM_CREDENTIALS."""
    sock.shutdown(socket.SHUT_RD)
    sock.setsockopt(_SOL_SOCKET, socket.SO_PASSCRED, 1)


def receive_queued(sock: socket.socket) -> Received | None:
    """The next message still queued on a socket after `stop_receiving`, with every fd it
    carries (up to SCM_MAX_FD, all a message can hold), or None once the queue is empty."""
    data, ancdata, flags, _addr = sock.recvmsg(MAX_MESSAGE_SIZE + 1, _QUEUED_ANCILLARY_SIZE, _MSG_CMSG_CLOEXEC)
    if not ancdata:
        return None
    fds: list[Fd] = []
    for level, kind, payload in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            usable = len(payload) - len(payload) % _INT_SIZE
            fds.extend(map(Fd, array.array("i", payload[:usable])))
    return Received(data, fds, bool(flags & _MSG_TRUNC) or len(data) > MAX_MESSAGE_SIZE, bool(flags & _MSG_CTRUNC))


def tick_channel() -> tuple[Fd, Fd]:
    """(the driver's end, the client's end) of a one-way wake-up channel: a SEQPACKET
    socketpair whose driver end is shut for reading and refuses fds.

    Why not an eventfd or a pipe: the driver must never write to an open file description a
    client holds (an eventfd's copy shares its O_NONBLOCK flag and counter), nor to an object a
    client can lock: pipe_write(2) takes the pipe's mutex even with O_NONBLOCK, and a client
    that splice(2)s its read end into a full blocking socket holds that mutex for as long as it
    likes (tried: the driver's write then waited). A unix socket's sendmsg with MSG_DONTWAIT
    takes only the peer's state spinlock; a full buffer is EAGAIN, a closed peer EPIPE. Shut for
    reading, our end cannot be sent anything (the client's send gets EPIPE), so closing it never
    drops a client's fd either. The small send buffer bounds the wake-ups waiting to be read.
    Both ends are O_NONBLOCK, each on its own open file description: the writer uses
    os.write(2), which on a non-blocking socket is a MSG_DONTWAIT send.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        ours.shutdown(socket.SHUT_RD)
        refuse_passed_fds(ours)
        ours.setsockopt(_SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel's minimum: a few messages
        return Fd(ours.detach()), Fd(theirs.detach())
    except BaseException:
        ours.close()
        theirs.close()
        raise
