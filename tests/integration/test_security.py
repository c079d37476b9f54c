"""What a client can never do to the page or the driver, with real driver processes.

The page: the fd a client receives is read-only, and the seals stop every way of writing,
growing or shrinking it, even through a writable reopen of /proc/self/fd/N. The driver: it closes
any fd a client sends, checks SO_PEERCRED at CREATE and the access bits of each IOCTL, creates
its socket and directory with tight modes and refuses unsafe paths, bounds its handles, its idle
connections and the size of what it receives.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import shutil
import signal
import socket
import stat
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory import IOCTL_QUERY_STATUS, NtStatus
from sharingmemory._defs.page import MAGIC, PAGE_SIZE
from sharingmemory._defs.protocol import MAX_MESSAGE_SIZE, MajorFunction, Request, encode_request
from sharingmemory._driver.memory import PAGE_SEALS
from sharingmemory.winioctl import FILE_READ_DATA, FILE_WRITE_DATA
from tests.command_line import one_line, run_cli
from tests.support import DriverProcess, RawConnection, peak_rss_kib, start_driver, wait_for

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value

_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # socket(7); not in typeshed
NOBODY = 65534  # uid and gid of nobody/nogroup on Debian
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by other uids, unlike the venv's interpreter


# --- the page fd a client receives ---------------------------------------------------------------


@pytest.fixture
def page_fd(driver: DriverProcess) -> Iterator[int]:
    """The page fd exactly as the driver sends it, received by hand."""
    with RawConnection(driver.socket_path) as raw:
        yield raw.open_page()


@pytest.fixture
def reopened_rw(page_fd: int) -> Iterator[int]:
    """The same page reopened O_RDWR through /proc/self/fd/N: the open itself succeeds (a memfd
    is mode 0777), which is why the seals, not the fd's mode, must protect the page."""
    fd = os.open(f"/proc/self/fd/{page_fd}", os.O_RDWR | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def _page_bytes(fd: int) -> bytes:
    with mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ) as mapping:
        return mapping[:16]


def test_page_fd_is_read_only_and_fully_sealed(page_fd: int) -> None:
    assert fcntl.fcntl(page_fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    seals = fcntl.fcntl(page_fd, fcntl.F_GET_SEALS)
    assert seals & PAGE_SEALS == PAGE_SEALS  # F_SEAL_EXEC (from MFD_NOEXEC_SEAL) may be there too
    assert os.fstat(page_fd).st_size == PAGE_SIZE


@pytest.mark.parametrize("which", ["received", "reopened_rw"])
def test_writable_shared_mmap_fails(which: str, page_fd: int, reopened_rw: int) -> None:
    fd = page_fd if which == "received" else reopened_rw
    with pytest.raises(PermissionError) as info:
        mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    # EACCES: the fd is not open for writing; EPERM: F_SEAL_FUTURE_WRITE.
    assert info.value.errno == (errno.EACCES if which == "received" else errno.EPERM)


@pytest.mark.parametrize("which", ["received", "reopened_rw"])
def test_mprotect_to_writable_fails(which: str, page_fd: int, reopened_rw: int) -> None:
    fd = page_fd if which == "received" else reopened_rw
    address = _libc.mmap(None, PAGE_SIZE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, _MAP_FAILED), os.strerror(ctypes.get_errno())
    try:
        result = _libc.mprotect(address, PAGE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE)
        assert (result, ctypes.get_errno()) == (-1, errno.EACCES)
    finally:
        _libc.munmap(address, PAGE_SIZE)


@pytest.mark.parametrize("size", [0, PAGE_SIZE // 2, 2 * PAGE_SIZE])
def test_ftruncate_fails(size: int, page_fd: int, reopened_rw: int) -> None:
    with pytest.raises(OSError, match="Invalid argument") as info:
        os.ftruncate(page_fd, size)
    assert info.value.errno == errno.EINVAL  # not open for writing
    with pytest.raises(PermissionError):  # F_SEAL_SHRINK / F_SEAL_GROW
        os.ftruncate(reopened_rw, size)
    assert os.fstat(page_fd).st_size == PAGE_SIZE


def test_fallocate_beyond_the_page_fails(reopened_rw: int) -> None:
    with pytest.raises(PermissionError):
        os.posix_fallocate(reopened_rw, 0, 2 * PAGE_SIZE)
    assert os.fstat(reopened_rw).st_size == PAGE_SIZE


def test_write_fails(page_fd: int, reopened_rw: int) -> None:
    before = _page_bytes(page_fd)
    with pytest.raises(OSError, match="Bad file descriptor") as info:
        os.write(page_fd, b"XXXX")
    assert info.value.errno == errno.EBADF
    with pytest.raises(PermissionError):  # F_SEAL_FUTURE_WRITE
        os.write(reopened_rw, b"XXXX")
    with pytest.raises(PermissionError):
        os.pwrite(reopened_rw, b"XXXX", 0)
    assert _page_bytes(page_fd) == before
    assert before.startswith(MAGIC)


def test_seals_cannot_be_changed(reopened_rw: int) -> None:
    with pytest.raises(PermissionError):  # F_SEAL_SEAL
        fcntl.fcntl(reopened_rw, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)


def test_private_writable_mapping_never_reaches_the_page(page_fd: int) -> None:
    with mmap.mmap(page_fd, PAGE_SIZE, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE) as private:
        private[:4] = b"EVIL"
    assert _page_bytes(page_fd).startswith(MAGIC)


# --- fds a client sends ---------------------------------------------------------------------------


def _at_eof(fd: int) -> bool:
    try:
        return os.read(fd, 1) == b""
    except BlockingIOError:
        return False


@pytest.mark.parametrize(
    ("when", "count"), [("before-create", 2), ("after-create", 2), ("no-data", 2), ("more-than-fit", 12)]
)
def test_fds_sent_by_a_client_are_closed_at_once(tmp_path: Path, when: str, count: int) -> None:
    # --no-passrights: the path of kernels before 6.16, where fds do arrive (with SO_PASSRIGHTS
    # the sender's sendmsg fails: tests/integration/test_peer_fds.py); closed by the closer thread.
    with start_driver(tmp_path, "--no-passrights") as driver, RawConnection(driver.socket_path) as raw:
        # One reply first, so the driver has accepted the connection before its fds are counted.
        if when == "after-create":
            raw.create()
        else:
            assert raw.request(MajorFunction.IRP_MJ_CLEANUP) is not None  # before CREATE: refused, kept
        before = driver.fds()
        memfd = os.memfd_create("client-probe", os.MFD_CLOEXEC)
        os.ftruncate(memfd, PAGE_SIZE)
        pipes = [os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK) for _ in range(count - 1)]
        sent = [memfd, *(w for _r, w in pipes)]
        try:
            if when == "no-data":
                raw.send_raw(b"", sent)
                assert raw.closed_by_peer()
            else:
                major = MajorFunction.IRP_MJ_CREATE if when != "after-create" else MajorFunction.IRP_MJ_DEVICE_CONTROL
                code = FILE_READ_DATA if major is MajorFunction.IRP_MJ_CREATE else IOCTL_QUERY_STATUS
                reply = raw.request(major, code, 80 if code == IOCTL_QUERY_STATUS else 0, fds=sent)
                assert reply is not None
                assert reply.status == NtStatus.STATUS_INVALID_PARAMETER
            for _r, w in pipes:
                os.close(w)
            # The driver holds no write end: every read end is at end of file, not "would block".
            assert wait_for(lambda: all(_at_eof(r) for r, _w in pipes))
            after = driver.fds()
            assert not [link for link in after if "client-probe" in link]
            assert not [line for line in driver.memfd_mappings() if "client-probe" in line]
            # The same fds as before; a message without data ends its connection, so one less.
            assert len(after) == len(before) - (when == "no-data")
        finally:
            os.close(memfd)
            for r, _w in pipes:
                os.close(r)


# --- who may open the device: SO_PEERCRED at CREATE ----------------------------------------------

_OTHER_UID_CLIENT = textwrap.dedent(
    """
    import os, sys, sharingmemory
    assert os.getuid() == os.geteuid() == int(sys.argv[2])
    try:
        with sharingmemory.open_device(sys.argv[1], timeout=5) as device:
            print("ok", device.map_shared_memory().read().tick_count)
    except sharingmemory.NtStatusError as err:
        print(type(err).__name__, hex(err.status), err)
    """
)


def _source_tree() -> str:
    return str(Path(sharingmemory.__file__).resolve().parent.parent)


def _readable_by_others(path: str) -> bool:
    """Every directory up to `path` traversable and the package files readable by others."""
    current = Path(path)
    for part in [current, *current.parents]:
        if not os.stat(part).st_mode & stat.S_IXOTH:
            return False
    package = Path(sharingmemory.__file__).parent
    return all(
        os.stat(file).st_mode & (stat.S_IROTH if file.is_file() else stat.S_IXOTH)
        for file in [*package.rglob("*.py"), *(p for p in package.rglob("*") if p.is_dir())]
    )


def _run_as(uid: int, gid: int, socket_path: str) -> str:
    """Run a client as uid/gid (no supplementary groups) with the system python and the
    source tree; its one line of output."""
    env = {"PYTHONPATH": _source_tree(), "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", _OTHER_UID_CLIENT, socket_path, str(uid)],
        user=uid, group=gid, extra_groups=[], env=env, cwd="/",
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


needs_other_uid = pytest.mark.skipif(
    os.getuid() != 0 or not os.path.exists(SYSTEM_PYTHON) or not _readable_by_others(_source_tree()),
    reason="needs root (to drop to uid 65534), /usr/bin/python3 and a source tree readable by other uids",
)


# The driver's own check, with the socket reachable by everyone (0755 directory, 0666 socket).
_REACHABLE = ("--dir-mode", "0755", "--socket-mode", "0666")


@needs_other_uid
def test_other_uid_is_denied_by_default(open_dir: Path) -> None:
    with start_driver(open_dir, *_REACHABLE) as driver:
        line = _run_as(NOBODY, NOBODY, driver.socket_path)
        assert line.startswith("AccessDenied 0xc0000022"), line
        assert "IRP_MJ_CREATE" in line, line  # refused by the driver, not by the file system
        assert wait_for(lambda: f"CREATE refused: uid {NOBODY}" in driver.log())
        assert driver.status().handles == 1  # the refused handle is gone; this is the query's own


@needs_other_uid
def test_default_modes_keep_other_uids_away_from_the_socket(open_dir: Path) -> None:
    with start_driver(open_dir, "--allow-uid", str(NOBODY)) as driver:
        line = _run_as(NOBODY, NOBODY, driver.socket_path)
    assert line.startswith("AccessDenied 0xc0000022"), line
    assert "permission denied opening" in line, line  # the 0750 directory stopped it first


@needs_other_uid
@pytest.mark.parametrize("option", ["--allow-uid", "--allow-gid"])
def test_allowed_uid_or_gid_may_open_and_map(open_dir: Path, option: str) -> None:
    with start_driver(open_dir, *_REACHABLE, option, "1", option, str(NOBODY)) as driver:
        line = _run_as(NOBODY, NOBODY, driver.socket_path)
    assert line.startswith("ok "), line
    assert int(line.split()[1]) >= 1


# --- the access bits of each IOCTL, against the access granted at CREATE ---------------------------


def test_give_me_your_memory_needs_read_access(driver: DriverProcess) -> None:
    with driver.open("w") as device:
        with pytest.raises(sharingmemory.AccessDenied) as info:
            device.map_shared_memory()
        assert info.value.status == NtStatus.STATUS_ACCESS_DENIED
    with driver.open("rw") as device:
        assert device.map_shared_memory().read().tick_count >= 1
    assert driver.memfds() == set()


def test_write_only_raw_handle_gets_no_fd(driver: DriverProcess) -> None:
    with RawConnection(driver.socket_path) as raw:
        assert raw.create(FILE_WRITE_DATA).status == NtStatus.STATUS_SUCCESS
        reply = raw.give_me_your_memory()
        assert reply.status == NtStatus.STATUS_ACCESS_DENIED
        assert not reply.has_fd
        assert raw.fds == []
    assert driver.memfds() == set()


@pytest.mark.parametrize("access", [0, 0x80000000, FILE_READ_DATA | 0x100])
def test_create_with_an_invalid_access_mask_is_refused(driver: DriverProcess, access: int) -> None:
    with RawConnection(driver.socket_path) as raw:
        assert raw.create(access).status == NtStatus.STATUS_INVALID_PARAMETER
        assert raw.closed_by_peer()


# --- the socket file and its directory -------------------------------------------------------------


def test_socket_and_directory_modes_default_to_0660_and_0750(driver: DriverProcess) -> None:
    assert stat.S_IMODE(os.stat(driver.socket_path).st_mode) == 0o660
    assert stat.S_ISSOCK(os.stat(driver.socket_path).st_mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(driver.socket_path)).st_mode) == 0o750


def test_socket_and_directory_modes_are_configurable(tmp_path: Path) -> None:
    with start_driver(tmp_path, "--socket-mode", "0600", "--dir-mode", "0700") as driver:
        assert stat.S_IMODE(os.stat(driver.socket_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(driver.socket_path)).st_mode) == 0o700


def _serve(socket_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("serve", "--socket", socket_path, *args)


def _unsafe_world_writable(tmp: Path) -> str:
    (tmp / "open").mkdir()
    (tmp / "open").chmod(0o777)
    return str(tmp / "open" / "S")


def _unsafe_other_owner(tmp: Path) -> str:
    (tmp / "theirs").mkdir()
    os.chown(tmp / "theirs", NOBODY, NOBODY)
    return str(tmp / "theirs" / "S")


def _unsafe_symlink_dir(tmp: Path) -> str:
    (tmp / "real").mkdir(mode=0o700)
    (tmp / "link").symlink_to(tmp / "real")
    return str(tmp / "link" / "S")


def _unsafe_regular_file(tmp: Path) -> str:
    (tmp / "dir").mkdir(mode=0o700)
    (tmp / "dir" / "S").write_text("precious")
    return str(tmp / "dir" / "S")


def _unsafe_too_long(tmp: Path) -> str:
    return str(tmp / ("x" * 120))


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_unsafe_world_writable, "writable by everyone"),
        (_unsafe_other_owner, f"belongs to uid {NOBODY}"),
        (_unsafe_symlink_dir, "symlink"),
        (_unsafe_regular_file, "is not a socket"),
        (_unsafe_too_long, "longer than 107 bytes"),
    ],
    ids=["world-writable-dir", "dir-of-another-uid", "symlink-dir", "regular-file", "too-long"],
)
def test_unsafe_socket_paths_are_refused_in_one_line(tmp_path: Path, make: Callable[[Path], str], says: str) -> None:
    if make is _unsafe_other_owner and os.getuid() != 0:
        pytest.skip("needs root to give a directory to another uid")
    path = make(tmp_path)
    result = _serve(path)
    assert result.returncode == 1
    line = one_line(result)
    assert says in line
    assert line.startswith("sharingmemory: error: ")
    if os.path.isfile(path):
        assert Path(path).read_text() == "precious"  # untouched
    assert not os.path.exists(path + ".lock")


@pytest.mark.parametrize("mode", ["0999", "01777", "rw"])
def test_bad_modes_are_usage_errors(tmp_path: Path, mode: str) -> None:
    result = _serve(str(tmp_path / "dev" / "S"), "--socket-mode", mode)
    assert result.returncode == 2
    assert "mode" in result.stderr.strip().splitlines()[-1]


# --- bounded resources -------------------------------------------------------------------------------


def test_overall_handle_limit(tmp_path: Path) -> None:
    with start_driver(tmp_path, "--max-handles", "2") as driver:
        first, second = driver.open(), driver.open()
        with RawConnection(driver.socket_path) as raw:
            assert raw.create().status == NtStatus.STATUS_TOO_MANY_OPENED_FILES
            assert raw.closed_by_peer()
        with pytest.raises(sharingmemory.TooManyOpenedFiles):
            driver.open()
        first.close()
        assert second.query_status().handles == 1
        with driver.open() as third:
            assert third.query_status().handles == 2
        second.close()


def test_per_uid_handle_limit(tmp_path: Path) -> None:
    with start_driver(tmp_path, "--max-handles-per-uid", "1") as driver:
        with driver.open() as device:
            with pytest.raises(sharingmemory.TooManyOpenedFiles):
                driver.open()
            assert device.query_status().handles == 1
        with driver.open() as device:  # the slot came back with the close
            assert device.query_status().handles == 1


def test_a_cleaned_up_handle_counts_until_it_is_closed(tmp_path: Path) -> None:
    """CLEANUP without CLOSE keeps the connection (one fd in the driver): it must still count,
    or a client could hold any number of connections past the limit."""
    with start_driver(tmp_path, "--max-handles", "1") as driver:
        with RawConnection(driver.socket_path) as held:
            held.create()
            cleaned = held.request(MajorFunction.IRP_MJ_CLEANUP)
            assert cleaned is not None
            assert cleaned.status == NtStatus.STATUS_SUCCESS
            with pytest.raises(sharingmemory.TooManyOpenedFiles):
                driver.open()
            closed = held.request(MajorFunction.IRP_MJ_CLOSE)
            assert closed is not None
            assert closed.status == NtStatus.STATUS_SUCCESS
        assert wait_for(lambda: _opens(driver))


def _opens(driver: DriverProcess) -> bool:
    try:
        driver.open().close()
    except sharingmemory.TooManyOpenedFiles:
        return False
    return True


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit(1) from util-linux")
def test_default_limits_come_from_rlimit_nofile(tmp_path: Path) -> None:
    """Soft 256, hard 512: the driver raises its soft limit to 512, so the limits are
    (512 - 64) // 2 = 224 overall and 112 per uid."""
    with start_driver(tmp_path, prefix=["prlimit", "--nofile=256:512", "--"]) as driver:
        with open(f"/proc/{driver.pid}/limits") as limits:
            line = next(text for text in limits if text.startswith("Max open files"))
        assert line.split()[3:5] == ["512", "512"]
        devices = [driver.open() for _ in range(112)]
        try:
            with pytest.raises(sharingmemory.TooManyOpenedFiles):
                driver.open()
        finally:
            for device in devices:
                device.close()


def test_connection_without_create_is_closed_after_the_timeout(tmp_path: Path) -> None:
    with start_driver(tmp_path, "--create-timeout", "0.3") as driver:
        with RawConnection(driver.socket_path, timeout=10) as idle, RawConnection(driver.socket_path) as early:
            reply = early.request(MajorFunction.IRP_MJ_DEVICE_CONTROL, IOCTL_QUERY_STATUS, 80)
            assert reply is not None
            assert reply.status == NtStatus.STATUS_INVALID_HANDLE
            with driver.open() as device:
                assert idle.closed_by_peer()
                assert early.closed_by_peer()
                time.sleep(0.6)  # twice the timeout: an opened handle is never closed by it
                assert device.query_status().handles == 1
        assert "no CREATE within 0.3 s" in driver.log()


def test_one_uid_cannot_hold_more_than_its_share_of_connections_before_create(tmp_path: Path) -> None:
    from sharingmemory._server.server import MAX_PENDING_PER_UID

    with start_driver(tmp_path, "--create-timeout", "60") as driver, contextlib.ExitStack() as stack:
        idle = [stack.enter_context(RawConnection(driver.socket_path)) for _ in range(MAX_PENDING_PER_UID)]
        extra = stack.enter_context(RawConnection(driver.socket_path))
        assert extra.closed_by_peer()  # over the share: closed at once, not after the timeout
        driver.process.send_signal(signal.SIGSTOP)  # so the next CREATE is queued before the accept
        try:
            asking = stack.enter_context(RawConnection(driver.socket_path))
            asking.send_raw(encode_request(Request(MajorFunction.IRP_MJ_CREATE, 7, FILE_READ_DATA)))
        finally:
            driver.process.send_signal(signal.SIGCONT)
        answer = asking.receive()  # an answer, not a reset
        assert answer is not None
        assert (answer.request_id, answer.status) == (7, NtStatus.STATUS_TOO_MANY_OPENED_FILES)
        assert asking.closed_by_peer()
        assert not idle[0].closed_by_peer()
        idle[0].close()

        def accepted() -> bool:
            with RawConnection(driver.socket_path) as probe:
                return not probe.closed_by_peer()

        assert wait_for(accepted, timeout=5)
        with driver.open() as device:  # a handle that CREATEs at once: room is made as idle ones go
            assert device.query_status().pid == driver.pid


@pytest.mark.parametrize("size", [MAX_MESSAGE_SIZE + 1, 200_000])
def test_oversized_message_is_refused_and_closed(driver: DriverProcess, size: int) -> None:
    with RawConnection(driver.socket_path) as raw:
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        raw.send_raw(bytes(size))
        reply = raw.receive()
        assert reply is not None
        assert reply.status == NtStatus.STATUS_INVALID_PARAMETER
        assert raw.closed_by_peer()
    assert driver.status().handles == 1


@pytest.mark.skipif(os.getuid() != 0, reason="needs root for SO_SNDBUFFORCE (a send buffer over wmem_max)")
def test_oversized_message_is_never_allocated(driver: DriverProcess) -> None:
    """A 4 MiB message: the driver's peak RSS does not move by anything near it, since it
    receives into a buffer of MAX_MESSAGE_SIZE + 1 and lets the kernel drop the rest."""
    size = 4 << 20

    def send_one() -> None:
        with RawConnection(driver.socket_path) as raw:
            raw.sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, 2 * size)
            raw.send_raw(bytes(size))
            reply = raw.receive()
            assert reply is not None
            assert reply.status == NtStatus.STATUS_INVALID_PARAMETER

    send_one()  # warm up: the receive buffer has been allocated once
    before = peak_rss_kib(driver.pid)
    for _ in range(3):
        send_one()
    assert peak_rss_kib(driver.pid) - before < 1024
