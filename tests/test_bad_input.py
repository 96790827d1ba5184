"""Bad input: every kind of bad case gets one line naming the case, the file and the problem.

Header-level checks (``scripts.data.checks.check_case``) and data-level checks (``CheckImageDatad`` in the
bundle's preprocessing, run through ``CheckedDataset``) on real NIfTI files written and read back; then real
``python -m monai.bundle`` runs (an untrained tiny network as checkpoint): batch inference over a folder of 2
good and 5 bad cases, evaluation over a datalist with bad cases, and an unusable output folder.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.conventions import MODALITIES
from scripts.data.checks import (
    FAILURE_KEY,
    CheckedDataset,
    OutputDirError,
    SkipFailuresCollate,
    check_case,
    check_output_dirs,
)
from scripts.data.layouts import find_brats2020_cases, find_inference_cases
from scripts.synthetic.phantom import generate_case
from scripts.transforms import CaseError
from tests._bundle import EXAMPLE_CASE, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (32, 32, 24)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
TINY = ["--network_def#channels", "[8,16,32,64]", "--roi_size", "[32,32,32]", "--device", "cpu"]


@pytest.fixture(scope="module")
def arrays():
    case = generate_case(1, seed=0, shape=SHAPE)
    return {k: (v.astype(np.uint8) if k == "seg" else v.astype(np.int16)) for k, v in case.items()}


def save(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))


def write_case(root: Path, case_id: str, arrays: dict) -> dict:
    """A BraTS 2020-style case folder; returns {modality or 'seg': path}."""
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"{case_id}_{k}.nii.gz" for k in (*MODALITIES, "seg")}
    for k, p in paths.items():
        save(p, arrays[k])
    return paths


def _nan_inf(a):
    a = a.astype(np.float32)
    a[10, 10, 10:13] = np.nan
    a[12, 12, 10:12] = np.inf
    return a


# name -> (how to break the case, file at fault, problem pattern)
HEADER_CASES = {
    "missing_modality": (lambda p, a: p["flair"].unlink(), "flair", r"missing modality file \(FLAIR\)"),
    "shape_mismatch": (
        lambda p, a: save(p["t2"], a["t2"][:, :, :20]),
        "t2",
        r"T2 shape \(32, 32, 20\) does not match the T1",
    ),
    "affine_mismatch": (
        lambda p, a: save(p["t2"], a["t2"], np.array([[1, 0, 0, 2.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])),
        "t2",
        r"T2 affine does not match the T1 file's .*largest difference 2 mm",
    ),
    "truncated_gz": (
        lambda p, a: p["flair"].write_bytes(p["flair"].read_bytes()[:-200]),
        "flair",
        r"truncated or corrupt gzip data",
    ),
    "corrupt_gz": (
        lambda p, a: p["t1ce"].write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 300),
        "t1ce",
        r"cannot read NIfTI header",
    ),
    "not_gzip": (lambda p, a: p["t1ce"].write_bytes(b"hello" * 100), "t1ce", r"cannot read NIfTI header"),
    "image_2d": (
        lambda p, a: save(p["t1"], a["t1"][:, :, 12]),
        "t1",
        r"expected a 3D image \(T1\), got 2D shape \(32, 32\)",
    ),
    "image_5d": (lambda p, a: save(p["t1"], a["t1"][..., None, None]), "t1", r"got 5D shape \(32, 32, 24, 1, 1\)"),
    "label_shape": (lambda p, a: save(p["seg"], a["seg"][:16]), "seg", r"label shape \(16, 32, 24\) does not match"),
}

DATA_CASES = {
    "nan_inf_voxels": (lambda p, a: save(p["t1ce"], _nan_inf(a["t1ce"])), "t1ce", r"T1ce: 3 NaN and 2 Inf voxel\(s\)"),
    "all_zero": (lambda p, a: save(p["flair"], np.zeros(SHAPE, np.int16)), "flair", r"FLAIR: all voxels are zero"),
    "labels_outside_set": (
        lambda p, a: save(p["seg"], np.where(a["seg"] == 4, 3, a["seg"]).astype(np.uint8)),
        "seg",
        r"label values \[3\] are outside the expected set \[0, 1, 2, 4\]",
    ),
}


@pytest.mark.parametrize("name", HEADER_CASES)
def test_header_check_names_case_file_and_problem(name, arrays, tmp_path):
    breaker, key, problem = HEADER_CASES[name]
    paths = write_case(tmp_path, "BraTS20_Training_042", arrays)
    breaker(paths, arrays)
    (item,) = find_brats2020_cases(tmp_path, incomplete="keep")
    with pytest.raises(CaseError) as err:
        check_case(item)
    e = err.value
    assert (e.case_id, e.path) == ("BraTS20_Training_042", str(paths[key])), str(e)
    assert re.search(problem, e.problem), e.problem
    assert "\n" not in str(e) and str(e).startswith(f"case BraTS20_Training_042: {paths[key]}: ")


def test_good_case_passes_the_header_check(arrays, tmp_path):
    write_case(tmp_path, "BraTS20_Training_001", arrays)
    (item,) = find_brats2020_cases(tmp_path)
    check_case(item)


def test_4d_study_needs_four_channels(arrays, tmp_path):
    stack = np.stack([arrays[m] for m in MODALITIES], -1)
    save(tmp_path / "good.nii.gz", stack)
    check_case({"image": str(tmp_path / "good.nii.gz")})
    save(tmp_path / "three.nii.gz", stack[..., :3])
    with pytest.raises(
        CaseError, match=r"case three: .*three\.nii\.gz: expected a 4D image with 4 channels.*\(32, 32, 24, 3\)"
    ):
        check_case({"image": str(tmp_path / "three.nii.gz")})


@pytest.mark.parametrize("name", DATA_CASES)
def test_data_check_in_preprocessing_names_case_file_and_problem(name, arrays, tmp_path, preprocessing):
    breaker, key, problem = DATA_CASES[name]
    paths = write_case(tmp_path, "BraTS20_Training_042", arrays)
    breaker(paths, arrays)
    items = find_brats2020_cases(tmp_path)
    ds = CheckedDataset(items, preprocessing)
    assert len(ds) == 1 and ds.failures == []  # the headers are fine
    record = ds[0][FAILURE_KEY]
    assert (record["case_id"], record["file"]) == ("BraTS20_Training_042", str(paths[key])), record
    assert re.search(problem, record["problem"]) and "\n" not in record["problem"], record["problem"]


def test_good_case_goes_through_the_preprocessing(arrays, tmp_path, preprocessing):
    write_case(tmp_path, "BraTS20_Training_001", arrays)
    out = CheckedDataset(find_brats2020_cases(tmp_path), preprocessing)[0]
    assert FAILURE_KEY not in out and out["image"].shape[0] == 4 and out["label"].shape[0] == 3


def test_datalist_entry_pointing_nowhere(arrays, tmp_path):
    paths = write_case(tmp_path, "BraTS20_Training_001", arrays)
    good = {"image": [os.path.relpath(paths[m], tmp_path) for m in MODALITIES]}
    nowhere = {"case_id": "ghost", "image": "cases/ghost.nii.gz"}
    (tmp_path / "datalist.json").write_text(json.dumps({"testing": [good, nowhere]}))
    items = find_inference_cases(tmp_path / "datalist.json")
    ds = CheckedDataset(items)
    assert len(ds) == 1
    assert ds.failures == [
        {"case_id": "ghost", "file": str(tmp_path / "cases" / "ghost.nii.gz"), "problem": "file does not exist"}
    ]


def test_collate_keeps_good_items_and_carries_failures():
    good = {"image": torch.zeros(1, 2, 2, 2)}
    batch = SkipFailuresCollate()([good, {FAILURE_KEY: {"case_id": "a", "file": "f", "problem": "p"}}])
    assert batch["image"].shape == (1, 1, 2, 2, 2) and batch[FAILURE_KEY][0]["case_id"] == "a"
    assert SkipFailuresCollate()([{FAILURE_KEY: {"case_id": "a", "file": "f", "problem": "p"}}]) == {
        FAILURE_KEY: [{"case_id": "a", "file": "f", "problem": "p"}]
    }


def test_output_dir_checks(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputDirError, match="exists but is not a folder"):
        check_output_dirs(afile)
    with pytest.raises(OutputDirError, match="cannot be created"):
        check_output_dirs(afile / "out")
    with pytest.raises(SystemExit, match=r"^error: output folder .*afile/out: cannot be created"):
        check_output_dirs(afile / "out", exit_on_error=True)
    assert check_output_dirs(tmp_path / "new" / "out") == [str(tmp_path / "new" / "out")]
    assert os.listdir(tmp_path / "new" / "out") == []  # the write probe is gone
    if os.geteuid() != 0:  # root writes to read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(OutputDirError, match="not writable"):
            check_output_dirs(ro)
    import scripts.data.checks as checks

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checks.tempfile, "mkstemp", denied)  # e.g. a read-only mount, where root cannot write either
    with pytest.raises(OutputDirError, match=r"output folder .*/new/out: not writable \(Permission denied\)"):
        check_output_dirs(tmp_path / "new" / "out")
    monkeypatch.setattr(checks.os, "listdir", denied)
    with pytest.raises(OutputDirError, match=r"output folder .*/new/out: not readable \(Permission denied\)"):
        check_output_dirs(tmp_path / "new" / "out")


# ------------------------------------------------------------------------------------------- bundle runs
def bundle(*args, configs):
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        *args,
        "--meta_file",
        str(ROOT / "configs" / "metadata.json"),
        "--config_file",
        str([str(ROOT / "configs" / c) for c in configs]),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Untrained weights of the configs' network with the TINY channels (the runs below pass the same)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _report_lines(stdout: str) -> list[str]:
    """The indented lines right after the final report's 'N case(s) FAILED' line."""
    lines = stdout[stdout.rindex("FAILED") :].splitlines()[1:]
    out = []
    for line in lines:
        if not line.startswith("  "):
            break
        out.append(line.strip())
    return out


def test_batch_inference_skips_bad_cases_and_exits_non_zero(arrays, checkpoint, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    for i in (1, 2):
        write_case(data, f"BraTS20_Training_00{i}", arrays)
    bad = {}
    for i, (name, cases) in enumerate(
        [
            ("missing_modality", HEADER_CASES),
            ("truncated_gz", HEADER_CASES),
            ("shape_mismatch", HEADER_CASES),
            ("nan_inf_voxels", DATA_CASES),
            ("all_zero", DATA_CASES),
        ],
        start=3,
    ):
        breaker, key, problem = cases[name]
        case_id = f"BraTS20_Training_00{i}"
        paths = write_case(data, case_id, arrays)
        breaker(paths, arrays)
        bad[case_id] = (str(paths[key]), problem)

    proc = bundle(
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(out),
        "--ckpt_path",
        str(checkpoint),
        "--num_workers",
        "2",
        *TINY,
        configs=("inference.json",),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert sorted(os.listdir(out)) == ["BraTS20_Training_001.nii.gz", "BraTS20_Training_002.nii.gz"], log[-3000:]
    for name in os.listdir(out):
        pred = nib.load(out / name)
        assert pred.shape == SHAPE and np.allclose(pred.affine, AFFINE)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert "7 case(s) found, 2 segmented, 5 skipped (reasons below)" in log, log[-3000:]
    lines = _report_lines(proc.stdout)
    assert len(lines) == 5, lines
    for case_id, (file, problem) in bad.items():
        (line,) = [x for x in lines if x.startswith(f"{case_id}: ")]
        assert line.startswith(f"{case_id}: {file}: ") and re.search(problem, line), line


def test_evaluate_skips_bad_cases_and_exits_non_zero(arrays, checkpoint, tmp_path):
    data, out = tmp_path / "data", tmp_path / "eval"
    items = []
    for i in (1, 2, 3, 4):
        paths = write_case(data, f"BraTS20_Training_00{i}", arrays)
        items.append({"image": [str(paths[m]) for m in MODALITIES], "label": str(paths["seg"])})
    DATA_CASES["labels_outside_set"][0](write_case(data, "BraTS20_Training_003", arrays), arrays)
    items[3]["image"][2] = str(data / "nowhere_t2.nii.gz")
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items[:2], "validation": items}))

    proc = bundle(
        "evaluating",
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        str(tmp_path / "datalist.json"),
        "--output_dir",
        str(out),
        "--ckpt_path",
        str(checkpoint),
        "--num_workers",
        "0",
        *TINY,
        configs=("inference.json", "evaluate.json"),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert sorted(os.listdir(out / "predictions")) == [f"BraTS20_Training_00{i}.nii.gz" for i in (1, 2, 3)]
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["metrics"]["dice"]["mean"]["n"] == 2
    assert [(f["case_id"], Path(f["file"]).name) for f in summary["failed"]] == [
        ("BraTS20_Training_004", "nowhere_t2.nii.gz"),
        ("BraTS20_Training_003", "BraTS20_Training_003_seg.nii.gz"),
    ]
    lines = _report_lines(proc.stdout)
    assert len(lines) == 2 and re.search(r"BraTS20_Training_003: .*_seg\.nii\.gz: label values \[3\]", lines[1]), lines
    assert {p.name for p in out.iterdir()} == {
        "predictions",
        "metrics_per_case.csv",
        "metrics_summary.json",
        "metrics_summary.md",
        "metrics_boxplot.png",
    }


def test_unusable_output_folder_stops_before_any_case(tmp_path, checkpoint):
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = bundle(
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        str(EXAMPLE_CASE),  # a readable case: the data is checked first, then the output folder
        "--output_dir",
        str(afile / "out"),
        "--ckpt_path",
        str(checkpoint),
        *TINY,
        configs=("inference.json",),
    )
    assert proc.returncode != 0
    assert re.search(r"error: output folder .*afile/out: cannot be created", proc.stderr), proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["afile"]
