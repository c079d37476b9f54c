"""A private driver for one session, as the seed's program loads and unloads its own driver.

`PrivateDriver` starts `python -m sharingmemory serve` on a socket in a fresh 0700 temporary
directory, waits for the driver's READY=1 on a notification socket of its own (the same
sd_notify protocol a service manager uses, so nothing is polled), and on exit sends SIGTERM,
waits, and removes the directory. If the driver dies before it is ready, its stderr is in the
error.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from .._defs import ENV_SOCKET, SOCKET_NAME, DeviceConfigurationError
from .._server import ENV_NOTIFY_SOCKET

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class PrivateDriver:
    """A driver process owned by this one. Use as a context manager; `socket_path` is where it
    serves. `stop()` is idempotent and also kills a driver that ignores SIGTERM."""

    _process: subprocess.Popen[bytes] | None = None

    def __init__(self, *, interval: str = "1s", extra_args: tuple[str, ...] = ()) -> None:
        self._directory = tempfile.mkdtemp(prefix="sharingmemory-")
        self.socket_path = os.path.join(self._directory, SOCKET_NAME)
        notify_path = os.path.join(self._directory, "notify")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as notify_sock:
                notify_sock.bind(notify_path)
                env = dict(os.environ)
                env[ENV_NOTIFY_SOCKET] = notify_path
                env.pop(ENV_SOCKET, None)
                env.pop("LISTEN_FDS", None)
                env.pop("LISTEN_PID", None)
                command = [
                    sys.executable,
                    "-m",
                    "sharingmemory",
                    "serve",
                    "--socket",
                    self.socket_path,
                    "--interval",
                    interval,
                    *extra_args,
                ]
                self.log_path = os.path.join(self._directory, "driver.log")
                with open(self.log_path, "wb") as log_file:
                    self._process = subprocess.Popen(
                        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file
                    )
                self._wait_ready(notify_sock)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def _wait_ready(self, notify_sock: socket.socket) -> None:
        assert self._process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while (left := deadline - time.monotonic()) > 0 and self._process.poll() is None:
            readable, _, _ = select.select([notify_sock], [], [], min(left, 0.05))
            if readable and b"READY=1" in notify_sock.recv(4096).split(b"\n"):
                return
        with open(self.log_path, "rb") as log_file:
            detail = log_file.read().decode(errors="replace").strip().splitlines()
        raise DeviceConfigurationError(
            "the private driver did not start" + (f": {detail[-1]}" if detail else f" within {READY_TIMEOUT:.0f} s")
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, STOP_TIMEOUT)
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> PrivateDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def stop_process(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM `process`, give it `timeout` seconds to exit, then SIGKILL it; its exit status
    once reaped (negative: the signal that ended it, as `Popen.returncode`).

    The one way this project ends a process it started: the private driver, the tests' drivers,
    the benchmarks' helpers. SIGTERM first, because it is what a service manager sends and the
    driver's orderly path (it closes its handles, unlinks its socket and lock, says STOPPING=1);
    SIGKILL after, so a driver that hangs or ignores SIGTERM cannot hang its owner. It always
    reaps (no zombie, no "still running" ResourceWarning from Popen.__del__). A process already
    reaped is not signalled: `Popen.send_signal` polls first and does nothing once `returncode`
    is set (Python 3.9+), so a pid the kernel has since reused is never hit. Calling it twice is
    harmless."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
