"""Closing what peers sent, off the event loop: the fallback where SO_PASSRIGHTS is missing.

Theory of operation. close(2) of an fd can wait: the last close of a TCP socket with SO_LINGER
and a full send queue waits up to the linger time, a FUSE or NFS file can wait for its server.
An fd that a peer passes us with SCM_RIGHTS becomes ours, and its close is then the final one,
so a peer could stall the single loop for as long as it likes. Where the kernel has
SO_PASSRIGHTS (Linux 6.16+) the server turns it off on its sockets and no fd ever arrives; on
older kernels, or for a connection queued before the option was set (socket activation), every
received fd is handed to this closer's thread, and the loop never runs the final close itself.

Three rules keep that bounded and complete:

* The thread holds at most `budget` fds. Before each recvmsg the loop asks `has_room()` (room
  for SCM_MAX_FD more, the most one message can carry, all of which are received: fds that do
  not fit the control buffer would be dropped by the kernel inside our recvmsg, a final close
  in our thread); without room the loop first peeks (`unix.next_carries_fds`) and leaves a
  connection whose next message carries fds unread until there is room again.
* A socket with queued fd-carrying messages is itself a final close of those fds.
  `close_connection` shuts it for reading (from then on the peer's sendmsg fails with EPIPE, so
  nothing more can queue), drains what is queued into the closer, and closes it in the loop only
  once the queue is empty (`unix.receive_queued` tells a queued empty message from end of file);
  without room for the drain, the socket goes to the thread too.
* What the thread closes it closes in arrival order; one close stuck for ever (an attacker's
  lingering socket) stops only this thread, never the loop, and the budget stops the fd table
  from growing behind it.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
from collections.abc import Callable

from .._sys import Fd, unix

log = logging.getLogger("sharingmemory.server")

#: fds the closer may hold at once: a few messages' worth (SCM_MAX_FD each) and no more.
DEFAULT_BUDGET = 4 * unix.SCM_MAX_FD


class Closer:
    """A thread that closes fds and sockets for the loop. Started on first use."""

    def __init__(self, budget: int = DEFAULT_BUDGET, on_room: Callable[[], None] | None = None) -> None:
        """`on_room`, called from the thread, tells the loop that room is back (for connections
        it left unread); it must not block (the server's wake-up socket is non-blocking)."""
        self.budget = budget
        self._on_room = on_room
        self._queue: collections.deque[Fd | socket.socket] = collections.deque()
        self._held = 0  # fds queued or being closed; written under _lock
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.closed_total = 0

    @property
    def held(self) -> int:
        return self._held

    def has_room(self) -> bool:
        """Whether one more message's fds, however many, fit in the budget."""
        return self._held + unix.SCM_MAX_FD <= self.budget

    def close_later(self, items: list[Fd] | list[socket.socket]) -> None:
        """Hand `items` over; the thread closes them. Never blocks the caller."""
        if not items:
            return
        with self._lock:
            self._queue.extend(items)
            self._held += len(items)
            self._ready.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sharingmemory-closer", daemon=True)
                self._thread.start()

    def receive(self, sock: socket.socket) -> unix.Received | None:
        """One message from `sock`, or None when the next message carries fds and there is no
        room (leave the connection unread). The message's `fds` already belong to the thread:
        look at them (a request with fds is refused), never close them. Raises what recvmsg
        raises (BlockingIOError: nothing queued)."""
        if not self.has_room() and unix.next_carries_fds(sock):
            return None
        message = unix.receive(sock, max_fds=unix.SCM_MAX_FD)
        self.close_later(message.fds)
        return message

    def close_connection(self, sock: socket.socket) -> None:
        """Close a peer's socket so that the loop never runs the final close of a peer's fd."""
        try:
            unix.stop_receiving(sock)
            while self.has_room():
                message = unix.receive_queued(sock)
                if message is None:
                    # Cannot block: nothing is queued on it any more, nothing can be (SHUT_RD),
                    # and an AF_UNIX socket's own release waits for nothing (no linger, no flush).
                    sock.close()
                    return
                self.close_later(message.fds)
        except OSError:
            pass  # not a state this loop can reason about: the thread closes it
        self.close_later([sock])  # fds may still be queued and there is no room here

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._ready.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
            item.close()  # may wait as long as the peer likes: that is why it is here
            with self._lock:
                self._held -= 1
                self.closed_total += 1
                room_again = self._held + unix.SCM_MAX_FD == self.budget
            if room_again and self._on_room is not None:
                self._on_room()

    def stop(self, timeout: float = 1.0) -> None:
        """Let the thread finish what it can within `timeout`; a stuck close stays with the
        (daemon) thread, which the process exit ends."""
        with self._lock:
            self._stopping = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
