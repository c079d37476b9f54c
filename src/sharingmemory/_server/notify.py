"""The service manager's notification protocol (sd_notify(3)), written with the standard library.

A datagram to the AF_UNIX socket named by $NOTIFY_SOCKET ("@" means the abstract namespace)
carrying newline-separated assignments: READY=1, STOPPING=1, STATUS=..., WATCHDOG=1. With no
$NOTIFY_SOCKET it does nothing, so the daemon runs the same by hand and under systemd. The
private driver that `watch` starts uses the same channel to learn that its driver is ready.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

ENV_NOTIFY_SOCKET = "NOTIFY_SOCKET"


def notify_address(environ: Mapping[str, str] | None = None) -> str | None:
    """The socket address to notify, or None when no service manager listens."""
    env = os.environ if environ is None else environ
    address = env.get(ENV_NOTIFY_SOCKET)
    if not address or address[0] not in "/@":
        return None
    return "\0" + address[1:] if address[0] == "@" else address


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` ("READY=1", ...); False when no manager listens or the send failed, since a
    daemon must not fail because its manager went away."""
    address = notify_address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True
