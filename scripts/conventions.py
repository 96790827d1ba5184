"""The bundle's conventions in one place: modalities and their channel order, BraTS label values and names,
the region channels, case ids and file names.

Standard library only: this module is the bottom of the import graph. Every module, the MONAI Label app and
the configs (``"$scripts.conventions.BRATS2020_LABELS"``) take these from here.

Label values are always given as a triple in the order of :data:`TUMOUR_CLASSES`, ``(necrotic, oedema,
enhancing)``; each dataset layout has its own triple (BraTS 2017-2020 ``(1, 2, 4)``, BraTS 2021+ ``(1, 2, 3)``,
MSD Task01 ``(2, 1, 3)``). The network predicts the three nested regions :data:`REGIONS` (TC, WT, ET) as
channels in that order; every table and report lists them in that order too.
"""

from __future__ import annotations

import os
import re

# ------------------------------------------------------------------------------------------------ modalities
MODALITIES = ("t1", "t1ce", "t2", "flair")
"""The bundle's channel order (channel 0 T1, 1 T1ce, 2 T2, 3 FLAIR); also the BraTS 2020 file suffixes."""
MODALITY_NAMES = ("T1", "T1ce", "T2", "FLAIR")
""":data:`MODALITIES` as written in messages, reports and figures."""
BRATS2021_MODALITIES = ("t1n", "t1c", "t2w", "t2f")
"""BraTS 2021+ (2023/2024 naming) file suffixes (``<id>-t1n.nii.gz``) in the bundle's channel order."""
MSD_CHANNEL_ORDER = (1, 2, 3, 0)
"""MSD Task01 4D images hold FLAIR, T1w, T1gd, T2w: bundle channel i is MSD channel ``MSD_CHANNEL_ORDER[i]``."""
MODALITY_ALIASES = {
    "t1": "t1", "t1n": "t1", "t1w": "t1", "t1native": "t1", "t1pre": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1wce": "t1ce", "t1post": "t1ce", "t1contrast": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair", "t2flair": "flair",
}  # fmt: skip
"""Modality name (lower case, without ``-``, ``_``, spaces) -> bundle modality (:data:`MODALITIES`)."""


def modality_of(name: str) -> str | None:
    """``"T1-Gd"`` -> ``"t1ce"``, ``"FLAIR"`` -> ``"flair"``, ``"T2w"`` -> ``"t2"``; ``None`` when unknown."""
    key = str(name).lower().replace("-", "").replace("_", "").replace(" ", "")
    return MODALITY_ALIASES.get(key)


# ---------------------------------------------------------------------------------------------------- labels
TUMOUR_CLASSES = ("necrotic", "oedema", "enhancing")
"""The order of every label-value triple: necrotic/non-enhancing core, peritumoral oedema, enhancing tumour."""
BRATS2020_LABELS = (1, 2, 4)
"""Label values of BraTS 2017-2020 (and the default for data that carry no convention)."""
BRATS2021_LABELS = (1, 2, 3)
"""Label values of BraTS 2021 and later (3 = enhancing)."""
MSD_LABELS = (2, 1, 3)
"""Label values of MSD Task01_BrainTumour: 1 oedema, 2 non-enhancing tumour (necrotic core), 3 enhancing."""
CLASS_NAMES = ("background", "necrotic_core", "edema", "enhancing_tumor")
"""Names of the background and the :data:`TUMOUR_CLASSES`, as a clinician sees them in MONAI Label (3D Slicer,
OHIF) and as the interactive model's classes are indexed."""
LABEL_NAMES = {name: index for index, name in enumerate(CLASS_NAMES)}
"""Class index of each name in :data:`CLASS_NAMES` (the interactive model's ``label_names``)."""
CLASS_DESCRIPTIONS = ("Necrotic / non-enhancing tumour core", "Peritumoral oedema", "Enhancing tumour")
"""Long names of the :data:`TUMOUR_CLASSES` (DICOM SEG segment labels)."""
CLASS_COLOURS = ((255, 0, 0), (0, 255, 0), (255, 255, 0))
"""RGB (0-255) of the :data:`TUMOUR_CLASSES`, the one colour scheme of every figure, report, overlay and DICOM SEG
segment: necrotic / non-enhancing core red, oedema green, enhancing tumour yellow. These are ITK-SNAP's default
colours of the BraTS 2017-2020 label values 1, 2 and 4, the way BraTS segmentations are usually shown."""
CLASS_COLOUR_NAMES = ("red", "green", "yellow")
""":data:`CLASS_COLOURS` in words, for legends and captions."""
REFERENCE_COLOUR = (0, 255, 255)
"""RGB of a reference segmentation's outline drawn over a prediction (cyan: none of :data:`CLASS_COLOURS`)."""


def colour_legend() -> str:
    """``"red: necrotic / non-enhancing tumour core, green: peritumoral oedema, yellow: enhancing tumour"``."""
    return ", ".join(f"{c}: {d[0].lower() + d[1:]}" for c, d in zip(CLASS_COLOUR_NAMES, CLASS_DESCRIPTIONS))


# --------------------------------------------------------------------------------------------------- regions
REGIONS = ("TC", "WT", "ET")
"""The network's output channels and the order of every per-region table: tumour core (necrotic + enhancing),
whole tumour (core + oedema), enhancing tumour."""
REGION_CLASSES = {"TC": ("necrotic", "enhancing"), "WT": TUMOUR_CLASSES, "ET": ("enhancing",)}
"""The :data:`TUMOUR_CLASSES` each region is made of."""

# ----------------------------------------------------------------------------------------- files and case ids
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
LABEL_SUFFIX = "seg"
"""Suffix of a segmentation file: ``<id>_seg.nii.gz`` (BraTS 2020) or ``<id>-seg.nii.gz`` (BraTS 2021+)."""
PREDICTION_EXTENSION = ".nii.gz"
"""A prediction is written as ``<case_id>.nii.gz`` (see :func:`prediction_name`)."""


def strip_nifti(name: str) -> str | None:
    """``"a.nii.gz"`` -> ``"a"``, ``"A.NII.GZ"`` -> ``"A"`` (extensions match in any case); ``None`` when
    ``name`` is not a NIfTI file name."""
    lower = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return None


GENERIC_STEMS = ("seg", "label", "labels", "mask", "image", "img", "images", "brain", "scan", "volume", "data")
"""File stems (besides the modality names of :data:`MODALITY_ALIASES`) that name no case: a case's id is then
its folder's name (``caseA/t1.nii.gz`` -> ``caseA``)."""


def is_generic_stem(stem: str) -> bool:
    """True for a file stem that names a modality or a role, not a case (``t1``, ``T1-Gd``, ``seg``, ``image``)."""
    return not stem or modality_of(stem) is not None or stem.lower() in GENERIC_STEMS


def case_id_from_path(path: str | os.PathLike) -> str:
    """``.../BraTS20_Training_001_t1.nii.gz`` -> ``BraTS20_Training_001``; ``.../case.nii.gz`` -> ``case``;
    ``.../BraTS-GLI-00000-000-t1n.nii.gz`` -> ``BraTS-GLI-00000-000``; a file or DICOM series folder with a
    generic name (:func:`is_generic_stem`), ``.../caseA/t1.nii.gz`` or ``.../case_007/t1``, -> its folder's name
    (``caseA``, ``case_007``), so two cases' ``t1.nii.gz`` files do not give the same id. Suffixes and
    extensions match in any case (``case_T1.NII.GZ`` -> ``case``)."""
    path = os.path.normpath(str(path))
    name = os.path.basename(path)
    stem = strip_nifti(name)
    parent = os.path.basename(os.path.dirname(path))
    if is_generic_stem(stem if stem is not None else name) and parent:
        return parent
    if stem is None:
        stem = os.path.splitext(name)[0]
    stem = re.sub(r"_(" + "|".join((*MODALITIES, LABEL_SUFFIX)) + r")$", "", stem, flags=re.IGNORECASE)
    return re.sub(r"-(" + "|".join((*BRATS2021_MODALITIES, LABEL_SUFFIX)) + r")$", "", stem, flags=re.IGNORECASE)


def case_id_problem(case_id) -> str | None:
    """Why ``case_id`` cannot name a prediction file (``<case_id>.nii.gz`` in the output folder), or ``None``:
    it must be a non-empty string without path separators or control characters (newlines included), not
    starting with ``.``, so every case's output lands in the output folder under its own visible name."""
    if not isinstance(case_id, str) or not case_id.strip():
        return "a case id must be a non-empty string"
    if "/" in case_id or "\\" in case_id or case_id.startswith("."):
        return "a case id must not contain / or \\ or start with . (it names the file <case_id>.nii.gz)"
    if any(ord(c) < 32 for c in case_id):
        return "a case id must not contain control characters (newlines, tabs)"
    return None


AFFINE_ATOL_MM = 1e-4
"""Two NIfTI affines describe the same voxel grid when every entry of the 4x4 matrices differs by at most this
much (absolute, no relative part): translations in mm, the rotation-zoom entries in mm per voxel, so over a
240-voxel axis the grids part by at most 0.024 mm, far below a voxel. Scanners and conversion tools (float32
headers, qform/sform round trips) differ by ~1e-6; a real misregistration differs by far more. Modality
files, label maps, predictions and references are compared with it (``scripts.transforms.affines_match``)."""


def prediction_name(case_id: str) -> str:
    """File name of a case's predicted label map: ``<case_id>.nii.gz``."""
    return f"{case_id}{PREDICTION_EXTENSION}"
