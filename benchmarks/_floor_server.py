"""The floor of the open cycle: the least a server of this design can do per client.

One SOCK_SEQPACKET listener; per connection: accept, receive one request, send one reply with
the page's memfd attached (SCM_RIGHTS), close. No protocol, no handles, no access check. Prints
`ready` once listening; exits when its standard input closes.

Usage: python -m benchmarks._floor_server SOCKET_PATH
"""

from __future__ import annotations

import array
import mmap
import os
import selectors
import socket
import sys

PAGE_SIZE = 4096


def main(argv: list[str]) -> int:
    fd = os.memfd_create("smbench-floor", os.MFD_CLOEXEC)
    os.ftruncate(fd, PAGE_SIZE)
    with mmap.mmap(fd, PAGE_SIZE) as page:
        page[24:32] = (1).to_bytes(8, "little")
    fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    listener.bind(argv[0])
    listener.listen(socket.SOMAXCONN)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:
                return 0
            connection, _ = listener.accept()
            with connection:
                if connection.recv(64):
                    connection.sendmsg([b"\0" * 32], fds)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
