"""Helpers for tests that run real driver processes and look at them through /proc."""

from __future__ import annotations

import array
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sharingmemory
from sharingmemory import IOCTL_GIVE_ME_YOUR_MEMORY, NtStatus
from sharingmemory._defs.protocol import MAX_MESSAGE_SIZE, MajorFunction, Reply, Request, decode_reply, encode_request
from sharingmemory._sys import libc
from sharingmemory.cli.private_driver import stop_process
from sharingmemory.winioctl import FILE_READ_DATA

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0  # longer than the library's 5 s: the machine running the suite is shared


@dataclass
class DriverProcess:
    """A running `sharingmemory serve` and where it serves."""

    process: subprocess.Popen[bytes]
    socket_path: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def open(self, access: str = "r", timeout: float = 5.0) -> sharingmemory.Device:
        return sharingmemory.open_device(self.socket_path, access, timeout=timeout)

    def open_device(self, access: str = "r", *, map: bool = False) -> sharingmemory.Device:  # noqa: A002
        return sharingmemory.open_device(self.socket_path, access, map=map)

    def status(self) -> sharingmemory.DriverStatus:
        with self.open() as device:
            return device.query_status()

    def fds(self) -> list[str]:
        """What the driver process has open, as /proc/PID/fd links."""
        return list(open_fds(self.pid).values())

    def memfds(self) -> set[int]:
        """Inodes of the memfds the driver holds open (Python's mmap keeps a dup of its fd, so
        one page is two fds and one inode)."""
        inodes = set()
        for fd, link in open_fds(self.pid).items():
            if link.startswith("/memfd:"):
                with contextlib.suppress(OSError):  # closed since it was listed
                    inodes.add(os.stat(f"/proc/{self.pid}/fd/{fd}").st_ino)
        return inodes

    def memfd_mappings(self) -> list[str]:
        with open(f"/proc/{self.pid}/maps") as maps:
            return [line for line in maps if "/memfd:" in line]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the driver and reap it; its exit status (0: it stopped cleanly; -9: it had to
        be SIGKILLed after `timeout`, which a test asserting 0 then reports)."""
        return stop_process(self.process, timeout)


def open_fds(pid: int | str = "self") -> dict[int, str]:
    """The fds `pid` has open and what each is, as the /proc/PID/fd links name it ("socket:[N]",
    "/memfd:... (deleted)", "anon_inode:[timerfd]"). An fd closed between the listing and its
    readlink is left out: the process runs on while it is looked at (proc(5))."""
    links = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            links[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return links


def wait_for(predicate: object, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll `predicate()` until true or `timeout`; returns its last truth value."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@contextlib.contextmanager
def start_driver(
    tmp_path: Path, *args: str, interval: str = "1s", prefix: Sequence[str] = (), verbosity: str = "-vv"
) -> Iterator[DriverProcess]:
    """Start `python -m sharingmemory -vv serve` on `tmp_path/dev/SharingMemory` and wait until
    it logs that it listens; SIGTERM it (SIGKILL if need be) afterwards. `prefix` runs the
    driver under another command (`prlimit ...`, which must exec it); `verbosity` "" logs at
    INFO only, for long runs."""
    socket_path = str(tmp_path / "dev" / "SharingMemory")
    log_path = tmp_path / "driver.log"
    with open(log_path, "wb") as log:
        command = [sys.executable, "-m", "sharingmemory", *([verbosity] if verbosity else []), "serve"]
        command += ["--socket", socket_path]
        process = subprocess.Popen(
            [*prefix, *command, "--interval", interval, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    driver = DriverProcess(process, socket_path, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while b" ready (driver pid" not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"driver did not start:\n{log_path.read_text()}")
            time.sleep(0.01)
        yield driver
    finally:
        stop_process(process, STOP_TIMEOUT)


def futex_sleepers(pid: int) -> int:
    """Threads of `pid` asleep in a shared FUTEX_WAIT (op 0: Python's own locks use the
    PRIVATE ops), that is in a page or section wait; 0 once the process is gone."""
    count = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                call = (task / "syscall").read_text().split()
                if call[:1] == [str(libc._SYS_FUTEX)] and call[2:3] == ["0x0"]:
                    count += 1
    return count


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS of /proc/PID/status)."""
    return _status_field(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size of `pid` in KiB (VmHWM of /proc/PID/status)."""
    return _status_field(pid, "VmHWM")


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise LookupError(f"{name} not in /proc/{pid}/status")


def _answered(reply: Reply | None, what: str) -> Reply:
    if reply is None:
        raise AssertionError(f"the driver hung up instead of answering {what}")
    return reply


class RawConnection:
    """One connection to the device that speaks the wire protocol by hand, for tests that send
    what the client library never would. Fds that replies bring are kept in `fds` (owned here,
    closed by `close()`)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.fds: list[int] = []
        self._next_id = 1
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        except BaseException:
            self.sock.close()
            raise

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """One message of any bytes, with `fds` attached by SCM_RIGHTS (the caller keeps them)."""
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            self.sock.sendmsg([data])

    def receive(self) -> Reply | None:
        """The next reply, or None when the driver closed the connection."""
        data, ancdata, _flags, _addr = self.sock.recvmsg(MAX_MESSAGE_SIZE + 1, socket.CMSG_SPACE(64))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                self.fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
        return decode_reply(data) if data else None

    def request(
        self, major: MajorFunction, code: int = 0, output_length: int = 0, data: bytes = b"", fds: Sequence[int] = ()
    ) -> Reply | None:
        """Send one well-formed request and return its reply (None: the driver hung up)."""
        request_id, self._next_id = self._next_id, self._next_id + 1
        self.send_raw(encode_request(Request(major, request_id, code, output_length, data)), fds)
        return self.receive()

    def create(self, access: int = FILE_READ_DATA) -> Reply:
        """IRP_MJ_CREATE asking for `access`; the driver's answer, whatever its status (a
        hang-up instead fails the test)."""
        return _answered(self.request(MajorFunction.IRP_MJ_CREATE, access), "IRP_MJ_CREATE")

    def give_me_your_memory(self) -> Reply:
        """IOCTL_GIVE_ME_YOUR_MEMORY on this connection's handle; the answer, whatever its status
        (a hang-up fails the test). The page fd it brings, if any, is appended to `fds`."""
        reply = self.request(MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_GIVE_ME_YOUR_MEMORY, 8)
        return _answered(reply, "IOCTL_GIVE_ME_YOUR_MEMORY")

    def open_page(self, access: int = FILE_READ_DATA) -> int:
        """CREATE then map, as `open_device(map=True)` does but one reply at a time, each step
        required to succeed; the page fd exactly as the driver sent it (owned here)."""
        created = self.create(access)
        if created.status != NtStatus.STATUS_SUCCESS:
            raise AssertionError(f"CREATE answered {created.status!r}")
        reply = self.give_me_your_memory()
        if reply.status != NtStatus.STATUS_SUCCESS or not reply.has_fd or len(self.fds) != 1:
            raise AssertionError(f"GIVE_ME_YOUR_MEMORY answered {reply.status!r} with fds {self.fds}")
        return self.fds[0]

    def closed_by_peer(self) -> bool:
        """Wait (up to the socket timeout) for the driver to hang up; replies before it are
        skipped. False if the driver kept the connection open."""
        try:
            while self.receive() is not None:
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_in_fork(work: object) -> int:
    """Run `work()` in a forked child and return its exit status: 0 when it returned True, 2
    when it returned False, 1 when it raised (the child never returns into the test)."""
    return run_in_forks(work, 1)[0]


def run_in_forks(work: object, count: int) -> list[int]:
    """`run_in_fork` in `count` children at once (all forked before any is waited for), their
    exit statuses in order."""
    assert callable(work)
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's report is its exit status
            code = 1
            try:
                code = 0 if work() else 2
            finally:
                os._exit(code)
        pids.append(pid)
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def kill_all(processes: list[subprocess.Popen[str]]) -> None:
    """SIGKILL and reap every helper process of a test, and close the pipes it was given, so
    that a failing test leaves no process and no ResourceWarning behind."""
    for process in processes:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
