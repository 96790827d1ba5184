"""The hospital loop on loopback: a real Orthanc (Debian packages ``orthanc``, ``orthanc-dicomweb``) started by
``apps/pacs/orthanc.py``, studies pushed by ``apps/pacs/load.py`` as four DICOM series each, a real MONAI
Label server (its own environment, ``apps/server.py``) with ``--studies http://127.0.0.1:<port>/dicom-web``
serving a temporary copy of the bundle with the shipped weights.

Checked: the four series of a study become one input; the automatic segmentation is stored in Orthanc as a DICOM
SEG that decodes (highdicom, the bundle's reader) to the label map of the NIfTI path, on the series' geometry,
and nothing else is written to Orthanc; a correction saved against one series (as OHIF's panel saves it) is a
DICOM SEG in Orthanc and the study's training label, and the label of a one-epoch training over the DICOMweb
datastore; bad studies (three series, two FLAIR series, a series with a missing slice, an unknown id) and an
unreachable Orthanc are each one HTTP error with a one-line reason while the server keeps serving the good study.
The two shared real cases, pushed as studies, go through the clinician loop: one corrected study is learned and
the other, held out, is not segmented worse afterwards.
"""

import contextlib
import gzip
import json
import os
import shutil
import time
import urllib.error
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
import pydicom
import pytest
import torch

from apps.pacs import load, orthanc
from scripts.conventions import BRATS2020_LABELS, MODALITIES
from scripts.data.dicom import dicom_seg_to_label, is_dicom_file, nifti_to_dicom_series
from scripts.synthetic.phantom import write_case
from tests._bundle import ROOT, UPENN_CASE
from tests._monailabel import (
    REAL_CASE,
    free_port,
    label_regions,
    md5,
    multipart,
    region_dice,
    request,
    serving,
    short_finetune,
)

pytestmark = pytest.mark.slow

SHAPE = (96, 112, 80)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc on a free loopback port (stopped at the end)."""
    try:
        orthanc.find_orthanc()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            pytest.fail(f"{e} (.ci/run installs the Debian packages)")
        pytest.skip(str(e))
    server = orthanc.Orthanc(tmp_path_factory.mktemp("pacs"), free_port())
    server.start()
    yield server
    server.stop()


def _series_uid(folder):
    first = next(p for p in sorted(folder.iterdir()) if is_dicom_file(p))
    return pydicom.dcmread(str(first), stop_before_pixels=True)


def _write_study(case, folder):
    """The case as four DICOM series folders of a new study: ({modality: folder}, StudyInstanceUID)."""
    series = {m: Path(p) for m, p in load.case_to_series(case, folder).items()}
    return series, str(_series_uid(series["t1"]).StudyInstanceUID)


@pytest.fixture(scope="module")
def studies(pacs, tmp_path_factory):
    """One good study and three bad ones, pushed into Orthanc; the good one's push time."""
    root = tmp_path_factory.mktemp("cases")
    files = write_case(str(root / "nifti"), 1, seed=3, shape=SHAPE)
    case = {"case_id": "BraTS20_Training_001", "image": [files[m] for m in MODALITIES]}
    out = {"files": files}
    good, out["good"] = _write_study(case, root / "good")
    out["series"] = {m: str(_series_uid(d).SeriesInstanceUID) for m, d in good.items()}
    out["good_dirs"] = good
    start = time.monotonic()
    load.push_series_dirs(pacs.url, [good[m] for m in MODALITIES])
    out["push_s"] = time.monotonic() - start

    three, out["three"] = _write_study(case, root / "three")
    load.push_series_dirs(pacs.url, [three[m] for m in ("t1", "t1ce", "t2")])
    out["three_dirs"] = three

    two, out["two_flair"] = _write_study(case, root / "two_flair")
    frame = str(_series_uid(two["t1"]).FrameOfReferenceUID)
    second = root / "two_flair" / "flair_repeat"
    nifti_to_dicom_series(
        files["flair"], second, "FLAIR", 5, study_instance_uid=out["two_flair"], frame_of_reference_uid=frame
    )
    load.push_series_dirs(pacs.url, [*two.values(), second])

    gap, out["gap"] = _write_study(case, root / "gap")
    (gap["t2"] / "IM0040.dcm").unlink()  # one slice in the middle of the T2 series never arrives
    load.push_series_dirs(pacs.url, gap.values())
    return out


@contextlib.contextmanager
def _dicomweb_server(venv_dir, pacs, tmp_path_factory, name, weights=("model.pt",), short=True, conf=()):
    """MONAI Label on the PACS's DICOMweb (its cache in a temporary folder) serving a copy of the bundle with the
    shipped ``weights`` (a training writes its run folder and may replace the served weights there, never in the
    repository), the fine-tuning recipe shortened when ``short``; yields (url, info, cache folder, bundle)."""
    cache = tmp_path_factory.mktemp(f"dicomweb-cache-{name}")
    bundle = tmp_path_factory.mktemp(f"bundle-{name}")
    for part in ("configs", "scripts"):
        shutil.copytree(ROOT / part, bundle / part, ignore=shutil.ignore_patterns("__pycache__"))
    (bundle / "models").mkdir()
    for weight in weights:
        shutil.copyfile(ROOT / "models" / weight, bundle / "models" / weight)
    if short:
        short_finetune(bundle)
    os.environ["MONAI_LABEL_DICOMWEB_CACHE_PATH"] = str(cache)
    settings = [("bundle_path", str(bundle)), ("models", "resunet_brats"), ("preload", "false"), *conf]
    try:
        with serving(venv_dir, f"{pacs.url}/dicom-web", settings, cache / "server.log") as (url, info):
            yield url, info, cache, bundle
    finally:
        os.environ.pop("MONAI_LABEL_DICOMWEB_CACHE_PATH", None)


@pytest.fixture(scope="module")
def server(venv_dir, pacs, studies, tmp_path_factory):  # noqa: F811
    """MONAI Label on DICOMweb serving a copy of the bundle with the shipped weights."""
    with _dicomweb_server(venv_dir, pacs, tmp_path_factory, "good") as (url, info, cache, bundle):
        yield {"url": url, "info": info, "log": cache / "server.log", "tmp": cache, "bundle": bundle}


def _orthanc_series(pacs):
    """{SeriesInstanceUID: Modality} of everything Orthanc holds."""
    out = {}
    for sid in orthanc.get_json(f"{pacs.url}/series"):
        tags = orthanc.get_json(f"{pacs.url}/series/{sid}")["MainDicomTags"]
        out[tags["SeriesInstanceUID"]] = tags.get("Modality")
    return out


def _fetch_series_file(pacs, series_uid, path):
    """The (single) instance of a series, from Orthanc's REST API, written to ``path``."""
    found = json.loads(orthanc.request("POST", f"{pacs.url}/tools/lookup", series_uid.encode()))
    sid = next(f["ID"] for f in found if f["Type"] == "Series")
    (instance,) = orthanc.get_json(f"{pacs.url}/series/{sid}/instances")
    path.write_bytes(orthanc.request("GET", f"{pacs.url}/instances/{instance['ID']}/file"))
    return pydicom.dcmread(str(path))


def _infer_json(server, image):
    body, headers = multipart({"params": "{}"}, {})
    return json.loads(request("POST", f"{server['url']}/infer/resunet_brats?image={image}&output=json", body, headers))


def _infer_nifti_path(server, studies, path):
    """The NIfTI path: the case's four NIfTI files stacked into one 4D study, uploaded to the same server."""
    vols = [nib.load(studies["files"][m]) for m in MODALITIES]
    nib.save(nib.Nifti1Image(np.stack([np.asarray(v.dataobj) for v in vols], -1), vols[0].affine), path)
    body, headers = multipart({"params": "{}"}, {"file": (path.name, path.read_bytes())})
    pred_path = path.with_name("pred_" + path.name)
    pred_path.write_bytes(request("POST", f"{server['url']}/infer/resunet_brats?output=image", body, headers))
    return nib.load(pred_path)


def _http_error(method, url, body=None, headers=None):
    with pytest.raises(urllib.error.HTTPError) as e:
        request(method, url, body, headers or {}, timeout=300)
    return e.value.code, json.loads(e.value.read())["detail"]


def test_pacs_holds_the_case_as_four_series_of_one_study(pacs, studies):
    series = orthanc.get_json(f"{pacs.url}/dicom-web/studies/{studies['good']}/series")
    descriptions = sorted(s["0008103E"]["Value"][0] for s in series)
    assert descriptions == ["FLAIR", "T1", "T1CE", "T2"]
    assert {s["00080060"]["Value"][0] for s in series} == {"MR"}


def test_automatic_segmentation_is_a_dicom_seg_in_orthanc_equal_to_the_nifti_path(pacs, studies, server, tmp_path):
    before = _orthanc_series(pacs)
    start = time.monotonic()
    result = _infer_json(server, studies["good"])
    elapsed = studies["push_s"] + time.monotonic() - start
    print(f"push to DICOM SEG in Orthanc: {elapsed:.1f} s (push {studies['push_s']:.1f} s), shape {SHAPE}")
    after = _orthanc_series(pacs)
    new = {uid: mod for uid, mod in after.items() if uid not in before}
    assert new == {result["dicom_seg"]: "SEG"}  # nothing but the SEG was written to Orthanc

    seg = _fetch_series_file(pacs, result["dicom_seg"], tmp_path / "seg.dcm")
    assert seg.StudyInstanceUID == studies["good"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == studies["series"]["t1ce"]
    t1ce = studies["good_dirs"]["t1ce"]
    assert seg.FrameOfReferenceUID == _series_uid(t1ce).FrameOfReferenceUID
    label, affine = dicom_seg_to_label(tmp_path / "seg.dcm", t1ce)

    pred = _infer_nifti_path(server, studies, tmp_path / "study.nii.gz")
    assert label.shape == SHAPE == pred.shape
    np.testing.assert_allclose(affine, pred.affine, atol=1e-4)  # the series' geometry is the NIfTI's
    np.testing.assert_array_equal(label, np.asarray(pred.dataobj))
    assert set(np.unique(label).tolist()) - {0} and set(np.unique(label).tolist()) <= {0, *BRATS2020_LABELS}


def test_correction_saved_against_a_series_is_a_seg_and_the_training_label(pacs, studies, server, tmp_path):
    """As OHIF's MONAI Label panel does: the image id is the series on display (here FLAIR)."""
    pred = _infer_nifti_path(server, studies, tmp_path / "study.nii.gz")
    corrected = np.asarray(pred.dataobj).copy()
    corrected[40:50, 40:50, 30:40] = 2  # the clinician paints oedema
    path = tmp_path / "corrected.nii.gz"
    nib.save(nib.Nifti1Image(corrected.astype(np.uint8), pred.affine), path)
    before = _orthanc_series(pacs)
    body, headers = multipart({"params": "{}"}, {"label": (path.name, path.read_bytes())})
    flair = studies["series"]["flair"]
    request("PUT", f"{server['url']}/datastore/label?image={flair}&tag=final", body, headers)

    (seg_uid,) = [uid for uid in _orthanc_series(pacs) if uid not in before]
    seg = _fetch_series_file(pacs, seg_uid, tmp_path / "final.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == flair
    label, _ = dicom_seg_to_label(tmp_path / "final.dcm", studies["good_dirs"]["flair"])
    np.testing.assert_array_equal(label, corrected)

    datastore = json.loads(request("GET", f"{server['url']}/datastore/?output=all"))
    entry = datastore["objects"][studies["good"]]
    assert entry["labels"]["final"]["info"]["SeriesInstanceUID"] == seg_uid
    files = list(server["tmp"].rglob(f"labels/final/{studies['good']}.nii.gz"))
    assert len(files) == 1, files
    np.testing.assert_array_equal(np.asarray(nib.load(files[0]).dataobj), corrected)


def _healthy_block(brain, tumour, size=6):
    """Index of a ``size``-voxel cube inside the brain holding no predicted tumour."""
    for corner in np.argwhere(brain[:-size, :-size, :-size])[::97]:
        block = tuple(slice(c, c + size) for c in corner)
        if brain[block].all() and not tumour[block].any():
            return block
    pytest.fail("no tumour-free cube inside the brain")


def test_saved_correction_is_the_label_of_a_one_epoch_training(pacs, studies, server, tmp_path):
    """The automatic segmentation of the PACS study, corrected (oedema painted in a tumour-free cube of the brain)
    and saved as OHIF saves it (``PUT /datastore/label`` against the FLAIR series), is the label of a one-epoch
    fine-tuning over the DICOMweb datastore: the study is trained and validated on (val_split 0); the served weights are scored
    against the corrected label (the painted oedema lowers WT by exactly its voxels, the other regions of the
    prediction score 1); the run folder holds the new weights and the result; ``GET /train/`` shows the run."""
    study = studies["good"]
    body, headers = multipart({"params": "{}"}, {})
    pred_path = tmp_path / "pred.nii.gz"
    pred_path.write_bytes(
        request("POST", f"{server['url']}/infer/resunet_brats?image={study}&output=image", body, headers)
    )
    pred = nib.load(pred_path)
    corrected = np.asarray(pred.dataobj).astype(np.uint8)
    assert corrected.any(), "the shipped weights find no tumour in the study: nothing to correct"
    image = request("GET", f"{server['url']}/datastore/image?image={study}")  # the combined study, pred's grid
    brain = (np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(image)).dataobj) != 0).any(axis=-1)
    block = _healthy_block(brain, corrected > 0)
    corrected[block] = 2
    path = tmp_path / "corrected.nii.gz"
    nib.save(nib.Nifti1Image(corrected, pred.affine), path)
    body, headers = multipart({"params": "{}"}, {"label": (path.name, path.read_bytes())})
    request("PUT", f"{server['url']}/datastore/label?image={studies['series']['flair']}&tag=final", body, headers)

    # one study: it cannot be held out, so the request asks to validate on it (val_split 0: a fit, not a test)
    params = json.dumps({"max_epochs": 1, "device": "cpu", "multi_gpu": False, "val_split": 0}).encode()
    url = f"{server['url']}/train/resunet_brats?run_sync=true"
    result = json.loads(request("POST", url, params, {"Content-Type": "application/json"}, timeout=1800))
    validation = result["validation"]
    assert validation["training_cases"] == [study] == validation["validation_cases"], result
    assert result["epochs"] == 1
    served, key = result["served_before"], result["metric"]
    prediction_wt, painted = int((np.asarray(pred.dataobj) > 0).sum()), corrected[block].size
    assert served["val_dice_wt"] == pytest.approx(2 * prediction_wt / (2 * prediction_wt + painted), abs=1e-3), result
    for region in label_regions(np.asarray(pred.dataobj)) - {"wt"}:
        assert served[f"val_dice_{region}"] >= 0.99, (region, result)
    assert result["decision"] == ("replaced" if result["new"][key] >= served[key] else "kept"), result
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == server["bundle"] / "models" / "monailabel_runs"
    assert (run_dir / "model.pt").is_file()
    assert json.loads((run_dir / "result.json").read_text()) == result
    status = json.loads(request("GET", f"{server['url']}/train/"))
    assert status["status"] == "DONE" and status["result"] == result, status


@pytest.mark.parametrize(
    "study, status, reason",
    [
        ("three", 422, "no FLAIR series"),
        ("two_flair", 422, "2 FLAIR series"),
        ("gap", 422, "slice(s) missing"),
        ("1.2.3.4.5", 404, "no such study or series"),
    ],
)
def test_bad_study_is_one_clear_error_and_the_good_study_is_still_served(pacs, studies, server, study, status, reason):
    image = studies.get(study, study)
    before = _orthanc_series(pacs)
    body, headers = multipart({"params": "{}"}, {})
    code, detail = _http_error("POST", f"{server['url']}/infer/resunet_brats?image={image}&output=json", body, headers)
    assert code == status and reason in detail and "\n" not in detail, detail
    assert _orthanc_series(pacs) == before
    good = request("GET", f"{server['url']}/datastore/image?image={studies['good']}")
    assert nib.Nifti1Image.from_bytes(gzip.decompress(good)).shape == (*SHAPE, 4)


def test_unreachable_orthanc_is_one_clear_error_and_the_server_recovers(pacs, studies, server):
    pacs.stop()
    try:
        body, headers = multipart({"params": "{}"}, {})
        url = f"{server['url']}/infer/resunet_brats?image={studies['good']}&output=json"
        code, detail = _http_error("POST", url, body, headers)
        assert code == 503 and f"the PACS at {pacs.url}/dicom-web is not reachable" in detail, detail
        assert json.loads(request("GET", f"{server['url']}/info/"))["models"]["resunet_brats"]
    finally:
        pacs.start()
    assert _infer_json(server, studies["good"])["dicom_seg"]


@pytest.fixture(scope="module")
def server_missing(venv_dir, pacs, studies, tmp_path_factory):  # noqa: F811
    """A second MONAI Label server on the same PACS, started with ``--conf allow_missing_modalities true``, serving
    a copy of the bundle with the shipped weights and imputer."""
    weights, conf = ("model.pt", "imputer.pt"), [("allow_missing_modalities", "true")]
    started = _dicomweb_server(venv_dir, pacs, tmp_path_factory, "missing", weights=weights, short=False, conf=conf)
    with started as (url, info, cache, _):
        yield {"url": url, "info": info, "log": cache / "server.log"}


def test_a_study_without_flair_is_segmented_when_allowed(pacs, studies, server_missing, tmp_path):
    """With ``allow_missing_modalities`` the three-series study (no FLAIR) is one input whose FLAIR channel is
    zero (imputed by the bundle's inference): the result names the missing sequence, the automatic segmentation
    is a DICOM SEG in Orthanc on the T1ce series' grid, and the four-series study names none."""
    before = _orthanc_series(pacs)
    result = _infer_json(server_missing, studies["three"])
    assert result["missing_sequences"] == ["flair"], result
    new = {uid: mod for uid, mod in _orthanc_series(pacs).items() if uid not in before}
    assert new == {result["dicom_seg"]: "SEG"}
    seg = _fetch_series_file(pacs, result["dicom_seg"], tmp_path / "seg.dcm")
    t1ce = studies["three_dirs"]["t1ce"]
    assert seg.StudyInstanceUID == studies["three"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == _series_uid(t1ce).SeriesInstanceUID
    label, _ = dicom_seg_to_label(tmp_path / "seg.dcm", t1ce)
    assert label.shape == SHAPE and set(np.unique(label).tolist()) <= {0, *BRATS2020_LABELS}
    image = request("GET", f"{server_missing['url']}/datastore/image?image={studies['three']}")
    data = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(image)).dataobj)
    assert data.shape == (*SHAPE, 4) and not data[..., 3].any() and data[..., 1].any()
    assert _infer_json(server_missing, studies["good"])["missing_sequences"] == []


@pytest.fixture(scope="module")
def real_studies(venv_dir, pacs, tmp_path_factory):  # noqa: F811
    """The two shared real cases pushed into Orthanc as studies of four DICOM series each, and a MONAI Label server
    on the PACS serving a copy of the bundle with the shipped weights and the short recipe. Yields the server and,
    per case, its StudyInstanceUID, the FLAIR series and the reference label."""
    if not UPENN_CASE.is_dir():
        pytest.skip(f"{UPENN_CASE} is not here (the second shared real case lives outside the repository)")
    root = tmp_path_factory.mktemp("real_studies")
    cases = {}
    for folder in (ROOT / "examples" / REAL_CASE, UPENN_CASE):
        name = folder.name
        item = {"case_id": name, "image": [str(folder / f"{name}_{m}.nii.gz") for m in MODALITIES]}
        series, study = _write_study(item, root / name)
        load.push_series_dirs(pacs.url, [series[m] for m in MODALITIES])
        flair = str(_series_uid(series["flair"]).SeriesInstanceUID)
        cases[name] = {"study": study, "flair": flair, "reference": nib.load(folder / f"{name}_seg.nii.gz")}
    with _dicomweb_server(venv_dir, pacs, tmp_path_factory, "real") as (url, _, _, bundle):
        yield {"url": url, "bundle": bundle, "tmp": root, "cases": cases}


def _on_study_grid(srv, study, label):
    """``label`` (a NIfTI label map of the case) resampled, nearest neighbour, onto the grid the server gives the
    DICOM study: the grid its predictions and saved labels have."""
    image = request("GET", f"{srv['url']}/datastore/image?image={study}")
    grid = nib.Nifti1Image.from_bytes(gzip.decompress(image))
    return nibabel.processing.resample_from_to(label, (grid.shape[:3], grid.affine), order=0)


def _predict(srv, study, path):
    body, headers = multipart({"params": "{}"}, {})
    path.write_bytes(request("POST", f"{srv['url']}/infer/resunet_brats?image={study}&output=image", body, headers))
    return nib.load(path)


def test_a_corrected_pacs_study_is_learned_and_the_held_out_study_is_not_made_worse(pacs, real_studies, tmp_path):
    """Both shared real cases are PACS studies whose references are saved as OHIF saves a correction (``PUT
    /datastore/label`` against the FLAIR series: a DICOM SEG in Orthanc). The retraining trains on the first study
    in id order and holds out the other (B), which neither the served nor the new weights were trained on; the gate
    keeps or replaces the served weights by B's scores, and B's segmentation served afterwards is not worse."""
    srv = real_studies
    ordered = sorted(srv["cases"].values(), key=lambda c: c["study"])
    a, b = ordered
    references = {c["study"]: _on_study_grid(srv, c["study"], c["reference"]) for c in ordered}
    before = region_dice(_predict(srv, b["study"], tmp_path / "b_before.nii.gz"), references[b["study"]])
    for case in ordered:
        label = references[case["study"]]
        path = tmp_path / f"label_{case['study']}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj).astype(np.uint8), label.affine), path)
        body, headers = multipart({"params": "{}"}, {"label": (path.name, path.read_bytes())})
        request("PUT", f"{srv['url']}/datastore/label?image={case['flair']}&tag=final", body, headers)
    weights = srv["bundle"] / "models" / "model.pt"
    served_md5 = md5(weights)
    params = json.dumps({"device": "cpu", "multi_gpu": False, "max_epochs": 1}).encode()
    url = f"{srv['url']}/train/resunet_brats?run_sync=true"
    result = json.loads(request("POST", url, params, {"Content-Type": "application/json"}, timeout=1800))

    validation, key = result["validation"], result["metric"]
    assert validation["training_cases"] == [a["study"]] and validation["validation_cases"] == [b["study"]], result
    candidate = Path(result["run_dir"]) / "model.pt"
    state, start = (
        torch.load(p, map_location="cpu", weights_only=True) for p in (candidate, ROOT / "models" / "model.pt")
    )
    assert state.keys() == start.keys() and any(not torch.equal(state[k], start[k]) for k in state)  # fine-tuned
    after = region_dice(_predict(srv, b["study"], tmp_path / "b_after.nii.gz"), references[b["study"]])
    if result["decision"] == "replaced":
        assert result["new"][key] >= result["served_before"][key] and md5(weights) == md5(candidate), result
    else:
        assert result["new"][key] < result["served_before"][key] and md5(weights) == served_md5, result
        assert after == before
    print(f"B Dice before {before}, after {after}; decision {result['decision']}: {result['reason']}")
    assert np.mean(list(after.values())) >= np.mean(list(before.values())), (before, after, result)
