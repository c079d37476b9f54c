"""Who answered: the checks a client makes before it believes anything the driver sends.

Theory of operation. The socket path is only a name in a directory, and whoever can create
files in that directory can serve a fake driver there (a user who pre-creates another user's
`/tmp/sharingmemory-$UID/` could, before these checks). So a client takes nothing on trust:

* the directory: owned by root, by this user or by a uid the caller trusts, and not writable
  by anyone else, unless it is sticky (then only an entry's owner may rename or remove it,
  inode(7)), so no one else can put their own socket under the name;
* the listener: SO_PEERCRED gives the uid that called listen(2) (unix(7)); it must be root,
  this user or a trusted uid; this is the check that matters, the directory's only narrows
  the window before connect;
* the page fd: a memfd whose F_GET_SEALS shows every seal the ABI promises (shrink, grow,
  future-write, seal: fcntl(2)), checked before its size, which the seals then keep: an
  unsealed page could be truncated under the mapping, and the next read would be SIGBUS;
* the tick fd: the driver's end of a SEQPACKET channel (what drivers send since the tick
  eventfd was retired: a client could block an eventfd it shared with the driver), or, from an
  older driver, an eventfd or a pipe's read end: the only things poll(2) and a 4096-byte
  read(2) treat as "a tick came".

The values inside the page are checked where they are used (`_defs.page`): a trusted driver
never writes garbage, but a bug should give a typed error, not a traceback.

Every failure raises `UntrustedDevice`, whose message says what was found.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from collections.abc import Iterable
from typing import Final

from .._defs import PAGE_SEALS, PAGE_SIZE, UntrustedDevice
from .._sys import unix

_EVENTFD_LINK: Final = "anon_inode:[eventfd]"
_DEFAULT_UIDS: dict[int, frozenset[int]] = {}


def host_root_alias(uid_map: str | None = None, overflow_uid: str | None = None) -> frozenset[int]:
    """The uid the host's root appears as here: none in a namespace that maps it (the host
    itself maps every uid), else the overflow uid (65534), as SO_PEERCRED and stat(2) report
    every uid the namespace does not map (user_namespaces(7)). A client in a pod with its own
    user namespace (Kubernetes `hostUsers: false`) thus sees the node's root driver, and its
    root-owned directory, as 65534; other unmapped host uids look the same, which is why the
    directory (mounted into the pod by the operator) must also pass its checks."""
    try:
        if uid_map is None:
            with open("/proc/self/uid_map") as lines:
                uid_map = lines.read()
        for line in uid_map.splitlines():
            _inside, outside, count = (int(field) for field in line.split())
            if outside <= 0 < outside + count:
                return frozenset()
        if overflow_uid is None:
            with open("/proc/sys/kernel/overflowuid") as value:
                overflow_uid = value.read()
        return frozenset({int(overflow_uid)})
    except (OSError, ValueError):  # no /proc: no namespace to see through
        return frozenset()


def trusted_uids(extra: int | Iterable[int] | None) -> frozenset[int]:
    """Root (as this user namespace sees it), this process's effective uid, and the uids the
    caller named."""
    euid = os.geteuid()
    if extra is None:
        default = _DEFAULT_UIDS.get(euid)
        if default is None:  # once per euid: every open without trusted_uid asks for this set
            default = _DEFAULT_UIDS[euid] = frozenset({0, euid}) | host_root_alias()
        return default
    uids = {0, euid} | host_root_alias()
    if isinstance(extra, bool):
        raise TypeError("trusted_uid must be a uid (an int) or an iterable of uids, not a bool")
    items = [extra] if isinstance(extra, int) else list(extra)
    for uid in items:
        if type(uid) is not int:
            raise TypeError(f"trusted_uid must be a uid (an int), not {type(uid).__name__}")
        if not 0 <= uid <= 0xFFFFFFFE:  # (uid_t)-1 means "no uid" to the kernel
            raise ValueError(f"trusted_uid {uid} is not a uid")
    return frozenset(uids.union(items))


def check_directory(path: str, uids: frozenset[int]) -> None:
    """Refuse a socket whose directory another user owns or may write to. A directory that
    does not exist is left to connect(2), which reports it as no driver."""
    # rpartition, not os.path.dirname, for an absolute path: this runs at every open.
    directory = (path.rpartition("/")[0] or "/") if path.startswith("/") else os.path.dirname(os.path.abspath(path))
    try:
        info = os.stat(directory)  # follows a symlink: the directory that holds the name counts
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as err:
        raise UntrustedDevice(f"cannot check the directory of {path}: {err.strerror}") from err
    if info.st_uid not in uids:
        raise UntrustedDevice(f"{directory} is owned by uid {info.st_uid}, not by root or a trusted uid")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise UntrustedDevice(
            f"{directory} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}): "
            "anyone could replace the socket"
        )


def check_peer(sock: socket.socket, path: str, uids: frozenset[int]) -> None:
    """Refuse a listener run by a uid that is not root, this user or a trusted one."""
    try:
        _pid, uid, _gid = unix.peer_credentials(sock)
    except OSError as err:
        raise UntrustedDevice(f"cannot tell who serves {path}: {err.strerror}") from err
    if uid not in uids:
        raise UntrustedDevice(
            f"{path} is served by uid {uid}, not by root or a trusted uid (open_device(trusted_uid=...) trusts it)"
        )


def check_page_fd(fd: int) -> None:
    """Refuse a page fd that is not a sealed memfd of exactly one page."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as err:  # EINVAL: not a file that can carry seals at all
        raise UntrustedDevice(f"the page fd cannot carry seals ({err.strerror}): not the driver's memfd") from err
    if seals & PAGE_SEALS != PAGE_SEALS:
        raise UntrustedDevice(f"the page fd has seals 0x{seals:x}, the ABI promises 0x{PAGE_SEALS:x}")
    size = os.fstat(fd).st_size
    if size != PAGE_SIZE:
        raise UntrustedDevice(f"the page fd is {size} bytes long, the ABI says {PAGE_SIZE}")


def check_tick_fd(fd: int) -> None:
    """Refuse a tick fd that is not a SEQPACKET channel, an eventfd or the read end of a pipe."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISSOCK(mode):
        with socket.socket(fileno=os.dup(fd)) as channel:  # a dup: closing it leaves `fd` open
            if channel.family != socket.AF_UNIX or channel.type != socket.SOCK_SEQPACKET:
                raise UntrustedDevice(f"the tick fd is a {channel.family!r} {channel.type!r} socket, not a channel")
        return
    if stat.S_ISFIFO(mode):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
            raise UntrustedDevice("the tick fd is a pipe's write end, not its read end")
        return
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as err:
        raise UntrustedDevice(f"cannot tell what the tick fd is: {err.strerror}") from err
    if link != _EVENTFD_LINK:
        raise UntrustedDevice(f"the tick fd is {link!r}, not a channel, an eventfd or a pipe")
