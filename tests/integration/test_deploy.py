"""deploy/: every Kubernetes manifest passes `kubernetes-validate --strict` (bundled schemas, no
cluster), and says what docs/fleet.md promises: one driver per node with IPC_LOCK alone, in the
host user namespace, sharing the hostPath directory (never the socket file) with its clients."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of the dev extra's kubernetes-validate) is missing")

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
SOCKET_DIR = "/run/sharingmemory"
SOCKET = f"{SOCKET_DIR}/SharingMemory"
VALIDATE = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or shutil.which(
    "kubernetes-validate"
)

needs_validator = pytest.mark.skipif(
    VALIDATE is None, reason="kubernetes-validate (the dev extra) is not installed; make test installs it"
)


def _validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    assert VALIDATE is not None
    return subprocess.run(
        [VALIDATE, "--strict", *map(str, paths)], capture_output=True, text=True, timeout=120, check=False
    )


def _documents() -> list[dict[str, Any]]:
    documents = []
    for path in MANIFESTS:
        documents += [document for document in yaml.safe_load_all(path.read_text()) if document]
    return documents


def _one(kind: str) -> dict[str, Any]:
    (found,) = [document for document in _documents() if document["kind"] == kind]
    return found


def test_the_manifests_are_there() -> None:
    assert {path.name for path in MANIFESTS} >= {"daemonset.yaml", "client-deployment.yaml", "namespace.yaml"}


@needs_validator
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_manifest_passes_strict_validation(manifest: Path) -> None:
    result = _validate(manifest)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


@needs_validator
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["spec"]["template"]["spec"].update(hostUser=True), "hostUser"),  # a typo
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(capabilities={"add": ["IPC_LOCK"]}),
            "capabilities",
        ),
        (lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="ten"), "ten"),
    ],
    ids=["unknown-field", "misplaced-field", "wrong-type"],
)
def test_the_validator_rejects_a_broken_daemonset(tmp_path: Path, change: Any, expected: str) -> None:
    """--strict is what makes a typo an error; without it the first two would pass."""
    document = _one("DaemonSet")
    change(document)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(document))
    result = _validate(broken)
    assert result.returncode != 0, result.stdout
    assert expected in result.stdout + result.stderr


def _pod(kind: str) -> dict[str, Any]:
    pod: dict[str, Any] = _one(kind)["spec"]["template"]["spec"]
    return pod


def test_driver_pod_asks_for_ipc_lock_and_nothing_else() -> None:
    pod = _pod("DaemonSet")
    assert pod.get("hostUsers", True) is True  # SO_PEERCRED then shows the node's own uids
    for key in ("hostPID", "hostIPC", "hostNetwork"):
        assert not pod.get(key, False), key
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context.get("privileged", False) is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert "securityContext" not in pod or "sysctls" not in pod["securityContext"]


def _host_paths(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume["hostPath"] for volume in pod["volumes"] if "hostPath" in volume}


@pytest.mark.parametrize("kind", ["DaemonSet", "Deployment"])
def test_pods_mount_the_directory_never_the_socket_file(kind: str) -> None:
    pod = _pod(kind)
    host_paths = _host_paths(pod)
    assert host_paths, "no hostPath volume"
    for volume in host_paths.values():
        assert volume["path"] == SOCKET_DIR
        assert volume["type"] in {"Directory", "DirectoryOrCreate"}  # never "Socket"
    for container in pod["containers"]:
        mounts = [mount for mount in container["volumeMounts"] if mount["name"] in host_paths]
        assert [mount["mountPath"] for mount in mounts] == [SOCKET_DIR]
        assert all("subPath" not in mount for mount in mounts)  # a subPath would pin one inode


def test_driver_serves_in_that_directory_and_admits_the_client() -> None:
    (driver,) = _pod("DaemonSet")["containers"]
    args = driver["args"]
    assert args[args.index("--socket") + 1] == SOCKET
    client_context = _pod("Deployment")["securityContext"]
    assert args[args.index("--allow-gid") + 1] == str(client_context["runAsGroup"])
    assert client_context["runAsNonRoot"] is True


def test_client_runs_watch_on_the_node_driver() -> None:
    (client,) = _pod("Deployment")["containers"]
    command = client["command"] + client["args"]
    assert command[:2] == ["sharingmemory", "watch"]
    assert "--follow" in command
    assert command[command.index("--socket") + 1] == SOCKET
    (mount,) = client["volumeMounts"]
    assert mount.get("readOnly") is True


def test_everything_is_in_the_namespace_that_admits_host_path() -> None:
    namespace = _one("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for kind in ("DaemonSet", "Deployment"):
        assert _one(kind)["metadata"]["namespace"] == namespace["metadata"]["name"]


def test_containerfile_runs_serve_as_its_entry_point() -> None:
    text = (ROOT / "deploy" / "Containerfile").read_text()
    assert 'ENTRYPOINT ["sharingmemory", "serve"]' in text
    images = {
        document["spec"]["template"]["spec"]["containers"][0]["image"]
        for document in _documents()
        if "spec" in document
    }
    assert len(images) == 1  # the driver and the client run one image


def test_containerfile_copies_enough_to_build_the_wheel(tmp_path: Path) -> None:
    """No registry is reachable here to build the image itself; its build stage is replayed
    instead: only what its COPY lines bring, then the wheel (headers, man page and all)."""
    pytest.importorskip("build", reason="the dev extra's `build` is not installed (make test installs it)")
    context = tmp_path / "context"
    context.mkdir()
    for line in (ROOT / "deploy" / "Containerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, _destination = line.split()[1:]
            for source in sources:
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source,
                        context / source,
                        symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                    )
                else:
                    shutil.copy(ROOT / source, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "out"), str(context)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = (tmp_path / "out").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "sharingmemory/include/sharingmemory/page.h" in names
    assert any(name.endswith("/share/man/man1/sharingmemory.1") for name in names)
