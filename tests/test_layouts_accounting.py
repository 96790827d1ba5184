"""Every candidate accounted for, every datalist entry validated (issue 13).

Real NIfTI files: case files named in any case (``_T1``, ``.NII.GZ``), mixed ``.nii``/``.nii.gz`` cases,
symlinked case folders (and a link loop), stray files that belong to no case; datalist entries of the wrong
type and unreadable JSON. Checked through the library and through real ``python -m monai.bundle run``
inference (an untrained tiny network as checkpoint): the good cases are segmented and named by their case id,
every other candidate is listed once with its reason, and the summary adds up.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from scripts.conventions import MODALITIES, case_id_from_path, strip_nifti
from scripts.data.checks import failure, format_failure, report
from scripts.data.layouts import (
    DatasetError,
    detect_layout,
    find_inference_cases,
    load_datalist,
    prepare_datalist,
    valid_entries,
)
from tests._inputs import TINY, bundle, checksums, save, write_case


def write_named(folder: Path, case_id: str, arrays: dict, names: dict) -> dict:
    """A case whose files are named ``<case_id>_<names[key]>`` (``names``: modality or 'seg' -> suffix+ext)."""
    paths = {k: folder / f"{case_id}_{v}" for k, v in names.items()}
    for k, p in paths.items():
        save(p, arrays[k])
    return paths


UPPER = {m: f"{m.upper()}.NII.GZ" for m in (*MODALITIES, "seg")}
MIXED = {"t1": "t1.nii", "t1ce": "t1ce.nii.gz", "t2": "t2.nii", "flair": "flair.nii.gz", "seg": "seg.nii"}


def test_names_in_any_case():
    assert strip_nifti("A_T1.NII.GZ") == "A_T1" and strip_nifti("a.Nii") == "a" and strip_nifti("a.txt") is None
    assert case_id_from_path("/d/BraTS20_Training_001_T1CE.NII.GZ") == "BraTS20_Training_001"
    assert case_id_from_path("/d/BraTS-GLI-00000-000-T2F.nii.gz") == "BraTS-GLI-00000-000"


def make_folder(tmp_path: Path, arrays: dict) -> tuple[Path, dict]:
    """A dataset folder with 4 good cases written in unusual ways and 2 stray files; returns (folder, paths)."""
    data = tmp_path / "data"
    paths = {"plain": write_case(data, "BraTS20_Training_001", arrays)}
    paths["upper"] = write_named(data / "upper", "BraTS20_Training_002", arrays, UPPER)
    paths["mixed"] = write_named(data / "mixed", "BraTS20_Training_003", arrays, MIXED)
    paths["linked"] = write_case(tmp_path / "elsewhere", "BraTS20_Training_004", arrays)
    (data / "linked").symlink_to(tmp_path / "elsewhere" / "BraTS20_Training_004")
    (data / "BraTS20_Training_001" / "loop").symlink_to(data)  # a link loop ends
    paths["stray"] = data / "notes_T1w.nii.gz"
    paths["second_t1"] = data / "mixed" / "BraTS20_Training_003_t1.nii.gz"  # besides ..._t1.nii
    for p in (paths["stray"], paths["second_t1"]):
        save(p, arrays["t1"])
    return data, paths


def test_files_named_like_no_case_file_are_ignored_not_failed(arrays, tmp_path, caplog):
    """Other algorithms' segmentations beside a case (as in ../shared/data) are not cases: logged, not skipped."""
    data = tmp_path / "data"
    write_case(data, "BraTS20_Training_001", arrays)
    other = data / "BraTS20_Training_001" / "algorithms" / "isen-20.nii.gz"
    other.parent.mkdir()
    save(other, arrays["seg"])
    with caplog.at_level("WARNING"):
        cases = find_inference_cases(data)
    assert [c["case_id"] for c in cases] == ["BraTS20_Training_001"] and cases.skipped == []
    assert f"file ignored: {other}: named like no modality or label file of a case" in caplog.text


def test_every_file_is_a_case_file_or_reported(arrays, tmp_path):
    data, paths = make_folder(tmp_path, arrays)
    assert detect_layout(data / "upper") == "brats2020"  # upper-case names alone are recognised
    cases = find_inference_cases(data, incomplete="keep")
    ids = [f"BraTS20_Training_00{i}" for i in (1, 2, 3, 4)]
    assert [c["case_id"] for c in cases] == ids
    for case, key in zip(cases, ("plain", "upper", "mixed")):
        assert [Path(p).name for p in case["image"]] == [paths[key][m].name for m in MODALITIES]
    assert all(os.path.isfile(p) for c in cases for p in c["image"])  # no file name made up
    assert cases[3]["image"][0] == str(data / "linked" / "BraTS20_Training_004_t1.nii.gz")
    skipped = {r["file"]: r for r in cases.skipped}
    assert sorted(skipped) == sorted([str(paths["second_t1"]), str(paths["stray"])])
    assert re.match(
        r"not used: case BraTS20_Training_003 already takes another file", skipped[str(paths["second_t1"])]["problem"]
    )
    assert skipped[str(paths["stray"])]["problem"].startswith("not part of any brats2020 case (expected <id>_t1/")
    # training and evaluation see the same cases (the labelled ones) and the same skipped files
    datalist = prepare_datalist(data, num_folds=2)
    assert sorted(c["case_id"] for c in datalist["training"] + datalist["validation"]) == ids
    assert datalist["skipped"] == cases.skipped


def _report_lines(stdout: str) -> list[str]:
    lines = stdout[stdout.rindex("FAILED") :].splitlines()[1:]
    return [x.strip() for x in lines if x.startswith("  ")]


def test_inference_over_the_folder_accounts_for_every_candidate(arrays, checkpoint, tmp_path):
    data, paths = make_folder(tmp_path, arrays)
    before = checksums(tmp_path / "elsewhere") | checksums(data)
    out = tmp_path / "out"
    proc = bundle("--bundle_root", str(tmp_path), "--dataset_dir", str(data), "--output_dir", str(out),
                  "--ckpt_path", str(checkpoint), "--num_workers", "0", *TINY)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]  # two files were skipped
    assert sorted(os.listdir(out)) == [f"BraTS20_Training_00{i}.nii.gz" for i in (1, 2, 3, 4)], log[-3000:]
    assert "6 case(s) found, 4 segmented, 2 skipped (reasons below)" in proc.stdout, proc.stdout[-3000:]
    lines = _report_lines(proc.stdout)
    assert len(lines) == 2 and lines[0].startswith(f"BraTS20_Training_003: {paths['second_t1']}: not used"), lines
    assert lines[1].startswith(f"notes_T1w: {paths['stray']}: not part of any brats2020 case"), lines
    assert "Traceback" not in proc.stderr
    assert checksums(tmp_path / "elsewhere") | checksums(data) == before


# ------------------------------------------------------------------------------------ datalist validation
BAD_ENTRIES = [
    (42, r"expected an object with an 'image', got number 42"),
    (None, r"expected an object with an 'image', got null"),
    ("caseX_t1.nii.gz", r'expected an object with an \'image\', got string "caseX_t1.nii.gz"'),
    ({"image": 42}, r"'image': expected a file path or a list of file paths, got number 42"),
    ({"image": None}, r"'image': expected a file path or a list of file paths, got null"),
    ({"image": ["a.nii.gz", 7]}, r"'image': expected a file path or a list of file paths, got array"),
    ({"image": "a.nii.gz", "case_id": 7}, r"'case_id': a case id must be a non-empty string, got number 7"),
    ({"image": "a.nii.gz", "case_id": "../x"}, r"'case_id': a case id must not contain / or "),
    ({"image": "a.nii.gz", "case_id": "a\nb"}, r"'case_id': a case id must not contain control characters"),
]


def test_bad_datalist_entries_are_reported_one_line_each(tmp_path):
    entries = [{"image": "good.nii.gz"}] + [e for e, _ in BAD_ENTRIES] + [{"image": "b.nii.gz", "label": 3}]
    (tmp_path / "datalist.json").write_text(json.dumps({"testing": entries}))
    source = tmp_path / "datalist.json"
    datalist = load_datalist(source)
    good, skipped = valid_entries(datalist, "testing", source)
    assert good == [{"image": str(tmp_path / "good.nii.gz")}]
    assert len(skipped) == len(BAD_ENTRIES) + 1
    for i, (record, (_, problem)) in enumerate(zip(skipped, BAD_ENTRIES), start=1):
        assert record["case_id"] == f"testing[{i}]" and record["file"] == str(source), record
        assert re.match(problem, record["problem"]) and "\n" not in record["problem"], record
    assert skipped[-1]["problem"] == "'label': expected a file path, got number 3"
    # inference does not use the label: that entry is kept there
    assert [c["case_id"] for c in find_inference_cases(source)] == ["good", "b"]
    assert len(find_inference_cases(source).skipped) == len(BAD_ENTRIES)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"testing": [\n  {"image": "a.nii.gz"},\n  {"image": "b.nii.gz"\n]}', r"not valid JSON: Expecting ',' "
         r"delimiter at line 4 column 1$"),
        ('{"testing": {"image": "a.nii.gz"}}', r"'testing' must be a list of entries, got object"),
        ('[{"image": "a.nii.gz"}]', r"a datalist is a JSON object of lists \('training', 'testing'\), got array"),
        (b"\xff\xfe\x00", r"not a readable datalist JSON \(.*codec can't decode"),
    ],
)  # fmt: skip
def test_unusable_datalist_is_one_error_line(tmp_path, text, message):
    source = tmp_path / "datalist.json"
    source.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SystemExit) as err:
        find_inference_cases(source, exit_on_error=True)
    line = str(err.value.code)
    assert "\n" not in line and re.match(rf"^error: {re.escape(str(source))}: {message}", line), line
    with pytest.raises(DatasetError):
        find_inference_cases(source)


def test_inference_runs_the_good_entries_names_them_by_case_id_and_reports_the_bad(
    arrays,
    checkpoint,
    tmp_path,
):
    a = write_case(tmp_path / "data", "BraTS20_Training_001", arrays)
    b = write_case(tmp_path / "data", "BraTS20_Training_002", arrays)
    entries = [
        {"case_id": "patient_a", "image": [str(a[m]) for m in MODALITIES], "label": 42},  # label unused here
        {"image": 42},
        None,
        {"case_id": "patient_b", "image": [str(b[m]) for m in MODALITIES]},
    ]
    source = tmp_path / "datalist.json"
    source.write_text(json.dumps({"testing": entries}))
    out = tmp_path / "out"
    proc = bundle("--bundle_root", str(tmp_path), "--dataset_dir", str(source), "--output_dir", str(out),
                  "--ckpt_path", str(checkpoint), "--num_workers", "0", *TINY)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert sorted(os.listdir(out)) == ["patient_a.nii.gz", "patient_b.nii.gz"], log[-3000:]
    assert "4 case(s) found, 2 segmented, 2 skipped (reasons below)" in proc.stdout, proc.stdout[-3000:]
    assert _report_lines(proc.stdout) == [
        f"testing[1]: {source}: 'image': expected a file path or a list of file paths, got number 42",
        f"testing[2]: {source}: expected an object with an 'image', got null",
    ]
    assert "Traceback" not in proc.stderr
    pred = np.asarray(__import__("nibabel").load(out / "patient_a.nii.gz").dataobj)
    assert pred.shape == arrays["t1"].shape


def test_a_failure_is_one_line_even_with_a_line_break_in_a_file_name(capsys):
    record = failure("case\n1", "/data/case\n1/t1.nii.gz", "cannot read NIfTI header (Error: a\nb)")
    assert format_failure(record) == "case\\n1: /data/case\\n1/t1.nii.gz: cannot read NIfTI header (Error: a\\nb)"
    text = report([record], done=1, what="segmented")
    assert text.splitlines() == [
        "2 case(s) found, 1 segmented, 1 skipped (reasons below)",
        "1 case(s) FAILED (skipped):",
        "  " + format_failure(record),
    ]
