"""Attacks on the driver's event loop: each one tries to make it wait, while a reader checks
that every tick still arrives and `status` still answers.

    python -m tests.soak.attack --hold 3 --interval 20ms

Each attack runs against two live drivers: one as it runs by default (SO_PASSRIGHTS off on its
socket where the kernel has it, Linux 6.16+) and one started with `--no-passrights`, which is
what older kernels get (received fds closed by the closer thread). While an attack holds (the
attacker keeps what would block the driver blocked for `--hold` seconds), a reader thread waits
for every tick with `SharedPage.wait_next` and a second thread asks for the status. Figures per
attack and driver: the longest gap between two ticks the reader saw, ticks missed (tick_count
jumping by more than one), status answers, and the driver's own late_ticks. Goal: no tick
missed, no gap of a whole interval beyond one interval, every status answered.

The attacks (the helpers are shared with tests/integration/test_peer_fds.py):

* tcp4-linger, tcp6-linger: a loopback TCP socket with SO_LINGER (600 s) and a full send queue,
  whose peer never reads: its last close(2) waits for the linger time. Sent before CREATE,
  after CREATE, and 32 of them in one message.
* unix-stream: a Unix stream socket with SO_LINGER set and unread data (unix(7) ignores linger:
  a control that must never have been a problem).
* tick-channel: the client clears O_NONBLOCK on its tick fd, writes to it (an eventfd's counter
  is then full) and never reads it; another splices it into a full blocking socket (which holds
  a pipe's mutex, were the tick fd a pipe).
* log-flood: the driver's stderr is a pipe nobody reads, and a client causes a refused CREATE
  (handle limit) thousands of times: each would be a warning line.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sharingmemory
from sharingmemory._defs import IOCTL_GIVE_ME_YOUR_MEMORY, IOCTL_REGISTER_TICK_EVENT
from sharingmemory._defs.protocol import MajorFunction, Request, encode_request
from sharingmemory.cli.options import parse_duration
from sharingmemory.winioctl import FILE_READ_DATA
from tests.soak._figures import Figures
from tests.support import DriverProcess, RawConnection, start_driver

LINGER_SECONDS = 600


# --- what would make a close wait ----------------------------------------------------------------


@contextlib.contextmanager
def lingering_tcp_sockets(family: socket.AddressFamily, count: int) -> Iterator[list[socket.socket]]:
    """`count` connected loopback TCP sockets whose last close waits (SO_LINGER on, send queue
    full, the peer reading nothing). On the way out the peers close first: their RST ends any
    close still waiting, the driver's included."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    listener = socket.socket(family, socket.SOCK_STREAM)
    peers: list[socket.socket] = []
    senders: list[socket.socket] = []
    try:
        listener.bind((host, 0))
        listener.listen(count)
        for _ in range(count):
            sender = socket.socket(family, socket.SOCK_STREAM)
            senders.append(sender)
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sender.connect(listener.getsockname()[:2])
            peer, _addr = listener.accept()
            peers.append(peer)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            _fill(sender)
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, LINGER_SECONDS))
        yield senders
    finally:
        for peer in peers:
            peer.close()  # unread data: RST, which ends the senders' lingering closes
        for sender in senders:
            sender.close()
        listener.close()


@contextlib.contextmanager
def lingering_unix_sockets(count: int) -> Iterator[list[socket.socket]]:
    """Unix stream sockets with SO_LINGER and unread data: unix(7) ignores linger."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sender, _peer in pairs:
            _fill(sender)
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, LINGER_SECONDS))
        yield [sender for sender, _peer in pairs]
    finally:
        for sender, peer in pairs:
            peer.close()
            sender.close()


def _fill(sock: socket.socket) -> None:
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.send(b"x" * 65536)
    sock.setblocking(True)


def send_fds(raw: RawConnection, fds: list[int], *, when: str) -> str:
    """Send `fds` with a request (`when`: "before-create", "after-create" or "now"); returns
    what happened at the sender: "refused by the kernel" (EPERM: SO_PASSRIGHTS) or "sent"."""
    if when == "after-create":
        reply = raw.request(MajorFunction.IRP_MJ_CREATE, FILE_READ_DATA)
        assert reply is not None and reply.status == 0, reply
    data = encode_request(Request(MajorFunction.IRP_MJ_CREATE, 99, FILE_READ_DATA))
    try:
        raw.send_raw(data, fds)
    except PermissionError:
        return "refused by the kernel"
    return "sent"


@contextlib.contextmanager
def driver_stopped(driver: DriverProcess) -> Iterator[None]:
    """SIGSTOP the driver for the body (a millisecond or so), SIGCONT after."""
    os.kill(driver.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(driver.pid, signal.SIGCONT)


# --- is the loop still turning? -------------------------------------------------------------------


@dataclass
class Liveness:
    """What a reader and a status asker saw while an attack held."""

    ticks: list[tuple[int, float]] = field(default_factory=list)  # (tick_count, monotonic)
    status_answers: int = 0
    status_failures: list[str] = field(default_factory=list)
    wait_failures: list[str] = field(default_factory=list)

    @property
    def missed(self) -> int:
        return sum(max(0, b[0] - a[0] - 1) for a, b in zip(self.ticks, self.ticks[1:], strict=False))

    @property
    def max_gap(self) -> float:
        gaps = [b[1] - a[1] for a, b in zip(self.ticks, self.ticks[1:], strict=False)]
        return max(gaps, default=float("inf"))


@contextlib.contextmanager
def watching(driver: DriverProcess, wait_timeout: float = 2.0) -> Iterator[Liveness]:
    """Read every tick and ask for the status, in two threads, while the body runs."""
    seen = Liveness()
    done = threading.Event()

    def read_ticks() -> None:
        with driver.open() as device:
            page = device.map_shared_memory()
            while not done.is_set():
                try:
                    snap = page.wait_next(timeout=wait_timeout)
                except (TimeoutError, sharingmemory.NtStatusError, OSError) as err:
                    seen.wait_failures.append(repr(err))
                    continue
                seen.ticks.append((snap.tick_count, time.monotonic()))

    def ask_status() -> None:
        while not done.is_set():
            try:
                with sharingmemory.open_device(driver.socket_path, timeout=wait_timeout) as device:
                    device.query_status()
                seen.status_answers += 1
            except (sharingmemory.NtStatusError, OSError) as err:
                seen.status_failures.append(repr(err))
            done.wait(0.05)

    threads = [threading.Thread(target=read_ticks), threading.Thread(target=ask_status)]
    for thread in threads:
        thread.start()
    try:
        yield seen
    finally:
        done.set()
        for thread in threads:
            thread.join(wait_timeout * 3)


# --- the attacks ------------------------------------------------------------------------------------

Attack = Callable[[DriverProcess, float], str]


def _fd_attack(make: Callable[[], contextlib.AbstractContextManager[list[socket.socket]]], when: str) -> Attack:
    def attack(driver: DriverProcess, hold: float) -> str:
        with make() as socks, RawConnection(driver.socket_path) as raw:
            if when == "after-create":
                reply = raw.request(MajorFunction.IRP_MJ_CREATE, FILE_READ_DATA)
                assert reply is not None and reply.status == 0, reply
            with driver_stopped(driver):
                # The driver cannot read while stopped, so once ours are closed the references
                # in flight are the last ones: whoever receives them runs the final close.
                outcome = send_fds(raw, [s.fileno() for s in socks], when="now")
                if outcome == "sent":
                    for sock in socks:
                        sock.close()
            time.sleep(hold)
        return outcome

    return attack


def tick_channel_attack(driver: DriverProcess, hold: float) -> str:
    """Clear O_NONBLOCK on the tick fds and never read them; splice one into a full socket."""
    with contextlib.ExitStack() as stack:
        channels = []
        for _ in range(2):
            raw = stack.enter_context(RawConnection(driver.socket_path))
            assert raw.request(MajorFunction.IRP_MJ_CREATE, FILE_READ_DATA) is not None
            assert raw.request(MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_GIVE_ME_YOUR_MEMORY, 8) is not None
            reply = raw.request(MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_REGISTER_TICK_EVENT)
            assert reply is not None and reply.status == 0 and raw.fds, reply
            channel = raw.fds[-1]
            fcntl.fcntl(channel, fcntl.F_SETFL, fcntl.fcntl(channel, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            with contextlib.suppress(OSError):  # an eventfd took this: its counter full, writes wait
                os.write(channel, (2**64 - 2).to_bytes(8, "little"))
            channels.append(channel)
        full, _peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stack.callback(full.close)
        stack.callback(_peer.close)
        _fill(full)

        def splice() -> None:
            with contextlib.suppress(OSError):
                os.splice(channels[1], full.fileno(), 1)

        threading.Thread(target=splice, daemon=True).start()
        time.sleep(hold)
        _peer.close()  # lets a splice that did start finish
    return "tick fds made blocking, never read, one spliced"


ATTACKS: dict[str, Attack] = {
    "tcp4-linger-before-create": _fd_attack(lambda: lingering_tcp_sockets(socket.AF_INET, 1), "before-create"),
    "tcp6-linger-after-create": _fd_attack(lambda: lingering_tcp_sockets(socket.AF_INET6, 1), "after-create"),
    "tcp4-linger-32-in-one-message": _fd_attack(lambda: lingering_tcp_sockets(socket.AF_INET, 32), "before-create"),
    "unix-stream-linger": _fd_attack(lambda: lingering_unix_sockets(4), "before-create"),
    "tick-channel": tick_channel_attack,
}


def run_attack(
    name: str, driver: DriverProcess, *, hold: float, interval_s: float, figures: Figures, mode: str
) -> None:
    before = driver.status()
    with watching(driver) as seen:
        time.sleep(interval_s * 2)  # the reader's first ticks
        try:
            outcome = ATTACKS[name](driver, hold)
        except (AssertionError, OSError) as err:  # the driver stopped answering the attacker too
            outcome = f"the attack itself failed: {err!r}"
        time.sleep(interval_s * 2)
    try:
        late = driver.status().late_ticks - before.late_ticks
    except (sharingmemory.NtStatusError, OSError):
        late = -1
    label = f"{name} [{mode}]"
    figures.record(f"{label}: outcome", outcome)
    figures.record(f"{label}: ticks seen", len(seen.ticks), "> 0", bool(seen.ticks))
    figures.record(f"{label}: ticks missed", seen.missed, "0", seen.missed == 0 and not seen.wait_failures)
    gap_ms = seen.max_gap * 1000
    figures.record(
        f"{label}: longest tick gap ms", round(gap_ms, 1), f"< {interval_s * 2000:g}", gap_ms < interval_s * 2000
    )
    figures.record(
        f"{label}: status answers",
        seen.status_answers,
        "> 0, no failure",
        seen.status_answers > 0 and not seen.status_failures,
    )
    figures.record(f"{label}: driver late_ticks", late, "0 (-1: no answer)", late == 0)  # fmt: skip


def log_flood(tmp: Path, interval: str, lines: int, figures: Figures) -> None:
    """The driver's stderr is a pipe nobody reads; a client causes `lines` warnings."""
    path = str(tmp / "flood" / "SharingMemory")
    command = [sys.executable, "-m", "sharingmemory", "serve", "--socket", path, "--interval", interval]
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [*command, "--max-handles", "2"], stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end
    )
    os.close(write_end)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        driver = DriverProcess(process, path, tmp / "unused.log")
        keep = [driver.open(), driver.open()]  # the limit reached: every further CREATE is refused
        refused = 0
        with contextlib.suppress(OSError):  # TimeoutError: the driver stopped answering
            for _ in range(lines):
                with RawConnection(path, timeout=2) as raw:
                    reply = raw.request(MajorFunction.IRP_MJ_CREATE, FILE_READ_DATA)
                    refused += reply is not None and reply.status != 0
        for device in keep:
            device.close()
        answered = True
        try:
            with sharingmemory.open_device(path, timeout=2) as device:
                device.query_status()
        except (sharingmemory.NtStatusError, OSError):
            answered = False
        figures.record("log-flood: refused CREATEs (warning lines asked for)", refused, f"= {lines}", refused == lines)
        figures.record("log-flood: status answers afterwards", answered, "True", answered)
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(read_end)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold", type=float, default=3.0, help="seconds each attack holds (default 3)")
    parser.add_argument("--interval", default="20ms", help="the drivers' tick (default 20ms)")
    parser.add_argument("--flood", type=int, default=5000, help="refused CREATEs in the log flood (default 5000)")
    parser.add_argument("--attack", action="append", choices=sorted(ATTACKS), help="run only these (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    interval_s = _seconds(args.interval)
    figures = Figures("attack")
    with tempfile.TemporaryDirectory(prefix="sharingmemory-attack-") as tmp:
        for mode, extra in (("SO_PASSRIGHTS", ()), ("closer thread", ("--no-passrights",))):
            where = Path(tmp) / mode.replace(" ", "-")
            where.mkdir()
            with start_driver(where, *extra, interval=args.interval, verbosity="") as driver:
                for name in args.attack or ATTACKS:
                    run_attack(name, driver, hold=args.hold, interval_s=interval_s, figures=figures, mode=mode)
        log_flood(Path(tmp), args.interval, args.flood, figures)
    return figures.report(as_json=args.json)


def _seconds(text: str) -> float:
    return parse_duration(text) / 1e9


if __name__ == "__main__":
    raise SystemExit(main())
