"""The front ends' session: one open handle, to a running driver or to a private one.

The seed's program loaded its own driver when it started and unloaded it when it quit. `watch`
and `gui` do the same when no driver answers where `open_device()` looks by default (the system
driver at /run/sharingmemory/SharingMemory, then the user's own path; `$SHARINGMEMORY_SOCKET`
alone when set): `open_session` starts a private driver on a temporary socket
(`private_driver.PrivateDriver`), and stops it when the session ends. A driver at an explicitly
named path is never replaced by a private one: the user asked for that one. `read` and `status`
open sessions too, without the private fallback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TextIO

from .._client import Device, SharedPage, open_device
from .._defs import ENV_SOCKET, DeviceNotConnected, DeviceNotFound, PageSnapshot, default_socket_path
from .private_driver import PrivateDriver


@dataclass
class Session:
    """One open handle and where it came from. `private_pid` is the pid of a driver started
    for this session only (it stops when the session ends), None for a driver already running."""

    device: Device
    path: str
    private_pid: int | None = None

    @property
    def page(self) -> SharedPage:
        """The shared page, mapped on first use (IOCTL_GIVE_ME_YOUR_MEMORY)."""
        return self.device.map_shared_memory()


def default_places(environ: Mapping[str, str] | None = None) -> list[str]:
    """Where `open_device()` with no name looks, in order, for the notice that none answered:
    the system driver's path (root's default), then this user's; the override alone when
    $SHARINGMEMORY_SOCKET is set."""
    env = os.environ if environ is None else environ
    own = default_socket_path(env)
    if env.get(ENV_SOCKET):
        return [own]
    return list(dict.fromkeys([default_socket_path({}, uid=0), own]))


@contextlib.contextmanager
def open_session(
    socket: str | None,
    *,
    timeout: float,
    interval: str = "1s",
    private_ok: bool = False,
    announce: TextIO | None = None,
) -> Iterator[Session]:
    """Open the device at `socket` (None: where `open_device()` looks by default). With
    `private_ok` and no driver there, start a private driver for this session instead, and say
    so on `announce`.

    A driver at an explicitly named path is never replaced by a private one: the user asked for
    that one. Raises DeviceNotFound (no driver), AccessDenied, DeviceConfigurationError (the
    private driver did not start). The handle is closed, and a private driver stopped, on exit.
    """
    try:
        # No name, not DEVICE_NAME: open_device's default is what tries the system driver first.
        device = open_device(socket, timeout=timeout) if socket else open_device(timeout=timeout)
    except DeviceNotFound:
        if not private_ok or socket:
            raise
        with PrivateDriver(interval=interval) as private:
            if announce is not None:
                where = " or ".join(default_places())
                print(
                    f"sharingmemory: no driver at {where}; started a private driver (pid {private.pid})", file=announce
                )
                announce.flush()
            with open_device(private.socket_path, timeout=timeout) as device:
                yield Session(device, private.socket_path, private.pid)
        return
    with device:
        yield Session(device, device.path)


def patience(interval_ns: int) -> float:
    """Seconds of silence after which a driver is asked whether it is still there: three
    intervals (a tick may be late, and missed deadlines are skipped, never bunched) and a second
    (for a loaded machine's scheduling). Both front ends wait this long, `watch` in
    `next_tick` and the window in its update."""
    return 3 * interval_ns / 1e9 + 1.0


def next_tick(session: Session, last: PageSnapshot) -> PageSnapshot:
    """Block until the tick after `last` (or a stopped page) and return it.

    Uses `SharedPage.wait_next`, which blocks on the driver's tick eventfd and never polls
    beside the writer. A driver silent for `patience` is asked for its status,
    which raises DeviceNotConnected when it died without a word (SIGKILL).
    """
    page = session.page
    while True:
        try:
            return page.wait_next(timeout=patience(last.interval_ns))
        except TimeoutError:
            if session.device.closed:  # a request already found the connection broken
                raise DeviceNotConnected(f"the driver at {session.path} went away") from None
            session.device.query_status()
