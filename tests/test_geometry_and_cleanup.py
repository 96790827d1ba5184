"""Affine tolerance, stale outputs and evaluation blame (issue 13), and one whole mixed batch.

Real NIfTI files written and read back; the last test is a real ``python -m monai.bundle run`` over a folder
mixing 2 good cases with every kind of bad input, checking the predictions, the report, the input checksums
and that no temporary file is left.
"""

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.conventions import AFFINE_ATOL_MM, MODALITIES
from scripts.data.checks import FAILURE_KEY, CheckedDataset, check_case, check_output_dirs
from scripts.data.layouts import find_brats2020_cases
from scripts.evaluation import evaluate_datalist, evaluate_folders
from scripts.transforms import CaseError
from tests._inputs import TINY, bundle, checksums, dead_pid, save, write_case


def shifted(delta: float) -> np.ndarray:
    """The identity affine with one off-diagonal (rotation) entry and one translation moved by ``delta``."""
    affine = np.eye(4)
    affine[0, 1] += delta
    affine[2, 3] += delta
    return affine


# ------------------------------------------------------------------------------------------- affine tolerance
@pytest.mark.parametrize("delta", [1e-6, 0.9 * AFFINE_ATOL_MM])
def test_affines_within_the_tolerance_are_one_grid(arrays, tmp_path, preprocessing, delta):
    paths = write_case(tmp_path, "BraTS20_Training_001", arrays)
    save(paths["t2"], arrays["t2"], shifted(delta))
    save(paths["seg"], arrays["seg"], shifted(-delta))
    (item,) = find_brats2020_cases(tmp_path)
    check_case(item)
    out = CheckedDataset([item], preprocessing)[0]  # MONAI alone refuses to stack a 1e-6 difference
    assert FAILURE_KEY not in out, out.get(FAILURE_KEY)
    assert tuple(out["image"].shape[0:1]) == (4,)


def test_affines_beyond_the_tolerance_are_refused(arrays, tmp_path):
    assert AFFINE_ATOL_MM == 1e-4  # documented in scripts/conventions.py and the README
    paths = write_case(tmp_path, "BraTS20_Training_001", arrays)
    save(paths["t2"], arrays["t2"], shifted(2e-4))
    (item,) = find_brats2020_cases(tmp_path)
    with pytest.raises(CaseError, match=r"T2 affine does not match the T1 file's .*largest difference 0\.0002 mm"):
        check_case(item)
    save(paths["t2"], arrays["t2"])
    save(paths["seg"], arrays["seg"], shifted(2e-4))
    with pytest.raises(CaseError, match=r"_seg\.nii\.gz: label affine does not match .*largest difference 0\.0002"):
        check_case(item)


# ---------------------------------------------------------------------------------------------- stale outputs
def test_temporaries_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".case_1.nii.gz.{dead_pid()}.tmp-resunet.nii.gz"
    live = out / ".case_2.nii.gz.1.tmp-resunet.nii.gz"  # pid 1 runs: another run's file in progress
    dead.write_bytes(b"")
    live.write_bytes(b"")
    check_output_dirs(out)
    assert sorted(os.listdir(out)) == [live.name]


# ------------------------------------------------------------------------------------------------ evaluation
def test_evaluation_blames_the_reference_off_the_image_grid_and_counts_an_entry_once(arrays, tmp_path):
    paths = write_case(tmp_path / "data", "BraTS20_Training_001", arrays)
    good = write_case(tmp_path / "data", "BraTS20_Training_002", arrays)
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    save(paths["seg"], arrays["seg"][::2, ::2, ::2], coarse)  # a 2 mm reference
    preds = tmp_path / "pred"
    for cid in ("BraTS20_Training_001", "BraTS20_Training_002"):
        save(preds / f"{cid}.nii.gz", arrays["seg"])
    items = [
        {"case_id": cid, "image": [str(p[m]) for m in MODALITIES], "label": str(p["seg"])}
        for cid, p in (("BraTS20_Training_001", paths), ("BraTS20_Training_002", good))
    ]
    result = evaluate_datalist(items + [dict(items[1])], preds, tmp_path / "o", plot=False)
    assert [r["case_id"] for r in result.rows] == ["BraTS20_Training_002"]  # listed twice, counted once
    (record,) = result.failed
    assert record["file"] == str(paths["seg"]), record
    assert re.match(
        r"reference shape \(16, 16, 12\), affine .* is not on the grid of the case's image", record["problem"]
    )
    # without an image to tell, the prediction is named, as before
    no_image = [dict(items[0], image=str(tmp_path / "nowhere.nii.gz"))]
    (record,) = evaluate_datalist(no_image, preds, tmp_path / "o2", plot=False).failed
    assert record["file"] == str(preds / "BraTS20_Training_001.nii.gz"), record
    # folders (python -m scripts.evaluation): the T1 image beside the reference tells
    result = evaluate_folders(preds, tmp_path / "data", tmp_path / "o4", plot=False)
    assert [r["case_id"] for r in result.rows] == ["BraTS20_Training_002"]
    assert [f["file"] for f in result.failed] == [str(paths["seg"])], result.failed
    # two different entries with one case id: one failure, not two scores
    clash = [items[1], dict(items[0], case_id="BraTS20_Training_002")]
    result = evaluate_datalist(clash, preds, tmp_path / "o3", plot=False)
    assert len(result.rows) == 1 and "duplicate case id" in result.failed[0]["problem"], result.failed


# ---------------------------------------------------------------------------------------- one mixed batch
def _break(paths: dict, arrays: dict, kind: str):
    """Break a written case in one way; returns the file at fault and the expected problem."""
    if kind == "missing_modality":
        paths["flair"].unlink()
        return paths["flair"], r"missing modality file \(FLAIR\)"
    if kind == "truncated_gz":
        paths["t1"].write_bytes(paths["t1"].read_bytes()[:-200])
        return paths["t1"], r"truncated or corrupt gzip data"
    if kind == "affine_2mm":
        save(paths["t2"], arrays["t2"], np.diag([2.0, 2.0, 2.0, 1.0]))
        return paths["t2"], r"T2 affine does not match the T1 file's"
    if kind == "nan_voxels":
        image = arrays["t1ce"].astype(np.float32)
        image[10, 10, 10] = np.nan
        save(paths["t1ce"], image)
        return paths["t1ce"], r"T1ce: 1 NaN and 0 Inf voxel\(s\)"
    if kind == "singular_affine":  # a header sform with a zero voxel size (nibabel refuses to write one itself)
        header = nib.Nifti1Header()
        header.set_data_shape(arrays["t2"].shape)
        header.set_data_dtype(np.int16)
        header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
        header.set_qform(None, code=0)
        nib.save(nib.Nifti1Image(arrays["t2"], None, header=header), str(paths["t2"]))
        return paths["t2"], r"the header's affine is singular \(a zero voxel size or parallel axes"
    raise ValueError(kind)


BAD_KINDS = ("missing_modality", "truncated_gz", "affine_2mm", "nan_voxels", "singular_affine")


def test_a_mixed_batch_keeps_the_inputs_reports_every_bad_case_once_and_leaves_no_temporary(
    arrays, checkpoint, tmp_path
):
    data, out = tmp_path / "data", tmp_path / "out"
    write_case(data, "BraTS20_Training_001", arrays)
    elsewhere = write_case(tmp_path / "elsewhere", "BraTS20_Training_002", arrays)  # a good case behind a link
    save(elsewhere["t2"], arrays["t2"], shifted(1e-6))  # within the tolerance
    (data / "linked").symlink_to(elsewhere["t1"].parent)
    expected = {}
    for i, kind in enumerate(BAD_KINDS, start=3):
        case_id = f"BraTS20_Training_{i:03d}"
        expected[case_id] = _break(write_case(data, case_id, arrays), arrays, kind)
    stray = data / "BraTS20_Training_001" / "BraTS20_Training_001_T1w.nii.gz"
    save(stray, arrays["t1"])
    expected["BraTS20_Training_001_T1w"] = (stray, r"not part of any brats2020 case")
    out.mkdir()
    killed = out / f".BraTS20_Training_001.nii.gz.{dead_pid()}.tmp-resunet.nii.gz"  # a SIGKILL while writing
    killed.write_bytes(b"")
    save(out / "BraTS20_Training_003.nii.gz", arrays["seg"])  # an earlier run's prediction of a case now bad
    before = checksums(data) | checksums(tmp_path / "elsewhere")

    proc = bundle("--bundle_root", str(tmp_path), "--dataset_dir", str(data), "--output_dir", str(out),
                  "--ckpt_path", str(checkpoint), "--num_workers", "0", *TINY)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    n = len(expected)
    assert f"{n + 2} case(s) found, 2 segmented, {n} skipped (reasons below)" in proc.stdout, proc.stdout[-3000:]
    lines = [x.strip() for x in proc.stdout[proc.stdout.rindex("FAILED") :].splitlines()[1:] if x.startswith("  ")]
    assert len(lines) == n, lines
    for case_id, (file, problem) in expected.items():
        (line,) = [x for x in lines if x.startswith(f"{case_id}: ")]
        assert line.startswith(f"{case_id}: {file}: ") and re.search(problem, line), line
    (line,) = [x for x in lines if x.startswith("BraTS20_Training_003: ")]
    assert line.endswith("(its previous prediction is renamed BraTS20_Training_003.nii.gz.stale)"), line
    assert sorted(os.listdir(out)) == [
        "BraTS20_Training_001.nii.gz",
        "BraTS20_Training_002.nii.gz",
        "BraTS20_Training_003.nii.gz.stale",
    ]
    for name in ("BraTS20_Training_001.nii.gz", "BraTS20_Training_002.nii.gz"):
        pred = nib.load(out / name)
        assert pred.shape == arrays["t1"].shape
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert checksums(data) | checksums(tmp_path / "elsewhere") == before  # no input changed, none added
    leftovers = [p for root in (data, out, tmp_path / "elsewhere") for p in Path(root).rglob("*tmp*")]
    assert leftovers == [], leftovers
