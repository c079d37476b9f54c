"""With no socket named, a client uses the system driver when one answers and its own path
otherwise (issue 10), with the trust rules applied to both. The "system" path is pointed at a
temporary directory (`paths.SYSTEM_SOCKET` is read at each call), and the client plays a
non-root user for the choice of its own path (os.getuid), its trust checks staying root's."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory._defs import paths
from tests.support import DriverProcess, start_driver

NOBODY = 65534


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(system socket, user socket) paths, both unserved so far."""
    system = tmp_path / "system"
    user_runtime = tmp_path / "xdg"
    system.mkdir()
    user_runtime.mkdir()
    monkeypatch.setattr(paths, "SYSTEM_SOCKET", str(system / "dev" / "SharingMemory"))
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.delenv("SHARINGMEMORY_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(user_runtime))
    return system, user_runtime


def _user_driver(tmp_path: Path, user_runtime: Path) -> contextlib.AbstractContextManager[DriverProcess]:
    """A driver at this user's own path ($XDG_RUNTIME_DIR/sharingmemory/SharingMemory)."""
    (tmp_path / "user").mkdir()
    driver = start_driver(tmp_path / "user")
    (user_runtime / "sharingmemory").symlink_to(tmp_path / "user" / "dev")
    return driver


def _served_by(driver: DriverProcess) -> bool:
    with sharingmemory.open_device() as device:
        return device.query_status().pid == driver.pid


def test_the_system_driver_is_used_when_it_answers(tmp_path: Path, places: tuple[Path, Path]) -> None:
    system, user_runtime = places
    with start_driver(system) as system_driver, _user_driver(tmp_path, user_runtime) as user_driver:
        assert _served_by(system_driver)
        system_driver.terminate()
        assert _served_by(user_driver)  # the system socket is gone: the user's own path


def test_a_stale_system_socket_falls_back_to_the_users_own(tmp_path: Path, places: tuple[Path, Path]) -> None:
    system, user_runtime = places
    (system / "dev").mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(system / "dev" / "SharingMemory"))  # bound, never listening: ECONNREFUSED
    try:
        with _user_driver(tmp_path, user_runtime) as user_driver:
            assert _served_by(user_driver)
    finally:
        stale.close()


def test_neither_answering_is_device_not_found(places: tuple[Path, Path]) -> None:
    with pytest.raises(sharingmemory.DeviceNotFound):
        sharingmemory.open_device()
    with pytest.raises(sharingmemory.DeviceNotFound):
        sharingmemory.open_device(map=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to give the system directory to uid 65534")
def test_an_untrusted_system_directory_is_refused_not_skipped(tmp_path: Path, places: tuple[Path, Path]) -> None:
    """The trust rules hold for the system path too: no silent fall back past a fake."""
    system, user_runtime = places
    with start_driver(system), _user_driver(tmp_path, user_runtime):
        os.chown(system / "dev", NOBODY, -1)
        with pytest.raises(sharingmemory.UntrustedDevice):
            sharingmemory.open_device()


def test_the_environment_names_the_one_socket(
    tmp_path: Path, places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    system, _user_runtime = places
    (tmp_path / "env").mkdir()
    with start_driver(system), start_driver(tmp_path / "env") as env_driver:
        monkeypatch.setenv("SHARINGMEMORY_SOCKET", env_driver.socket_path)
        assert _served_by(env_driver)
