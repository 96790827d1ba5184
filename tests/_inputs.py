"""Shared by the tests of inputs and outputs on real files (test_inputs_safe, test_options, test_properties,
test_geometry_and_cleanup, test_layouts_accounting, test_outputs_round3, test_interactive): tiny cases written
as NIfTI files, ``python -m monai.bundle run`` in a subprocess, checksums of a folder, the error lines of a run."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from scripts.conventions import MODALITIES
from tests._bundle import ROOT

SHAPE = (32, 32, 24)
AFFINE = np.eye(4)
TINY = ["--network_def#channels", "[8,16,32,64]", "--roi_size", "[32,32,32]", "--device", "cpu"]
"""The tiny network of :func:`tests._bundle.tiny_checkpoint`, its window and the CPU."""


def save(path, array, affine=AFFINE):
    """``array`` as a NIfTI file at ``path`` (folders made), with ``affine``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))


def write_case(root: Path, case_id: str, arrays: dict) -> dict:
    """A BraTS 2020-style case folder; returns {modality or 'seg': path}."""
    paths = {k: root / case_id / f"{case_id}_{k}.nii.gz" for k in (*MODALITIES, "seg")}
    for k, p in paths.items():
        save(p, arrays[k])
    return paths


def write_4d(path: Path, arrays: dict) -> Path:
    """The four modalities of ``arrays`` as one 4D NIfTI study at ``path``."""
    save(path, np.stack([arrays[m] for m in MODALITIES], -1))
    return path


def checksums(root: Path) -> dict:
    """``{relative path: sha256}`` of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def bundle(*args, configs=("inference.json",)):
    """``python -m monai.bundle run *args`` with the bundle's ``configs`` merged, from the repository root."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args, "--meta_file", str(ROOT / "configs" / "metadata.json")]
    cmd += ["--config_file", str([str(ROOT / "configs" / c) for c in configs])]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def error_lines(stderr: str) -> list[str]:
    """The ``error: ...`` lines of a run's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def dead_pid() -> int:
    """The id of a process that has ended (a killed run's temporary files name it)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def label_map(labels=(1, 2, 4)):
    """A (1, 24, 24, 24) label map of nested cubes: oedema, enhancing inside, necrotic inside that (``labels``)."""
    necrotic, oedema, enhancing = labels
    lab = torch.zeros(1, 24, 24, 24, dtype=torch.uint8)
    lab[0, 4:20, 4:20, 4:20] = oedema
    lab[0, 8:16, 8:16, 8:16] = enhancing
    lab[0, 10:14, 10:14, 10:14] = necrotic
    return lab
