"""A pod on this machine: the driver in the host namespaces, a client in its own user, mount and
pid namespaces that sees only the socket's directory, bind-mounted at /run/sharingmemory.

That is what the DaemonSet and the client Deployment of deploy/kubernetes/ make on a node, with
the client as a `hostUsers: false` pod: its root is host uid 65536 (the first uid such a pod
gets), set up here by `setpriv` to 65536 and an unprivileged `unshare --user --map-root-user`.
The client's view is built inside its namespaces: a tmpfs over /run (the host's /run is gone),
the driver's directory bound read-only at /run/sharingmemory, and a tmpfs over the directory's
host path (so the client cannot reach it by that name either). The driver runs on a temporary
directory, never the real /run/sharingmemory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sharingmemory
from tests.support import DriverProcess, start_driver, wait_for

POD_ROOT = 65536  # host uid and gid of root in the first `hostUsers: false` pod
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by other uids, unlike the venv's interpreter
POD_SOCKET = "/run/sharingmemory/SharingMemory"
#: The file gate opened to every uid, as the DaemonSet does; the driver's access list decides.
REACHABLE = ("--dir-mode", "0755", "--socket-mode", "0666")

# Run inside the new namespaces as the pod's root: build the pod's view, then exec the client.
POD_SETUP = r"""
set -e
what=$1 host_dir=$2; shift 2
mount -n -t tmpfs -o mode=0755 pod-run /run  # -n: no utab, which libmount keeps in /run
mkdir /run/sharingmemory
if [ "$what" = file ]; then  # the mistake docs/fleet.md warns of: the socket file alone
  touch /run/sharingmemory/SharingMemory
  mount -n --bind "$host_dir/SharingMemory" /run/sharingmemory/SharingMemory
else
  mount -n --bind "$host_dir" /run/sharingmemory
  mount -n -o remount,bind,ro /run/sharingmemory
fi
mount -n -t tmpfs -o mode=0700 hidden "$host_dir"
exec "$@"
"""

# The client: open, map, read, wait for a tick; report what it sees, then wait for the test.
CLIENT = r"""
import json, os, sys
import sharingmemory
host_dir = sys.argv[1]
seen = {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(),
        "host_socket_visible": os.path.exists(os.path.join(host_dir, "SharingMemory")),
        "run_entries": sorted(os.listdir("/run"))}
try:  # the mount is read-only: no client can plant a socket of its own for others to meet
    os.mkdir("/run/sharingmemory/planted")
    seen["write_errno"] = 0
except OSError as err:
    seen["write_errno"] = err.errno
try:
    with sharingmemory.open_device(sys.argv[2]) as device:
        page = device.map_shared_memory()
        first = page.read()
        later = page.wait_next(timeout=10)
        seen.update(ok=True, ticks=[first.tick_count, later.tick_count], state=later.state_name,
                    instance=later.instance_id.hex())
        print(json.dumps(seen), flush=True)
        sys.stdin.readline()  # hold the handle until the test has looked at the driver
except sharingmemory.NtStatusError as err:
    seen.update(ok=False, error=type(err).__name__, message=str(err))
    print(json.dumps(seen), flush=True)
"""


def _source_tree() -> str:
    return str(Path(sharingmemory.__file__).resolve().parent.parent)


def _readable_by_others(path: str) -> bool:
    for part in [Path(path), *Path(path).parents]:
        if not os.stat(part).st_mode & stat.S_IXOTH:
            return False
    package = Path(sharingmemory.__file__).parent
    return all(os.stat(file).st_mode & stat.S_IROTH for file in package.rglob("*.py"))


def _can_make_a_pod() -> str | None:
    """Why this machine cannot run the simulated pod, or None."""
    if os.getuid() != 0:
        return "needs root (to run the pod's client as host uid 65536)"
    for tool in ("setpriv", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` (util-linux) is not installed"
    if not os.path.exists(SYSTEM_PYTHON) or not _readable_by_others(_source_tree()):
        return "needs /usr/bin/python3 and a source tree readable by other uids"
    probe = subprocess.run(
        ["setpriv", f"--reuid={POD_ROOT}", f"--regid={POD_ROOT}", "--clear-groups", "--",
         "unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return f"unprivileged user namespaces are not available: {probe.stderr.strip()}"
    return None


_WHY_NOT = _can_make_a_pod()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))


def _pod_command(socket_dir: Path, *command: str, mount: str = "directory") -> list[str]:
    return [
        "setpriv", f"--reuid={POD_ROOT}", f"--regid={POD_ROOT}", "--clear-groups", "--",
        # --kill-child: when the test ends the pod (SIGTERM to unshare), its pid 1 goes too.
        "unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child",
        "sh", "-c", POD_SETUP, "pod-setup", mount, str(socket_dir), *command,
    ]  # fmt: skip


def _pod_env() -> dict[str, str]:
    return {"PYTHONPATH": _source_tree(), "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin", "HOME": "/"}


@contextlib.contextmanager
def _pod(socket_dir: Path, *command: str, mount: str = "directory") -> Iterator[subprocess.Popen[str]]:
    """`command` in a pod that sees `socket_dir` (the driver's) at /run/sharingmemory only; with
    `mount="file"`, only the socket file in it."""
    with subprocess.Popen(
        _pod_command(socket_dir, *command, mount=mount),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_pod_env(), cwd="/",
    ) as process:  # fmt: skip
        try:
            yield process
        finally:
            if process.poll() is None:
                # unshare --fork ignores SIGTERM while it waits, and a pid namespace's init gets
                # only the signals it handles (pid_namespaces(7)): SIGKILL, which --kill-child
                # passes on to the pod's pid 1.
                process.kill()
            process.communicate(timeout=30)


def _line(process: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        pytest.fail("no output from the pod's client in time")
    line = process.stdout.readline()
    if not line:
        assert process.stderr is not None
        pytest.fail(f"the pod's client ended (status {process.wait(10)}): {process.stderr.read()}")
    return line


@pytest.fixture
def host_dir(open_dir: Path) -> Path:
    """The node's /run/sharingmemory, stood in for by a directory every uid can traverse."""
    return open_dir


def _client_in_pod(driver: DriverProcess) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    socket_dir = Path(driver.socket_path).parent
    return _pod(socket_dir, SYSTEM_PYTHON, "-c", CLIENT, str(socket_dir), POD_SOCKET)


def _nspid(pid: int) -> list[int]:
    """NSpid of /proc/PID/status: the pid in each pid namespace, the host's first."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(part) for part in line.split()[1:]]
    raise LookupError(pid)


@pytest.mark.parametrize("policy", [("--allow-uid", str(POD_ROOT)), ("--allow-gid", str(POD_ROOT))])
def test_pod_client_opens_maps_reads_and_waits_through_the_directory_mount(
    host_dir: Path, policy: tuple[str, str]
) -> None:
    with start_driver(host_dir, *REACHABLE, *policy, interval="50ms") as driver, _client_in_pod(driver) as pod:
        seen: dict[str, Any] = json.loads(_line(pod))
        assert seen["ok"], seen
        # Inside, the client is root and pid 1, and sees neither the host's /run nor its path.
        assert (seen["uid"], seen["gid"], seen["pid"]) == (0, 0, 1), seen
        assert seen["host_socket_visible"] is False
        assert seen["run_entries"] == ["sharingmemory"]
        assert seen["write_errno"] == errno.EROFS
        assert seen["ticks"][1] > seen["ticks"][0]
        assert seen["state"] == "running"
        # The driver sees the host's view of the same process through SO_PEERCRED.
        assert wait_for(lambda: f"uid {POD_ROOT}, access" in driver.log())
        (line,) = [line for line in driver.log().splitlines() if f"uid {POD_ROOT}, access" in line]
        host_pid = int(line.split(" opened by pid ")[1].split()[0])
        assert _nspid(host_pid) == [host_pid, 1]  # the pod's pid 1, under its host pid
        assert driver.status().mapped_handles == 1
        assert pod.stdin is not None
        pod.stdin.write("\n")
        pod.stdin.flush()
        assert pod.wait(20) == 0
        assert wait_for(lambda: driver.status().mapped_handles == 0)


@pytest.mark.parametrize(
    "policy",
    [
        (),  # the default: root and the driver's own uid
        ("--allow-uid", "0"),  # the pod's root is not the host's root
        ("--allow-gid", "0"),
        ("--allow-uid", str(POD_ROOT + 1)),  # a neighbour's uid is not this pod's
        ("--allow-uid", "1000", "--allow-gid", "1000"),  # the pod's uid in a pod of the host namespace
    ],
    ids=["default", "uid-0", "gid-0", "next-uid", "uid-1000"],
)
def test_the_access_policy_applies_to_the_pod_client_host_uid(host_dir: Path, policy: tuple[str, ...]) -> None:
    with start_driver(host_dir, *REACHABLE, *policy) as driver, _client_in_pod(driver) as pod:
        seen = json.loads(_line(pod))
        assert seen["ok"] is False, seen
        assert seen["error"] == "AccessDenied", seen
        assert "IRP_MJ_CREATE" in seen["message"]  # the driver refused it, not the file system
        assert wait_for(lambda: f"CREATE refused: uid {POD_ROOT} gid {POD_ROOT}" in driver.log())
        assert pod.wait(20) == 0


def test_default_modes_keep_the_pod_out_at_the_file_system(host_dir: Path) -> None:
    """Without the DaemonSet's modes (0750 directory, 0660 socket), connect(2) fails first."""
    with start_driver(host_dir, "--allow-uid", str(POD_ROOT)) as driver, _client_in_pod(driver) as pod:
        seen = json.loads(_line(pod))
    assert seen["ok"] is False, seen
    assert "permission denied" in seen["message"], seen


def _watch_lines(pod: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    return [json.loads(_line(pod)) for _ in range(count)]


def test_watch_follow_in_the_pod_carries_on_across_a_driver_restart(host_dir: Path) -> None:
    """The restarted driver binds a new socket (a new inode) in the same directory: the pod's
    mount of the directory shows it, as a mount of the old file would not."""
    watch = [SYSTEM_PYTHON, "-m", "sharingmemory", "watch", "--follow", "--json", "--socket", POD_SOCKET]
    options = (*REACHABLE, "--allow-uid", str(POD_ROOT))
    with (
        start_driver(host_dir, *options, interval="50ms") as first,
        _pod(Path(first.socket_path).parent, *watch) as pod,
    ):
        before = _watch_lines(pod, 2)
        assert {line["instance_id"] for line in before} == {first.status().instance_id.hex()}
        assert first.terminate() == 0  # the pod's watch now waits for a new driver (--follow)
        assert not os.path.exists(first.socket_path)  # the old socket is gone: the next is a new file
        with start_driver(host_dir, *options, interval="50ms") as second:
            new_instance = second.status().instance_id.hex()
            for _ in range(200):
                if json.loads(_line(pod))["instance_id"] == new_instance:
                    break
            else:
                pytest.fail("watch --follow in the pod never showed the new driver")
            later = _watch_lines(pod, 2)
            assert {entry["instance_id"] for entry in later} == {new_instance}
            assert later[1]["tick_count"] > later[0]["tick_count"]
            assert pod.poll() is None  # it followed; it did not exit


# Open the device, wait for the test's line on stdin, open it again: one JSON line per attempt.
REOPEN_CLIENT = r"""
import json, sys
import sharingmemory
def attempt():
    try:
        with sharingmemory.open_device(sys.argv[1], timeout=5) as device:
            return {"ok": True, "instance": device.map_shared_memory().read().instance_id.hex()}
    except (sharingmemory.NtStatusError, OSError) as err:
        return {"ok": False, "error": type(err).__name__, "message": str(err)}
print(json.dumps(attempt()), flush=True)
sys.stdin.readline()
print(json.dumps(attempt()), flush=True)
"""


@pytest.mark.parametrize("mount", ["directory", "file"])
def test_only_a_directory_mount_reaches_a_restarted_driver(host_dir: Path, mount: str) -> None:
    """Why the manifests mount the directory: a mount of the socket file pins the old inode,
    which no driver listens on after a restart."""
    options = (*REACHABLE, "--allow-uid", str(POD_ROOT))
    with start_driver(host_dir, *options) as first:
        socket_dir = Path(first.socket_path).parent
        with _pod(socket_dir, SYSTEM_PYTHON, "-c", REOPEN_CLIENT, POD_SOCKET, mount=mount) as pod:
            before = json.loads(_line(pod))
            assert before == {"ok": True, "instance": first.status().instance_id.hex()}, before
            assert first.terminate() == 0
            with start_driver(host_dir, *options) as second:
                assert pod.stdin is not None
                pod.stdin.write("\n")
                pod.stdin.flush()
                after = json.loads(_line(pod))
                if mount == "directory":
                    assert after == {"ok": True, "instance": second.status().instance_id.hex()}, after
                else:
                    assert after["ok"] is False, after
                    assert after["error"] == "DeviceNotFound", after  # ECONNREFUSED: the old inode
                    assert second.status().handles == 1  # the new driver serves; the pod cannot see it
                assert pod.wait(20) == 0
