"""The page is locked in memory, and a driver that may not lock it warns and serves anyway."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory.cli.private_driver import stop_process
from tests.support import DriverProcess, wait_for

SRC = Path(sharingmemory.__file__).resolve().parent.parent
NOBODY = 65534
DEBIAN_PYTHON = "/usr/bin/python3"


def test_the_page_is_locked(driver: DriverProcess) -> None:
    with driver.open() as device:
        device.map_shared_memory()
        with open(f"/proc/{driver.pid}/status") as status:
            locked_kib = int(next(line for line in status if line.startswith("VmLck:")).split()[1])
    assert locked_kib >= 4, "the page is mlocked, as the seed's non-paged pool is"
    assert "page locked in memory (mlock)" in driver.log()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to drop to another uid (root ignores RLIMIT_MEMLOCK)")
@pytest.mark.skipif(not os.path.exists(DEBIAN_PYTHON), reason="needs Debian's python3 readable by other uids")
def test_a_driver_that_may_not_mlock_warns_and_serves() -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="sharingmemory-test-"))  # pytest's is 0700: not for nobody
    tmp_path.chmod(0o755)
    socket_path = tmp_path / "dev" / "SharingMemory"
    log_path = tmp_path / "driver.log"

    def drop_privileges() -> None:  # runs in the child before exec; the test starts no threads
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    (tmp_path / "dev").mkdir(mode=0o750)
    os.chown(tmp_path / "dev", NOBODY, NOBODY)
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [DEBIAN_PYTHON, "-m", "sharingmemory", "-vv", "serve", "--socket", str(socket_path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, preexec_fn=drop_privileges,  # noqa: PLW1509
        )  # fmt: skip
    try:
        assert wait_for(lambda: b" ready (driver pid" in log_path.read_bytes() or process.poll() is not None)
        assert process.poll() is None, log_path.read_text()
        with sharingmemory.open_device(str(socket_path), trusted_uid=NOBODY) as device:  # root may always open
            snap = device.map_shared_memory().read()
        assert snap.state == sharingmemory.STATE_RUNNING
        assert "page not locked in memory: mlock failed" in log_path.read_text()
    finally:
        stop_process(process, 10)
        shutil.rmtree(tmp_path, ignore_errors=True)
