"""Missing sequences and post-processing: modality dropout in training, inference with any non-empty subset of
T1, T1ce, T2 and FLAIR (``--allow_missing_modalities true``) on real NIfTI files through ``python -m monai.bundle
run``, and the removal of scattered pieces (``KeepMainTumourd``)."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.conventions import MODALITIES
from scripts.networks.imputer import SequenceImputer
from scripts.synthetic.phantom import generate_case
from scripts.transforms import (
    BrainHistogramEqualized,
    CaseError,
    CheckImageDatad,
    ImputeMissingSequencesd,
    KeepMainTumourd,
    LoadImageSharedGridd,
    RandModalityDropoutd,
    keep_main_tumour,
)
from tests._bundle import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (32, 32, 24)
TINY = ["--network_def#channels", "[8,16,32,64]", "--device", "cpu", "--num_workers", "0"]


@pytest.fixture(scope="module")
def arrays():
    case = generate_case(1, seed=0, shape=SHAPE)
    return {k: (v.astype(np.uint8) if k == "seg" else v.astype(np.int16)) for k, v in case.items()}


def write_case(root: Path, case_id: str, arrays: dict, modalities=MODALITIES) -> list[Path]:
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for k in modalities:
        nib.save(nib.Nifti1Image(arrays[k], np.eye(4)), str(folder / f"{case_id}_{k}.nii.gz"))
    return [folder / f"{case_id}_{m}.nii.gz" for m in MODALITIES]


def test_modality_dropout_draws_every_proper_subset():
    t = RandModalityDropoutd(prob=1.0)
    t.set_random_state(0)
    kept = Counter()
    for _ in range(1400):
        out = t({"image": torch.ones(4, 2, 2, 2)})["image"]
        kept[tuple(bool(out[c].any()) for c in range(4))] += 1
    assert len(kept) == 14 and (True,) * 4 not in kept and (False,) * 4 not in kept
    assert min(kept.values()) > 60  # about 100 each
    never = RandModalityDropoutd(prob=0.0)
    assert torch.equal(never({"image": torch.ones(4, 2, 2, 2)})["image"], torch.ones(4, 2, 2, 2))


def test_missing_sequence_stays_zero_through_equalisation():
    img = torch.rand(4, 8, 8, 8) + 0.1
    img[2] = 0
    out = BrainHistogramEqualized("image")({"image": img})["image"]
    assert out[2].abs().max() == 0 and out[0].max() == 1.0


def _brain_image() -> torch.Tensor:
    img = torch.zeros(4, 12, 12, 12)
    img[:, 2:10, 2:10, 2:10] = torch.rand(4, 8, 8, 8) * 0.9 + 0.1
    return img


def test_imputer_fills_only_the_missing_sequences_and_only_inside_the_brain():
    torch.manual_seed(0)
    img = _brain_image()
    img[[0, 2]] = 0  # T1 and T2 missing
    out = SequenceImputer(3, 4, channels=8, num_layers=2)(img[None])[0]
    assert torch.equal(out[[1, 3]], img[[1, 3]])  # present sequences pass through
    brain = img[3] != 0
    assert (out[[0, 2]][:, brain] > 0).all() and (out[[0, 2]][:, ~brain] == 0).all()


def test_imputation_step_leaves_complete_cases_alone_and_loads_the_weights_once(tmp_path):
    img = _brain_image()
    absent = ImputeMissingSequencesd("image", str(tmp_path / "none.pt"))
    assert torch.equal(absent({"image": img})["image"], img)  # complete: the weights are not even read
    missing = img.clone()
    missing[2] = 0
    with pytest.raises(CaseError, match=r"none\.pt.*imputer's weights are not there"):
        absent({"image": missing})
    torch.save(SequenceImputer(3, 4, channels=8, num_layers=1).state_dict(), tmp_path / "imputer.pt")
    model = SequenceImputer(3, 4, channels=8, num_layers=1)
    model.load_state_dict(torch.load(tmp_path / "imputer.pt", weights_only=True))
    step = ImputeMissingSequencesd("image", str(tmp_path / "imputer.pt"))
    with torch.no_grad():
        assert torch.allclose(step({"image": missing})["image"], model(missing[None])[0])
    (tmp_path / "bad.pt").write_bytes(b"not weights")
    with pytest.raises(CaseError, match=r"bad\.pt.*not the imputer's weights"):
        ImputeMissingSequencesd("image", str(tmp_path / "bad.pt"))({"image": missing})


def test_loader_zero_fills_missing_sequences_and_check_accepts_them(arrays, tmp_path):
    files = write_case(tmp_path, "C1", arrays, modalities=("t1ce", "flair"))
    load = LoadImageSharedGridd("image", ensure_channel_first=True, allow_missing_modalities=True)
    d = load({"image": [str(f) for f in files]})
    assert tuple(d["image"].shape) == (4, *SHAPE) and d["missing_modalities"] == "t1,t2"
    assert d["image"][0].abs().max() == 0 and d["image"][3].abs().max() > 0
    CheckImageDatad("image")(d)  # the zero channels are the missing ones: accepted
    with pytest.raises(CaseError, match="T1: all voxels are zero"):
        CheckImageDatad("image")(dict(d, missing_modalities=""))
    strict = LoadImageSharedGridd("image", ensure_channel_first=True)
    with pytest.raises(Exception, match="C1_t1.nii.gz"):
        strict({"image": [str(f) for f in files]})


def test_constant_sequence_is_refused(arrays, tmp_path):
    flat = dict(arrays, flair=np.ones_like(arrays["flair"]))
    files = write_case(tmp_path, "C2", flat)
    d = LoadImageSharedGridd("image", ensure_channel_first=True)({"image": [str(f) for f in files]})
    with pytest.raises(CaseError, match=r"FLAIR: every voxel is 1 \(constant image\)"):
        CheckImageDatad("image")(d)


def test_keep_main_tumour_removes_scattered_pieces():
    regions = np.zeros((3, 40, 40, 40), bool)
    regions[1, 5:20, 5:20, 5:20] = True  # the tumour, 3.4 mL
    regions[0, 8:14, 8:14, 8:14] = True
    regions[2, 9:12, 9:12, 9:12] = True
    regions[1, 35:37, 35:37, 35:37] = True  # a far speck: 8 voxels
    regions[0, 35, 35, 35] = True
    regions[2, 25:27, 25:27, 25:27] = True  # ET outside the core: nested into TC and WT first
    transform = KeepMainTumourd("pred", min_fraction=0.1)
    out = transform({"pred": torch.as_tensor(regions).float()})["pred"].numpy() > 0.5
    assert out[1].sum() == 15**3 and out[0].sum() == 6**3 and out[2].sum() == 27
    # a second tumour of at least min_fraction of the largest stays (multifocal disease)
    regions[1, 25:33, 25:33, 25:33] = True
    assert keep_main_tumour(regions, min_fraction=0.1)[1].sum() == 15**3 + 8**3
    # BraTS's ET rule: too little enhancing tumour is relabelled necrosis (kept in TC)
    kept = keep_main_tumour(regions, min_fraction=0.1, et_min_ml=0.05)  # 27 voxels of ET inside the core
    assert kept[2].sum() == 0 and kept[0].sum() == 6**3 and kept[1].sum() == 15**3 + 8**3


def _bundle(*args):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / "inference.json")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Untrained weights of the configs' network with the TINY channels (the runs below pass the same)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_inference_segments_any_subset_only_when_allowed(arrays, checkpoint, tmp_path):
    data = tmp_path / "data"
    write_case(data, "full", arrays)
    write_case(data, "flair_t1ce", arrays, modalities=("t1ce", "flair"))
    write_case(data, "flair_only", arrays, modalities=("flair",))
    common = ["--dataset_dir", str(data), "--ckpt_path", str(checkpoint), *TINY]

    allowed = _bundle(*common, "--output_dir", str(tmp_path / "a"), "--allow_missing_modalities", "true")
    log = allowed.stdout + allowed.stderr
    assert allowed.returncode == 0, log[-3000:]
    assert "3 case(s) found, 3 segmented, 0 skipped" in log
    assert "case flair_t1ce: T1, T2 missing: imputed from T1ce + FLAIR" in log
    assert "case flair_only: T1, T1ce, T2 missing: imputed from FLAIR" in log
    assert "2 of 3 case(s) segmented without some sequences" in log
    record = json.loads((tmp_path / "a" / "missing_sequences.json").read_text())
    assert record == {"full": [], "flair_t1ce": ["t1", "t2"], "flair_only": ["t1", "t1ce", "t2"]}
    for case in record:
        pred = nib.load(str(tmp_path / "a" / f"{case}.nii.gz"))
        assert pred.shape == SHAPE

    default = _bundle(*common, "--output_dir", str(tmp_path / "d"))
    log = default.stdout + default.stderr
    assert default.returncode == 1, log[-3000:]
    assert "3 case(s) found, 1 segmented, 2 skipped" in log
    assert "missing modality file (T1)" in log
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["full.nii.gz"]
