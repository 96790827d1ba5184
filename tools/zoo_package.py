"""Write the model-zoo submission folder of the bundle.

The folder holds what the zoo's ``models/<bundle>/`` holds: ``configs/``, ``docs/README.md`` (the model card),
``LICENSE``, ``large_files.yml``, the weight files it lists (``models/``), and only the ``scripts`` modules that
the configs import (their ``scripts.<module>`` references, the modules those import, and the packages above
them). Command line::

    python -m tools.zoo_package --output dist/resunet_brats_segmentation

The folder is written under a temporary name beside ``--output`` and renamed when complete; an existing
``--output`` is never replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import yaml

from scripts.io import temporary_name
from tools.import_graph import imported_modules, module_files, module_of

ROOT = Path(__file__).resolve().parents[1]
FILES = ("LICENSE", "large_files.yml", "docs/README.md")
_REFERENCE = re.compile(r"\bscripts(?:\.[A-Za-z_]\w*)+")


def config_references(configs: Iterable[Path]) -> set[str]:
    """Every dotted ``scripts.<...>`` name written in the strings of the JSON ``configs``."""
    names: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(key)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            names.update(_REFERENCE.findall(node))

    for config in configs:
        walk(json.loads(Path(config).read_text()) if Path(config).suffix == ".json" else Path(config).read_text())
    return names


def required_modules(configs: Iterable[Path], root: Path = ROOT) -> list[str]:
    """The ``scripts`` modules the ``configs`` need: those they reference, every module those import (at any
    depth) and every package above each of them, sorted."""
    modules = module_files(root)
    todo = {m for m in (module_of(n, modules) for n in config_references(configs)) if m}
    needed: set[str] = set()
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        todo |= (imported_modules(name, modules[name], modules) | parents) - needed
    return sorted(needed)


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def write_package(output: str | os.PathLike, root: Path = ROOT) -> list[str]:
    """Write the submission folder of the bundle at ``root`` to ``output`` (see the module docstring).

    Returns:
        The paths written, relative to ``output``.

    Raises:
        FileExistsError: ``output`` exists.
        FileNotFoundError: a file to package is missing (a weight file of ``large_files.yml`` for example).
    """
    output = Path(output)
    if output.exists() or output.is_symlink():
        raise FileExistsError(f"{output}: already exists; the package is written to a new folder only")
    configs = sorted((root / "configs").iterdir())
    weights = [e["path"] for e in yaml.safe_load((root / "large_files.yml").read_text())["large_files"]]
    modules = module_files(root)
    files = [p.relative_to(root).as_posix() for p in configs if p.is_file()] + list(FILES) + weights
    files += [modules[m].relative_to(root).as_posix() for m in required_modules(configs, root)]
    for name in files:
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name}: missing; the package needs it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / temporary_name(output.name)
    try:
        for name in files:
            _copy(root / name, tmp / name)
        os.rename(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return sorted(files)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the model-zoo submission folder of the bundle.")
    parser.add_argument("--output", required=True, help="folder to write (must not exist)")
    args = parser.parse_args(argv)
    try:
        files = write_package(args.output)
    except (FileExistsError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    scripts = [f for f in files if f.startswith("scripts/")]
    print(f"{args.output}: {len(files)} files ({len(scripts)} scripts modules)")


if __name__ == "__main__":
    main()
