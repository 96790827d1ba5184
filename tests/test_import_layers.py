"""The import graph of ``scripts/``: no cycle, and every module imports only from its own layer or below.

Layers, bottom first. A module belongs to the first group whose name is the module or a package above it; a
module that no group names belongs to the top layer (new workflow modules land there by default).
"""

import ast
import graphlib
from pathlib import Path

import pytest

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


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / "scripts").rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``scripts`` modules that ``path`` imports anywhere in its code (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t == "scripts" or t.startswith("scripts.")}
    return found - {name}


def layer_of(name: str) -> int:
    for i, group in enumerate(LAYERS):
        if any(name == g or name.startswith(g + ".") for g in group):
            return i
    return TOP


GRAPH = {name: imports_of(name, path, set(modules())) for name, path in modules().items()}


def test_the_graph_is_read():
    assert "scripts.conventions" in GRAPH["scripts.data.layouts"]
    assert "scripts.io" in GRAPH["scripts.handlers"]


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
