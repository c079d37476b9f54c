"""The device's socket file: its path, its directory, and the lock that makes it one driver's.

Theory of operation. The seed's `IoCreateDevice` fails when the name exists; ours has to be as
strict about a path in a shared filesystem. `SocketFile` owns three things: the directory it may
create (mode 0750 by default), the lock file `PATH.lock`, and the bound socket file, and it
releases them in reverse. The rules, in one place for the server and for `serve
--check-config` (which applies them without creating anything):

* the path is absolute once resolved and fits `sockaddr_un.sun_path`;
* the directory is a real directory (not a symlink), owned by us or root, and not writable by
  everyone unless sticky;
* an existing file at the path is replaced only if it is a socket, only while we hold the
  lock, and only if nothing answers at it (connect(2) is refused): the lock alone is not enough,
  since anyone who may write the directory can delete the lock file of a live driver, and the
  socket may be another program's;
* the lock file is a regular file, opened without following a symlink and without blocking (a
  FIFO planted there would block open(2) until a writer comes).

The lock is an flock held for the server's life; the kernel drops it when the process dies
however it dies, so the next driver reclaims the socket, and a live driver is never displaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import stat
import struct

from .._defs import DeviceConfigurationError
from .._sys import libc

log = logging.getLogger("sharingmemory.server")

_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1
_LOCK_ATTEMPTS = 5


def check_socket_path(path: str) -> str:
    """An absolute, normalised socket path, or DeviceConfigurationError saying what is wrong."""
    if not path or "\0" in path:
        raise DeviceConfigurationError(f"invalid socket path {path!r}")
    path = os.path.abspath(path)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise DeviceConfigurationError(f"socket path is longer than {_SUN_PATH_MAX} bytes: {path}")
    return path


def _refuse_unsafe_directory(directory: str, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise DeviceConfigurationError(f"{directory} is not a directory (a symlink is refused too)")
    if info.st_uid not in (0, os.getuid()):
        raise DeviceConfigurationError(f"{directory} belongs to uid {info.st_uid}; refusing to serve from it")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise DeviceConfigurationError(f"{directory} is writable by everyone; refusing to serve from it")


def _refuse_non_socket(path: str) -> bool:
    """Whether a stale socket exists at `path`; DeviceConfigurationError if anything else does,
    a live listener included."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        raise DeviceConfigurationError(f"{path} exists and is not a socket; refusing to replace it")
    holder = _live_listener(path)
    if holder is not None:
        raise DeviceConfigurationError(f"{path} is in use ({holder}); refusing to replace it")
    return True


def _live_listener(path: str) -> str | None:
    """Who listens at the socket `path` (a description), or None when it is stale: connect(2)
    to a socket nobody holds any more fails with ECONNREFUSED, whatever its type. Non-blocking,
    so a listener with a full backlog (EAGAIN) answers "live" at once instead of making us wait."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return None
    except FileNotFoundError:
        return None
    except OSError as err:  # EPROTOTYPE: a live socket of another type; EAGAIN: a full backlog
        return f"a live socket answers: {err.strerror}"
    else:
        pid, uid, _gid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return f"a live listener, pid {pid} uid {uid}"
    finally:
        probe.close()


def prepare_directory(directory: str, mode: int, *, group: int | None = None, enforce: bool = False) -> None:
    """Create the socket's directory (with `mode`, and `group` when given), or refuse one
    another user could tamper with. An existing directory is never changed (it may be /run or
    /tmp): with `enforce` (the mode or group was asked for explicitly) one whose mode or group
    differs is refused, saying what it has, instead of being silently used as it is."""
    try:
        os.mkdir(directory, mode)
        if group is not None:
            os.chown(directory, -1, group)
        os.chmod(directory, mode)  # mkdir's mode is filtered by the umask
        log.debug("directory %s created (mode %o)", directory, mode)
        return
    except FileExistsError:
        pass
    except OSError as err:
        raise DeviceConfigurationError(f"cannot create socket directory {directory}: {err.strerror}") from err
    info = os.lstat(directory)
    _refuse_unsafe_directory(directory, info)
    if enforce:
        _refuse_other_mode(directory, info, mode, group)


def _refuse_other_mode(directory: str, info: os.stat_result, mode: int, group: int | None) -> None:
    have = stat.S_IMODE(info.st_mode)
    if have != mode:
        raise DeviceConfigurationError(
            f"{directory} exists with mode {have:04o}, not the {mode:04o} asked for; "
            "chmod it, or remove it and let the driver create it"
        )
    if group is not None and info.st_gid != group:
        raise DeviceConfigurationError(
            f"{directory} exists with group {info.st_gid}, not {group}; "
            "chgrp it, or remove it and let the driver create it"
        )


def _refuse_unusable_filesystem(directory: str) -> None:
    """A directory on a filesystem that holds no sockets (proc, sysfs, read-only) is refused by
    --check-config as bind(2) or mkdir(2) would refuse it, even for root, whom access(2) lets
    "write" almost anywhere."""
    probe = directory
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    kind = libc.filesystem_name(probe)
    if kind is not None:
        raise DeviceConfigurationError(f"{directory} is on {kind}, which holds no sockets")
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        raise DeviceConfigurationError(f"{directory} is on a read-only filesystem")


def check_socket_location(path: str, *, dir_mode: int = 0o750, group: int | None = None, enforce: bool = False) -> str:
    """The checks `SocketFile` makes, made without creating, locking or unlinking anything (for
    `serve --check-config`); returns the resolved path."""
    path = check_socket_path(path)
    directory = os.path.dirname(path)
    _refuse_unusable_filesystem(directory)
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        parent = os.path.dirname(directory)
        if not os.path.isdir(parent):
            raise DeviceConfigurationError(f"cannot create socket directory {directory}: {parent} is missing") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DeviceConfigurationError(f"cannot create socket directory {directory}: permission denied") from None
        return path
    _refuse_unsafe_directory(directory, info)
    if enforce:
        _refuse_other_mode(directory, info, dir_mode, group)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DeviceConfigurationError(f"cannot create the socket in {directory}: permission denied")
    _refuse_non_socket(path)
    return path


class SocketFile:
    """The bound socket file and its lock file (`PATH.lock`), which makes one driver per path.

    Construction prepares the directory, takes the lock (or raises, naming the pid of the driver
    that holds it) and removes a stale socket; `bind` binds and sets the mode; `close` unlinks
    the socket only if it is still ours, then the lock file, and is idempotent.
    """

    _lock_fd: int = -1
    _inode: tuple[int, int] | None = None

    def __init__(self, path: str, *, dir_mode: int, group: int | None = None, enforce: bool = False) -> None:
        self.path = path
        self.lock_path = path + ".lock"
        self.group = group
        prepare_directory(os.path.dirname(path), dir_mode, group=group, enforce=enforce)
        self._take_lock()
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        try:
            stale = _refuse_non_socket(path)
        except DeviceConfigurationError:
            self.close()
            raise
        if stale:
            os.unlink(path)
            log.info("stale socket %s reclaimed (its driver is gone)", path)

    def bind(self, sock: socket.socket, mode: int) -> None:
        """Bind `sock` at the path with `mode`. The umask is narrowed around bind(2), so the
        socket never exists with a wider mode, not even until the chmod (the server is single
        threaded while it starts, so the process-wide umask is ours to borrow)."""
        previous = os.umask(0o777 & ~mode)
        try:
            sock.bind(self.path)
            if self.group is not None:
                os.chown(self.path, -1, self.group)
            os.chmod(self.path, mode)
        except OSError as err:
            raise DeviceConfigurationError(f"cannot bind {self.path}: {err.strerror}") from err
        finally:
            os.umask(previous)
        info = os.lstat(self.path)
        self._inode = (info.st_dev, info.st_ino)

    def close(self) -> None:
        """Unlink the socket (if still ours) and the lock file, release the lock. Idempotent."""
        if self._inode is not None:
            try:
                info = os.lstat(self.path)
                if (info.st_dev, info.st_ino) == self._inode:
                    os.unlink(self.path)
                    log.debug("socket %s removed", self.path)
            except OSError:
                pass
            self._inode = None
        self._release_lock(unlink=True)

    def _take_lock(self) -> None:
        """Open and flock `PATH.lock`, or raise naming the pid of the driver that holds it.

        A driver that stops unlinks its lock file; one starting at that moment may have opened
        the old file and then get its lock, which excludes nobody: the next start opens a new
        file. So the lock counts only if the locked file is still the one at the path, and the
        attempt is repeated otherwise (it can only lose to a stopping driver a few times).
        """
        for _ in range(_LOCK_ATTEMPTS):
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
            try:
                fd = os.open(self.lock_path, flags, 0o600)
            except OSError as err:
                raise DeviceConfigurationError(f"cannot open lock file {self.lock_path}: {err.strerror}") from err
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.geteuid():
                # It is truncated and written below: never someone else's file, nor a hard link.
                os.close(fd)
                raise DeviceConfigurationError(
                    f"lock file {self.lock_path} is not a regular file of ours with one link; refusing it"
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise DeviceConfigurationError(f"another driver (pid {holder}) already serves {self.path}") from None
            if _is_file_at(fd, self.lock_path):
                self._lock_fd = fd
                return
            os.close(fd)
        raise DeviceConfigurationError(f"cannot lock {self.lock_path}: it keeps being replaced")

    def _release_lock(self, *, unlink: bool) -> None:
        """Close the lock fd (which drops the flock); unlink the lock file only if it is ours."""
        fd, self._lock_fd = self._lock_fd, -1
        if fd < 0:
            return
        if unlink and _is_file_at(fd, self.lock_path):
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
        os.close(fd)


def _is_file_at(fd: int, path: str) -> bool:
    """Whether `fd` is the file now at `path` (not one unlinked or replaced since it was opened)."""
    try:
        on_disk = os.lstat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
