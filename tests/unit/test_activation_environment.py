"""The service manager's environment, parsed as sd_listen_fds(3) and sd_watchdog_enabled(3) do.

Pure: dicts in, values or a DeviceConfigurationError out; no process, no socket. What the driver
does with the result, on real sockets, is in tests/integration/test_activation.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping

import pytest

import sharingmemory
from sharingmemory._server.activation import ListenFds, listen_fds, watchdog_usec


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


def test_watchdog_applies_to_the_process_named_by_watchdog_pid() -> None:
    assert watchdog_usec({"WATCHDOG_USEC": "5000000"}, pid=7) == 5_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "7"}, pid=7) == 5_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "8"}, pid=7) == 0
    assert watchdog_usec({}, pid=7) == 0
    with pytest.raises(sharingmemory.DeviceConfigurationError, match="WATCHDOG_PID"):
        watchdog_usec({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "me"}, pid=7)
