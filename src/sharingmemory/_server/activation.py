"""What a service manager hands the driver at start: a listening socket, and a watchdog period.

Theory of operation. systemd (and `systemd-socket-activate`) starts a socket-activated daemon
with its listening sockets already open from fd 3 on, and says so in the environment
(sd_listen_fds(3)): LISTEN_FDS is how many, LISTEN_PID the process they are meant for (a child
that inherited the variables must not take its parent's fds), LISTEN_FDNAMES their names. A
service with WatchdogSec= gets WATCHDOG_USEC (and WATCHDOG_PID) and must send WATCHDOG=1 more
often than that (sd_watchdog_enabled(3)). This module reads both the way libsystemd does, with
the standard library, and unsets the variables it consumed so nothing the driver starts later
inherits them.

The device is one SEQPACKET socket, so exactly one fd is accepted, and it is checked before it
is used: a socket unit that says ListenStream= instead of ListenSequentialPacket=, or a stray fd
3, would otherwise fail later and obscurely (accept on a stream socket "works" and then every
message boundary is wrong). Every refusal is a DeviceConfigurationError naming what was found;
a refused fd is left open and untouched, since it belongs to whoever passed it.

What this module does not do: bind, accept, or notify; the server owns the loop and `_notify`
the notification socket.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass

from .._defs import DeviceConfigurationError

SD_LISTEN_FDS_START = 3  # sd-daemon.h: passed fds start here, in order
ENV_LISTEN_FDS = "LISTEN_FDS"
ENV_LISTEN_PID = "LISTEN_PID"
ENV_LISTEN_FDNAMES = "LISTEN_FDNAMES"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


@dataclass(frozen=True)
class ListenFds:
    """The fds the service manager passed (fd numbers from 3) and their names, one per fd."""

    fds: tuple[int, ...]
    names: tuple[str, ...]


def _environ(environ: MutableMapping[str, str] | None) -> MutableMapping[str, str]:
    return os.environ if environ is None else environ


def _unset(env: MutableMapping[str, str], *names: str) -> None:
    for name in names:
        env.pop(name, None)  # on os.environ this is unsetenv(3), so exec'd children lose it too


def _parse_pid(text: str, variable: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise DeviceConfigurationError(f"{variable}={text!r} is not a process id") from None
    if pid < 1:
        raise DeviceConfigurationError(f"{variable}={text!r} is not a process id")
    return pid


def listen_fds(
    environ: MutableMapping[str, str] | None = None, *, unset: bool = True, pid: int | None = None
) -> ListenFds | None:
    """The fds passed by socket activation, or None when there are none for this process.

    Mirrors sd_listen_fds_with_names(3): no variables, a LISTEN_PID of another process or
    LISTEN_FDS=0 mean "not activated"; unparsable values or a name count that does not match
    raise DeviceConfigurationError. One deliberate difference: LISTEN_FDS without LISTEN_PID,
    which libsystemd ignores, is refused, since only a hand-made environment looks like that and
    its author meant something. With `unset` the three variables are removed on every path.
    The fds are not inspected here (see `check_listener`).
    """
    env = _environ(environ)
    pid = os.getpid() if pid is None else pid
    try:
        pid_text = env.get(ENV_LISTEN_PID)
        count_text = env.get(ENV_LISTEN_FDS)
        if pid_text is None or count_text is None:
            if count_text is not None:
                raise DeviceConfigurationError(f"{ENV_LISTEN_FDS} is set but {ENV_LISTEN_PID} is not")
            return None
        if _parse_pid(pid_text, ENV_LISTEN_PID) != pid:
            return None  # inherited from a parent that was activated: not ours
        try:
            count = int(count_text)
        except ValueError:
            raise DeviceConfigurationError(f"{ENV_LISTEN_FDS}={count_text!r} is not a number") from None
        if count < 0:
            raise DeviceConfigurationError(f"{ENV_LISTEN_FDS}={count_text!r} is negative")
        if count == 0:
            return None
        names_text = env.get(ENV_LISTEN_FDNAMES)
        if names_text is None:
            names = ("unknown",) * count  # what libsystemd reports for unnamed fds
        else:
            names = tuple(names_text.split(":"))
            if len(names) != count:
                raise DeviceConfigurationError(
                    f"{ENV_LISTEN_FDNAMES}={names_text!r} names {len(names)} fd(s) but {ENV_LISTEN_FDS}={count}"
                )
        return ListenFds(tuple(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)), names)
    finally:
        if unset:
            _unset(env, ENV_LISTEN_PID, ENV_LISTEN_FDS, ENV_LISTEN_FDNAMES)


def socket_name(sock: socket.socket) -> str:
    """The socket's address for logs: its path, `@name` for the abstract namespace, or a note."""
    address = sock.getsockname()
    if isinstance(address, bytes):  # Linux returns abstract addresses as bytes, with the NUL
        return "@" + address[1:].decode(errors="replace")
    return address or f"unnamed socket on fd {sock.fileno()}"


def check_listener(fd: int) -> str:
    """Check that `fd` is a listening AF_UNIX SOCK_SEQPACKET socket and return its name.

    Raises DeviceConfigurationError saying what the fd is instead. The fd is only looked at:
    it stays open, with its flags unchanged, whatever the outcome.
    """
    try:
        info = os.fstat(fd)
    except OSError as err:
        raise DeviceConfigurationError(f"passed fd {fd} is not open: {err.strerror}") from err
    if not stat.S_ISSOCK(info.st_mode):
        raise DeviceConfigurationError(f"passed fd {fd} is not a socket (a {_file_kind(info.st_mode)})")
    sock = socket.socket(fileno=fd)  # reads SO_DOMAIN and SO_TYPE from the kernel
    try:
        if sock.family != socket.AF_UNIX:
            raise DeviceConfigurationError(f"passed fd {fd} is a {_name(sock.family)} socket, not AF_UNIX")
        if sock.type != socket.SOCK_SEQPACKET:
            raise DeviceConfigurationError(
                f"passed fd {fd} is a {_name(sock.type)} socket, not SOCK_SEQPACKET "
                "(the socket unit needs ListenSequentialPacket=)"
            )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise DeviceConfigurationError(
                f"passed fd {fd} is not listening (a connected socket? Accept=yes is not supported)"
            )
        return socket_name(sock)
    finally:
        sock.detach()


def _name(constant: int) -> str:
    """AF_INET for a known enum member, the bare number for a family Python has no name for."""
    return getattr(constant, "name", str(constant))


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "pipe"), (stat.S_ISCHR, "character device"), (stat.S_ISDIR, "directory"))
    for test, name in kinds:
        if test(mode):
            return name
    return "regular file" if stat.S_ISREG(mode) else "file"


def activated_fd(environ: MutableMapping[str, str] | None = None, *, unset: bool = True) -> tuple[int, str] | None:
    """The one checked listening fd passed by socket activation, and its name; None if not
    activated. More than one fd is refused: the driver serves one device."""
    passed = listen_fds(environ, unset=unset)
    if passed is None:
        return None
    if len(passed.fds) != 1:
        listed = ", ".join(f"{fd} ({name})" for fd, name in zip(passed.fds[:4], passed.names[:4], strict=True))
        listed += ", ..." if len(passed.fds) > 4 else ""
        raise DeviceConfigurationError(f"expected one socket from the service manager, got {len(passed.fds)}: {listed}")
    (fd,) = passed.fds
    return fd, check_listener(fd)


def activated_listener(environ: MutableMapping[str, str] | None = None) -> tuple[socket.socket, str] | None:
    """The listening socket passed by socket activation, owned by the caller from now on, and
    its name; None if not activated. The variables are unset and the fd made close-on-exec, as
    sd_listen_fds(3) does, so nothing the driver starts inherits either."""
    found = activated_fd(environ, unset=True)
    if found is None:
        return None
    fd, name = found
    os.set_inheritable(fd, False)
    return socket.socket(fileno=fd), name


def watchdog_usec(
    environ: MutableMapping[str, str] | None = None, *, unset: bool = True, pid: int | None = None
) -> int:
    """The watchdog timeout in microseconds, 0 when none applies to this process.

    Mirrors sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be this process; a value that
    does not parse raises DeviceConfigurationError. The daemon pings at half this period.
    """
    env = _environ(environ)
    pid = os.getpid() if pid is None else pid
    try:
        usec_text = env.get(ENV_WATCHDOG_USEC)
        if usec_text is None:
            return 0
        try:
            usec = int(usec_text)
        except ValueError:
            raise DeviceConfigurationError(f"{ENV_WATCHDOG_USEC}={usec_text!r} is not a number") from None
        if usec <= 0:
            raise DeviceConfigurationError(f"{ENV_WATCHDOG_USEC}={usec_text!r} is not a positive number")
        pid_text = env.get(ENV_WATCHDOG_PID)
        if pid_text is not None and _parse_pid(pid_text, ENV_WATCHDOG_PID) != pid:
            return 0
        return usec
    finally:
        if unset:
            _unset(env, ENV_WATCHDOG_USEC, ENV_WATCHDOG_PID)


@dataclass(frozen=True)
class ServiceManager:
    """What the service manager passed this process, as `serve` uses it.

    `listener` is the activated socket, owned by the caller from now on (None when not
    activated, or when only checking); `socket_name` its address (set when checking too);
    `watchdog_interval` the seconds between two WATCHDOG=1, half of WATCHDOG_USEC as
    sd_watchdog_enabled(3) advises, or None.
    """

    listener: socket.socket | None = None
    socket_name: str | None = None
    watchdog_interval: float | None = None


def service_manager(environ: MutableMapping[str, str] | None = None, *, take: bool = True) -> ServiceManager:
    """Read (and with `take`, consume) the activation and watchdog variables.

    With `take` false nothing changes: no variable is unset and no fd is touched, which is what
    `serve --check-config` needs to report on the environment the real start will see.
    Raises DeviceConfigurationError as `activated_fd` and `watchdog_usec` do.
    """
    usec = watchdog_usec(environ, unset=take)
    interval = usec / 2e6 if usec else None
    if not take:
        found = activated_fd(environ, unset=False)
        return ServiceManager(None, found[1] if found else None, interval)
    activated = activated_listener(environ)
    if activated is None:
        return ServiceManager(None, None, interval)
    return ServiceManager(activated[0], activated[1], interval)
