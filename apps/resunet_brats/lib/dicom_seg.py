"""BraTS label maps <-> DICOM SEG in the MONAI Label server's environment.

The bundle's own writer (``scripts.data.dicom.label_to_dicom_seg``) needs highdicom with pydicom 3; the server
environment keeps pydicom 2.4.4 (monailabel 0.8.5 fails with pydicom 3) and no highdicom release supports both
pydicom 2 and numpy 2 (highdicom 0.22, the last for pydicom 2, uses ``np.float_``). So the server writes the same
object with ``pydicom-seg`` (already a monailabel dependency): a binary SEG with one segment per tumour class that
is present, segment labels ``scripts.conventions.CLASS_DESCRIPTIONS`` (what ``dicom_seg_to_label`` reads back),
each frame referencing its source instance, on the grid of the source series as
``scripts.data.dicom`` computes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from scripts.conventions import BRATS2020_LABELS, CLASS_COLOURS
from scripts.data.dicom import SEGMENT_NAMES, onto_series_grid, series_affine, series_datasets
from scripts.io import atomic_path

# SNOMED CT codes, as scripts.data.dicom.label_to_dicom_seg writes them (pydicom.sr.codedict in pydicom 3)
_CATEGORY = {
    "CodeValue": "49755003",
    "CodingSchemeDesignator": "SCT",
    "CodeMeaning": "Morphologically Abnormal Structure",
}
_TYPES = (
    {"CodeValue": "6574001", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Necrosis"},
    {"CodeValue": "79654002", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Edema"},
    {"CodeValue": "108369006", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Neoplasm"},
)


def series_grid(series_dir: str | os.PathLike):
    """(sorted headers, RAS affine, shape (column, row, slice)) of a single-frame series folder."""
    datasets = series_datasets(series_dir)
    return datasets, series_affine(datasets), (int(datasets[0].Columns), int(datasets[0].Rows), len(datasets))


def on_series_grid(data: np.ndarray, affine: np.ndarray, series_dir: str | os.PathLike) -> np.ndarray:
    """``data`` (a 3D array with its RAS ``affine``) on the voxel grid of the series, indexed (column, row,
    slice); ``ValueError`` when the grids differ by more than axis flips and permutations."""
    _, target, shape = series_grid(series_dir)
    return onto_series_grid(np.asarray(data), np.asarray(affine, dtype=float), target, shape)


def _template(present: Sequence[int], description: str, algorithm: str, manual: bool):
    import pydicom_seg

    segments = [
        {
            "labelID": number,
            "SegmentLabel": SEGMENT_NAMES[i],
            "SegmentDescription": SEGMENT_NAMES[i],
            "SegmentAlgorithmType": "MANUAL" if manual else "AUTOMATIC",
            "SegmentAlgorithmName": algorithm,
            "SegmentedPropertyCategoryCodeSequence": _CATEGORY,
            "SegmentedPropertyTypeCodeSequence": _TYPES[i],
            "recommendedDisplayRGBValue": list(CLASS_COLOURS[i]),
        }
        for number, i in enumerate(present, start=1)
    ]
    return pydicom_seg.template.from_dcmqi_metainfo(
        {
            "ContentCreatorName": "MONAI Label",
            "ClinicalTrialSeriesID": "Session1",
            "ClinicalTrialTimePointID": "1",
            "SeriesDescription": description[:64],
            "SeriesNumber": "900",
            "InstanceNumber": "1",
            "ContentLabel": "SEGMENTATION",
            "ContentDescription": description[:64],
            "BodyPartExamined": "BRAIN",
            "segmentAttributes": [segments],
        }
    )


def write_label_seg(
    label: np.ndarray,
    series_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    description: str,
    labels: Sequence[int] = BRATS2020_LABELS,
    algorithm: str = "brats_resunet",
    manual: bool = False,
) -> str:
    """Write ``label`` (indexed column, row, slice on the series grid, BraTS values ``labels``) as a DICOM SEG
    referencing the series in ``series_dir``; ``ValueError`` for an empty label map or another shape."""
    import pydicom_seg
    import SimpleITK as sitk

    datasets, affine, shape = series_grid(series_dir)
    data = np.asarray(label)
    if data.shape != shape:
        raise ValueError(f"label shape {data.shape} is not the series shape {shape} (column, row, slice)")
    present = [i for i, v in enumerate(labels) if np.any(data == v)]
    if not present:
        raise ValueError("the label map is empty: a DICOM SEG needs at least one segment")
    mask = np.zeros(shape, dtype=np.uint8)
    for number, i in enumerate(present, start=1):
        mask[data == labels[i]] = number
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)))  # (slice, row, column)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    writer = pydicom_seg.MultiClassWriter(
        template=_template(present, description, algorithm, manual), inplane_cropping=False, skip_empty_slices=False
    )
    frame_of_reference = str(datasets[0].FrameOfReferenceUID)
    seg = writer.write(image, datasets)
    # pydicom-seg gives the SEG a new frame of reference (and, sharing the element, the source headers too)
    seg.FrameOfReferenceUID = frame_of_reference
    for frame in seg.PerFrameFunctionalGroupsSequence:  # the label is on the source grid (highdicom checks this)
        for derivation in frame.DerivationImageSequence:
            for source in derivation.SourceImageSequence:
                source.SpatialLocationsPreserved = "YES"
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp)
    return str(out_path)
