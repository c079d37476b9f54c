"""The driver as a service: socket activation, readiness, the watchdog, the passed socket.

The service manager is played two ways: by this test, which creates and listens on the socket,
receives the sd_notify datagrams and execs the driver with LISTEN_PID equal to its own pid as
systemd does; and by systemd's own `systemd-socket-activate`, which we did not write. The
environment parsers alone are in tests/unit/test_activation_environment.py; `serve
--check-config` is in test_check_config.py, the units in test_install_unit.py.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory import STATE_RUNNING
from sharingmemory._server.activation import service_manager
from sharingmemory.cli.private_driver import stop_process
from tests.command_line import clean_environ, one_line
from tests.support import wait_for

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")

# What systemd does between fork and exec: the listening fd moves to 3 (SD_LISTEN_FDS_START) and
# LISTEN_PID names the process that will run the daemon, which exec does not change.
_EXEC_AS_SYSTEMD = """
import os, sys
fd = int(sys.argv[1])
if fd >= 0 and fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def _seqpacket_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    sock.listen(16)
    return sock


class Notifications:
    """The service manager's end of sd_notify(3): a datagram socket that keeps every message."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.messages: list[list[str]] = []

    def close(self) -> None:
        self.sock.close()

    def count(self, assignment: str) -> int:
        return sum(assignment in message for message in self.messages)

    def wait(self, assignment: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        """Receive until `count` messages carried `assignment` (READY=1, ...); the last one."""
        deadline = time.monotonic() + timeout
        while self.count(assignment) < count:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.sock], [], [], max(0.0, left))
            if not readable:
                pytest.fail(f"no {count} x {assignment} within {timeout} s; received {self.messages}")
            self.messages.append(self.sock.recv(4096).decode().split("\n"))
        return next(message for message in reversed(self.messages) if assignment in message)


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    listener = Notifications(tmp_path / "notify")
    try:
        yield listener
    finally:
        listener.close()


@contextlib.contextmanager
def running(command: list[str], log_path: Path, **popen: object) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` with its output in `log_path`; stop it (SIGTERM, then SIGKILL) if the test
    left it running."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, **popen)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        stop_process(process)


def _as_systemd(fd: int, *args: str) -> list[str]:
    return [sys.executable, "-c", _EXEC_AS_SYSTEMD, str(fd), "-m", "sharingmemory", *args]


def _run_as_systemd(fd: int, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_systemd(fd, *args), pass_fds=(fd,) if fd >= 0 else (), env=env,
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


# --- activated by hand, as systemd does it ------------------------------------------------------


def test_serves_a_socket_passed_the_way_systemd_does(tmp_path: Path, notifications: Notifications) -> None:
    path = tmp_path / "SharingMemory"
    listener = _seqpacket_listener(path)
    env = clean_environ(
        LISTEN_FDS="1", LISTEN_FDNAMES="SharingMemory", NOTIFY_SOCKET=notifications.path, WATCHDOG_USEC="200000"
    )
    command = _as_systemd(listener.fileno(), "-vv", "serve")
    with listener, running(command, tmp_path / "driver.log", pass_fds=(listener.fileno(),), env=env) as driver:
        ready = notifications.wait("READY=1")
        assert f"MAINPID={driver.pid}" in ready
        assert f"STATUS=serving {path}" in ready

        with sharingmemory.open_device(str(path), timeout=10) as device:
            snap = device.map_shared_memory().read()
            assert snap.state == STATE_RUNNING
            assert snap.writer_pid == driver.pid
            assert device.query_status().handles == 1

        # WATCHDOG_USEC=200000: the loop pings every 0.1 s, with the handle count as status.
        notifications.wait("WATCHDOG=1", count=3)
        assert any(line.startswith("STATUS=serving") for message in notifications.messages for line in message)

        driver.send_signal(signal.SIGTERM)
        assert driver.wait(10) == 0
        stopping = notifications.wait("STOPPING=1")
        assert "STATUS=stopping: SIGTERM" in stopping

        # The socket belongs to the service manager: still there, still listening, and a client
        # that comes while the driver is down waits in its queue for the next driver.
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as late:
            late.connect(str(path))
            accepted, _ = listener.accept()
            accepted.close()
    log = (tmp_path / "driver.log").read_text()
    assert f"socket {path} passed by the service manager" in log


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate (Debian package systemd) not installed")
def test_systemd_socket_activate_starts_the_driver_on_first_connection(
    tmp_path: Path, notifications: Notifications
) -> None:
    assert SOCKET_ACTIVATE is not None
    path = tmp_path / "SharingMemory"
    log_path = tmp_path / "activate.log"
    command = [
        SOCKET_ACTIVATE, "--seqpacket", "--listen", str(path), "--fdname", "SharingMemory",
        "--setenv", f"NOTIFY_SOCKET={notifications.path}",
        sys.executable, "-m", "sharingmemory", "-vv", "serve",
    ]  # fmt: skip
    with running(command, log_path, env=clean_environ()) as activator:
        assert wait_for(lambda: b"Listening on" in log_path.read_bytes() or activator.poll() is not None, 10)
        assert activator.poll() is None, log_path.read_text()
        # Nothing runs the driver yet: this connection is what starts it.
        with sharingmemory.open_device(str(path), timeout=10) as device:
            snap = device.map_shared_memory().read()
            assert snap.state == STATE_RUNNING
            assert snap.writer_pid == activator.pid  # systemd-socket-activate execs the daemon
        assert f"MAINPID={activator.pid}" in notifications.wait("READY=1")
        activator.send_signal(signal.SIGTERM)
        assert activator.wait(10) == 0
        notifications.wait("STOPPING=1")
    assert f"socket {path} passed by the service manager" in log_path.read_text()


# --- fds and environments that are refused ------------------------------------------------------


@contextlib.contextmanager
def _passed(kind: str, tmp_path: Path) -> Iterator[int]:
    """An fd of the given kind, for the driver to find at fd 3."""
    with contextlib.ExitStack() as stack:
        if kind == "pipe":
            read_end, write_end = os.pipe()
            stack.callback(os.close, read_end)
            stack.callback(os.close, write_end)
            yield read_end
            return
        if kind == "stream":
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.bind(str(tmp_path / "stream"))
            sock.listen()
        elif kind == "not listening":
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
            sock.bind(str(tmp_path / "unlistened"))
        elif kind == "connected":
            sock, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            stack.enter_context(sock)
            stack.enter_context(other)
        else:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        yield sock.fileno()


@pytest.mark.parametrize("check_only", [False, True], ids=["serve", "check-config"])
@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("pipe", "passed fd 3 is not a socket (a pipe)"),
        ("stream", "is a SOCK_STREAM socket, not SOCK_SEQPACKET (the socket unit needs ListenSequentialPacket=)"),
        ("not listening", "passed fd 3 is not listening"),
        ("connected", "passed fd 3 is not listening"),
        ("inet", "passed fd 3 is a AF_INET socket, not AF_UNIX"),
    ],
)
def test_a_passed_fd_that_is_not_the_device_socket_is_refused(
    tmp_path: Path, kind: str, says: str, check_only: bool
) -> None:
    args = ["serve", "--socket", str(tmp_path / "dev" / "S"), *(["--check-config"] if check_only else [])]
    with _passed(kind, tmp_path) as fd:
        result = _run_as_systemd(fd, *args, env=clean_environ(LISTEN_FDS="1"))
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith("sharingmemory: error: ")
    assert says in line
    assert not (tmp_path / "dev").exists()  # it did not fall back to binding a socket of its own


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({"LISTEN_FDS": "two"}, "LISTEN_FDS='two' is not a number"),
        ({"LISTEN_FDS": "2"}, "expected one socket from the service manager, got 2: 3 (unknown), 4 (unknown)"),
        ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, "names 2 fd(s) but LISTEN_FDS=1"),
        ({"LISTEN_FDS": "1"}, "passed fd 3 is not open"),
        ({"WATCHDOG_USEC": "soon"}, "WATCHDOG_USEC='soon' is not a number"),
        ({"WATCHDOG_USEC": "0"}, "WATCHDOG_USEC='0' is not a positive number"),
    ],
)
def test_a_bad_service_environment_is_one_line(tmp_path: Path, variables: dict[str, str], says: str) -> None:
    args = ("serve", "--check-config", "--socket", str(tmp_path / "S"))
    result = _run_as_systemd(-1, *args, env=clean_environ(**variables))
    assert result.returncode == 1
    assert says in one_line(result)


def test_check_config_reports_the_passed_socket_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "SharingMemory"
    with _seqpacket_listener(path) as listener:
        env = clean_environ(LISTEN_FDS="1", WATCHDOG_USEC="4000000")
        result = _run_as_systemd(listener.fileno(), "serve", "--check-config", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (
            f"configuration OK: socket {path} (passed by the service manager), interval 1000 ms, WATCHDOG=1 every 2 s"
        )
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert os.get_blocking(listener.fileno())  # not even made non-blocking


def test_a_socket_option_that_contradicts_the_passed_socket_is_refused(tmp_path: Path) -> None:
    with _seqpacket_listener(tmp_path / "SharingMemory") as listener:
        result = _run_as_systemd(
            listener.fileno(), "serve", "--socket", str(tmp_path / "other"), env=clean_environ(LISTEN_FDS="1")
        )
    assert result.returncode == 2
    assert "is not the socket the service manager passed" in one_line(result)


# --- what activation leaves to the driver's children ---------------------------------------------


def test_children_do_not_inherit_the_activation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "0")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    assert service_manager().watchdog_interval == 0.5
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(k for k in os.environ if k[:7] in ('LISTEN_', 'WATCHDO')))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert child.stdout.strip() == "[]"
