"""A fake driver for the client's trust tests: a small server speaking the wire protocol and
handing out whatever page and tick fds the test made by hand (unsealed, truncatable, the wrong
size, full of garbage), as someone who pre-created another user's socket directory could."""

from __future__ import annotations

import array
import contextlib
import fcntl
import mmap
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator

from sharingmemory._defs import PAGE_SEALS, PAGE_SIZE, PageWriter
from sharingmemory._defs.ioctl import IOCTL_GIVE_ME_YOUR_MEMORY, IOCTL_QUERY_STATUS, IOCTL_REGISTER_TICK_EVENT
from sharingmemory._defs.protocol import (
    MAX_MESSAGE_SIZE,
    DriverStatus,
    MajorFunction,
    Reply,
    decode_request,
    encode_driver_status,
    encode_reply,
)

FIELDS = struct.Struct("<qqqqq QQII16s")  # the guarded fields at offset 24 (docs/page-abi.md)

#: Makes a new fd for one reply (the fake closes its copy after sending).
FdFactory = Callable[[], int]


class Memfd:
    """A hand-made page memfd: `size` bytes, a valid ABI header when `header`, `seals` added
    after the fake's own writable mapping (kept in `.map`, so fields can still be written)."""

    def __init__(self, *, size: int = PAGE_SIZE, seals: int = PAGE_SEALS, header: bool = True) -> None:
        self.fd = os.memfd_create("fake-page", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, size)
        self.map: mmap.mmap | None = None
        if size >= PAGE_SIZE:
            self.map = mmap.mmap(self.fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            if header:
                writer = PageWriter(self.map, interval_ns=20_000_000, writer_pid=os.getpid(), instance_id=bytes(16))
                writer.update(realtime_ns=1_700_000_000 * 10**9, monotonic_ns=1, time_zone_bias=0)
                writer.release()
        if seals:
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, seals)

    def write_fields(self, *fields: object) -> None:
        """Overwrite the guarded fields (after seq) with anything, seq left even."""
        assert self.map is not None
        FIELDS.pack_into(self.map, 24, *fields)

    def dup(self) -> int:
        return os.dup(self.fd)

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
        os.close(self.fd)


class FakeDriver:
    """Serves `path` from a thread: CREATE and CLEANUP/CLOSE succeed, the page IOCTL sends
    `page()`'s fd, the tick IOCTL `tick()`'s, the status IOCTL a plausible status."""

    def __init__(self, path: str, page: FdFactory | None = None, tick: FdFactory | None = None) -> None:
        self.path = path
        self.page = page
        self.tick = tick
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.listener.bind(path)
        self.listener.listen(8)
        self.listener.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connections: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    conn, _ = self.listener.accept()
                    conn.settimeout(0.05)
                    connections.append(conn)
                for conn in list(connections):
                    if not self._serve_one(conn):
                        conn.close()
                        connections.remove(conn)
        finally:
            for conn in connections:
                conn.close()

    def _serve_one(self, conn: socket.socket) -> bool:
        """Answer what is waiting on `conn`; False once the peer hung up."""
        while True:
            try:
                data = conn.recv(MAX_MESSAGE_SIZE + 1)
            except TimeoutError:
                return True
            except OSError:
                return False
            if not data:
                return False
            request = decode_request(data)
            fd = None
            output = b""
            if request.major is MajorFunction.IRP_MJ_DEVICE_CONTROL:
                if request.code == IOCTL_GIVE_ME_YOUR_MEMORY and self.page is not None:
                    fd = self.page()
                    output = bytes(8)
                elif request.code == IOCTL_REGISTER_TICK_EVENT and self.tick is not None:
                    fd = self.tick()
                elif request.code == IOCTL_QUERY_STATUS:
                    output = encode_driver_status(DriverStatus(1, 1, 1, True, True, 1, 10**9, 1, bytes(16)))
            reply = encode_reply(Reply(request.major, request.request_id, 0, len(output), output, fd is not None))
            try:
                if fd is None:
                    conn.sendmsg([reply])
                else:
                    conn.sendmsg([reply], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            except OSError:
                return False
            finally:
                if fd is not None:
                    os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


@contextlib.contextmanager
def fake_driver(path: str, page: FdFactory | None = None, tick: FdFactory | None = None) -> Iterator[FakeDriver]:
    server = FakeDriver(path, page, tick)
    try:
        yield server
    finally:
        server.close()


#: A listener for another uid, stdlib only (run by /usr/bin/python3 as that uid): listens on the
#: bound socket whose fd number is argv[1] (SO_PEERCRED names whoever called listen(2), unix(7)) and
#: answers every request with success, echoing its major and id, until stdin closes.
OTHER_UID_LISTENER = r"""
import os, select, socket, struct, sys
listener = socket.socket(fileno=int(sys.argv[1]))
listener.listen(8)
print("listening", flush=True)
conns = []
while True:
    ready, _, _ = select.select([listener, sys.stdin, *conns], [], [])
    if sys.stdin in ready:
        break
    for sock in ready:
        if sock is listener:
            conns.append(listener.accept()[0])
            continue
        data = sock.recv(65537)
        if not data:
            conns.remove(sock)
            sock.close()
            continue
        major, request_id = data[3], struct.unpack_from("<I", data, 4)[0]
        sock.send(struct.pack("<2sBBIIIQII", b"SM", 1, major, request_id, 0, 0, 0, 0, 0))
"""
