"""The layers stay honest: pure modules import no I/O, and the public names are the intended ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sharingmemory

SRC = Path(sharingmemory.__file__).parent
PURE = ["_status", "_ioctl", "_page", "_protocol", "_paths", "_units"]
IO_MODULES = {"socket", "selectors", "mmap", "fcntl", "signal", "threading", "subprocess", "ctypes", "asyncio"}
LAYER = {
    "_status": 1, "_ioctl": 1, "_page": 1, "_protocol": 1, "_paths": 1, "_units": 1,
    "_memfd": 2, "_clock": 2, "_driver": 2,
    "_unix": 3, "_timerfd": 3, "_notify": 3, "_socket_file": 3, "_activation": 3, "_server": 3,
    "_ticks": 3, "_shared_page": 3, "_client": 3, "_private": 3,
    "_exits": 4, "_session": 4, "_display": 4, "_watch": 4, "_gui": 4, "_serve": 4, "_install": 4, "cli": 4,
}  # fmt: skip


def _imports(module: str) -> set[str]:
    tree = ast.parse((SRC / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("." + (node.module or ""))
            elif node.module:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io(module: str) -> None:
    assert not _imports(module) & IO_MODULES


@pytest.mark.parametrize("module", sorted(LAYER))
def test_modules_import_only_from_layers_below(module: str) -> None:
    for name in _imports(module):
        if name.startswith(".") and name[1:] in LAYER:
            assert LAYER[name[1:]] <= LAYER[module], f"{module} imports {name} from a higher layer"


def test_public_names_are_exactly_the_intended_ones() -> None:
    public = {name for name in dir(sharingmemory) if not name.startswith("_")} - {"cli"}
    assert public == set(sharingmemory.__all__) - {"__version__"}
    for name in sharingmemory.__all__:
        assert getattr(sharingmemory, name) is not None


def test_every_module_has_a_layer() -> None:
    modules = {path.stem for path in SRC.glob("*.py")} - {"__init__", "__main__"}
    assert modules == set(LAYER)
