"""The import graph of the ``scripts`` package, read from the source (nothing is imported): which modules each
module imports. :mod:`tools.zoo_package` follows it to the modules the configs need; tests/test_import_layers.py
checks it has no cycle and only downward imports."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(root: Path = ROOT, package: str = "scripts") -> dict[str, Path]:
    """``{module name: file}`` of every module of ``package`` under ``root`` (a package is its ``__init__.py``)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def module_of(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest prefix of the dotted ``name`` that is one of ``modules`` (``scripts.data.layouts.find_cases``
    -> ``scripts.data.layouts``); ``None`` when no prefix is (another package's name)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def imported_modules(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The ``modules`` that the module ``name`` (the file ``path``) imports anywhere in its code (function-level
    imports included), itself excluded.

    ``import a.b`` and ``from a import b`` count as importing ``a.b`` when it is a module, else the module that
    holds the name (``from scripts.io import write_json`` imports ``scripts.io``); relative imports are resolved
    from ``name``'s package. The packages above an imported module (which Python also runs) are not listed.
    """
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
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {m for m in (module_of(t, modules) for t in targets) if m}
    return found - {name}
