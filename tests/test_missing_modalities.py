"""Missing sequences and post-processing: modality dropout in training, inference, the report and evaluation with
any non-empty subset of T1, T1ce, T2 and FLAIR (``--allow_missing_modalities true``) on real NIfTI files through
``python -m monai.bundle run``, and the removal of scattered pieces (``KeepMainTumourd``)."""

import base64
import csv
import io
import json
import os
import re
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


def write_case(root: Path, case_id: str, arrays: dict, modalities=MODALITIES, seg: bool = False) -> list[Path]:
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for k in (*modalities, *(["seg"] if seg else [])):
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


def write_study(path: Path, arrays: dict, missing=()) -> Path:
    """A 4D study (X x Y x Z x 4, T1, T1ce, T2, FLAIR; a MONAI Label datastore's image) with ``missing``
    sequences as all-zero channels."""
    data = np.stack([np.zeros_like(arrays[m]) if m in missing else arrays[m] for m in MODALITIES], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_zero_channels_of_a_4d_study_are_its_missing_sequences(arrays, tmp_path):
    """One 4D file (a MONAI Label study, MSD Task01): with ``allow_missing_modalities`` its all-zero channels are
    the missing sequences, read through the item's channel order (MSD stores FLAIR, T1, T1ce, T2); without it, an
    all-zero channel is an empty image; every channel zero is an error."""
    load = LoadImageSharedGridd("image", ensure_channel_first=True, allow_missing_modalities=True)
    d = load({"image": str(write_study(tmp_path / "s.nii.gz", arrays, missing=("t1", "t2")))})
    assert d["missing_modalities"] == "t1,t2" and tuple(d["image"].shape) == (4, *SHAPE)
    CheckImageDatad("image")(d)
    with pytest.raises(CaseError, match="T1: all voxels are zero"):
        CheckImageDatad("image")(dict(d, missing_modalities=""))
    msd = load(
        {"image": str(write_study(tmp_path / "m.nii.gz", arrays, missing=("t1",))), "channel_order": [1, 2, 3, 0]}
    )
    assert msd["missing_modalities"] == "flair"  # the zeroed file channel 0 holds MSD's FLAIR
    CheckImageDatad("image")(msd)
    with pytest.raises(CaseError, match="every channel is zero"):
        load({"image": str(write_study(tmp_path / "z.nii.gz", arrays, missing=MODALITIES))})
    full = load({"image": str(write_study(tmp_path / "f.nii.gz", arrays))})
    assert full["missing_modalities"] == ""


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


def _bundle(*args, run_id: str = "run", configs=("inference.json",)):
    files = str([str(ROOT / "configs" / c) for c in configs])
    meta = ["--meta_file", str(ROOT / "configs" / "metadata.json")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, *meta, "--config_file", files]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Untrained weights of the configs' network with the TINY channels (the runs below pass the same)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def imputer(tmp_path_factory):
    """Untrained weights of a small imputer (seeded), passed as ``--imputer_path``."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("imputer") / "imputer.pt"
    torch.save(SequenceImputer(3, 4, channels=8, num_layers=2).state_dict(), path)
    return path


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


def test_inference_segments_4d_studies_with_zero_channels_only_when_allowed(arrays, checkpoint, tmp_path):
    """4D studies (as a MONAI Label datastore holds them) whose missing sequences are zero channels: segmented and
    recorded with ``--allow_missing_modalities true``; skipped as empty images without it."""
    data = tmp_path / "studies"
    write_study(data / "study_all.nii.gz", arrays)
    write_study(data / "study_two.nii.gz", arrays, missing=("t1", "t2"))
    common = ["--dataset_dir", str(data), "--ckpt_path", str(checkpoint), *TINY]
    allowed = _bundle(*common, "--output_dir", str(tmp_path / "a"), "--allow_missing_modalities", "true")
    log = allowed.stdout + allowed.stderr
    assert allowed.returncode == 0, log[-3000:]
    assert "case study_two: T1, T2 missing: imputed from T1ce + FLAIR" in log
    record = json.loads((tmp_path / "a" / "missing_sequences.json").read_text())
    assert record == {"study_all": [], "study_two": ["t1", "t2"]}
    assert nib.load(str(tmp_path / "a" / "study_two.nii.gz")).shape == SHAPE
    default = _bundle(*common, "--output_dir", str(tmp_path / "d"))
    log = default.stdout + default.stderr
    assert default.returncode == 1 and "T1: all voxels are zero (empty image)" in log, log[-3000:]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["study_all.nii.gz"]


def test_import_studies_writes_missing_sequences_as_zero_channels_only_when_allowed(arrays, tmp_path):
    """``python -m scripts.data.import_studies --allow_missing_modalities``: a case lacking T1 and T2 becomes a 4D
    study whose T1 and T2 channels are zero (one line names them), which the loader then reads as missing; without
    the option that case is one error line naming the missing file and the complete case is still imported."""
    write_case(tmp_path / "src", "full", arrays, seg=True)
    write_case(tmp_path / "src", "two", arrays, modalities=("t1ce", "flair"))
    cmd = [sys.executable, "-m", "scripts.data.import_studies", str(tmp_path / "src"), "--quiet", "--output_dir"]
    strict = subprocess.run([*cmd, str(tmp_path / "strict")], capture_output=True, text=True, timeout=300)
    assert strict.returncode == 1 and "two_t1.nii.gz" in strict.stderr, strict.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "strict").glob("*.nii.gz")) == ["full.nii.gz"]
    proc = subprocess.run([*cmd, str(tmp_path / "ds"), "--allow_missing_modalities"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"case two: T1, T2 missing: zero channel(s) in {tmp_path / 'ds' / 'two.nii.gz'}" in proc.stdout
    study = np.asarray(nib.load(str(tmp_path / "ds" / "two.nii.gz")).dataobj)
    assert study.shape == (*SHAPE, 4) and not study[..., 0].any() and not study[..., 2].any()
    np.testing.assert_array_equal(study[..., 3], arrays["flair"])
    load = LoadImageSharedGridd("image", ensure_channel_first=True, allow_missing_modalities=True)
    assert load({"image": str(tmp_path / "ds" / "two.nii.gz")})["missing_modalities"] == "t1,t2"


def _figure_pixels(page: str, alt: str) -> np.ndarray:
    """The RGB pixels of the figure ``alt`` embedded in a report page."""
    from PIL import Image

    data = re.search(rf"<img alt='{alt}' src='data:image/png;base64,([^']+)'>", page).group(1)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=int)


@pytest.mark.slow
def test_report_names_acquired_and_imputed_sequences(arrays, checkpoint, imputer, tmp_path):
    """``report`` on cases without some sequence files: the page says which were acquired and which imputed
    (banner, provenance, input files), the Images panel's rows of the missing sequences say "not acquired"
    (no blank image), and every figure is drawn on an acquired sequence."""
    data, out = tmp_path / "data", tmp_path / "out"
    write_case(data, "flair_t1ce", arrays, modalities=("t1ce", "flair"), seg=True)
    write_case(data, "t1ce_t2", arrays, modalities=("t1ce", "t2"), seg=True)  # no FLAIR: figures fall back
    proc = _bundle("--dataset_dir", str(data), "--output_dir", str(out), "--ckpt_path", str(checkpoint),
                   "--imputer_path", str(imputer), "--allow_missing_modalities", "true", "--report_pdf", "false",
                   *TINY, run_id="report", configs=("inference.json", "report.json"))  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "case flair_t1ce: T1, T2 missing: imputed from T1ce + FLAIR" in log
    assert "case t1ce_t2: T1, FLAIR missing: imputed from T1ce + T2" in log
    for case, acquired, missing in (("flair_t1ce", "T1ce, FLAIR", "T1, T2"), ("t1ce_t2", "T1ce, T2", "T1, FLAIR")):
        assert nib.load(out / case / f"{case}_seg.nii.gz").shape == SHAPE
        page = (out / case / "report.html").read_text()
        assert f"Sequences acquired: {acquired}. Not acquired: {missing}, imputed from" in page
        assert f"<td>sequences acquired</td><td>{acquired}</td>" in page
        assert f"<td>sequences not acquired (imputed)</td><td>{missing}</td>" in page
        assert f"<td>imputation weights (md5)</td><td>{imputer}  md5 " in page
        assert page.count("(no such file: not acquired)") == 2 and page.count("  md5 ") == 2 + 1 + 1  # + ref
        assert f"{missing}: not acquired (imputed for the segmentation, not shown)" in page
        assert page.count("src='data:image/png;base64,") == 5  # segmentation, reference, images, Grad-CAM, TTA
        # the Images panel: rows FLAIR, T1ce, T1, T2; a missing sequence's row is the grey "not acquired" fill
        pixels = _figure_pixels(page, "images")
        grey = (np.abs(pixels - 235) <= 1).all(-1)
        rows = np.array_split(np.arange(pixels.shape[0]), 4)
        fill = [float(grey[r].mean()) for r in rows]
        absent = [n in missing.split(", ") for n in ("FLAIR", "T1ce", "T1", "T2")]
        assert all((f > 0.3) == a for f, a in zip(fill, absent)), fill
        # every figure is drawn over acquired sequences: FLAIR (then T1ce) where there is one, else another
        over = re.findall(r"Drawn over ([^.]+)\.", page)
        flair = "FLAIR" if "FLAIR" in acquired else "T2"  # FLAIR's stand-in: T2, then the others
        assert over == ["FLAIR and T1ce" if "FLAIR" in acquired else "T1ce and T2", flair, "T1ce", flair], over


@pytest.mark.slow
def test_evaluation_records_the_missing_sequences_per_case(arrays, checkpoint, imputer, tmp_path):
    """``evaluating`` with ``--allow_missing_modalities true`` evaluates cases without some sequence files and
    its per-case CSV, summary JSON and markdown say which sequences each case lacked, with the counts."""
    data, out = tmp_path / "data", tmp_path / "out"
    items = []
    for case, modalities in (("full", MODALITIES), ("flair_t1ce", ("t1ce", "flair")), ("flair_only", ("flair",))):
        files = write_case(data, case, arrays, modalities=modalities, seg=True)
        items.append({"image": [str(f) for f in files], "label": str(data / case / f"{case}_seg.nii.gz")})
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items[:1], "validation": items}))
    proc = _bundle("--dataset_dir", str(tmp_path / "datalist.json"), "--output_dir", str(out), "--ckpt_path",
                   str(checkpoint), "--imputer_path", str(imputer), "--allow_missing_modalities", "true",
                   "--plot", "false", *TINY, run_id="evaluating", configs=("inference.json", "evaluate.json"))  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "3 case(s) found, 3 evaluated, 0 skipped" in log
    expected = {"flair_only": ["t1", "t1ce", "t2"], "flair_t1ce": ["t1", "t2"], "full": []}
    assert json.loads((out / "predictions" / "missing_sequences.json").read_text()) == expected
    with open(out / "metrics_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:2] == ["case_id", "missing_sequences"]
    assert {r["case_id"]: r["missing_sequences"] for r in rows} == {c: ",".join(m) for c, m in expected.items()}
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["missing_sequences"] == expected and summary["n_cases_missing_sequences"] == 2
    by_missing = summary["dice_by_missing_sequences"]
    assert {k: v["n_cases"] for k, v in by_missing.items()} == {"none": 1, "t1,t2": 1, "t1,t1ce,t2": 1}
    dice = {r["case_id"]: float(r["dice_WT"]) for r in rows}
    assert by_missing["t1,t2"]["WT"] == pytest.approx(dice["flair_t1ce"])
    md = (out / "metrics_summary.md").read_text()
    assert "2 of 3 case(s) evaluated without some sequences (imputed): flair_only (T1, T1ce, T2), flair_t1ce" in md
    assert re.search(r"\| T1, T2 \| 1 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|", md), md
