"""The import graph of ``scripts/``: no cycle, and every module imports only from its own layer or below.

Layers, bottom first. A module belongs to the first group whose name is the module or a package above it; a
module that no group names belongs to the top layer (new workflow modules land there by default).
"""

import ast
import graphlib
from pathlib import Path

import pytest

from tools.import_graph import imported_modules, module_files

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (
    ("scripts.conventions",),  # standard library only
    ("scripts.io",),
    ("scripts.networks", "scripts.transforms", "scripts.metrics"),
    ("scripts.synthetic",),
    ("scripts.data",),
    ("scripts.evaluation", "scripts.inferers", "scripts.handlers", "scripts.interactive"),
)
TOP = len(LAYERS) - 1


def layer_of(name: str) -> int:
    for i, group in enumerate(LAYERS):
        if any(name == g or name.startswith(g + ".") for g in group):
            return i
    return TOP


MODULES = module_files(ROOT)
GRAPH = {name: imported_modules(name, path, MODULES) for name, path in MODULES.items()}


def test_the_graph_is_read():
    assert "scripts.conventions" in GRAPH["scripts.data.layouts"]
    assert "scripts.io" in GRAPH["scripts.handlers"]
    assert "scripts.networks.blocks" in GRAPH["scripts.networks.resunet"]  # a relative import: from .blocks
    assert "scripts.synthetic.anatomy" in GRAPH["scripts.synthetic.generator"]  # from a package import a module


def test_no_import_cycle():
    try:
        tuple(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_modules_import_only_downward():
    upward = [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in GRAPH.items()
        if name != "scripts"  # the package facade imports the modules the configs call
        for target in sorted(targets)
        if layer_of(target) > layer_of(name) or target == "scripts"
    ]
    assert not upward, "\n".join(upward)


def test_conventions_import_the_standard_library_only():
    tree = ast.parse((ROOT / "scripts" / "conventions.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "os", "re"}, imported
