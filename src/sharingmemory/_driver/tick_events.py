"""Tick events: each handle's channel that becomes readable after every tick. No sockets.

Theory of operation. A handle may ask for a tick fd (IOCTL_REGISTER_TICK_EVENT) that becomes
readable after every tick and when the page stops. Each handle gets its own channel, and the driver
keeps only its own end, an open file description no client holds (`unix.tick_channel`): an
eventfd's copy shares its O_NONBLOCK flag, so a client could make the driver's write wait for
ever, and a pipe's writer can be held on the pipe mutex by a client's splice(2). A wake-up
that cannot be written (EAGAIN: the client did not read; EPIPE: it closed its end) is dropped,
since the page, not the channel, says whether a tick happened. The cost is one write(2) per
waiting handle per tick; handles that only map the page cost the tick nothing.

This module owns the channels' life: IOCTL_REGISTER_TICK_EVENT makes one (and closes the one it
replaces), the timer signals all of them, CLEANUP closes a handle's. The driver owns the table
of channels (`Driver._tick_events`, handle id -> our end), so the tick path reads a plain dict.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

from .._defs import NtStatus, Request
from .._sys import Fd, unix
from .handles import Completion, Handle
from .peer_log import PEER

if TYPE_CHECKING:
    from .driver import Driver

log = logging.getLogger("sharingmemory.driver")

_WAKE = b"\1"


def ioctl_register_tick_event(driver: Driver, handle: Handle, request: Request) -> Completion:
    """The client's end of a new tick channel for this handle. Only a handle that holds the
    page can wait for its ticks: STATUS_INVALID_DEVICE_STATE otherwise. Asked again, the
    handle gets a new channel and the old one is closed (its reader sees end of file), so
    the driver never keeps a second end of anything it handed out."""
    if not handle.mapped:
        return Completion(NtStatus.STATUS_INVALID_DEVICE_STATE)
    try:
        ours, theirs = unix.tick_channel()
    except OSError as err:
        log.error("IOCTL_REGISTER_TICK_EVENT failed for handle %d: %s", handle.handle_id, err, extra=PEER)
        return Completion(NtStatus.STATUS_INSUFFICIENT_RESOURCES)
    if handle.tick_event is not None:
        handle.tick_event.close()  # cannot block: see close_tick_event
    handle.tick_event = ours
    driver._tick_events[handle.handle_id] = ours
    log.debug("handle %d: tick channel created", handle.handle_id)
    return Completion(NtStatus.STATUS_SUCCESS, 0, b"", theirs)


def close_tick_event(tick_events: dict[int, Fd], handle: Handle) -> None:
    """CLEANUP's part: forget and close the handle's channel, if it has one."""
    if handle.tick_event is not None:
        tick_events.pop(handle.handle_id, None)
        # Cannot block: the last close of a socket shut for reading, with nothing queued for
        # us (the client's sends get EPIPE), drops no peer fd and waits for nothing.
        handle.tick_event.close()
        handle.tick_event = None
        log.debug("handle %d: tick channel closed", handle.handle_id)


def signal_tick_events(tick_events: dict[int, Fd]) -> None:
    """One wake-up per channel; never waits (see the module docstring). EAGAIN (not read),
    EPIPE (closed), ENOBUFS/ENOMEM: the page still says what happened, so nothing is lost."""
    for fd in tick_events.values():
        with contextlib.suppress(OSError):
            os.write(fd.fileno(), _WAKE)
