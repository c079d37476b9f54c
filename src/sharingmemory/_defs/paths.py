"""Where the device lives: the default socket path, and `\\\\.\\SharingMemory` resolved to it.

Theory of operation: the seed's symbolic link `\\DosDevices\\SharingMemory` lets a program name
the device without knowing where the kernel keeps it. Ours is a Unix socket whose place follows
the conventions of the user it runs as (hier(7), the XDG base directory spec):

    SHARINGMEMORY_SOCKET, when set           an explicit override, for both ends
    /run/sharingmemory/SharingMemory         root (systemd's RuntimeDirectory=sharingmemory)
    $XDG_RUNTIME_DIR/sharingmemory/...       a user session
    /tmp/sharingmemory-$UID/SharingMemory    anything else

A client that names no socket looks in two places (`device_socket_candidates`): the system
driver's path first, since a service an operator installed for everyone is what a user's
program means by "the device", then this user's own path, where a private driver (the front
ends start one when neither answers) serves. SHARINGMEMORY_SOCKET, or a path given by name,
replaces both. The client's trust rules (`_client.trust`) apply to either path alike.

Pure apart from reading the environment and the uid, which are passed in for tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEVICE_NAME = "\\\\.\\SharingMemory"
SOCKET_NAME = "SharingMemory"
ENV_SOCKET = "SHARINGMEMORY_SOCKET"
#: Where the system driver (systemd's RuntimeDirectory=sharingmemory) serves. Read at each
#: call, so a test can point it at a directory of its own.
SYSTEM_SOCKET = f"/run/sharingmemory/{SOCKET_NAME}"


def default_socket_path(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The socket path a driver serves when none is named, and this user's own path for a
    client. A client that names none tries the system driver's `SYSTEM_SOCKET` before this
    (see `device_socket_candidates`), unless SHARINGMEMORY_SOCKET is set."""
    env = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    override = env.get(ENV_SOCKET)
    if override:
        return override
    if uid == 0:
        return SYSTEM_SOCKET
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "sharingmemory", SOCKET_NAME)
    return f"/tmp/sharingmemory-{uid}/{SOCKET_NAME}"


def resolve_device_name(
    name: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None, environ: Mapping[str, str] | None = None
) -> str:
    """A socket path for a device name: `\\\\.\\SharingMemory` (or None) means the default
    path; any other `\\\\.\\X` is refused; anything else is taken as a socket path (bytes
    are decoded as os.fsdecode does). TypeError for anything that is not a path, ValueError for
    an empty one or one with a NUL byte."""
    return device_socket_candidates(name, environ, uid=None, system=False)[-1]


def device_socket_candidates(
    name: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None,
    environ: Mapping[str, str] | None = None,
    uid: int | None = None,
    *,
    system: bool = True,
) -> list[str]:
    """The socket paths a client tries, in order, for `name`: for the default name with no
    SHARINGMEMORY_SOCKET set, the system driver's path (`SYSTEM_SOCKET`) and then this user's
    own (`default_socket_path`), or just one of them when they are the same; else the one path
    named. `system=False` leaves the system path out."""
    if type(name) is str:  # the common case, first: this runs at every open
        text = name
    elif name is None:
        text = DEVICE_NAME
    else:
        if not isinstance(name, str | bytes | os.PathLike):
            raise TypeError(f"a device name is a str, bytes or os.PathLike, not {type(name).__name__}")
        text = os.fsdecode(name)
    if text.casefold() == DEVICE_NAME.casefold():
        env = os.environ if environ is None else environ
        own = default_socket_path(env, uid)
        if not system or env.get(ENV_SOCKET) or own == SYSTEM_SOCKET:
            return [own]
        return [SYSTEM_SOCKET, own]
    if text.startswith("\\\\.\\"):
        raise ValueError(f"unknown device {text!r}: this system has only {DEVICE_NAME}")
    if not text:
        raise ValueError("empty device name")
    if "\0" in text:
        raise ValueError(f"a socket path cannot hold a NUL byte: {text!r}")
    return [text]
