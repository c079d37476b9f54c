"""The client believes nothing that answers at a path until it has checked who it is (issue 9).

Each check is attacked with a fake driver (tests/fake_driver.py) in more than one variant: a
listener run by another uid, a directory another uid owns or may write to, page fds that are
unsealed, partly sealed, the wrong size or no memfd at all, tick fds of the wrong kind.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory._defs import PAGE_SEALS, PAGE_SIZE
from sharingmemory._defs.page import F_SEAL_FUTURE_WRITE
from tests.fake_driver import OTHER_UID_LISTENER, Memfd, fake_driver

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root, to own files as and run a listener as uid 65534")


@pytest.fixture
def sock_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "dev"
    directory.mkdir(mode=0o755)
    return directory


@pytest.fixture
def good_page() -> Iterator[Memfd]:
    page = Memfd()
    yield page
    page.close()


# --- the listener's uid ----------------------------------------------------------------------


@pytest.fixture
def other_uid_listener(sock_dir: Path) -> Iterator[str]:
    """A listener whose listen(2) ran as uid 65534, in a directory root owns (so only the
    SO_PEERCRED check can catch it): root binds, the other uid listens and answers."""
    if os.getuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs root (to run a listener as uid 65534) and /usr/bin/python3")
    path = str(sock_dir / "SharingMemory")
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    bound.bind(path)
    process = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", OTHER_UID_LISTENER, str(bound.fileno())], user=NOBODY, group=NOBODY,
        extra_groups=[], pass_fds=[bound.fileno()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/",
    )  # fmt: skip
    bound.close()
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"listening"
        yield path
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize("map_at_open", [False, True])
def test_a_listener_of_another_uid_is_refused(other_uid_listener: str, map_at_open: bool) -> None:
    with pytest.raises(sharingmemory.UntrustedDevice, match="uid 65534"):
        sharingmemory.open_device(other_uid_listener, map=map_at_open)
    with pytest.raises(sharingmemory.UntrustedDevice):  # the trust of one uid is not the trust of all
        sharingmemory.open_device(other_uid_listener, trusted_uid=[1000, 4242])


def test_a_uid_named_as_trusted_is_believed(other_uid_listener: str) -> None:
    for trusted in (NOBODY, [NOBODY], (1000, NOBODY)):
        with sharingmemory.open_device(other_uid_listener, trusted_uid=trusted) as device:
            assert not device.closed


@pytest.mark.parametrize("bad", [True, "65534", 1.5, -1, 2**32, [None]])
def test_a_trusted_uid_must_be_a_uid(sock_dir: Path, bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        sharingmemory.open_device(str(sock_dir / "SharingMemory"), trusted_uid=bad)  # type: ignore[arg-type]


# --- the socket's directory ------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize(
    ("owner", "mode"),
    [(NOBODY, 0o755), (NOBODY, 0o700), (0, 0o777), (0, 0o775), (0, 0o757), (os.getuid(), 0o722)],
)
def test_a_directory_others_own_or_may_write_is_refused(
    sock_dir: Path, good_page: Memfd, owner: int, mode: int
) -> None:
    path = str(sock_dir / "SharingMemory")
    with fake_driver(path, page=good_page.dup):
        os.chown(sock_dir, owner, -1)
        sock_dir.chmod(mode)
        with pytest.raises(sharingmemory.UntrustedDevice, match=str(sock_dir)):
            sharingmemory.open_device(path)
        with pytest.raises(sharingmemory.UntrustedDevice):
            sharingmemory.open_device(path, map=True)


@needs_root
def test_a_symlink_to_an_untrusted_directory_is_refused(tmp_path: Path, sock_dir: Path, good_page: Memfd) -> None:
    with fake_driver(str(sock_dir / "SharingMemory"), page=good_page.dup):
        os.chown(sock_dir, NOBODY, -1)
        link = tmp_path / "link"
        link.symlink_to(sock_dir)
        with pytest.raises(sharingmemory.UntrustedDevice):
            sharingmemory.open_device(str(link / "SharingMemory"))


@needs_root
def test_a_sticky_world_writable_directory_is_accepted(sock_dir: Path, good_page: Memfd) -> None:
    """As /tmp: with the sticky bit only an entry's owner may rename or remove it."""
    path = str(sock_dir / "SharingMemory")
    with fake_driver(path, page=good_page.dup):
        sock_dir.chmod(0o1777)
        with sharingmemory.open_device(path, map=True) as device:
            assert device.map_shared_memory().read().tick_count == 1


@needs_root
def test_a_directory_of_a_trusted_uid_is_accepted(sock_dir: Path, good_page: Memfd) -> None:
    path = str(sock_dir / "SharingMemory")
    with fake_driver(path, page=good_page.dup):
        os.chown(sock_dir, NOBODY, -1)
        with sharingmemory.open_device(path, trusted_uid=NOBODY, map=True) as device:
            assert device.map_shared_memory().read().state == sharingmemory.STATE_RUNNING


# --- the page fd -----------------------------------------------------------------------------


def _seals_without(seal: int) -> Memfd:
    return Memfd(seals=PAGE_SEALS & ~seal)


PAGES = {
    "unsealed": lambda: Memfd(seals=0),
    "truncatable (no shrink seal)": lambda: _seals_without(fcntl.F_SEAL_SHRINK),
    "growable (no grow seal)": lambda: _seals_without(fcntl.F_SEAL_GROW),
    "writable (no future-write seal)": lambda: _seals_without(F_SEAL_FUTURE_WRITE),
    "seals can be added (no seal seal)": lambda: _seals_without(fcntl.F_SEAL_SEAL),
    "two pages": lambda: Memfd(size=2 * PAGE_SIZE),
    "empty": lambda: Memfd(size=0),
    "half a page": lambda: Memfd(size=PAGE_SIZE // 2),
}


@pytest.mark.parametrize("kind", PAGES)
@pytest.mark.parametrize("map_at_open", [False, True])
def test_a_page_fd_without_the_abi_seals_and_size_is_refused(
    sock_dir: Path, kind: str, map_at_open: bool, no_fd_leak: None
) -> None:
    page = PAGES[kind]()
    path = str(sock_dir / "SharingMemory")
    try:
        with fake_driver(path, page=page.dup):
            if map_at_open:
                with pytest.raises(sharingmemory.UntrustedDevice):
                    sharingmemory.open_device(path, map=True)
            else:
                with sharingmemory.open_device(path) as device, pytest.raises(sharingmemory.UntrustedDevice):
                    device.map_shared_memory()
    finally:
        page.close()


def _regular_file() -> int:
    fd, name = tempfile.mkstemp()
    os.unlink(name)
    os.ftruncate(fd, PAGE_SIZE)
    return fd


def _pipe_read_end() -> int:
    read_end, write_end = os.pipe()
    os.close(write_end)
    return read_end


@pytest.mark.parametrize("make", [_regular_file, _pipe_read_end, lambda: os.open("/dev/zero", os.O_RDONLY)])
def test_a_page_fd_that_is_no_memfd_is_refused(sock_dir: Path, make: object, no_fd_leak: None) -> None:
    path = str(sock_dir / "SharingMemory")
    with fake_driver(path, page=make), pytest.raises(sharingmemory.UntrustedDevice):  # type: ignore[arg-type]
        sharingmemory.open_device(path, map=True)


def test_a_truncation_attempt_on_the_accepted_page_fails(sock_dir: Path, good_page: Memfd) -> None:
    """What the seals buy: the fake itself can no longer shrink the page under a reader."""
    path = str(sock_dir / "SharingMemory")
    with fake_driver(path, page=good_page.dup), sharingmemory.open_device(path, map=True) as device:
        page = device.map_shared_memory()
        for size in (0, PAGE_SIZE - 1, PAGE_SIZE + 1):
            with pytest.raises(PermissionError):
                os.ftruncate(good_page.fd, size)
        assert page.read().tick_count == 1


# --- the tick fd -----------------------------------------------------------------------------


def _pipe_write_end() -> int:
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def _a_socket() -> int:
    left, right = socket.socketpair()
    right.close()
    return left.detach()


@pytest.mark.parametrize("make", [_regular_file, _pipe_write_end, _a_socket, lambda: os.memfd_create("not-a-tick")])
def test_a_tick_fd_of_the_wrong_kind_is_refused_and_the_wait_falls_back(
    sock_dir: Path, good_page: Memfd, make: object, no_fd_leak: None
) -> None:
    """The page still works, waited on by its deadline, and the wrong fd is closed."""
    path = str(sock_dir / "SharingMemory")
    with fake_driver(path, page=good_page.dup, tick=make), sharingmemory.open_device(path, map=True) as device:  # type: ignore[arg-type]
        page = device.map_shared_memory()
        with pytest.raises(sharingmemory.UntrustedDevice):
            device._register_tick_event()
        with pytest.raises(TimeoutError):  # the fake never ticks: a timeout, not a hang or a crash
            page.wait_next(timeout=0.05)


@pytest.mark.parametrize("make", [lambda: os.eventfd(0, os.EFD_NONBLOCK), _pipe_read_end])
def test_a_tick_fd_that_is_an_eventfd_or_a_pipe_is_accepted(sock_dir: Path, good_page: Memfd, make: object) -> None:
    path = str(sock_dir / "SharingMemory")
    with fake_driver(path, page=good_page.dup, tick=make), sharingmemory.open_device(path, map=True) as device:  # type: ignore[arg-type]
        event = device._register_tick_event()
        event.close()


def test_a_blocking_eventfd_never_blocks_the_drain(sock_dir: Path, good_page: Memfd) -> None:
    """A tick fd with O_NONBLOCK cleared (by the fake, or by anyone sharing its description)
    is read only when poll(2) says it is readable."""
    path = str(sock_dir / "SharingMemory")
    blocking = fake_driver(path, page=good_page.dup, tick=lambda: os.eventfd(0))
    with blocking, sharingmemory.open_device(path, map=True) as device, pytest.raises(TimeoutError):
        device.map_shared_memory().wait_next(timeout=0.1)
