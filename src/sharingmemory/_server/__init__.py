"""Layer 4, the daemon's I/O: the event loop, the socket file, socket activation, sd_notify.

Everything here runs on the driver's single thread; the rule that nothing a peer can influence
may make that loop wait is kept in `connections` (the loop itself is `server`).
"""

from .activation import (
    ServiceManager,
    service_manager,
)
from .notify import (
    ENV_NOTIFY_SOCKET,
)
from .server import (
    DeviceServer,
    ServerConfig,
    default_handle_limits,
    raise_fd_limit,
)
from .socket_file import (
    check_socket_location,
)

__all__ = [
    "ENV_NOTIFY_SOCKET",
    "DeviceServer",
    "ServerConfig",
    "ServiceManager",
    "check_socket_location",
    "default_handle_limits",
    "raise_fd_limit",
    "service_manager",
]
