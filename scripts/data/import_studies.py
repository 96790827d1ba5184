"""Import real cases into a MONAI Label datastore: one 4D NIfTI study per case, with its label where it has one.

    python -m scripts.data.import_studies SOURCE --output_dir data/monailabel [--layout auto] [--overwrite] \
        [--allow_missing_modalities]

The sibling of ``scripts.synthetic.phantom.write_monailabel_datastore`` (synthetic studies) for real data.
``SOURCE`` is any layout :mod:`scripts.data.layouts` recognises (BraTS 2020 ``_t1/_t1ce/_t2/_flair[/_seg]``,
BraTS 2023+ ``-t1n/-t1c/-t2w/-t2f[-seg]``, MSD Task01, DICOM series folders per modality, 4D NIfTI). Each case
becomes what ``monailabel start_server --studies DATASTORE`` serves (docs/monailabel.md):

- ``DATASTORE/<case_id>.nii.gz``: ``X x Y x Z x 4``, the last axis in the bundle's channel order T1, T1ce, T2,
  FLAIR, on the case's own grid (the affine of its files; DICOM series in RAS as MONAI reads them);
- ``DATASTORE/labels/final/<case_id>.nii.gz``: its segmentation as a uint8 label map in the values the served
  model uses (``--labels``, default BraTS 2020's 1, 2, 4), converted from the layout's own values (BraTS 2023's
  3 = enhancing, MSD's 1 oedema / 2 necrotic / 3 enhancing).

With ``--allow_missing_modalities`` a case may lack sequence files (all but one): each missing sequence is an
all-zero channel of its study, which the bundle's inference with ``--allow_missing_modalities true`` (and the
MONAI Label app started with ``--conf allow_missing_modalities true``) reads as missing; one line per such case
names them. Without it such a case is an error.

A case's files are checked before anything is written (header, shapes and grids, label values); a bad case gets
one line ``case <id>: <file>: <problem>`` and the other cases are imported; the exit status is 1 when any case
failed. Files are written under a temporary name and renamed (:mod:`scripts.io`); a case whose study exists is
left as it is unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scripts.conventions import BRATS2020_LABELS, MODALITY_NAMES, TUMOUR_CLASSES
from scripts.data.checks import OutputDirError, check_case, check_output_dirs, file_list
from scripts.data.layouts import LAYOUTS, check_unique_case_ids, find_cases
from scripts.io import write_nifti
from scripts.transforms import CaseError, affines_match, missing_modalities, non_integer_labels, shape_str

LABEL_TAG = "final"


def study_files(out_dir: str | os.PathLike, case_id: str) -> dict[str, str]:
    """The datastore's files of a case: ``image`` and ``label``."""
    out_dir = Path(out_dir)
    return {
        "image": str(out_dir / f"{case_id}.nii.gz"),
        "label": str(out_dir / "labels" / LABEL_TAG / f"{case_id}.nii.gz"),
    }


def _read_nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(path)
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=float)


def _read_dicom_series(folder: str) -> tuple[np.ndarray, np.ndarray]:
    from monai.transforms import LoadImage

    try:
        img = LoadImage(reader="ITKReader", image_only=True)(folder)
    except Exception as e:
        raise CaseError(folder, f"cannot read the DICOM series ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return np.asarray(img), np.asarray(img.affine, dtype=float)


def read_study(item: dict) -> tuple[np.ndarray, np.ndarray]:
    """(``X x Y x Z x 4`` array in the bundle's channel order, affine) of a datalist item's image; a sequence file
    that does not exist is an all-zero channel (:func:`missing_sequences` says which)."""
    files = file_list(item["image"])
    if len(files) == 1:
        data, affine = _read_nifti(files[0])
        order = item.get("channel_order") or range(data.shape[-1])
        return np.stack([data[..., c] for c in order], axis=-1), affine
    absent = missing_modalities(files)
    channels, affine = [], None
    for i, path in enumerate(files):
        if i in absent:
            continue
        data, a = _read_dicom_series(path) if os.path.isdir(path) else _read_nifti(path)
        if data.ndim != 3:
            raise CaseError(path, f"expected a 3D image ({MODALITY_NAMES[i]}), got shape {shape_str(data.shape)}")
        if channels and data.shape != channels[0].shape:
            raise CaseError(
                path,
                f"{MODALITY_NAMES[i]} shape {shape_str(data.shape)} does not match the {MODALITY_NAMES[0]} "
                f"series' {shape_str(channels[0].shape)} ({files[0]})",
            )
        if affine is not None and not affines_match(a, affine):
            raise CaseError(
                path, f"{MODALITY_NAMES[i]} grid (affine) does not match the {MODALITY_NAMES[0]}'s ({files[0]})"
            )
        channels.append(data)
        affine = a if affine is None else affine
    for i in absent:
        channels.insert(i, np.zeros_like(channels[0]))
    return np.stack(channels, axis=-1), affine


def missing_sequences(item: dict) -> list[str]:
    """:data:`~scripts.conventions.MODALITY_NAMES` of the sequence files of a one-file-per-sequence case that do
    not exist."""
    return [MODALITY_NAMES[i] for i in missing_modalities(file_list(item["image"]))]


def convert_label(label: np.ndarray, path: str, source: Sequence[int], target: Sequence[int]) -> np.ndarray:
    """The label map with the values ``source`` (necrotic, oedema, enhancing) replaced by ``target``; a
    :class:`CaseError` for non-integer values or values outside ``{0} | source``."""
    while label.ndim > 3 and label.shape[-1] == 1:
        label = label[..., 0]
    problem = non_integer_labels(label)
    if problem:
        raise CaseError(path, problem)
    values = np.unique(label).astype(int)
    unexpected = sorted(set(values.tolist()) - {0, *source})
    if unexpected:
        counts = {v: int((label == v).sum()) for v in unexpected[:5]}
        raise CaseError(
            path,
            f"label values {unexpected} (voxels: {counts}) outside {[0, *source]} "
            f"({', '.join(TUMOUR_CLASSES)} = {list(source)} in this layout)",
        )
    out = np.zeros(label.shape, dtype=np.uint8)
    for src, dst in zip(source, target):
        out[label == src] = dst
    return out


def _image_dtype(data: np.ndarray):
    """int16 for integer intensities within its range (also when read as floats, as DICOM series are), else
    float32."""
    integral = np.issubdtype(data.dtype, np.integer) or bool(
        np.all(np.isfinite(data)) and np.all(data == np.round(data))
    )
    if integral and data.size and data.min() >= -32768 and data.max() <= 32767:
        return np.int16
    return np.float32


def import_case(
    item: dict, out_dir: str | os.PathLike, labels: Sequence[int], overwrite: bool, allow_missing: bool = False
) -> dict:
    """Write one case into the datastore (see the module docstring). Returns ``{"case_id", "image", "label"
    (when it has one), "missing" (the sequences written as zero channels), "status": "written" | "kept"}``;
    raises :class:`CaseError` naming the case and file."""
    case_id = str(item["case_id"])
    files = study_files(out_dir, case_id)
    if "label" not in item:
        files.pop("label")
    result = {"case_id": case_id, **files, "missing": missing_sequences(item) if allow_missing else []}
    if not overwrite and all(os.path.isfile(p) for p in files.values()):
        return {**result, "status": "kept"}
    try:
        check_case(item, allow_missing_modalities=allow_missing)
        study, affine = read_study(item)
        label = None
        if "label" in item:
            data, label_affine = _read_nifti(str(item["label"]))
            label = convert_label(data, str(item["label"]), item.get("labels") or BRATS2020_LABELS, labels)
            if label.shape != study.shape[:3] or not affines_match(label_affine, affine):
                raise CaseError(item["label"], f"label grid {shape_str(label.shape)} does not match the image's")
    except CaseError as e:
        raise CaseError(e.path, e.problem, case_id) from None
    write_nifti(study, files["image"], _image_dtype(study), affine)
    if label is not None:
        os.makedirs(os.path.dirname(files["label"]), exist_ok=True)
        write_nifti(label, files["label"], np.uint8, affine)
    return {**result, "status": "written"}


def import_studies(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str = "auto",
    labels: Sequence[int] = BRATS2020_LABELS,
    overwrite: bool = False,
    progress: bool = True,
    allow_missing: bool = False,
) -> tuple[list[dict], list[str]]:
    """Import every case of ``source`` into the datastore ``out_dir``: (imported cases, one error line per case
    that failed). Raises ``FileNotFoundError``/``ValueError`` when ``source`` holds no case or duplicate ids,
    ``scripts.data.checks.OutputDirError`` when a study or label would overwrite an input file (importing a
    datastore into itself) or ``out_dir`` cannot be written, before anything is written. A datastore folder
    inside ``source`` is not searched for cases. ``allow_missing``: a case may lack sequence files (zero
    channels)."""
    from tqdm.auto import tqdm

    _, items = find_cases(source, layout, "keep", exclude=[out_dir])  # a missing file: that case's error
    check_unique_case_ids(items, f"{source}")
    planned = [(str(c["case_id"]), f) for c in items for f in study_files(out_dir, str(c["case_id"])).values()]
    check_output_dirs(out_dir, inputs=items, outputs=planned)
    done, errors = [], []
    for item in tqdm(items, desc="MONAI Label studies", disable=not progress):
        try:
            done.append(import_case(item, out_dir, labels, overwrite, allow_missing))
        except CaseError as e:
            errors.append(str(e))
    return done, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source", help="a dataset folder (or a 4D NIfTI file) of a layout scripts/data/layouts.py reads"
    )
    parser.add_argument("--output_dir", required=True, help="the datastore folder (monailabel --studies)")
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS])
    parser.add_argument(
        "--labels",
        type=int,
        nargs=3,
        default=list(BRATS2020_LABELS),
        metavar=("NECROTIC", "OEDEMA", "ENHANCING"),
        help="label values written to the datastore (default 1 2 4: the served model's brats_labels)",
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite studies that exist in the datastore")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--allow_missing_modalities",
        action="store_true",
        help="import a case that lacks sequence files (all but one): each missing sequence is a zero channel",
    )
    args = parser.parse_args(argv)
    if not os.path.exists(args.source):
        sys.exit(f"error: {args.source}: no such file or folder")
    try:
        done, errors = import_studies(
            args.source,
            args.output_dir,
            args.layout,
            args.labels,
            args.overwrite,
            not args.quiet,
            args.allow_missing_modalities,
        )
    except (FileNotFoundError, ValueError, OutputDirError) as e:
        sys.exit(f"error: {' '.join(str(e).split())}")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    for r in done:
        if r["missing"]:
            print(f"case {r['case_id']}: {', '.join(r['missing'])} missing: zero channel(s) in {r['image']}")
    written = sum(r["status"] == "written" for r in done)
    labelled = sum("label" in r for r in done)
    print(
        f"{args.output_dir}: {written} studies written, {len(done) - written} kept as they were, {labelled} with a "
        f"final label, {len(errors)} failed"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
