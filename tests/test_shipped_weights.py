"""The shipped weights: listed with their hashes, small enough for the model zoo, loadable safely, protected
from being overwritten by training; and the README's first command on the bundled example case."""

import hashlib
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from scripts.handlers import guard_shipped_weights
from tests._bundle import ROOT

ZOO_LIMIT = 25 * 1024 * 1024


def _listed():
    return (yaml.safe_load((ROOT / "large_files.yml").read_text()) or {}).get("large_files") or []


@pytest.mark.parametrize(
    "name", ["models/model.pt", "models/model.ts", "models/student.pt", "models/imputer.pt", "models/deepedit/model.pt"]
)
def test_weights_are_listed_with_their_hash_and_small(name):
    entries = {e["path"]: e for e in _listed()}
    assert name in entries, f"{name} is not listed in large_files.yml"
    path = ROOT / name
    assert path.stat().st_size < ZOO_LIMIT
    assert hashlib.md5(path.read_bytes()).hexdigest() == entries[name]["hash_val"]


def test_model_pt_loads_safely_into_the_configured_network():
    from monai.bundle import ConfigParser

    state = torch.load(ROOT / "models/model.pt", map_location="cpu", weights_only=True)
    parser = ConfigParser()
    parser.read_config(ROOT / "configs/inference.json")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(state)
    scripted = torch.jit.load(str(ROOT / "models/model.ts"), map_location="cpu")
    x = torch.rand(1, 4, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(network.eval()(x), scripted(x), atol=1e-4)


def test_student_pt_loads_safely_into_the_student_overlay_network():
    from monai.bundle import ConfigParser

    state = torch.load(ROOT / "models/student.pt", map_location="cpu", weights_only=True)
    parser = ConfigParser()
    parser.read_config([ROOT / "configs/inference.json", ROOT / "configs/student.json"])
    assert parser.get_parsed_content("ckpt_path").endswith("/models/student.pt")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(state)
    assert sum(p.numel() for p in network.parameters()) < 150_000


def test_deepedit_model_pt_loads_safely_into_the_interactive_overlay_network():
    from monai.bundle import ConfigParser

    state = torch.load(ROOT / "models/deepedit/model.pt", map_location="cpu", weights_only=True)
    parser = ConfigParser()
    parser.read_config([ROOT / "configs/inference.json", ROOT / "configs/deepedit_inference.json"])
    parser.update({"bundle_root": str(ROOT)})
    assert parser.get_parsed_content("ckpt_path") == f"{ROOT}/models/deepedit/model.pt"
    parser.get_parsed_content("network_def").load_state_dict(state)  # 4 sequences + 4 guidance in, 4 classes out


def test_imputer_pt_fills_in_a_missing_sequence_through_the_inference_step():
    """``models/imputer.pt`` is what inference.json's ``ImputeMissingSequencesd`` loads; it changes only the missing
    sequence, inside the brain."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(ROOT / "configs/inference.json")
    parser["bundle_root"] = str(ROOT)
    steps = [
        t
        for t in parser.get_parsed_content("preprocessing_transforms")
        if type(t).__name__ == "ImputeMissingSequencesd"
    ]
    assert len(steps) == 1 and steps[0].weights == f"{ROOT}/models/imputer.pt"
    image = torch.zeros(4, 24, 24, 24)
    image[:, 4:20, 4:20, 4:20] = torch.rand(4, 16, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.1
    image[2] = 0  # T2 missing
    out = steps[0]({"image": image})["image"]
    assert torch.equal(out[[0, 1, 3]], image[[0, 1, 3]])
    brain = image[0] != 0
    assert (out[2][brain] > 0).all() and (out[2][~brain] == 0).all()


def test_training_refuses_to_overwrite_shipped_weights(tmp_path):
    weights = tmp_path / "models" / "model.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"shipped")
    entry = {"path": "models/model.pt", "hash_val": hashlib.md5(b"shipped").hexdigest(), "hash_type": "md5"}
    (tmp_path / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))
    with pytest.raises(SystemExit, match="holds the shipped weights"):
        guard_shipped_weights(str(weights), str(tmp_path))
    guard_shipped_weights(str(weights), str(tmp_path), overwrite=True)  # on purpose
    guard_shipped_weights(str(tmp_path / "runs" / "model.pt"), str(tmp_path))  # a run folder
    weights.write_bytes(b"retrained")
    guard_shipped_weights(str(weights), str(tmp_path))  # no longer the shipped file


def test_example_segments_the_bundled_real_case(tmp_path):
    """``python -m scripts.example`` (the README's first command after the install) on the shipped weights."""
    subprocess.run([sys.executable, "-m", "scripts.example", "--output_dir", str(tmp_path)], cwd=ROOT, check=True)
    case = ROOT / "examples" / "TCGA-DU-7294"
    pred = nib.load(tmp_path / "predictions" / "TCGA-DU-7294.nii.gz")
    t1 = nib.load(case / "TCGA-DU-7294_t1.nii.gz")
    assert pred.shape == t1.shape and np.allclose(pred.affine, t1.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 4}
    assert (tmp_path / "overlay.png").stat().st_size > 10_000
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"dice_WT", "dice_TC", "dice_ET", "hd95_WT"} <= set(metrics)
