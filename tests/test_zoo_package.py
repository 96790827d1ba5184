"""The model-zoo submission folder (``python -m tools.zoo_package``) segments the example case from another
working directory, with the folder as ``bundle_root`` and nothing of the repository on the import path
(issue 28)."""

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests._bundle import ROOT
from tools.zoo_package import write_package

EXAMPLE = ROOT / "examples" / "TCGA-DU-7294"


def test_the_package_holds_the_bundle_and_only_the_scripts_the_configs_import(tmp_path):
    files = write_package(tmp_path / "pkg")
    assert {"LICENSE", "large_files.yml", "docs/README.md", "configs/inference.json", "configs/train.json"} <= set(
        files
    )
    assert {"models/model.pt", "models/model.ts", "scripts/__init__.py", "scripts/transforms.py"} <= set(files)
    assert not any(f.startswith(("scripts/pacs/", "tests/", "apps/", "benchmarks/")) for f in files)
    assert "scripts/example.py" not in files and "scripts/synthetic/generator.py" not in files
    assert sorted(str(p.relative_to(tmp_path / "pkg")) for p in (tmp_path / "pkg").rglob("*") if p.is_file()) == files
    with pytest.raises(FileExistsError, match="already exists"):
        write_package(tmp_path / "pkg")  # never replaced


@pytest.mark.slow
def test_the_package_segments_the_example_case_from_another_folder(tmp_path):
    package, elsewhere = tmp_path / "resunet_brats_segmentation", tmp_path / "elsewhere"
    write_package(package)
    elsewhere.mkdir()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--meta_file", str(package / "configs" / "metadata.json"),
           "--config_file", str(package / "configs" / "inference.json"), "--bundle_root", str(package),
           "--dataset_dir", str(EXAMPLE), "--output_dir", "predictions"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(package), OMP_NUM_THREADS="2")
    proc = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert os.listdir(elsewhere / "predictions") == ["TCGA-DU-7294.nii.gz"]
    pred = nib.load(elsewhere / "predictions" / "TCGA-DU-7294.nii.gz")
    assert pred.shape == nib.load(EXAMPLE / "TCGA-DU-7294_t1.nii.gz").shape
    labels = np.asarray(pred.dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4} and (labels > 0).sum() > 1000  # a tumour is found
