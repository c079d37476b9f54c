"""What a distro build or `pip install` gets: the sdist, the wheel built from it, and an install.

The sdist is built from a copy of the tree, the wheel from that sdist (as `python -m build`
does, and as a distro build from the tarball would), and the wheel is installed into a fresh
virtual environment. So a file that MANIFEST.in forgets, a header that the wheel does not ship,
or a data file installed in the wrong place fails here, not on a user's machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import sharingmemory
from tests.support import DriverProcess

ROOT = Path(__file__).resolve().parents[2]
HEADERS = sorted(path.name for path in (ROOT / "include" / "sharingmemory").glob("*.h"))
READ_TIME_C = ROOT / "examples" / "c" / "read_time.c"
CC = shutil.which("cc")
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"]
#: What the tree holds that no build should carry: local state, caches, build output.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".hypothesis", "read_time"
)


@dataclass
class Built:
    sdist: Path
    wheel: Path


def _run(*command: str | Path, cwd: Path | None = None, isolated: bool = False) -> subprocess.CompletedProcess[str]:
    """Run to the end. `isolated`: without PYTHONPATH (which a distro build sets to its own tree),
    so that the installed venv imports what the wheel installed and nothing else."""
    env = {name: value for name, value in os.environ.items() if not (isolated and name == "PYTHONPATH")}
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """sdist from a copy of the tree, wheel from the sdist; without build isolation, so no index."""
    pytest.importorskip("build", reason="the dev extra's `build` is not installed (make test installs it)")
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_SOURCE)
    out = work / "dist"
    result = _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Built(sdist, wheel)


def _sdist_names(built: Built) -> set[str]:
    with tarfile.open(built.sdist) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def _wheel_names(built: Built) -> set[str]:
    with zipfile.ZipFile(built.wheel) as archive:
        return set(archive.namelist())


def test_the_tree_ships_at_least_page_h() -> None:
    assert "page.h" in HEADERS  # otherwise the tests below check nothing


def test_sdist_carries_tests_docs_headers_examples_and_the_license(built: Built) -> None:
    names = _sdist_names(built)
    expected = {
        "LICENSE",
        "MANIFEST.in",
        "Makefile",
        "README.md",
        "tests/conftest.py",
        "tests/support.py",
        "tests/integration/test_packaging.py",
        "docs/operations.md",
        "docs/page-abi.md",
        "docs/fleet.md",
        "examples/c/read_time.c",
        "examples/c/Makefile",
        "deploy/Containerfile",
        "deploy/kubernetes/daemonset.yaml",
        "share/man/man1/sharingmemory.1",
        "share/bash-completion/completions/sharingmemory",
        *(f"include/sharingmemory/{header}" for header in HEADERS),
    }
    assert expected <= names, sorted(expected - names)
    # Every test and doc of the tree, not just the ones named above.
    for folder in ("tests", "docs", "include", "examples", "deploy"):
        in_tree = {
            str(path.relative_to(ROOT))
            for path in (ROOT / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.name != "read_time"
        }
        assert in_tree <= names, (folder, sorted(in_tree - names))


def test_sdist_carries_no_local_state(built: Built) -> None:
    names = _sdist_names(built)
    leaked = {name for name in names if name.startswith((".venv", ".git/")) or "__pycache__" in name}
    assert not leaked, sorted(leaked)


def test_wheel_ships_every_header_unchanged(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as archive:
        shipped = {
            name.rsplit("/", 1)[1]: archive.read(name)
            for name in archive.namelist()
            if name.startswith("sharingmemory/include/sharingmemory/")
        }
    assert sorted(shipped) == HEADERS
    for header, data in shipped.items():
        assert data == (ROOT / "include" / "sharingmemory" / header).read_bytes(), header


def test_wheel_installs_the_man_page_completion_and_license(built: Built) -> None:
    names = _wheel_names(built)
    data = "sharingmemory-" + sharingmemory.__version__ + ".data/data/"
    for path in ("share/man/man1/sharingmemory.1", "share/bash-completion/completions/sharingmemory"):
        assert data + path in names, sorted(names)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), sorted(names)


def test_the_license_is_mit_as_pyproject_says() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()


# --- an installed wheel ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel in it (no network: --no-index, --no-deps)."""
    prefix = tmp_path_factory.mktemp("venv") / "venv"
    result = _run(sys.executable, "-m", "venv", "--without-pip", prefix, isolated=True)
    assert result.returncode == 0, result.stderr
    result = _run(
        sys.executable, "-m", "pip", "--python", prefix / "bin" / "python", "install", "--quiet",
        "--no-index", "--no-deps", built.wheel, isolated=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return prefix


def _installed_include(prefix: Path) -> Path:
    result = _run(
        prefix / "bin" / "python",
        "-c",
        "import sharingmemory; print(sharingmemory.get_include())",
        cwd=Path("/"),
        isolated=True,
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def test_installed_get_include_is_inside_the_installed_package(installed: Path) -> None:
    include = _installed_include(installed)
    assert include.is_relative_to(installed), include  # not the checkout's include/
    assert sorted(path.name for path in (include / "sharingmemory").glob("*.h")) == HEADERS


def test_installed_data_files_are_where_man_and_bash_completion_look(installed: Path) -> None:
    for path in ("share/man/man1/sharingmemory.1", "share/bash-completion/completions/sharingmemory"):
        installed_file = installed / path
        assert installed_file.read_bytes() == (ROOT / path).read_bytes(), path


def test_installed_console_script_runs(installed: Path) -> None:
    result = _run(installed / "bin" / "sharingmemory", "--version", cwd=Path("/"), isolated=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sharingmemory {sharingmemory.__version__}"


# --- get_include() and a C client built with it -------------------------------------------------


def test_get_include_holds_page_h_and_every_header_of_the_tree() -> None:
    include = Path(sharingmemory.get_include())
    assert include.is_absolute()
    assert (include / "sharingmemory" / "page.h").is_file()
    for header in HEADERS:
        assert (include / "sharingmemory" / header).read_bytes() == (
            ROOT / "include" / "sharingmemory" / header
        ).read_bytes()


def test_get_include_is_public_and_returns_a_string() -> None:
    assert "get_include" in sharingmemory.__all__
    assert isinstance(sharingmemory.get_include(), str)
    assert sharingmemory.get_include.__module__ == "sharingmemory"


needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (`cc`) on PATH: the C example cannot be built")


@needs_cc
@pytest.mark.parametrize("where", ["checkout", "wheel"])
def test_read_time_c_builds_with_get_include_and_reads_the_time(
    where: str, driver: DriverProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`cc -I$(python -c 'import sharingmemory; print(sharingmemory.get_include())')`, as the docs say,
    from the checkout and from an installed wheel; the program then reads a live driver."""
    include = (
        sharingmemory.get_include()
        if where == "checkout"
        else str(_installed_include(request.getfixturevalue("installed")))
    )
    assert CC is not None
    program = tmp_path / "read_time"
    result = _run(CC, *CFLAGS, f"-I{include}", "-o", program, READ_TIME_C)
    assert result.returncode == 0, result.stderr
    result = _run(program, "-n", "1", driver.socket_path)
    assert result.returncode == 0, result.stderr
    hours, minutes, seconds = (int(part) for part in result.stdout.strip().split(":"))
    assert 0 <= hours < 24 and 0 <= minutes < 60 and 0 <= seconds < 60


@needs_cc
def test_read_time_c_does_not_build_without_the_include_folder(tmp_path: Path) -> None:
    """The compile above finds page.h through -I alone (the test would prove nothing otherwise)."""
    assert CC is not None
    isolated = tmp_path / "read_time.c"
    shutil.copy(READ_TIME_C, isolated)
    result = _run(CC, *CFLAGS, "-o", tmp_path / "read_time", isolated)
    assert result.returncode != 0
    assert "sharingmemory/page.h" in result.stderr


def test_editable_include_is_the_repository_folder_not_a_copy() -> None:
    """In a checkout the package's include/ is the repository's include/, so no copy can drift."""
    if not (ROOT / "src" / "sharingmemory" / "include").is_symlink():
        pytest.skip("not a checkout with the include/ symlink (an installed or unpacked package)")
    assert os.path.samefile(sharingmemory.get_include(), ROOT / "include")


# --- make watch installs the package alone -------------------------------------------------------

MAKE = shutil.which("make")


def _make_dry_run(target: str) -> str:
    assert MAKE is not None
    # Under `make test` this runs in a sub-make's environment, whose MAKEFLAGS would print
    # "Entering directory" lines among the commands.
    result = _run(MAKE, "--always-make", "--dry-run", "--no-print-directory", target, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_make_watch_installs_the_package_without_the_dev_tools() -> None:
    commands = _make_dry_run("watch")
    installs = [line for line in commands.splitlines() if "pip install" in line]
    assert installs, commands
    assert all("[dev" not in line and "dev]" not in line for line in installs), installs
    assert ".venv/" not in commands  # not the dev venv either, which make test fills
    assert commands.rstrip().splitlines()[-1].endswith("sharingmemory watch")


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_make_test_still_installs_the_dev_tools_and_runs_everything() -> None:
    commands = _make_dry_run("test")
    assert "pip install --quiet -e '.[dev]'" in commands
    for step in (".venv/bin/ruff check", ".venv/bin/mypy", ".venv/bin/pytest"):
        assert step in commands, step
