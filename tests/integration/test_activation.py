"""The driver as a service: socket activation, readiness, the watchdog, the units, --check-config.

The service manager is played two ways: by this test, which creates and listens on the socket,
receives the sd_notify datagrams and execs the driver with LISTEN_PID equal to its own pid as
systemd does; and by systemd's own `systemd-socket-activate`, which we did not write.
"""

from __future__ import annotations

import configparser
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
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory import STATE_RUNNING
from sharingmemory._server.activation import ListenFds, listen_fds, service_manager, watchdog_usec
from tests.support import wait_for

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
_SERVICE_VARIABLES = (
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "NOTIFY_SOCKET",
    "SHARINGMEMORY_SOCKET",
)

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


def _clean_environ(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _SERVICE_VARIABLES}
    env.update(extra)
    return env


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
    """Run `command` with its output in `log_path`; SIGKILL it if the test left it running."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, **popen)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def _as_systemd(fd: int, *args: str) -> list[str]:
    return [sys.executable, "-c", _EXEC_AS_SYSTEMD, str(fd), "-m", "sharingmemory", *args]


def _run_as_systemd(fd: int, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_systemd(fd, *args), pass_fds=(fd,) if fd >= 0 else (), env=env,
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --- activated by hand, as systemd does it ------------------------------------------------------


def test_serves_a_socket_passed_the_way_systemd_does(tmp_path: Path, notifications: Notifications) -> None:
    path = tmp_path / "SharingMemory"
    listener = _seqpacket_listener(path)
    env = _clean_environ(
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
    with running(command, log_path, env=_clean_environ()) as activator:
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
        result = _run_as_systemd(fd, *args, env=_clean_environ(LISTEN_FDS="1"))
    assert result.returncode == 1
    line = _one_line(result)
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
    result = _run_as_systemd(-1, *args, env=_clean_environ(**variables))
    assert result.returncode == 1
    assert says in _one_line(result)


def test_check_config_reports_the_passed_socket_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "SharingMemory"
    with _seqpacket_listener(path) as listener:
        env = _clean_environ(LISTEN_FDS="1", WATCHDOG_USEC="4000000")
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
            listener.fileno(), "serve", "--socket", str(tmp_path / "other"), env=_clean_environ(LISTEN_FDS="1")
        )
    assert result.returncode == 2
    assert "is not the socket the service manager passed" in _one_line(result)


# --- the environment, parsed as sd_listen_fds(3) and sd_watchdog_enabled(3) do ------------------


def test_listen_fds_is_for_the_process_named_by_listen_pid() -> None:
    env: MutableMapping[str, str] = {"LISTEN_FDS": "2", "LISTEN_PID": "1234", "LISTEN_FDNAMES": "a:b"}
    assert listen_fds(dict(env), pid=1234) == ListenFds((3, 4), ("a", "b"))
    assert listen_fds(dict(env), pid=4321) is None  # inherited from an activated parent
    assert listen_fds({"LISTEN_FDS": "0", "LISTEN_PID": "1"}, pid=1) is None
    assert listen_fds({}, pid=1) is None
    assert listen_fds({"LISTEN_FDS": "1", "LISTEN_PID": "1"}, pid=1) == ListenFds((3,), ("unknown",))


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_FDS": "1", "LISTEN_PID": "1"},
        {"LISTEN_FDS": "1", "LISTEN_PID": "2"},
        {"LISTEN_FDS": "x", "LISTEN_PID": "1"},
        {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "a:b"},
    ],
)
def test_listen_variables_are_unset_on_every_path(env: dict[str, str]) -> None:
    with contextlib.suppress(sharingmemory.DeviceConfigurationError):
        listen_fds(env, pid=1)
    assert env == {}


def test_listen_variables_are_kept_when_only_checking() -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "x"}
    listen_fds(env, unset=False, pid=1)
    assert env == {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "x"}


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


def test_watchdog_applies_to_the_process_named_by_watchdog_pid() -> None:
    assert watchdog_usec({"WATCHDOG_USEC": "5000000"}, pid=7) == 5_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "7"}, pid=7) == 5_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "8"}, pid=7) == 0
    assert watchdog_usec({}, pid=7) == 0
    with pytest.raises(sharingmemory.DeviceConfigurationError, match="WATCHDOG_PID"):
        watchdog_usec({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "me"}, pid=7)


# --- serve --check-config -----------------------------------------------------------------------


def _serve_check(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sharingmemory", "serve", "--check-config", *args],
        env=_clean_environ() if env is None else env,
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def test_check_config_accepts_good_options_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "SharingMemory"
    result = _serve_check(
        "--socket", str(path), "--interval", "250ms", "--allow-uid", "1000", "--allow-gid", "100",
        "--socket-mode", "0600", "--dir-mode", "0700",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"configuration OK: socket {path}, interval 250 ms"
    assert result.stderr == ""
    assert not path.parent.exists()


def _prepare(tmp_path: Path, case: str) -> str:
    """A socket path whose surroundings make `case` go wrong."""
    if case == "long":
        return str(tmp_path / ("x" * 120))
    if case == "dir is a file":
        (tmp_path / "dev").write_text("")
        return str(tmp_path / "dev" / "S")
    if case == "dir is everyone's":
        (tmp_path / "dev").mkdir()
        (tmp_path / "dev").chmod(0o777)
        return str(tmp_path / "dev" / "S")
    if case == "path is a file":
        (tmp_path / "S").write_text("precious")
        return str(tmp_path / "S")
    assert case == "parent missing"
    return str(tmp_path / "no" / "such" / "S")


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("long", "socket path is longer than 107 bytes"),
        ("dir is a file", "is not a directory"),
        ("dir is everyone's", "is writable by everyone; refusing to serve from it"),
        ("path is a file", "exists and is not a socket; refusing to replace it"),
        ("parent missing", "is missing"),
    ],
)
def test_check_config_refuses_an_unsafe_socket_path(tmp_path: Path, case: str, says: str) -> None:
    result = _serve_check("--socket", _prepare(tmp_path, case))
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith("sharingmemory: error: ")
    assert says in line
    if case == "path is a file":
        assert (tmp_path / "S").read_text() == "precious"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--interval", "0"), "--interval"),
        (("--interval", "soon"), "invalid duration"),
        (("--socket-mode", "0444"), "--socket-mode 0444 denies the owner write permission"),
        (("--socket-mode", "888"), "invalid mode"),
        (("--dir-mode", "0666"), "--dir-mode 0666 denies the owner rwx"),
        (("--dir-mode", "0777"), "--dir-mode 0777 makes the directory writable by everyone"),
        (("--allow-uid", "alice"), "--allow-uid"),
        (("--allow-gid", "4294967295"), "--allow-gid"),
        (("--max-handles", "0"), "--max-handles"),
    ],
)
def test_check_config_refuses_a_bad_option_in_one_line(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    result = _serve_check("--socket", str(tmp_path / "S"), *args)
    assert result.returncode == 2
    # argparse's own errors may come after a usage text; the error itself is one line.
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(errors) == 1, result.stderr
    assert says in errors[0]


def test_serve_itself_refuses_what_check_config_refuses(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sharingmemory", "serve", "--socket", str(tmp_path / "S"), "--socket-mode", "0400"],
        env=_clean_environ(), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--socket-mode 0400 denies the owner write permission" in _one_line(result)
    assert not (tmp_path / "S").exists()


# --- install-unit -------------------------------------------------------------------------------


def _install(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sharingmemory", "install-unit", *args],
        env=_clean_environ() if env is None else env,
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def _parse_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # unit keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_install_unit_writes_both_units_and_says_what_next(tmp_path: Path) -> None:
    units = tmp_path / "units"
    result = _install("--dir", str(units))
    assert result.returncode == 0, result.stderr
    service, socket_unit = units / "sharingmemory.service", units / "sharingmemory.socket"
    sysusers = units / "sharingmemory.conf"  # the group the system units serve, beside them with --dir
    assert result.stdout.splitlines() == [
        f"wrote {service}",
        f"wrote {socket_unit}",
        f"wrote {sysusers}",
        *([line for line in result.stdout.splitlines() if line.startswith("note: ")]),
        "next:",
        f"  systemd-sysusers {sysusers}",
        "  systemctl daemon-reload",
        "  systemctl enable --now sharingmemory.socket",
        "  usermod -aG sharingmemory USER   # for each user who may open the device",
    ]
    for path in (service, socket_unit):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    parsed = _parse_unit(service)
    assert parsed["Service"]["ExecStart"] == f"{sys.executable} -m sharingmemory serve --socket-group sharingmemory"
    assert parsed["Service"]["Type"] == "notify"
    assert _parse_unit(socket_unit)["Socket"]["ListenSequentialPacket"] == "%t/sharingmemory/SharingMemory"

    again = _install("--dir", str(units))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[:2] == [f"unchanged {service}", f"unchanged {socket_unit}"]


def test_install_unit_refuses_to_replace_a_different_unit_without_force(tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    (units / "sharingmemory.socket").write_text("[Socket]\nListenSequentialPacket=/somewhere/else\n")
    refused = _install("--dir", str(units))
    assert refused.returncode == 1
    assert "sharingmemory.socket exists and differs from the unit to write; --force replaces it" in _one_line(refused)
    assert (units / "sharingmemory.socket").read_text() == "[Socket]\nListenSequentialPacket=/somewhere/else\n"
    assert not (units / "sharingmemory.service").exists()  # all or nothing

    forced = _install("--dir", str(units), "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"wrote {units / 'sharingmemory.socket'}" in forced.stdout.splitlines()
    assert "%t/sharingmemory/SharingMemory" in (units / "sharingmemory.socket").read_text()
    assert sorted(os.listdir(units)) == ["sharingmemory.conf", "sharingmemory.service", "sharingmemory.socket"]


def test_install_unit_for_a_user_goes_to_the_users_config(tmp_path: Path) -> None:
    result = _install("--user", env=_clean_environ(XDG_CONFIG_HOME=str(tmp_path / "config")))
    assert result.returncode == 0, result.stderr
    service = tmp_path / "config" / "systemd" / "user" / "sharingmemory.service"
    assert f"wrote {service}" in result.stdout.splitlines()
    assert "  systemctl --user enable --now sharingmemory.socket" in result.stdout.splitlines()
    assert _parse_unit(service)["Service"]["ProtectHome"] == "read-only"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze (Debian package systemd) not installed")
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path, user: bool) -> None:
    assert SYSTEMD_ANALYZE is not None
    units = tmp_path / "units"
    assert _install("--dir", str(units), *(["--user"] if user else [])).returncode == 0
    verify = subprocess.run(
        [SYSTEMD_ANALYZE, *(["--user"] if user else []), "verify",
         str(units / "sharingmemory.socket"), str(units / "sharingmemory.service")],
        env=_clean_environ(XDG_RUNTIME_DIR=str(tmp_path)), cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == ""
