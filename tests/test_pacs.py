"""The hospital loop on loopback: a real Orthanc (Debian packages ``orthanc``, ``orthanc-dicomweb``) started by
``scripts/pacs/orthanc.py``, studies pushed by ``scripts/pacs/load.py`` as four DICOM series each, a real MONAI
Label server (its own environment, ``apps/server.py``) with ``--studies http://127.0.0.1:<port>/dicom-web``
serving the shipped weights (read only).

Checked: the four series of a study become one input; the automatic segmentation is stored in Orthanc as a DICOM
SEG that decodes (highdicom, the bundle's reader) to the label map of the NIfTI path, on the series' geometry,
and nothing else is written to Orthanc; a correction saved against one series (as OHIF's panel saves it) is a
DICOM SEG in Orthanc and the study's training label; bad studies (three series, two FLAIR series, a series with
a missing slice, an unknown id) and an unreachable Orthanc are each one HTTP error with a one-line reason while
the server keeps serving the good study.
"""

import gzip
import json
import os
import time
import urllib.error
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from scripts.conventions import BRATS2020_LABELS, MODALITIES
from scripts.data.dicom import dicom_seg_to_label, is_dicom_file, nifti_to_dicom_series
from scripts.pacs import load, orthanc
from scripts.synthetic.phantom import write_case
from tests._bundle import ROOT
from tests.test_monailabel_server import _free_port, _multipart, _request, _serving, venv_dir  # noqa: F401

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
    server = orthanc.Orthanc(tmp_path_factory.mktemp("pacs"), _free_port())
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


@pytest.fixture(scope="module")
def server(venv_dir, pacs, studies, tmp_path_factory):  # noqa: F811
    """MONAI Label on DICOMweb (its cache in a temporary folder), the shipped weights, no trainers."""
    cache = tmp_path_factory.mktemp("dicomweb-cache")
    os.environ["MONAI_LABEL_DICOMWEB_CACHE_PATH"] = str(cache)
    conf = [("bundle_path", str(ROOT)), ("models", "resunet_brats"), ("preload", "false"), ("skip_trainers", "true")]
    try:
        with _serving(venv_dir, f"{pacs.url}/dicom-web", conf, cache / "server.log") as (url, info):
            yield {"url": url, "info": info, "log": cache / "server.log", "tmp": cache}
    finally:
        os.environ.pop("MONAI_LABEL_DICOMWEB_CACHE_PATH", None)


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
    body, headers = _multipart({"params": "{}"}, {})
    return json.loads(_request("POST", f"{server['url']}/infer/resunet_brats?image={image}&output=json", body, headers))


def _infer_nifti_path(server, studies, path):
    """The NIfTI path: the case's four NIfTI files stacked into one 4D study, uploaded to the same server."""
    vols = [nib.load(studies["files"][m]) for m in MODALITIES]
    nib.save(nib.Nifti1Image(np.stack([np.asarray(v.dataobj) for v in vols], -1), vols[0].affine), path)
    body, headers = _multipart({"params": "{}"}, {"file": (path.name, path.read_bytes())})
    pred_path = path.with_name("pred_" + path.name)
    pred_path.write_bytes(_request("POST", f"{server['url']}/infer/resunet_brats?output=image", body, headers))
    return nib.load(pred_path)


def _http_error(method, url, body=None, headers=None):
    with pytest.raises(urllib.error.HTTPError) as e:
        _request(method, url, body, headers or {}, timeout=300)
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
    body, headers = _multipart({"params": "{}"}, {"label": (path.name, path.read_bytes())})
    flair = studies["series"]["flair"]
    _request("PUT", f"{server['url']}/datastore/label?image={flair}&tag=final", body, headers)

    (seg_uid,) = [uid for uid in _orthanc_series(pacs) if uid not in before]
    seg = _fetch_series_file(pacs, seg_uid, tmp_path / "final.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == flair
    label, _ = dicom_seg_to_label(tmp_path / "final.dcm", studies["good_dirs"]["flair"])
    np.testing.assert_array_equal(label, corrected)

    datastore = json.loads(_request("GET", f"{server['url']}/datastore/?output=all"))
    entry = datastore["objects"][studies["good"]]
    assert entry["labels"]["final"]["info"]["SeriesInstanceUID"] == seg_uid
    files = list(server["tmp"].rglob(f"labels/final/{studies['good']}.nii.gz"))
    assert len(files) == 1, files
    np.testing.assert_array_equal(np.asarray(nib.load(files[0]).dataobj), corrected)


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
    body, headers = _multipart({"params": "{}"}, {})
    code, detail = _http_error("POST", f"{server['url']}/infer/resunet_brats?image={image}&output=json", body, headers)
    assert code == status and reason in detail and "\n" not in detail, detail
    assert _orthanc_series(pacs) == before
    good = _request("GET", f"{server['url']}/datastore/image?image={studies['good']}")
    assert nib.Nifti1Image.from_bytes(gzip.decompress(good)).shape == (*SHAPE, 4)


def test_unreachable_orthanc_is_one_clear_error_and_the_server_recovers(pacs, studies, server):
    pacs.stop()
    try:
        body, headers = _multipart({"params": "{}"}, {})
        url = f"{server['url']}/infer/resunet_brats?image={studies['good']}&output=json"
        code, detail = _http_error("POST", url, body, headers)
        assert code == 503 and f"the PACS at {pacs.url}/dicom-web is not reachable" in detail, detail
        assert json.loads(_request("GET", f"{server['url']}/info/"))["models"]["resunet_brats"]
    finally:
        pacs.start()
    assert _infer_json(server, studies["good"])["dicom_seg"]
