"""Nothing lost, nothing let in, round 3 (issue 27): no workflow overwrites an input, temporary names stay within
the file-name limit and only the bundle's own are ever cleaned up, a case whose prediction cannot be written
never stops the batch, the output folder is never read as input, and the MONAI Label app's upload checks.

Real NIfTI files with tiny phantom cases, real ``python -m monai.bundle run`` and ``python -m
scripts.data.import_studies`` subprocesses (an untrained tiny network as checkpoint), as in
``tests/test_inputs_safe.py``; the upload checks in-process (the real server: ``tests/test_monailabel_server.py``).
"""

import asyncio
import json
import logging
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from scripts.data.checks import OutputDirError, check_output_dirs
from scripts.data.layouts import DatasetError, find_brats2020_cases, find_inference_cases
from scripts.io import NAME_MAX, is_temporary_name, remove_stale_temporaries, temporary_name, write_nifti
from tests._bundle import ROOT
from tests._inputs import TINY, bundle, checksums, dead_pid, error_lines, write_4d, write_case

LONG_ID = "s" * 240  # a legal case id: <id>.nii.gz is 247 bytes


# ------------------------------------------------------------------------------------ temporary names (4, 6)
def test_temporary_names_stay_within_the_limit_and_a_long_id_is_written(tmp_path):
    name = f"{LONG_ID}.nii.gz"
    tmp = temporary_name(name, pid=4194304)  # the largest Linux pid
    assert len(tmp.encode()) <= NAME_MAX and tmp.endswith(".4194304.tmp-resunet.nii.gz") and is_temporary_name(tmp)
    assert temporary_name(name) != temporary_name(f"{LONG_ID[:-1]}t.nii.gz")  # cut names stay distinct
    path = write_nifti(np.ones((4, 4, 4)), tmp_path / name, np.uint8)
    assert os.listdir(tmp_path) == [name] and nib.load(path).shape == (4, 4, 4)


def test_stale_cleanup_removes_only_the_bundles_own_temporaries(tmp_path):
    dead = dead_pid()
    ours = tmp_path / temporary_name("case_1.nii.gz", pid=dead)
    users = [f".thesis.{dead}.tmp", ".thesis.20240101.tmp", f".case_2.nii.gz.{dead}.tmp.nii.gz", f".notes.{dead}.tmp-x"]
    for name in [ours.name, *users]:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temporaries(str(tmp_path), ".*.*.tmp*") == [str(ours)]
    check_output_dirs(tmp_path)  # every workflow's start-up cleanup
    assert sorted(os.listdir(tmp_path)) == sorted(users)


# ------------------------------------------------------------------ one bad case never stops the batch (4, 5, 11)
def test_a_folder_at_a_prediction_path_skips_that_case_and_a_rerun_never_reads_its_outputs(
    arrays, checkpoint, tmp_path
):
    data = tmp_path / "studies"
    for name in ("a1", "b2", LONG_ID):
        write_4d(data / f"{name}.nii.gz", arrays)
    out = data / "out"  # the output folder inside the folder of 4D studies
    (out / "a1.nii.gz").mkdir(parents=True)
    before = checksums(data)
    args = ("--bundle_root", str(tmp_path), "--dataset_dir", str(data), "--output_dir", str(out))
    proc = bundle(*args, "--ckpt_path", str(checkpoint), *TINY)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "3 case(s) found, 2 segmented, 1 skipped" in proc.stdout, proc.stdout[-2000:]
    assert f"a1: {out / 'a1.nii.gz'}: cannot write the prediction (IsADirectoryError" in proc.stdout
    assert sorted(os.listdir(out)) == sorted(["a1.nii.gz", "b2.nii.gz", f"{LONG_ID}.nii.gz"])  # no temporary left
    assert nib.load(out / f"{LONG_ID}.nii.gz").shape == arrays["t1"].shape

    (out / "a1.nii.gz").rmdir()
    proc = bundle(*args, "--ckpt_path", str(checkpoint), *TINY)  # the rerun: out/ holds predictions now
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "3 case(s) found, 3 segmented, 0 skipped" in proc.stdout, proc.stdout[-2000:]
    assert {k: v for k, v in checksums(data).items() if not k.startswith("out")} == before


def test_discovery_leaves_out_the_output_folder_and_lists_a_hidden_case_as_ignored(arrays, tmp_path, caplog):
    write_case(tmp_path, "BraTS20_Training_001", arrays)
    write_case(tmp_path / ".case", "BraTS20_Training_002", arrays)  # complete, but hidden
    write_case(tmp_path / "out", "BraTS20_Training_003", arrays)  # e.g. a report folder of an earlier run
    with caplog.at_level(logging.WARNING):
        cases = find_inference_cases(tmp_path, exclude=[tmp_path / "out"])
    assert [c["case_id"] for c in cases] == ["BraTS20_Training_001"] and cases.skipped == []
    ignored = [r.getMessage() for r in caplog.records if r.getMessage().startswith("folder ignored")]
    assert ignored == [f"folder ignored: {tmp_path / '.case'}: a hidden folder; its 5 NIfTI file(s) are not searched "
                       "for cases"]  # fmt: skip
    assert len(find_inference_cases(tmp_path, exclude=[tmp_path])) == 2  # the dataset folder itself is never left out


def test_one_file_in_two_cases_is_named_so(arrays, tmp_path):
    files = write_case(tmp_path, "BraTS20_Training_001", arrays)
    image = [str(files[m]) for m in ("t1", "t1ce", "t2", "flair")]
    (tmp_path / "datalist.json").write_text(
        json.dumps({"testing": [{"case_id": "A", "image": image}, {"case_id": "B", "image": image}]})
    )
    with pytest.raises(DatasetError) as err:
        find_inference_cases(tmp_path / "datalist.json")
    assert "the same file in two cases (A and B)" in str(err.value) and "listed twice" not in str(err.value)


# ------------------------------------------------------------------------------- no output overwrites an input (2)
def test_report_into_the_dataset_folder_is_refused_before_anything_is_written(arrays, checkpoint, tmp_path):
    data = tmp_path / "data"
    files = write_case(data, "BraTS20_Training_001", arrays)
    before = checksums(data)
    args = ("report", "--bundle_root", str(tmp_path), "--dataset_dir", str(data), "--output_dir", str(data))
    proc = bundle(*args, "--ckpt_path", str(checkpoint), *TINY, configs=("inference.json", "report.json"))
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: BraTS20_Training_001: {files['seg']}: input file would be overwritten"), line
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert checksums(data) == before


def test_importing_a_datastore_into_itself_is_refused(arrays, tmp_path):
    for name in ("study_a", "study_b"):
        write_4d(tmp_path / f"{name}.nii.gz", arrays)
    before = checksums(tmp_path)
    cmd = [sys.executable, "-m", "scripts.data.import_studies", str(tmp_path), "--output_dir", str(tmp_path)]
    proc = subprocess.run([*cmd, "--overwrite", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: study_a: {tmp_path / 'study_a.nii.gz'}: input file would be overwritten"), line
    assert checksums(tmp_path) == before


def test_no_workflow_write_replaces_an_input_it_was_not_told_about(arrays, tmp_path):
    files = write_case(tmp_path, "BraTS20_Training_001", arrays)
    items = find_brats2020_cases(tmp_path)
    planned = [("report", tmp_path / "elsewhere.nii.gz")]
    check_output_dirs(tmp_path / "out", inputs=items, outputs=planned)  # no planned output is an input
    before = checksums(tmp_path)
    with pytest.raises(FileExistsError, match="an input file of this run; it is never overwritten"):
        write_nifti(np.zeros((2, 2, 2)), files["seg"], np.uint8)  # an output the plan missed
    assert checksums(tmp_path) == before
    with pytest.raises(
        OutputDirError, match=r"^BraTS20_Training_001: .*_seg\.nii\.gz: input file would be overwritten"
    ):
        check_output_dirs(tmp_path, inputs=items, outputs=[("BraTS20_Training_001", files["seg"])])


# ------------------------------------------------------------------------------------ MONAI Label uploads (3)
@pytest.fixture()
def uploads():
    from apps.resunet_brats.lib import uploads

    return uploads


@pytest.mark.parametrize("tag", ["../../../../x/y", "..", ".hidden", "a/b", "a\\b", "", "x" * 129])
def test_a_tag_or_id_that_is_not_a_plain_name_is_http_400(uploads, tag):
    assert uploads.name_problem("tag", tag) is not None
    status, body = _asgi(uploads, "PUT", "/datastore/label", f"image=BraTS20_Training_001&tag={tag}")
    assert status == 400 and "not a datastore name" in body["detail"], body
    status, body = _asgi(uploads, "DELETE", "/datastore/image", f"id={tag}")
    assert status == 400, body


def test_plain_names_go_on_to_the_stock_endpoints(uploads):
    for query in ("image=BraTS20_Training_001&tag=final", "image=1.2.840.113619.2.55&tag=original", "id=TCGA-DU-7294"):
        assert _asgi(uploads, "PUT", "/datastore/label", query) == (200, {"stock": True})
    assert _asgi(uploads, "GET", "/infer/x", "image=../x") == (200, {"stock": True})  # only /datastore is checked


def _asgi(uploads, method, path, query):
    """(status, JSON body) of a request to a starlette app whose routes are the app's name check, then a stand-in
    for the stock endpoints."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route, Router

    async def stock(request):
        return JSONResponse({"stock": True})

    app = Router([uploads.RefuseBadNames("/datastore"), Route("/{rest:path}", stock, methods=[method])])
    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(), "headers": []}
    scope |= {"root_path": "", "scheme": "http", "server": ("127.0.0.1", 80), "http_version": "1.1"}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_a_label_that_is_not_a_nifti_label_map_of_the_study_is_refused_naming_the_problem(uploads, tmp_path):
    text = tmp_path / "label.txt"
    text.write_text("not a label")
    assert "label file 'label.txt': unsupported type" in uploads.label_file_problem(str(text), "label.txt")
    fake = tmp_path / "fake.nii.gz"
    fake.write_text("not a label")
    assert "not a readable NIfTI file" in uploads.label_file_problem(str(fake), "fake.nii.gz")
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), np.eye(4)), good)
    assert uploads.label_file_problem(str(good), "good.nii.gz", (4, 5, 6, 4)) is None
    assert "does not match the study's (4, 5, 7)" in uploads.label_file_problem(str(good), "good.nii.gz", (4, 5, 7, 4))
    frac = tmp_path / "frac.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 5, 6), 0.5, np.float32), np.eye(4)), frac)
    assert "non-integer values" in uploads.label_file_problem(str(frac), "frac.nii.gz")
