"""Tests of the synthetic BraTS-like data generator (scripts/synthetic/phantom.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from scripts.conventions import MODALITIES
from scripts.synthetic import phantom
from scripts.synthetic.phantom import (
    CASE_PREFIX,
    TISSUE_LABELS,
    generate_case,
    save_preview,
    write_case,
    write_dataset,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = (64, 72, 56)
TINY = (32, 36, 28)
T = TISSUE_LABELS


@pytest.fixture(scope="module")
def small_case():
    return generate_case(3, seed=0, shape=SMALL, return_tissue=True)


@pytest.fixture(scope="module")
def default_case():
    return generate_case(1, seed=0, return_tissue=True)


def test_constants():
    assert CASE_PREFIX == "BraTS20_Training_"
    assert MODALITIES == ("t1", "t1ce", "t2", "flair")
    assert phantom.DEFAULT_SHAPE == (112, 128, 96)


def test_keys_dtypes_shapes(small_case):
    plain = generate_case(3, seed=0, shape=SMALL)
    assert set(plain) == {*MODALITIES, "seg"}
    for mod in MODALITIES:
        img = small_case[mod]
        assert img.dtype == np.float32 and img.shape == SMALL
        assert img.min() >= 0 and img.max() <= np.iinfo(np.int16).max
        assert np.array_equal(img, np.rint(img)), "values must be exactly representable as int16"
        assert 50 < np.percentile(img[img > 0], 50) < 10000, "int16 scanner-like range"
    assert small_case["seg"].dtype == np.uint8 and small_case["seg"].shape == SMALL


def test_determinism(small_case):
    again = generate_case(3, seed=0, shape=SMALL, return_tissue=True)
    for key, arr in small_case.items():
        assert arr.dtype == again[key].dtype
        assert np.array_equal(arr, again[key]), key
    other_index = generate_case(4, seed=0, shape=SMALL)
    other_seed = generate_case(3, seed=1, shape=SMALL)
    for other in (other_index, other_seed):
        assert not np.array_equal(other["seg"], small_case["seg"])
        assert not np.array_equal(other["t1"], small_case["t1"])


def test_labels_default_case(default_case):
    seg = default_case["seg"]
    assert default_case["t1"].shape == (112, 128, 96)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
    for lab in (1, 2, 4):
        assert (seg == lab).sum() > 200, lab


@pytest.mark.parametrize("index", [1, 2, 5, 6])
def test_labels_small_cases(index):
    case = generate_case(index, seed=0, shape=SMALL, return_tissue=True)
    seg, tissue = case["seg"], case["tissue"]
    assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
    assert {1, 2, 4} <= set(np.unique(seg).tolist())
    _check_structure(seg, tissue)


def _check_structure(seg, tissue):
    brain = tissue > 0
    # tumour inside the brain, labels consistent with the tissue map
    assert not np.any((seg > 0) & ~brain)
    assert np.array_equal(seg == 1, tissue == T["necrosis"])
    assert np.array_equal(seg == 4, tissue == T["enhancing"])
    assert np.array_equal(seg == 2, tissue == T["edema"])
    ncr, et, ed = seg == 1, seg == 4, seg == 2
    core = ncr | et
    # necrosis is enclosed by the enhancing rim (>= 2 voxels: 2 dilations stay in the core)
    assert np.all(core[ndi.binary_dilation(ncr, iterations=2)])
    # the enhancing rim touches the necrosis, the oedema never does
    assert np.any(et & ndi.binary_dilation(ncr))
    assert not np.any(ed & ndi.binary_dilation(ncr))
    # oedema lies outside the core and covers most of its outer surface
    shell = ndi.binary_dilation(core) & ~core
    assert (seg[shell] == 2).mean() > 0.5
    # the oedema is larger than the core in extent (surrounds it)
    assert ed.sum() > 0.5 * core.sum()


def test_structure_and_background(small_case, default_case):
    for case in (small_case, default_case):
        seg, tissue = case["seg"], case["tissue"]
        _check_structure(seg, tissue)
        brain = tissue > 0
        for mod in MODALITIES:
            assert np.all(case[mod][~brain] == 0), mod
            assert np.all(case[mod][brain] > 0), mod
        # brain roughly fills the volume with a margin, background all around
        assert 0.3 < brain.mean() < 0.75
        assert not brain[0].any() and not brain[-1].any()
        assert not brain[:, 0].any() and not brain[:, -1].any()
        assert not brain[:, :, 0].any() and not brain[:, :, -1].any()


def test_anatomy_present(default_case):
    tissue = default_case["tissue"]
    counts = np.bincount(tissue.ravel(), minlength=9)
    for name in ("csf", "grey_matter", "white_matter", "ventricle", "deep_grey"):
        assert counts[T[name]] > 1000, name
    # ventricles on both sides of the midline, near the centre
    vx = np.nonzero(tissue == T["ventricle"])[0]
    mid = tissue.shape[0] / 2
    assert (vx < mid).sum() > 200 and (vx > mid).sum() > 200
    assert abs(np.mean(np.nonzero(tissue == T["ventricle"])[1]) - tissue.shape[1] / 2) < 20


def _mean(img, mask):
    assert mask.sum() > 10
    return float(img[mask].mean())


@pytest.mark.parametrize("which", ["small", "default"])
def test_contrasts(which, small_case, default_case):
    case = small_case if which == "small" else default_case
    t = case["tissue"]
    wm, gm = t == T["white_matter"], t == T["grey_matter"]
    csf = (t == T["csf"]) | (t == T["ventricle"])
    normal = wm | gm
    ncr, et, ed = t == T["necrosis"], t == T["enhancing"], t == T["edema"]
    t1, t1ce, t2, flair = (case[m] for m in MODALITIES)
    # T1: WM > GM > CSF, necrosis dark, oedema slightly dark
    assert _mean(t1, wm) > _mean(t1, gm) > _mean(t1, csf)
    assert _mean(t1, ncr) < _mean(t1, gm)
    assert _mean(t1, ed) < _mean(t1, wm)
    # T1ce: enhancing tumour very bright, necrosis dark
    assert _mean(t1ce, et) > 1.4 * _mean(t1ce, wm)
    assert _mean(t1ce, et) > 2.0 * _mean(t1ce, ncr)
    assert _mean(t1ce, ncr) < _mean(t1ce, wm)
    # T2: CSF brightest, GM > WM, oedema / necrosis bright
    assert _mean(t2, csf) > _mean(t2, gm) > _mean(t2, wm)
    assert _mean(t2, ed) > 1.5 * _mean(t2, wm)
    assert _mean(t2, ncr) > _mean(t2, ed)
    # FLAIR: CSF suppressed, oedema brightest, GM > WM
    assert _mean(flair, t == T["ventricle"]) < 0.6 * _mean(flair, wm)
    assert _mean(flair, csf) < 0.7 * _mean(flair, wm)  # thin sulci suffer from partial volume
    assert _mean(flair, ed) > 1.5 * _mean(flair, normal)
    assert _mean(flair, ed) > _mean(flair, ncr)
    assert _mean(flair, gm) > _mean(flair, wm)


def test_write_case(tmp_path):
    import nibabel as nib

    files = write_case(str(tmp_path), 7, seed=2, shape=TINY)
    name = "BraTS20_Training_007"
    assert set(files) == {*MODALITIES, "seg"}
    case_dir = tmp_path / name
    assert sorted(os.listdir(case_dir)) == sorted(f"{name}_{k}.nii.gz" for k in (*MODALITIES, "seg"))
    ref = generate_case(7, seed=2, shape=TINY)
    for key, path in files.items():
        assert path == str(case_dir / f"{name}_{key}.nii.gz")
        img = nib.load(path)
        assert img.get_data_dtype() == (np.uint8 if key == "seg" else np.int16)
        assert img.shape == TINY
        np.testing.assert_allclose(img.affine, np.diag([1.0, 1.0, 1.0, 1.0]))
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert img.header.get_xyzt_units()[0] == "mm"
        data = np.asarray(img.dataobj)
        assert np.array_equal(data, ref[key].astype(data.dtype))
        assert np.array_equal(data.astype(np.float32), ref[key].astype(np.float32))


def test_write_dataset_idempotent(tmp_path):
    out = str(tmp_path / "ds")
    cases = write_dataset(out, num_cases=2, seed=0, shape=TINY, progress=False)
    assert [os.path.basename(os.path.dirname(c["seg"])) for c in cases] == [
        "BraTS20_Training_001",
        "BraTS20_Training_002",
    ]
    paths = [p for c in cases for p in c.values()]
    assert all(os.path.isfile(p) for p in paths)
    mtimes = {p: os.stat(p).st_mtime_ns for p in paths}
    again = write_dataset(out, num_cases=2, seed=0, shape=TINY, progress=False)
    assert again == cases
    assert {p: os.stat(p).st_mtime_ns for p in paths} == mtimes
    # a missing file triggers a rewrite of that case only
    os.remove(cases[1]["flair"])
    write_dataset(out, num_cases=2, seed=0, shape=TINY, progress=False)
    assert os.path.isfile(cases[1]["flair"])
    assert all(os.stat(p).st_mtime_ns == mtimes[p] for p in cases[0].values())
    leftovers = [f for d in os.listdir(out) for f in os.listdir(os.path.join(out, d)) if f.startswith(".tmp")]
    assert leftovers == []


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [
        sys.executable, "-m", "scripts.synthetic.phantom",
        "--output_dir", str(out), "--num_cases", "2", "--seed", "0", "--shape", *map(str, TINY), "--no_progress",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for i in (1, 2):
        name = f"BraTS20_Training_{i:03d}"
        for key in (*MODALITIES, "seg"):
            assert (out / name / f"{name}_{key}.nii.gz").is_file()


def test_save_preview(tmp_path, small_case):
    png = tmp_path / "a.png"
    save_preview(small_case, str(png))
    assert png.is_file() and png.stat().st_size > 1000
    files = write_case(str(tmp_path / "ds"), 1, shape=TINY)
    png2 = tmp_path / "b.png"
    save_preview(os.path.dirname(files["seg"]), str(png2), plane="coronal")
    assert png2.is_file() and png2.stat().st_size > 1000
