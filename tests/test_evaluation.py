import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.evaluation import (
    BRATS_MAX_HD95,
    COLUMNS,
    METRICS,
    REGIONS,
    evaluate_case,
    evaluate_folders,
    main,
    region_metrics,
)

REPO = Path(__file__).resolve().parents[1]
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "TCGA-DU-7294"
SPACING = (1.0, 1.0, 2.0)  # non-unit on the last axis: mm and mL must reflect it
AFFINE = np.diag([*SPACING, 1.0])


def _save(path, data, affine=AFFINE):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.int16), affine), path)
    return path


# ------------------------------------------------------------------------------------- real data vs medpy
def _medpy_reference(pred: np.ndarray, ref: np.ndarray, spacing):
    """medpy's Dice, its directed surface distances (the routine medpy.hd95 is built on) and medpy.hd95 itself,
    on the union's bounding box plus a 2-voxel background margin (exact: medpy erodes with a zero border and
    every surface voxel lies inside the box; it avoids two full 240^2 x 155 distance transforms per call)."""
    import medpy.metric.binary as mb

    idx = np.argwhere(pred | ref)
    lo, hi = np.maximum(idx.min(0) - 2, 0), idx.max(0) + 3
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, r = pred[box], ref[box]
    surface_distances = getattr(mb, "__surface_distances")  # module-level, so no name mangling
    d_pr = surface_distances(p, r, spacing, 1)
    d_rp = surface_distances(r, p, spacing, 1)
    directed = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    return mb.dc(p, r), directed, mb.hd95(p, r, voxelspacing=spacing)


def _real_regions(data: np.ndarray) -> dict:  # BraTS 2020 labels, written out independently of the module
    return {"ET": data == 4, "TC": (data == 1) | (data == 4), "WT": data > 0}


@pytest.fixture(scope="module")
def real_results():
    ref_path = REAL / "TCGA-DU-7294_seg_consensus.nii.gz"
    algorithms = sorted((REAL / "algorithms").glob("*.nii.gz"))
    if not ref_path.is_file() or not algorithms:
        pytest.skip(f"real BraTS case not available at {REAL} (shared data folder absent)")
    ref_img = nib.load(ref_path)
    spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
    ref = _real_regions(np.asanyarray(ref_img.dataobj))
    out = []
    for path in algorithms:
        pred = _real_regions(np.asanyarray(nib.load(path).dataobj))
        row = evaluate_case(path, ref_path, labels=(1, 2, 4))
        directed = evaluate_case(path, ref_path, labels=(1, 2, 4), hd95="max_directed")
        out.append((path.name, row | {"directed": directed}, pred, ref, spacing))
    return out


def test_real_case_matches_medpy(real_results):
    max_dice, max_hd, compared = 0.0, 0.0, 0
    for name, row, pred, ref, spacing in real_results:
        for region in REGIONS:
            p, r = pred[region], ref[region]
            if not r.any() or not p.any():  # ET is empty in the consensus: BraTS convention values instead
                assert not r.any() and region == "ET", (name, region)
                both_empty = not p.any()
                assert row[f"dice_{region}"] == (1.0 if both_empty else 0.0), (name, region)
                assert row[f"hd95_{region}"] == (0.0 if both_empty else BRATS_MAX_HD95), (name, region)
                assert row[f"sensitivity_{region}"] == (1.0 if both_empty else 0.0), (name, region)
                continue
            dice, hd95_directed, hd95_pooled = _medpy_reference(p, r, spacing)
            assert row[f"dice_{region}"] == pytest.approx(dice, abs=1e-3), (name, region)
            # default HD95 = both directions pooled (official BraTS evaluation, medpy.hd95); the max_directed
            # option = the larger directed 95th percentile, never smaller (4.36 vs 1.0 mm on this WT)
            assert row[f"hd95_{region}"] == pytest.approx(hd95_pooled, abs=1e-6), (name, region)
            assert row["directed"][f"hd95_{region}"] == pytest.approx(hd95_directed, abs=1e-6), (name, region)
            assert hd95_pooled <= row["directed"][f"hd95_{region}"] + 1e-6, (name, region)
            max_dice = max(max_dice, abs(row[f"dice_{region}"] - dice))
            max_hd = max(max_hd, abs(row[f"hd95_{region}"] - hd95_pooled))
            compared += 1
    assert compared == 2 * len(real_results)  # TC and WT of every algorithm
    print(f"\nmedpy cross-check over {compared} region(s): max |dDice| {max_dice:.2e}, max |dHD95| {max_hd:.2e} mm")


def test_real_case_metrics_are_consistent(real_results):
    for _name, row, pred, ref, spacing in real_results:
        for region in REGIONS:
            p, r = pred[region], ref[region]
            assert row[f"volume_diff_ml_{region}"] == pytest.approx((p.sum() - r.sum()) * np.prod(spacing) / 1000)
            if r.any():
                assert row[f"sensitivity_{region}"] == pytest.approx((p & r).sum() / r.sum())
            assert row[f"specificity_{region}"] == pytest.approx((~p & ~r).sum() / (~r).sum())
        for m in METRICS:
            assert row[f"{m}_mean"] == pytest.approx(np.mean([row[f"{m}_{g}"] for g in REGIONS]))


# --------------------------------------------------------------------------------- hand-made volumes
def _oedema_blocks(tmp_path):
    """Reference oedema 2x2x5 = 20 voxels, prediction 2x3x5 = 30 voxels sharing 15 (voxel = 2 mm^3);
    no core and no enhancing tumour in either, so TC and ET are empty in both."""
    ref = np.zeros((10, 10, 10))
    ref[0:2, 0:2, 0:5] = 2
    pred = np.zeros((10, 10, 10))
    pred[0:2, 1:4, 0:5] = 2
    return _save(tmp_path / "pred.nii.gz", pred), _save(tmp_path / "ref.nii.gz", ref)


def test_sensitivity_specificity_volume_and_both_empty_brats(tmp_path):
    row = evaluate_case(*_oedema_blocks(tmp_path))
    assert set(row) == set(COLUMNS)
    assert row["dice_WT"] == pytest.approx(2 * 10 / 50)  # overlap 2x1x5 = 10
    assert row["sensitivity_WT"] == pytest.approx(10 / 20)
    assert row["specificity_WT"] == pytest.approx((1000 - 40) / (1000 - 20))
    assert row["volume_diff_ml_WT"] == pytest.approx((30 - 20) * 2.0 / 1000)
    for region in ("TC", "ET"):  # both empty: BraTS convention
        assert (row[f"dice_{region}"], row[f"hd95_{region}"]) == (1.0, 0.0)
        assert (row[f"sensitivity_{region}"], row[f"specificity_{region}"], row[f"volume_diff_ml_{region}"]) == (
            1,
            1,
            0,
        )
    assert row["dice_mean"] == pytest.approx((0.4 + 1 + 1) / 3)
    assert not any(math.isnan(v) for v in row.values())


def test_both_empty_nan_convention(tmp_path):
    row = evaluate_case(*_oedema_blocks(tmp_path), empty="nan")
    for region in ("TC", "ET"):
        assert math.isnan(row[f"dice_{region}"]) and math.isnan(row[f"hd95_{region}"])
        assert math.isnan(row[f"sensitivity_{region}"])
        assert row[f"specificity_{region}"] == 1.0 and row[f"volume_diff_ml_{region}"] == 0.0
    assert row["dice_mean"] == pytest.approx(0.4)  # NaN regions left out of the mean
    assert row["sensitivity_mean"] == pytest.approx(0.5)


@pytest.mark.parametrize("shift_axis, expected_mm", [(0, 3.0), (2, 6.0)])
def test_hd95_in_mm_follows_header_spacing(tmp_path, shift_axis, expected_mm):
    ref = np.zeros((10, 10, 10))
    ref[2, 2, 2] = 4
    pred = np.zeros((10, 10, 10))
    pred[tuple(5 if a == shift_axis else 2 for a in range(3))] = 4  # 3 voxels away: 3 x 1 mm or 3 x 2 mm
    paths = _save(tmp_path / "p.nii.gz", pred), _save(tmp_path / "r.nii.gz", ref)
    row = evaluate_case(*paths, hd95="max_directed")
    official = evaluate_case(*paths)
    for region in REGIONS:  # a lone ET voxel is also the whole TC and WT
        assert row[f"hd95_{region}"] == pytest.approx(expected_mm)
        assert row[f"dice_{region}"] == 0.0 and row[f"volume_diff_ml_{region}"] == 0.0
        # the official (pooled) definition counts masks with no voxel in common as a miss
        assert official[f"hd95_{region}"] == BRATS_MAX_HD95
        assert (official[f"tp_{region}"], official[f"fp_{region}"], official[f"fn_{region}"]) == (0, 1, 1)
        assert official[f"pq_dsc_{region}"] == 0.0 and official[f"sq_hd95_{region}"] == BRATS_MAX_HD95


def test_exactly_one_empty(tmp_path):
    ref = np.zeros((6, 6, 6))
    ref[1:3, 1:3, 1:3] = 1  # core only: no enhancing tumour in the reference
    pred = ref.copy()
    pred[4, 4, 4] = 4  # one spurious enhancing voxel
    p, r = _save(tmp_path / "p.nii.gz", pred), _save(tmp_path / "r.nii.gz", ref)
    brats = evaluate_case(p, r)
    assert (brats["dice_ET"], brats["hd95_ET"], brats["sensitivity_ET"]) == (0.0, BRATS_MAX_HD95, 0.0)
    assert brats["specificity_ET"] == pytest.approx(1 - 1 / 216)
    assert brats["volume_diff_ml_ET"] == pytest.approx(2.0 / 1000)
    nan = evaluate_case(p, r, empty="nan")
    assert nan["dice_ET"] == 0.0  # defined: a false positive is still a miss
    assert math.isnan(nan["hd95_ET"]) and math.isnan(nan["sensitivity_ET"])
    assert nan["hd95_mean"] == pytest.approx(np.mean([nan["hd95_TC"], nan["hd95_WT"]]))
    missed = evaluate_case(r, p)  # the other way round: the prediction misses the enhancing voxel
    assert (missed["dice_ET"], missed["hd95_ET"], missed["sensitivity_ET"]) == (0.0, BRATS_MAX_HD95, 0.0)


def test_specificity_without_negatives():
    full, almost = np.ones((3, 3, 3), bool), np.ones((3, 3, 3), bool)
    almost[0, 0, 0] = False
    assert region_metrics(full, full, SPACING)["specificity"] == 1.0
    assert region_metrics(almost, full, SPACING)["specificity"] == 0.0
    assert math.isnan(region_metrics(full, full, SPACING, empty="nan")["specificity"])
    with pytest.raises(ValueError, match="empty"):
        region_metrics(full, full, SPACING, empty="zero")


def test_case_errors_name_files_and_problem(tmp_path):
    good = np.zeros((6, 6, 6))
    good[2, 2, 2] = 1
    ref = _save(tmp_path / "ref.nii.gz", good)
    small = _save(tmp_path / "small.nii.gz", np.zeros((6, 6, 5)))
    with pytest.raises(ValueError, match=r"small\.nii\.gz.*shape.*ref\.nii\.gz"):
        evaluate_case(small, ref)
    moved = _save(tmp_path / "moved.nii.gz", good, affine=np.diag([1.0, 1.0, 3.0, 1.0]))
    with pytest.raises(ValueError, match=r"moved\.nii\.gz.*affine.*ref\.nii\.gz"):
        evaluate_case(moved, ref)
    bad = good.copy()
    bad[0, 0, 0], bad[0, 0, 1] = 3, 7
    bad_path = _save(tmp_path / "bad.nii.gz", bad)
    with pytest.raises(ValueError, match=r"bad\.nii\.gz.*\[3, 7\]"):
        evaluate_case(bad_path, ref)
    with pytest.raises(ValueError, match=r"bad\.nii\.gz.*\[3, 7\]"):
        evaluate_case(ref, bad_path)


def test_ref_labels_123_vs_pred_labels_124(tmp_path):
    rng = np.random.default_rng(0)
    regions = rng.integers(0, 4, size=(8, 8, 8))  # 0 bg, 1 necrotic, 2 oedema, 3 enhancing
    pred = np.where(regions == 3, 4, regions)  # BraTS 2020 labels
    p, r = _save(tmp_path / "p.nii.gz", pred), _save(tmp_path / "r_seg.nii.gz", regions)
    row = evaluate_case(p, r, labels=(1, 2, 4), ref_labels=(1, 2, 3))
    for region in REGIONS:
        assert row[f"dice_{region}"] == 1.0 and row[f"hd95_{region}"] == 0.0
        assert row[f"volume_diff_ml_{region}"] == 0.0
    with pytest.raises(ValueError, match=r"r_seg\.nii\.gz.*\[3\]"):  # without the mapping: label 3 is unexpected
        evaluate_case(p, r, labels=(1, 2, 4))


# ------------------------------------------------------------------------------------------- folders + CLI
def _label_map(seed, shape=(8, 8, 8)):
    data = np.zeros(shape)
    rng = np.random.default_rng(seed)
    c = rng.integers(2, 5, size=3)
    data[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 2
    data[c[0] - 1 : c[0] + 1, c[1] - 1 : c[1] + 1, c[2] - 1 : c[2] + 1] = 1
    data[c[0], c[1], c[2]] = 4
    return data


@pytest.fixture
def tree(tmp_path):
    """3 good cases + 1 corrupt prediction + 1 shape mismatch + 1 reference without prediction
    + 1 prediction without reference. References: BraTS case folders with images, and one flat _seg file."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for i in range(1, 7):
        cid = f"BraTS20_Training_{i:03d}"
        ref = _label_map(i)
        if i == 2:  # flat reference file
            _save(ref_dir / f"{cid}_seg.nii.gz", ref)
        else:  # BraTS case folder, with an image that must not be taken for a reference
            _save(ref_dir / "MICCAI_BraTS2020_TrainingData" / cid / f"{cid}_seg.nii.gz", ref)
            _save(ref_dir / "MICCAI_BraTS2020_TrainingData" / cid / f"{cid}_t1.nii.gz", ref * 10)
        if i <= 3:
            pred = ref.copy()
            pred[pred == 1] = 2 if i == 3 else 1  # case 3: core painted as oedema
            _save(pred_dir / f"{cid}.nii.gz", pred)
        elif i == 4:  # truncated gzip
            full = _save(pred_dir / f"{cid}.nii.gz", np.random.default_rng(4).integers(0, 3, (40, 40, 40)))
            full.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        elif i == 5:
            _save(pred_dir / f"{cid}.nii.gz", np.zeros((8, 8, 7)))
    _save(pred_dir / "BraTS20_Training_099.nii.gz", _label_map(99))
    return pred_dir, ref_dir


def _no_nan(text):
    def refuse(const):
        raise AssertionError(f"{const} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_evaluate_folders(tree, tmp_path):
    pred_dir, ref_dir = tree
    out = tmp_path / "out"
    result = evaluate_folders(pred_dir, ref_dir, out)
    good = [f"BraTS20_Training_{i:03d}" for i in (1, 2, 3)]
    assert [r["case_id"] for r in result.rows] == good
    assert result.rows[0]["dice_mean"] == 1.0 and result.rows[1]["hd95_mean"] == 0.0
    assert result.rows[2]["dice_WT"] == 1.0 and result.rows[2]["dice_TC"] < 1.0
    failed = {f["case_id"]: f for f in result["failed"]}
    assert sorted(failed) == ["BraTS20_Training_004", "BraTS20_Training_005"]
    assert failed["BraTS20_Training_004"]["file"] == str(pred_dir / "BraTS20_Training_004.nii.gz")
    assert "cannot read" in failed["BraTS20_Training_004"]["problem"]
    assert failed["BraTS20_Training_005"]["file"] == str(pred_dir / "BraTS20_Training_005.nii.gz")
    assert "shape (8, 8, 7)" in failed["BraTS20_Training_005"]["problem"]
    assert [m["case_id"] for m in result.missing_predictions] == ["BraTS20_Training_006"]
    assert [m["case_id"] for m in result.unmatched_predictions] == ["BraTS20_Training_099"]
    assert not result.ok

    names = ["metrics_boxplot.png", "metrics_per_case.csv", "metrics_summary.json", "metrics_summary.md"]
    assert sorted(os.listdir(out)) == names  # complete, and no temporary file left behind
    with open(out / "metrics_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == good and list(rows[0]) == ["case_id", *COLUMNS]
    assert float(rows[2]["dice_TC"]) == pytest.approx(result.rows[2]["dice_TC"])
    summary = _no_nan((out / "metrics_summary.json").read_text())
    for m in METRICS:
        for r in (*REGIONS, "mean"):
            stats = summary["metrics"][m][r]
            assert set(stats) == {"mean", "median", "std", "q1", "q3", "min", "max", "n"} and stats["n"] == 3
    assert summary["metrics"]["dice"]["TC"]["mean"] == pytest.approx(np.mean([r["dice_TC"] for r in result.rows]))
    assert summary["metrics"]["dice"]["TC"]["min"] == pytest.approx(result.rows[2]["dice_TC"])
    assert {f["case_id"] for f in summary["failed"]} == set(failed)
    md = (out / "metrics_summary.md").read_text()
    assert "| metric | TC | WT | ET | mean |" in md and all(name in md for name in ("Dice", "HD95 (mm)", "Specificity"))
    assert (out / "metrics_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_subprocess_reports_failures(tree, tmp_path):
    pred_dir, ref_dir = tree
    out = tmp_path / "cli_out"
    cmd = [
        sys.executable,
        "-m",
        "scripts.evaluation",
        "--pred_dir",
        str(pred_dir),
        "--ref_dir",
        str(ref_dir),
        "--output_dir",
        str(out),
        "--no_plot",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "| metric | TC | WT | ET | mean |" in proc.stdout
    assert "2 case(s) FAILED" in proc.stdout
    assert f"BraTS20_Training_004: {pred_dir / 'BraTS20_Training_004.nii.gz'}: cannot read" in proc.stdout
    assert "BraTS20_Training_005" in proc.stdout and "does not match the reference" in proc.stdout
    assert "reference(s) without a prediction" in proc.stdout and "BraTS20_Training_006" in proc.stdout
    assert sorted(os.listdir(out)) == ["metrics_per_case.csv", "metrics_summary.json", "metrics_summary.md"]
    _no_nan((out / "metrics_summary.json").read_text())


def test_cli_exit_0_with_ref_labels_and_nan_summary(tmp_path, capsys):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for i in range(2):
        pred = _label_map(i)
        pred[pred == 4] = 2  # no enhancing tumour anywhere: ET empty in both
        _save(pred_dir / f"case{i}.nii.gz", pred)
        _save(ref_dir / f"case{i}.nii.gz", pred)  # flat <case_id>.nii.gz reference
    assert (
        main(
            [
                "--pred_dir",
                str(pred_dir),
                "--ref_dir",
                str(ref_dir),
                "--output_dir",
                str(tmp_path / "o"),
                "--ref_labels",
                "1",
                "2",
                "3",
                "--empty",
                "nan",
                "--no_plot",
            ]
        )
        == 0
    )
    assert "FAILED" not in capsys.readouterr().out
    summary = _no_nan((tmp_path / "o" / "metrics_summary.json").read_text())["metrics"]
    assert summary["dice"]["ET"] == {
        "mean": None,
        "median": None,
        "std": None,
        "q1": None,
        "q3": None,
        "min": None,
        "max": None,
        "n": 0,
    }
    assert summary["dice"]["WT"]["mean"] == 1.0 and summary["dice"]["mean"]["n"] == 2
    assert "n/a" in (tmp_path / "o" / "metrics_summary.md").read_text()


def _save_named(path, data):
    """``_save`` under exactly ``path``'s name (nibabel rewrites the letter case of an extension like ``.Nii.Gz``)."""
    ext = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    return _save(path.parent / f"_tmp{ext}", data).rename(path)


def test_cli_lists_references_like_the_dataset_layouts(tmp_path, capsys):
    """References named in any letter case (``_SEG.NII.GZ``, ``-seg.nii``, ``case/seg.nii.gz``), in a symlinked case
    folder and behind a link loop are all found, as the inference layouts find case files; the report adds up."""
    pred_dir, ref_dir, elsewhere = tmp_path / "pred", tmp_path / "ref", tmp_path / "elsewhere"
    refs = {
        "BraTS20_Training_001": ref_dir / "BraTS20_Training_001" / "BraTS20_Training_001_SEG.NII.GZ",
        "BraTS-GLI-00002-000": ref_dir / "BraTS-GLI-00002-000-Seg.nii",
        "BraTS20_Training_003": elsewhere / "BraTS20_Training_003" / "BraTS20_Training_003_seg.nii.gz",
        "caseE": ref_dir / "caseE" / "seg.nii.gz",
        "BraTS20_Training_009": ref_dir / "BraTS20_Training_009_Seg.Nii.Gz",  # no prediction
    }
    for i, (cid, path) in enumerate(refs.items()):
        _save_named(path, _label_map(i))
        if cid != "BraTS20_Training_009":
            _save_named(pred_dir / f"{cid}.NII.GZ" if i == 0 else pred_dir / f"{cid}.nii.gz", _label_map(i))
    _save_named(ref_dir / "BraTS20_Training_001" / "BraTS20_Training_001_T1.NII.GZ", _label_map(0) * 10)  # an image
    (ref_dir / "linked").symlink_to(elsewhere / "BraTS20_Training_003")
    (ref_dir / "caseE" / "loop").symlink_to(ref_dir)
    args = ["--pred_dir", str(pred_dir), "--ref_dir", str(ref_dir), "--output_dir", str(tmp_path / "out"), "--no_plot"]
    assert main(args) == 1  # a reference without a prediction
    out = capsys.readouterr().out
    assert "5 case(s) found, 4 evaluated, 1 skipped (1 reference(s) without a prediction)" in out
    assert f"BraTS20_Training_009: {refs['BraTS20_Training_009']}" in out
    summary = _no_nan((tmp_path / "out" / "metrics_summary.json").read_text())
    assert summary["n_cases"] == 4 and summary["failed"] == [] and summary["unmatched_predictions"] == []
    with open(tmp_path / "out" / "metrics_per_case.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(set(refs) - {"BraTS20_Training_009"})
    assert all(float(r["dice_mean"]) == 1.0 for r in rows.values())
