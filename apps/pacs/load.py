"""Push cases into a PACS (Orthanc's REST API) as four DICOM MR series of one study each.

    python -m apps.pacs.load --url http://127.0.0.1:8042 examples/TCGA-DU-7294

Each case (a BraTS-style folder, an MSD task, 4D NIfTI files, DICOM case folders: whatever
``scripts.data.layouts.find_inference_cases`` finds) is written by ``scripts.data.dicom.nifti_case_to_dicom`` as
four series sharing one study and one frame of reference, with series descriptions ``T1``, ``T1CE``, ``T2``,
``FLAIR`` (series numbers 1-4, patient id = case id), and each file is sent with ``POST /instances``. Prints
``<case id> <StudyInstanceUID>`` per case.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from apps.pacs.orthanc import request
from scripts.conventions import MODALITIES
from scripts.data.dicom import is_dicom_file, nifti_case_to_dicom


def push_files(url: str, files: Iterable[str | os.PathLike]) -> list[dict]:
    """``POST <url>/instances`` for each DICOM file; returns Orthanc's answers (``ParentStudy``, ``Status``...)."""
    import json

    answers = []
    for path in files:
        body = Path(path).read_bytes()
        answers.append(json.loads(request("POST", f"{url}/instances", body, {"Content-Type": "application/dicom"})))
    return answers


def push_series_dirs(url: str, series_dirs: Iterable[str | os.PathLike]) -> list[dict]:
    """Push every DICOM file of the given series folders."""
    files = [p for d in series_dirs for p in sorted(Path(d).iterdir()) if is_dicom_file(p)]
    return push_files(url, files)


def case_to_series(item: dict, case_dir: str | os.PathLike) -> dict[str, str]:
    """A datalist item (``image``: four files in the bundle's channel order, or one 4D file with an optional
    ``channel_order``) written as DICOM series folders ``case_dir/<modality>/``; ``{modality: folder}``."""
    image = item["image"]
    if isinstance(image, (list, tuple)) and len(image) == len(MODALITIES):
        return nifti_case_to_dicom(list(image), case_dir, patient_id=item["case_id"])
    if isinstance(image, (list, tuple)):
        image = image[0]
    if Path(image).is_dir():
        raise ValueError(f"{item['case_id']}: already DICOM; push its series folders with push_series_dirs")
    order = item.get("channel_order", list(range(len(MODALITIES))))
    channel_of = {m: int(order[i]) for i, m in enumerate(MODALITIES)}
    return nifti_case_to_dicom(image, case_dir, patient_id=item["case_id"], channel_of=channel_of)


def push_case(url: str, item: dict, work_dir: str | os.PathLike | None = None) -> str:
    """Write ``item`` as four DICOM series (in ``work_dir``, default a temporary folder) and push them;
    returns the StudyInstanceUID."""
    import pydicom

    with tempfile.TemporaryDirectory() as tmp:
        series = case_to_series(item, Path(work_dir or tmp) / item["case_id"])
        ordered = [series[m] for m in MODALITIES]
        push_series_dirs(url, ordered)
        first = next(p for p in sorted(Path(ordered[0]).iterdir()) if is_dicom_file(p))
        return str(pydicom.dcmread(str(first), stop_before_pixels=True).StudyInstanceUID)


def main(argv: list[str] | None = None) -> dict[str, str]:
    from scripts.data.layouts import find_inference_cases

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a case folder, a dataset folder or a datalist JSON")
    parser.add_argument("--url", default="http://127.0.0.1:8042", help="Orthanc's REST root")
    args = parser.parse_args(argv)
    try:
        cases = find_inference_cases(args.source)
        studies = {}
        for item in cases:
            studies[item["case_id"]] = push_case(args.url, item)
            print(item["case_id"], studies[item["case_id"]], flush=True)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
    return studies


if __name__ == "__main__":
    main()
