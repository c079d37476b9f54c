"""The layers stay honest: one package per layer, imports only downwards, pure code does no I/O,
the public names are the intended ones, and the README's layout is the tree as it is."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory import winioctl

SRC = Path(sharingmemory.__file__).parent
README = SRC.parent.parent / "README.md"
IO_MODULES = {"socket", "selectors", "mmap", "fcntl", "signal", "threading", "subprocess", "ctypes", "asyncio"}
#: Package -> (rank, what it is). A module may import from its own package and from packages of
#: a lower rank; two packages of one rank (the server and the client) never import each other.
#: "" is the top level: the public API (`__init__`, `winioctl`) and `python -m`.
LAYERS: dict[str, tuple[int, str]] = {
    "_defs": (1, "1. pure definitions: no sockets, threads or clocks"),
    "_sys": (2, "2. the system calls both ends share"),
    "_driver": (3, "3. the driver: handles, page, timer; no sockets"),
    "_server": (4, "4. I/O, the daemon's side: the event loop and its socket"),
    "_client": (4, "4. I/O, the library's side: Device, SharedPage, tick waits"),
    "": (5, "the public API, and nothing else"),
    "cli": (6, "5. front ends: the command line and the window"),
}


def _modules() -> list[tuple[str, str]]:
    """(package, module) for every source file; the top level's package is ""."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found.append(("", parts[0]) if len(parts) == 1 else (parts[0], parts[1]))
    return found


def _path(package: str, module: str) -> Path:
    return SRC / package / f"{module}.py" if package else SRC / f"{module}.py"


def _imports(package: str, module: str) -> tuple[set[str], set[str]]:
    """(top-level modules imported from outside, packages of this tree imported)."""
    tree = ast.parse(_path(package, module).read_text())
    outside: set[str] = set()
    inside: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name.split(".")
                (inside.add(name[1] if len(name) > 1 else "") if name[0] == "sharingmemory" else outside.add(name[0]))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                name = node.module.split(".")
                if name[0] == "sharingmemory":
                    inside.add(name[1] if len(name) > 1 else "")
                else:
                    outside.add(name[0])
                continue
            base = package if node.level == 1 else ""
            target = (node.module or "").split(".")[0]
            if node.level == 1 and package:
                inside.add(package)
            elif target in LAYERS:
                inside.add(target)
            elif target:  # `from .module import x` at the top level
                inside.add("")
            else:  # `from .. import __version__`, `from . import winioctl`
                inside.add(base)
    return outside, inside


@pytest.mark.parametrize("module", [m for p, m in _modules() if p == "_defs"])
def test_pure_modules_do_no_io(module: str) -> None:
    outside, _inside = _imports("_defs", module)
    assert not outside & IO_MODULES


@pytest.mark.parametrize(("package", "module"), _modules())
def test_modules_import_only_from_layers_below(package: str, module: str) -> None:
    # `python -m sharingmemory` is the console script by another name: a front end.
    own = "cli" if (package, module) == ("", "__main__") else package
    rank = LAYERS[own][0]
    _outside, inside = _imports(package, module)
    for target in inside - {package, own}:
        assert LAYERS[target][0] < rank, f"{package or 'top level'}.{module} imports from {target or 'top level'}"


def test_every_module_has_a_layer() -> None:
    packages = {path.parent.name for path in SRC.rglob("*.py") if path.parent != SRC}
    assert packages == set(LAYERS) - {""}
    for package in packages:
        assert (SRC / package / "__init__.py").is_file(), f"{package} is not a package"


def test_public_names_are_exactly_the_intended_ones() -> None:
    public = {name for name in dir(sharingmemory) if not name.startswith("_")} - {"cli"}
    assert public == set(sharingmemory.__all__) - {"__version__"}
    for name in sharingmemory.__all__:
        assert getattr(sharingmemory, name) is not None


def test_public_names_report_their_public_module() -> None:
    for namespace in (sharingmemory, winioctl):
        for name in namespace.__all__:
            value = getattr(namespace, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                assert value.__module__ in ("sharingmemory", "sharingmemory.winioctl"), (name, value.__module__)
    assert sharingmemory.AccessDenied.__module__ == "sharingmemory"
    assert winioctl.split_ctl_code.__module__ == "sharingmemory.winioctl"


def render_layout() -> str:
    """The README's package tree, as the source tree and `LAYERS` make it."""
    by_package: dict[str, list[str]] = {}
    for package, module in _modules():
        if module != "__init__" or package == "":
            by_package.setdefault(package, []).append(module)
    lines = ["src/sharingmemory/"]
    for package in sorted(LAYERS, key=lambda p: (LAYERS[p][0], p != "_server", p)):
        name = f"{package}/" if package else "__init__"
        modules = [m for m in by_package.get(package, []) if not (package == "" and m == "__init__")]
        rows = textwrap.wrap(" ".join(modules), 42) or [""]
        lines.append(f"  {name:10}{rows[0]:43}{LAYERS[package][1]}")
        lines += [f"  {'':10}{row}" for row in rows[1:]]
    return "\n".join(lines)


def test_readme_layout_is_the_tree() -> None:
    text = README.read_text()
    match = re.search(r"^src/sharingmemory/\n(?:  .*\n)+", text, re.M)
    assert match is not None, "README has no layout block starting with src/sharingmemory/"
    assert match.group(0).rstrip("\n") == render_layout(), "README layout drifted; it should read:\n" + render_layout()


def write_readme_layout() -> None:
    """Put the rendered tree into the README (`python -m tests.unit.test_layers`)."""
    text = README.read_text()
    README.write_text(re.sub(r"^src/sharingmemory/\n(?:  .*\n)+", render_layout() + "\n", text, count=1, flags=re.M))


if __name__ == "__main__":
    write_readme_layout()
