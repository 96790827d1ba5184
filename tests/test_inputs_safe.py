"""Nothing lost, nothing silently wrong (issue 13): inputs are never overwritten, case ids are unique, no
synthetic data unless asked for, non-integer labels are rejected.

Real NIfTI files written with tiny phantom cases, checked through the library functions and through real
``python -m monai.bundle`` runs (an untrained tiny network as checkpoint), in the style of
``tests/test_bad_input.py``.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.conventions import MODALITIES
from scripts.data.checks import OutputDirError, check_output_dirs
from scripts.data.layouts import DatasetError, find_brats2020_cases, find_inference_cases, prepare_datalist
from scripts.synthetic.phantom import write_dataset
from tests._bundle import ROOT
from tests._inputs import TINY, bundle, checksums, error_lines, save, write_4d, write_case


# ------------------------------------------------------------------------------- outputs never overwrite inputs
def test_output_folder_holding_colliding_inputs_is_refused(arrays, tmp_path):
    studies = tmp_path / "studies"
    for name in ("study_a", "study_b"):
        write_4d(studies / f"{name}.nii.gz", arrays)
    with pytest.raises(OutputDirError) as err:
        check_output_dirs(studies, inputs=find_inference_cases(studies))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"study_a: {studies / 'study_a.nii.gz'}: input file would be overwritten"), msg
    assert "1 more input file(s)" in msg, msg
    # the same folder through a symlink is the same folder
    (tmp_path / "link").symlink_to(studies)
    with pytest.raises(OutputDirError, match="input file would be overwritten"):
        check_output_dirs(tmp_path / "link", inputs=find_inference_cases(studies))


def test_output_folder_holding_inputs_that_cannot_collide_is_fine(arrays, tmp_path):
    write_case(tmp_path, "BraTS20_Training_001", arrays)
    items = find_brats2020_cases(tmp_path)
    folder = tmp_path / "BraTS20_Training_001"
    assert check_output_dirs(folder, tmp_path, inputs=items) == [str(folder), str(tmp_path)]


def test_inference_into_the_input_folder_of_4d_studies_is_refused(arrays, checkpoint, tmp_path):
    studies = tmp_path / "studies"
    for name in ("study_a", "study_b"):
        write_4d(studies / f"{name}.nii.gz", arrays)
    before = checksums(studies)
    proc = bundle("--bundle_root", str(tmp_path), "--dataset_dir", str(studies), "--output_dir", str(studies),
                  "--ckpt_path", str(checkpoint), "--num_workers", "0", *TINY)  # fmt: skip
    assert proc.returncode != 0, (proc.stdout + proc.stderr)[-3000:]
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: study_a: {studies / 'study_a.nii.gz'}: input file would be overwritten"), line
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert checksums(studies) == before  # nothing changed, nothing added


# ------------------------------------------------------------------------------------ case ids are unique
def write_generic_case(folder: Path, arrays: dict) -> list[str]:
    """A case folder with generic file names: t1.nii.gz, t1ce.nii.gz, t2.nii.gz, flair.nii.gz."""
    paths = [folder / f"{m}.nii.gz" for m in MODALITIES]
    for m, p in zip(MODALITIES, paths):
        save(p, arrays[m])
    return [str(p) for p in paths]


def test_generic_file_names_take_the_case_folder_as_id(arrays, checkpoint, tmp_path):
    entries = [{"image": write_generic_case(tmp_path / "cases" / c, arrays)} for c in ("caseA", "caseB")]
    (tmp_path / "datalist.json").write_text(json.dumps({"testing": entries}))
    assert [c["case_id"] for c in find_inference_cases(tmp_path / "datalist.json")] == ["caseA", "caseB"]
    out = tmp_path / "out"
    proc = bundle("--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "datalist.json"),
                  "--output_dir", str(out), "--ckpt_path", str(checkpoint), "--num_workers", "0", *TINY)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert sorted(os.listdir(out)) == ["caseA.nii.gz", "caseB.nii.gz"]
    assert "2 case(s) found, 2 segmented, 0 skipped" in proc.stdout


def test_same_case_id_in_two_folders_is_one_error_before_anything_runs(arrays, checkpoint, tmp_path):
    data = tmp_path / "data"
    first = write_case(data / "site1", "BraTS20_Training_001", arrays)
    second = write_case(data / "site2", "BraTS20_Training_001", arrays)
    write_case(data / "site2", "BraTS20_Training_002", arrays)
    with pytest.raises(DatasetError) as err:
        find_inference_cases(data, incomplete="keep")
    msg = str(err.value)
    assert msg.startswith(f"BraTS20_Training_001: {second['t1']}: duplicate case id"), msg
    assert str(first["t1"]) in msg and "\n" not in msg
    with pytest.raises(DatasetError, match=r"^BraTS20_Training_001: .*duplicate case id in the cases of"):
        prepare_datalist(data, num_folds=2)  # training and evaluation: the same rule

    out = tmp_path / "out"
    proc = bundle("--bundle_root", str(tmp_path), "--dataset_dir", str(data), "--output_dir", str(out),
                  "--ckpt_path", str(checkpoint), "--num_workers", "0", *TINY)  # fmt: skip
    assert proc.returncode != 0
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: BraTS20_Training_001: {second['t1']}: duplicate case id"), line
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()  # the data is checked first: nothing is created, not even the output folder


def test_datalist_entries_with_the_same_case_id_are_refused(arrays, tmp_path):
    a = write_case(tmp_path, "BraTS20_Training_001", arrays)
    b = write_case(tmp_path, "BraTS20_Training_002", arrays)
    entries = [{"case_id": "X", "image": [str(p[m]) for m in MODALITIES]} for p in (a, b)]
    (tmp_path / "datalist.json").write_text(json.dumps({"testing": entries}))
    with pytest.raises(DatasetError, match=r"^X: .*BraTS20_Training_002_t1\.nii\.gz: duplicate case id.*001_t1"):
        find_inference_cases(tmp_path / "datalist.json")
    (tmp_path / "twice.json").write_text(json.dumps({"testing": [entries[0], entries[0]]}))
    with pytest.raises(DatasetError, match=r"^X: .*: duplicate case id .*the same case listed twice"):
        find_inference_cases(tmp_path / "twice.json")


# ------------------------------------------------------------------------------ no synthetic data unless asked
def test_missing_or_empty_dataset_dir_is_an_error_not_synthetic_data(tmp_path):
    misspelt, empty = tmp_path / "dtaa", tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"dtaa: dataset folder does not exist \(check --dataset_dir\)$"):
        prepare_datalist(misspelt, num_folds=2)
    with pytest.raises(DatasetError, match=r"empty: dataset folder holds no NIfTI files or DICOM cases"):
        prepare_datalist(empty, num_folds=2)
    with pytest.raises(SystemExit, match=r"^error: .*dtaa: dataset folder does not exist"):
        prepare_datalist(misspelt, num_folds=2, exit_on_error=True)
    with pytest.raises(DatasetError, match=r"default: dataset folder does not exist"):  # discovery never writes
        prepare_datalist(tmp_path / "default", num_folds=2)
    assert sorted(os.listdir(tmp_path)) == ["empty"] and os.listdir(empty) == []  # nothing generated anywhere


def test_default_data_are_generated_only_into_the_missing_or_empty_default_folder(tmp_path, monkeypatch):
    """train.json's ``initialize`` step: the default folder, missing or empty, is filled; a user's folder, or a
    default folder that holds data, is never written."""
    import scripts.data.default_data as default_data

    made = []
    monkeypatch.setattr(default_data, "write_dataset", lambda d, num_cases, seed: made.append((d, num_cases, seed)))
    default, other, empty = tmp_path / "synthetic", tmp_path / "dtaa", tmp_path / "empty"
    empty.mkdir()
    assert not default_data.generate_default_data(other, default, 3, 0)  # a misspelt --dataset_dir
    assert not default_data.generate_default_data(empty, default, 3, 0)  # a user's empty folder
    assert default_data.generate_default_data(default, default, 3, 7)
    assert made == [(str(default), 3, 7)]
    write_dataset(default, num_cases=1, seed=0, shape=(24, 24, 24), progress=False)
    assert not default_data.generate_default_data(default, default, 3, 0)  # holds data: left alone
    assert made == [(str(default), 3, 7)] and sorted(os.listdir(tmp_path)) == ["empty", "synthetic"]


@pytest.mark.parametrize(
    "workflow, configs",
    [
        ("training", ("train.json",)),
        ("evaluating", ("inference.json", "evaluate.json")),
        ("run", ("inference.json",)),
    ],
)
def test_misspelt_dataset_dir_is_one_error_line_in_every_workflow(workflow, configs, checkpoint, tmp_path):
    misspelt = tmp_path / "dtaa"
    proc = bundle(workflow, "--bundle_root", str(tmp_path), "--dataset_dir", str(misspelt), "--output_dir",
                  str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "runs"), "--ckpt_path", str(checkpoint),
                  "--num_workers", "0", *TINY, configs=configs)  # fmt: skip
    assert proc.returncode != 0
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: {misspelt}:") and "does not exist" in line, line
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not misspelt.exists() and not (tmp_path / "data").exists()  # no synthetic data anywhere


# ------------------------------------------------------------------------------------ non-integer labels
def _fractional_seg(seg: np.ndarray) -> np.ndarray:
    """The reference with 3 voxels at 2.5 and 2 at 1.0000001 (what resampling with interpolation leaves)."""
    out = seg.astype(np.float64)
    out[0, 0, 0:3] = 2.5
    out[1, 1, 0:2] = 1.0000001
    return out


NON_INTEGER = r"non-integer label values \[1\.0000001\d*, 2\.5\] in 5 voxel\(s\)"


def test_non_integer_labels_are_rejected_in_the_preprocessing(arrays, tmp_path, preprocessing):
    from scripts.data.checks import FAILURE_KEY, CheckedDataset

    paths = write_case(tmp_path, "BraTS20_Training_042", arrays)
    save(paths["seg"], _fractional_seg(arrays["seg"]))
    ds = CheckedDataset(find_brats2020_cases(tmp_path), preprocessing)
    record = ds[0][FAILURE_KEY]
    assert (record["case_id"], record["file"]) == ("BraTS20_Training_042", str(paths["seg"])), record
    assert re.search(NON_INTEGER, record["problem"]) and "\n" not in record["problem"], record


def test_non_integer_reference_labels_are_rejected_in_evaluation(arrays, tmp_path, capsys):
    from scripts.evaluation import main

    preds, refs = tmp_path / "pred", tmp_path / "ref"
    for i in (1, 2):
        save(preds / f"BraTS20_Training_00{i}.nii.gz", arrays["seg"])
        paths = write_case(refs, f"BraTS20_Training_00{i}", arrays)
    save(paths["seg"], _fractional_seg(arrays["seg"]))  # case 002's reference
    assert (
        main(["--pred_dir", str(preds), "--ref_dir", str(refs), "--output_dir", str(tmp_path / "o"), "--no_plot"]) == 1
    )
    lines = [x.strip() for x in capsys.readouterr().out.splitlines() if x.strip().startswith("BraTS20_Training_002: ")]
    assert len(lines) == 1 and re.search(
        f"^BraTS20_Training_002: {re.escape(str(paths['seg']))}: {NON_INTEGER}", lines[0]
    ), lines


def test_label_to_regions_does_not_truncate():
    from monai.data import MetaTensor

    from scripts.transforms import label_to_regions

    label = MetaTensor(torch.tensor([[[[0.0, 1.0], [2.0, 2.5]]]]), meta={"filename_or_obj": "x_seg.nii.gz"})
    with pytest.raises(ValueError, match=r"^x_seg\.nii\.gz: non-integer label values \[2\.5\] in 1 voxel\(s\)"):
        label_to_regions(label)
    assert label_to_regions(torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])).sum() == 6  # integer floats are fine


# ------------------------------------------------------------------------ evaluation against the same files
def test_evaluating_the_references_against_themselves_warns_and_fails(arrays, tmp_path):
    labels = tmp_path / "labels"
    for i in (1, 2):
        save(labels / f"case_{i}.nii.gz", arrays["seg"])
    before = checksums(labels)
    cmd = [sys.executable, "-m", "scripts.evaluation", "--pred_dir", str(labels), "--ref_dir", str(labels)]
    cmd += ["--output_dir", str(tmp_path / "o"), "--no_plot"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    assert "warning: " in proc.stderr and "the prediction folder is the reference folder" in proc.stderr, proc.stderr
    lines = [x.strip() for x in proc.stdout.splitlines() if x.strip().startswith("case_")]
    assert lines == [
        f"case_{i}: {labels / f'case_{i}.nii.gz'}: the prediction and the reference are the same file (a perfect "
        "score would mean nothing; check --pred_dir and --ref_dir)"
        for i in (1, 2)
    ], proc.stdout
    summary = json.loads((tmp_path / "o" / "metrics_summary.json").read_text())
    assert summary["n_cases"] == 0 and len(summary["failed"]) == 2  # no Dice 1.000 reported
    assert "Traceback" not in proc.stderr and checksums(labels) == before
