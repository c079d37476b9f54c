"""Which sockets a client tries, in which order, when it names none (issue 10)."""

from __future__ import annotations

import pytest

from sharingmemory._defs import paths
from sharingmemory._defs.paths import DEVICE_NAME, SYSTEM_SOCKET, device_socket_candidates


def test_a_user_tries_the_system_driver_then_its_own() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    expected = [SYSTEM_SOCKET, "/run/user/1000/sharingmemory/SharingMemory"]
    assert device_socket_candidates(None, env, uid=1000) == expected
    assert device_socket_candidates(DEVICE_NAME, env, uid=1000) == expected
    assert device_socket_candidates(DEVICE_NAME.upper(), {}, uid=1000) == [
        SYSTEM_SOCKET,
        "/tmp/sharingmemory-1000/SharingMemory",
    ]


def test_root_tries_the_system_path_once() -> None:
    assert device_socket_candidates(None, {}, uid=0) == [SYSTEM_SOCKET]


@pytest.mark.parametrize("uid", [0, 1000])
def test_the_environment_or_an_explicit_path_replaces_both(uid: int) -> None:
    assert device_socket_candidates(None, {"SHARINGMEMORY_SOCKET": "/srv/sm"}, uid=uid) == ["/srv/sm"]
    assert device_socket_candidates("/srv/other", {}, uid=uid) == ["/srv/other"]
    assert device_socket_candidates(b"/srv/bytes", {}, uid=uid) == ["/srv/bytes"]


def test_the_system_path_is_read_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "SYSTEM_SOCKET", "/tmp/elsewhere/SharingMemory")
    assert device_socket_candidates(None, {}, uid=1000)[0] == "/tmp/elsewhere/SharingMemory"
    assert device_socket_candidates(None, {}, uid=1000, system=False) == ["/tmp/sharingmemory-1000/SharingMemory"]


def test_the_host_root_is_trusted_as_the_overflow_uid_only_where_it_is_not_mapped() -> None:
    from sharingmemory._client.trust import host_root_alias

    assert host_root_alias("         0          0 4294967295\n", "65534\n") == frozenset()  # the host
    assert host_root_alias("0 65536 1\n", "65534\n") == frozenset({65534})  # a hostUsers: false pod
    assert host_root_alias("0 100000 65536\n", "65534") == frozenset({65534})  # rootless podman
    assert host_root_alias("0 1000 1\n1 0 1\n", "65534") == frozenset()  # host root mapped as 1
    assert host_root_alias("garbage\n", "65534") == frozenset()  # unreadable: trust nothing more
