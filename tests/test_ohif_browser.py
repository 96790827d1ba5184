"""OHIF in a real browser: a real Orthanc (``apps/pacs/orthanc.py``), the bundled real glioma case pushed by
``apps/pacs/load.py``, a real MONAI Label server on DICOMweb (its own environment) serving the shipped weights,
the model run through the HTTP call that OHIF's MONAI Label panel makes, then headless Chromium opens the study in
the OHIF viewer that the server serves, opens the DICOM SEG with the mouse and the screenshot shows the tumour
classes' colours in the viewport (``apps/pacs/ohif.py``).

The case is cropped to the slices and the in-plane box around the brain (90 of 155 slices) to keep the push and
the inference short on shared CPU cores; docs/monailabel.md shows the whole case.
"""

import json
import os
import time

import nibabel as nib
import pytest

from apps.pacs import load, ohif, orthanc
from scripts.conventions import CLASS_DESCRIPTIONS, MODALITIES
from tests._bundle import ROOT
from tests._monailabel import REAL_CASE, free_port, multipart, request, serving

pytestmark = pytest.mark.slow

CROP = (slice(40, 200), slice(40, 224), slice(60, 150))  # the brain of examples/TCGA-DU-7294 with its tumour
# What OHIF's MONAI Label panel sends with "Run" (MonaiLabelClient.infer in the bundled OHIF).
PANEL_PARAMS = {
    "result_extension": ".nrrd",
    "result_dtype": "uint8",
    "result_compress": False,
    "restore_label_idx": False,
}


def _needed(find):
    try:
        return find()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            pytest.fail(f"{e} (.ci/run installs the Debian packages)")
        pytest.skip(str(e))


def _cropped_case(folder):
    folder.mkdir()
    files = []
    for m in MODALITIES:
        image = nib.load(ROOT / "examples" / REAL_CASE / f"{REAL_CASE}_{m}.nii.gz")
        files.append(folder / f"{REAL_CASE}_{m}.nii.gz")
        nib.save(image.slicer[CROP], files[-1])
    return {"case_id": REAL_CASE, "image": [str(f) for f in files]}


def _series(pacs, study):
    """{SeriesDescription or Modality: SeriesInstanceUID} of a study, over DICOMweb."""
    found = orthanc.get_json(f"{pacs.url}/dicom-web/studies/{study}/series")
    return {s.get("0008103E", s["00080060"])["Value"][0]: s["0020000E"]["Value"][0] for s in found}


def test_ohif_shows_the_segmentation_of_a_pushed_study(venv_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    _needed(ohif.find_chromium)
    _needed(orthanc.find_orthanc)
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(tmp_path / "cache"))
    case = _cropped_case(tmp_path / "case")
    with orthanc.running(tmp_path / "pacs", free_port()) as pacs:
        start = time.monotonic()
        study = load.push_case(pacs.url, case)
        times = {"push_s": time.monotonic() - start}
        conf = [
            ("bundle_path", str(ROOT)),
            ("models", "resunet_brats"),
            ("preload", "false"),
            ("skip_trainers", "true"),
        ]
        with serving(venv_dir, f"{pacs.url}/dicom-web", conf, tmp_path / "server.log") as (url, _):
            body, headers = multipart({"params": json.dumps(PANEL_PARAMS)}, {})
            t1ce = _series(pacs, study)["T1CE"]
            start = time.monotonic()
            label = request("POST", f"{url}/infer/resunet_brats?image={t1ce}&output=image", body, headers)
            times["infer_s"] = time.monotonic() - start
            assert label.startswith(b"NRRD"), label[:200]
            assert "SEG" in [
                s["00080060"]["Value"][0] for s in orthanc.get_json(f"{pacs.url}/dicom-web/studies/{study}/series")
            ]
            shown = ohif.show_segmentation(
                url, study, tmp_path / "ohif.png", timeout=600, log_path=tmp_path / "chromium.log"
            )
    times.update({k: shown[k] for k in ("seg_listed_s", "overlay_s")})
    with capsys.disabled():
        print(f"\npush -> segmentation shown in OHIF: {json.dumps({k: round(v, 1) for k, v in times.items()})}")
    labels = [label for label, _ in shown["segments"]]
    assert set(labels) <= set(CLASS_DESCRIPTIONS) and CLASS_DESCRIPTIONS[1] in labels, shown["segments"]
    _, _, width, height = shown["rect"]
    assert shown["slice"] > 0 and width * height > 500_000, shown  # a large viewport, moved to the tumour
    tinted = sum(shown["pixels"].values())
    assert shown["pixels"][CLASS_DESCRIPTIONS[1]] > 200 and tinted < 0.1 * width * height, shown["pixels"]
