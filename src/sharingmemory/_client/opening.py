"""`open_device()`: the library's CreateFile, which picks the socket and checks the arguments.

Theory of operation: the name resolves to the sockets to try (`_defs.paths`): for the default
name, the system driver's first and then this user's own; the first that answers is opened.
"Answers" means connect(2) reached a listener: no socket, a stale one, or one this user may not
reach falls through to the next path; a driver that refuses CREATE, or any trust check that
fails (`trust`), is raised, so a fake at the first path is never silently skipped for the next.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .._defs import DEVICE_NAME, FILE_READ_DATA, FILE_WRITE_DATA, AccessDenied, DeviceNotFound, device_socket_candidates
from .arguments import request_timeout
from .device import DEFAULT_TIMEOUT, Device
from .trust import trusted_uids

_ACCESS = {"r": FILE_READ_DATA, "w": FILE_WRITE_DATA, "rw": FILE_READ_DATA | FILE_WRITE_DATA}


def open_device(
    name: str | bytes | os.PathLike[str] | os.PathLike[bytes] = DEVICE_NAME,
    access: str = "r",
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    map: bool = False,  # noqa: A002 - the seed-like keyword, as Device takes it
    trusted_uid: int | Iterable[int] | None = None,
) -> Device:
    """Open the device, as the seed's program calls CreateFile("\\\\.\\SharingMemory").

    `name` is `\\\\.\\SharingMemory` (the default) or a socket path (str, bytes or
    os.PathLike). For the default, with no SHARINGMEMORY_SOCKET in the environment, the system
    driver at /run/sharingmemory/SharingMemory is used when one answers there, and this user's
    own path (see `default_socket_path`) otherwise; DeviceNotFound means neither answers (the
    front ends then start a private driver). `access` is "r", "w" or "rw". `timeout` bounds
    every request, in seconds (None or math.inf: no bound). `map=True` also maps the page,
    with CREATE and IOCTL_GIVE_ME_YOUR_MEMORY sent together (one round trip for both);
    `map_shared_memory()` then returns it at once.

    Trust: the driver must run as root or as this user, and its socket's directory must be
    owned by one of them and writable by no one else; `trusted_uid` (a uid or several) names
    other uids to believe, such as a service account's. Anything else raises
    `UntrustedDevice` before a request is sent. Bad arguments raise TypeError or ValueError.
    """
    try:
        mask = _ACCESS[access]
    except (KeyError, TypeError):
        raise ValueError(f"access must be 'r', 'w' or 'rw', not {access!r}") from None
    seconds = request_timeout(timeout)
    uids = trusted_uids(trusted_uid)
    candidates = device_socket_candidates(name)  # TypeError for a name that is no path
    for path in candidates[:-1]:  # the system driver, when it answers
        try:
            return Device(path, mask, seconds, map=map, trusted=uids)
        except DeviceNotFound:
            continue
        except AccessDenied as err:
            if err.__cause__ is None:  # refused by the driver, not by connect(2): it answered
                raise
    return Device(candidates[-1], mask, seconds, map=map, trusted=uids)
