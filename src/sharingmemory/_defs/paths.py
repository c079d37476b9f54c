"""Where the device lives: the default socket path, and `\\\\.\\SharingMemory` resolved to it.

Theory of operation: the seed's symbolic link `\\DosDevices\\SharingMemory` lets a program name
the device without knowing where the kernel keeps it. Ours is a Unix socket whose place follows
the conventions of the user it runs as (hier(7), the XDG base directory spec):

    SHARINGMEMORY_SOCKET, when set           an explicit override, for both ends
    /run/sharingmemory/SharingMemory         root (systemd's RuntimeDirectory=sharingmemory)
    $XDG_RUNTIME_DIR/sharingmemory/...       a user session
    /tmp/sharingmemory-$UID/SharingMemory    anything else

Pure apart from reading the environment and the uid, which are passed in for tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEVICE_NAME = "\\\\.\\SharingMemory"
SOCKET_NAME = "SharingMemory"
ENV_SOCKET = "SHARINGMEMORY_SOCKET"


def default_socket_path(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The socket path a driver serves and a client opens when none is named."""
    env = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    override = env.get(ENV_SOCKET)
    if override:
        return override
    if uid == 0:
        return f"/run/sharingmemory/{SOCKET_NAME}"
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "sharingmemory", SOCKET_NAME)
    return f"/tmp/sharingmemory-{uid}/{SOCKET_NAME}"


def resolve_device_name(name: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> str:
    """A socket path for a device name: `\\\\.\\SharingMemory` (or None) means the default
    path; any other `\\\\.\\X` is refused; anything else is taken as a socket path."""
    if name is None:
        return default_socket_path(environ)
    text = os.fspath(name)
    if text.casefold() == DEVICE_NAME.casefold():
        return default_socket_path(environ)
    if text.startswith("\\\\.\\"):
        raise ValueError(f"unknown device {text!r}: this system has only {DEVICE_NAME}")
    if not text:
        raise ValueError("empty device name")
    return text
