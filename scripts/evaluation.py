"""Evaluation of BraTS segmentations against reference label maps.

Per case and per region (TC tumour core, WT whole tumour, ET enhancing tumour, derived from a BraTS label map
with :func:`scripts.transforms.label_to_regions` and a ``labels=(necrotic, oedema, enhancing)`` convention):

* ``dice``            2 |P & R| / (|P| + |R|)
* ``hd95``            95th-percentile Hausdorff distance in mm (voxel spacing from the NIfTI header), the official
                      BraTS definition (``brats-evaluation``, panoptica; medpy's ``hd95`` too): surface voxels by
                      binary erosion, the surface distances of both directions (pred -> ref, ref -> pred) pooled,
                      their 95th percentile (:func:`scripts.metrics.hd95_mm`). As in the official evaluation,
                      masks that do not overlap at all count as a miss (see "Empty structures").
                      ``hd95="max_directed"`` takes the larger of the two directed 95th percentiles instead
                      (MONAI's ``HausdorffDistanceMetric``, the training-time validation metric), which is never
                      smaller and can be a few mm larger on ragged whole-tumour outlines.
* ``sensitivity``     TP / (TP + FN)
* ``specificity``     TN / (TN + FP)
* ``volume_diff_ml``  prediction volume - reference volume in mL (voxel volume from the header)

plus ``<metric>_mean``, the mean over the three regions, and the official BraTS 2023+ lesion-wise metrics per
region (:func:`scripts.metrics.lesion_wise_metrics`; lesions are 26-connected components matched one to one):
``pq_dsc`` (panoptic quality: lesion Dice x detection F1), ``sq_dsc`` and ``sq_hd95`` (mean Dice and HD95 of the
matched lesions), ``tp``/``fp``/``fn`` (matched, spurious and missed lesions), e.g. ``pq_dsc_WT``.

Empty structures (``empty=``)
-----------------------------
``"brats"`` (default), the BraTS challenge convention; no metric is ever NaN:

* both prediction and reference empty: Dice 1, HD95 0 mm; lesion-wise ``pq_dsc``/``sq_dsc`` 1, ``sq_hd95`` 0;
* exactly one of them empty, or (pooled HD95) no voxel in common: Dice 0, HD95 373.13 mm (the diagonal of the
  240 x 240 x 155 mm BraTS volume); no matched lesion: ``sq_hd95`` 373.13 mm (the official package: infinity);
* sensitivity with an empty reference: 1 if the prediction is empty too, else 0;
* specificity when the reference has no negative voxel (the region fills the volume): 1 if the prediction has
  none either, else 0.

``"nan"``: a metric that is undefined for the case is NaN and is left out of the region mean and of every
summary statistic (each summary entry reports ``n``, the number of values it used): Dice when both are empty,
HD95 when either is empty (or, pooled, when they do not overlap), sensitivity when the reference is empty,
specificity when the reference has no negatives, the lesion-wise metrics as the official package leaves them
(NaN when neither mask has a lesion; ``sq_hd95`` NaN when no lesion is matched). Defined values stay as they are (a missed tumour still gets Dice 0, sensitivity 0). The volume
difference is always defined.

Use
---
``python -m scripts.evaluation --pred_dir P --ref_dir R --output_dir O [--labels 1 2 4] [--ref_labels 1 2 3]
[--empty brats|nan] [--hd95 pooled|max_directed] [--no_plot]`` writes ``metrics_per_case.csv``, ``metrics_summary.json``,
``metrics_summary.md`` and ``metrics_boxplot.png`` into O (each atomically). Predictions are ``<case_id>.nii.gz``
files (any NIfTI whose case id, :func:`scripts.conventions.case_id_from_path`, matches); references are
``<case_id>_seg.nii.gz`` or ``<case_id>.nii.gz`` files anywhere under R (flat, or BraTS case folders), found by
the listing rules of the dataset layouts (suffixes and extensions in any letter case, ``_SEG.NII.GZ`` too;
symlinked case folders followed, loop-safe; see :func:`find_references`). A case that cannot be evaluated
(unreadable file, shape/affine mismatch, unexpected labels) is skipped with one line naming the case, the file
and the problem; the others are finished. The report adds up: ``N case(s) found, M evaluated, K skipped
(reasons)``. Exit code 1 when any case failed or a reference had no prediction, 0 otherwise.

:func:`evaluate_pairs` evaluates explicit (prediction, reference) pairs and :func:`evaluate_datalist` the
predictions of datalist items against their ``label``, with the same outputs; ``configs/evaluate.json`` runs the
model over the validation cases and then calls :func:`evaluate_datalist` and :func:`finish`.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from scripts.conventions import (
    AFFINE_ATOL_MM,
    BRATS2020_LABELS,
    LABEL_SUFFIX,
    MODALITIES,
    MODALITY_NAMES,
    REGIONS,
    case_id_from_path,
    prediction_name,
    strip_nifti,
)
from scripts.data.checks import case_id_of, failure, format_failure
from scripts.data.layouts import file_role, nifti_files
from scripts.handlers import CaseProgress
from scripts.io import atomic_path, write_json
from scripts.metrics import HD95_MODES, LESION_METRICS, dice, hd95_mm, lesion_wise_metrics
from scripts.transforms import CaseError, affines_match, label_to_regions, missing_modalities, non_integer_labels

logger = logging.getLogger(__name__)

METRICS = ("dice", "hd95", "sensitivity", "specificity", "volume_diff_ml")
COLUMNS = tuple(f"{m}_{r}" for m in METRICS for r in (*REGIONS, "mean")) + tuple(
    f"{m}_{r}" for m in LESION_METRICS for r in REGIONS
)
"""Per-case columns after ``case_id``: every metric x (TC, WT, ET, mean), then every lesion-wise metric x (TC,
WT, ET)."""
EMPTY_CONVENTIONS = ("brats", "nan")
BRATS_MAX_HD95 = 373.13
"""HD95 (mm) when exactly one of prediction and reference is empty: diagonal of a 240 x 240 x 155 mm volume."""
AFFINE_ATOL = AFFINE_ATOL_MM
"""Tolerance (mm) when comparing prediction and reference affines: ``scripts.conventions.AFFINE_ATOL_MM``."""

_STATS = ("mean", "median", "std", "q1", "q3", "min", "max", "n")
_MD_FORMAT = {"dice": ".3f", "hd95": ".2f", "sensitivity": ".3f", "specificity": ".4f", "volume_diff_ml": ".2f"}
_MD_LESION_ROWS = ("pq_dsc", "sq_dsc", "sq_hd95")
_MD_FORMAT |= {"pq_dsc": ".3f", "sq_dsc": ".3f", "sq_hd95": ".2f"}
_MD_NAMES = {
    "dice": "Dice",
    "hd95": "HD95 (mm)",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "volume_diff_ml": "Volume diff. (mL)",
    "pq_dsc": "Lesion-wise PQ (Dice)",
    "sq_dsc": "Lesion-wise Dice (matched)",
    "sq_hd95": "Lesion-wise HD95 (mm, matched)",
}


# --------------------------------------------------------------------------------------------------- metrics
def _check_empty(empty: str) -> None:
    if empty not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty must be one of {EMPTY_CONVENTIONS}, got {empty!r}")


def _check_hd95(hd95: str) -> None:
    if hd95 not in HD95_MODES:
        raise ValueError(f"hd95 must be one of {HD95_MODES}, got {hd95!r}")


def region_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], empty: str = "brats", hd95: str = "pooled"
) -> dict:
    """All metrics of one region: boolean masks of the same shape, voxel ``spacing`` in mm (one per axis),
    the lesion-wise ones included."""
    _check_empty(empty)
    _check_hd95(hd95)
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    nan = empty == "nan"
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    tp = int(np.count_nonzero(pred & ref))
    fp, fn = n_pred - tp, n_ref - tp
    tn = pred.size - tp - fp - fn
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = {"volume_diff_ml": (n_pred - n_ref) * voxel_ml}

    out["dice"] = dice(pred, ref, empty=math.nan if nan else 1.0)

    if n_pred and n_ref and (tp or hd95 == "max_directed"):
        out["hd95"] = hd95_mm(pred, ref, spacing, hd95)
    elif nan:
        out["hd95"] = math.nan
    else:
        out["hd95"] = 0.0 if n_pred == n_ref == 0 else BRATS_MAX_HD95

    if n_ref:
        out["sensitivity"] = tp / n_ref
    else:
        out["sensitivity"] = math.nan if nan else float(n_pred == 0)

    ref_negatives, pred_negatives = pred.size - n_ref, pred.size - n_pred
    if ref_negatives:
        out["specificity"] = tn / ref_negatives
    else:
        out["specificity"] = math.nan if nan else float(pred_negatives == 0)
    return out | _lesion_metrics(pred, ref, spacing, nan)


def _lesion_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], nan: bool) -> dict:
    """:func:`scripts.metrics.lesion_wise_metrics` with the ``brats`` convention's values for its edge cases
    unless ``nan``: no lesion anywhere scores 1 / 1 / 0 mm, an unmatched ``sq_hd95`` :data:`BRATS_MAX_HD95`."""
    out = lesion_wise_metrics(pred, ref, spacing)
    if nan:
        return out | {"sq_hd95": math.nan if math.isinf(out["sq_hd95"]) else out["sq_hd95"]}
    if math.isnan(out["pq_dsc"]):
        return out | {"pq_dsc": 1.0, "sq_dsc": 1.0, "sq_hd95": 0.0}
    return out | {"sq_hd95": BRATS_MAX_HD95 if math.isinf(out["sq_hd95"]) else out["sq_hd95"]}


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def label_map_metrics(
    pred_label: np.ndarray,
    ref_label: np.ndarray,
    spacing: Sequence[float],
    labels: Sequence[int] = BRATS2020_LABELS,
    ref_labels: Sequence[int] | None = None,
    empty: str = "brats",
    pred_name: str = "<prediction>",
    ref_name: str = "<reference>",
    hd95: str = "pooled",
) -> dict:
    """Flat dict of every ``COLUMNS`` entry for two 3D BraTS label maps of the same shape."""
    _check_empty(empty)
    labels = tuple(int(v) for v in labels)
    ref_labels = labels if ref_labels is None else tuple(int(v) for v in ref_labels)
    pred_regions = _regions(pred_label, labels, pred_name)
    ref_regions = _regions(ref_label, ref_labels, ref_name)
    row = {}
    per_region = {r: region_metrics(pred_regions[r], ref_regions[r], spacing, empty, hd95) for r in REGIONS}
    for m in METRICS:
        for r in REGIONS:
            row[f"{m}_{r}"] = float(per_region[r][m])
        row[f"{m}_mean"] = _nanmean([row[f"{m}_{r}"] for r in REGIONS])
    for m in LESION_METRICS:
        for r in REGIONS:
            row[f"{m}_{r}"] = per_region[r][m] if m in ("tp", "fp", "fn") else float(per_region[r][m])
    return row


def _regions(label: np.ndarray, labels: tuple, name: str) -> dict:
    """{TC, WT, ET: bool mask} from a label map; ``CaseError`` naming ``name`` on unexpected values."""
    label = np.asarray(label)
    if np.issubdtype(label.dtype, np.floating):
        problem = non_integer_labels(torch.from_numpy(np.ascontiguousarray(label)))
        if problem:
            raise CaseError(name, f"{problem}; expected {[0, *labels]}")
        label = label.astype(np.int64)
    from monai.data import MetaTensor

    try:
        regions = label_to_regions(
            MetaTensor(torch.from_numpy(np.ascontiguousarray(label))[None], meta={"filename_or_obj": name}), labels
        )
    except ValueError as e:
        msg = str(e)
        raise CaseError(name, msg[len(name) + 2 :] if msg.startswith(f"{name}: ") else msg) from e
    masks = regions.numpy() > 0.5
    return {r: masks[i] for i, r in enumerate(REGIONS)}


# ------------------------------------------------------------------------------------------------ one case
def _load_label_map(path) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(data, affine, spacing) of a 3D NIfTI label map; ``CaseError`` naming the file when it cannot be read."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=float)
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as e:  # nibabel, gzip, zlib and OS errors all mean "not a readable NIfTI"
        raise CaseError(path, f"cannot read NIfTI ({type(e).__name__}: {e})") from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(path, f"expected a 3D label map, got shape {tuple(data.shape)}")
    return data, affine, spacing


def evaluate_case(
    pred_path,
    ref_path,
    labels: Sequence[int] = BRATS2020_LABELS,
    empty: str = "brats",
    ref_labels: Sequence[int] | None = None,
    hd95: str = "pooled",
    image=None,
) -> dict:
    """Metrics of one prediction NIfTI against its reference NIfTI: a flat dict with every ``COLUMNS`` entry.

    ``labels`` is the prediction's (necrotic, oedema, enhancing) convention, ``ref_labels`` the reference's
    (defaults to ``labels``). Raises ``ValueError`` (a :class:`CaseError`) naming the file(s) when a file cannot
    be read, when shapes or affines differ (``scripts.conventions.AFFINE_ATOL_MM``), or when a label map holds
    values outside ``{0} | labels``. ``image``: the case's (first) image file, whose grid the prediction is
    written on; when prediction and reference grids differ, the file off the image's grid is blamed (a 2 mm
    reference, not the prediction), the prediction when no image is given.
    """
    _check_empty(empty)
    pred, pred_affine, _ = _load_label_map(pred_path)
    ref, ref_affine, spacing = _load_label_map(ref_path)
    if pred.shape != ref.shape or not affines_match(pred_affine, ref_affine):
        _raise_grid_mismatch((pred_path, pred.shape, pred_affine), (ref_path, ref.shape, ref_affine), image)
    return label_map_metrics(pred, ref, spacing, labels, ref_labels, empty, str(pred_path), str(ref_path), hd95)


def _grid_str(shape, affine) -> str:
    return f"shape {tuple(int(s) for s in shape)}, affine {_row_str(affine)}"


def _raise_grid_mismatch(pred: tuple, ref: tuple, image=None) -> None:
    """``CaseError`` for a prediction and a reference (``(path, shape, affine)`` each) on different grids,
    naming the reference when it is off the grid of the case's ``image`` and the prediction otherwise."""
    (pred_path, pred_shape, pred_affine), (ref_path, ref_shape, ref_affine) = pred, ref
    if image is not None and os.path.isfile(str(image)):
        try:
            header = nib.load(str(image))
            grid = (tuple(header.shape[:3]), np.asarray(header.affine, dtype=float))
        except Exception:  # an unreadable image leaves the blame where it was
            grid = None
        if grid is not None and (tuple(ref_shape) != grid[0] or not affines_match(ref_affine, grid[1])):
            raise CaseError(
                ref_path,
                f"reference {_grid_str(ref_shape, ref_affine)} is not on the grid of the case's image {image} "
                f"({_grid_str(*grid)}), which the prediction {pred_path} is on",
            )
    if tuple(pred_shape) != tuple(ref_shape):
        raise CaseError(
            pred_path, f"shape {tuple(pred_shape)} does not match the reference {ref_path} shape {tuple(ref_shape)}"
        )
    raise CaseError(
        pred_path,
        f"affine does not match the reference {ref_path} (largest difference "
        f"{np.abs(pred_affine - ref_affine).max():.4g} mm; {_row_str(pred_affine)} vs {_row_str(ref_affine)})",
    )


def _row_str(affine: np.ndarray) -> str:
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in affine[:3]) + "]"


# --------------------------------------------------------------------------------------------- a whole folder
@dataclass
class EvaluationResult:
    rows: list = field(default_factory=list)
    """One dict per evaluated case: ``case_id`` and every ``COLUMNS`` entry, sorted by case id."""
    summary: dict = field(default_factory=dict)
    """``{metric: {region: {mean, median, std, q1, q3, min, max, n}}}``, NaN left out (None when n == 0)."""
    failed: list = field(default_factory=list)
    """``{"case_id", "file", "problem"}`` for every matched case that could not be evaluated (and, from
    :func:`evaluate_pairs` ``failed=``, the cases that failed before, e.g. in inference)."""
    missing_predictions: list = field(default_factory=list)
    """``{"case_id", "file"}``: references with no prediction."""
    unmatched_predictions: list = field(default_factory=list)
    """``{"case_id", "file"}``: predictions with no reference (not evaluated)."""
    outputs: dict = field(default_factory=dict)
    """Written files: ``{"csv", "json", "md", "png"}`` -> path."""
    missing_sequences: dict | None = None
    """``{case_id: [missing sequences]}`` (:data:`~scripts.conventions.MODALITIES` names, ``[]`` for a complete
    case) of the evaluated cases when the run allows missing sequences, else None."""
    markdown: str = ""

    @property
    def ok(self) -> bool:
        """True when every matched case was evaluated, every reference had a prediction and some case was
        evaluated."""
        return bool(self.rows) and not self.failed and not self.missing_predictions

    def __getitem__(self, key):  # dict-style access too: result["rows"], result["failed"]
        return getattr(self, key)


def find_predictions(pred_dir) -> tuple[dict, list]:
    """``({case_id: path}, problems)`` for the NIfTI files directly in ``pred_dir`` (extensions in any letter case,
    hidden files left out); two files with the same case id are a problem (``{"case_id", "file", "problem"}``),
    not a guess."""
    found: dict[str, list[Path]] = {}
    for p in sorted(Path(pred_dir).iterdir()):
        if p.is_file() and not p.name.startswith(".") and strip_nifti(p.name) is not None:
            found.setdefault(case_id_from_path(p), []).append(p)
    return _unique(found, "prediction")


def find_references(ref_dir) -> tuple[dict, list]:
    """``({case_id: path}, problems)`` for the reference files under ``ref_dir``, listed by the rules of the
    dataset layouts (:func:`scripts.data.layouts.nifti_files`: suffixes and extensions in any letter case,
    symlinked folders followed, each real folder once): a label file (:func:`scripts.data.layouts.file_role`:
    ``<case_id>_seg``, ``<case_id>-SEG``, ``<case>/seg.nii.gz``) or a file named by its case id alone
    (``<case_id>.nii.gz``); a label file wins over a plain one of the same case (which may be an image).
    Modality files are images, not references; any other NIfTI file (``<case>/image.nii.gz``) is logged as
    ignored."""
    found: dict[str, list] = {}
    for p in nifti_files(ref_dir):
        cid, role = case_id_from_path(p), file_role(p)
        if role == LABEL_SUFFIX or (role is None and strip_nifti(p.name) == cid):
            found.setdefault(cid, []).append((0 if role else 1, p))
        elif role is None:
            logger.warning("file ignored: %s: named like no reference (<case_id>_seg.nii.gz or <case_id>.nii.gz)", p)
    best = {}
    for cid, items in found.items():
        rank = min(r for r, _ in items)
        best[cid] = [p for r, p in items if r == rank]
    return _unique(best, "reference")


def _case_image(ref: Path, case_id: str) -> str | None:
    """The case's T1 image beside its reference (``<id>_t1`` or ``<id>-t1n``, any letter case, ``.nii.gz`` or
    ``.nii``), whose grid tells which file to blame for a grid mismatch (:func:`evaluate_case`), or ``None``."""
    for path in sorted(Path(ref).parent.iterdir()):
        if file_role(path) == MODALITIES[0] and case_id_from_path(path) == case_id and path.is_file():
            return str(path)
    return None


def _unique(found: dict, what: str) -> tuple[dict, list]:
    chosen, problems = {}, []
    for cid, paths in sorted(found.items()):
        if len(paths) == 1:
            chosen[cid] = paths[0]
        else:
            problems.append(
                {"case_id": cid, "file": str(paths[0]), "problem": f"several {what} files: {[str(p) for p in paths]}"}
            )
    return chosen, problems


def summarize(rows: list[dict]) -> dict:
    """``{metric: {region|mean: {mean, median, std, q1, q3, min, max, n}}}`` over the rows, NaN left out.

    ``std`` is the sample standard deviation (0 for a single value); statistics of an empty set are None, so
    the JSON never holds NaN."""
    summary = {}
    for m in (*METRICS, *LESION_METRICS):
        regions = (*REGIONS, "mean") if m in METRICS else REGIONS
        summary[m] = {r: _statistics([row[f"{m}_{r}"] for row in rows]) for r in regions}
    return summary


def _statistics(values) -> dict:
    """{mean, median, std, q1, q3, min, max, n} of the finite ``values`` (None and n = 0 when there are none)."""
    vals = np.array(values, dtype=float)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return {s: None for s in _STATS[:-1]} | {"n": 0}
    q1, median, q3 = np.percentile(vals, [25, 50, 75])
    return {
        "mean": float(vals.mean()),
        "median": float(median),
        "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
        "q1": float(q1),
        "q3": float(q3),
        "min": float(vals.min()),
        "max": float(vals.max()),
        "n": int(vals.size),
    }


def summary_markdown(summary: dict, n_cases: int | None = None, empty: str = "brats") -> str:
    """Markdown table: rows = metric, columns = TC, WT, ET, mean; cells 'mean ± std (median m)'."""
    cols = (*REGIONS, "mean")
    lines = []
    if n_cases is not None:
        lines += [f"{n_cases} case(s); empty structures: {empty} convention; cells: mean ± std (median)", ""]
    lines += ["| metric | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in (*METRICS, *_MD_LESION_ROWS):
        fmt = _MD_FORMAT[m]
        cells = []
        for r in cols:
            s = summary[m].get(r, {"n": 0})
            if not s["n"]:
                cells.append("n/a")
                continue
            cell = f"{s['mean']:{fmt}} ± {s['std']:{fmt}} ({s['median']:{fmt}})"
            if n_cases is not None and s["n"] != n_cases:
                cell += f" n={s['n']}"
            cells.append(cell)
        lines.append(f"| {_MD_NAMES[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt_csv(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, ".10g")
    return str(v)


def write_csv(rows: list[dict], path) -> str:
    """One row per case, ``case_id`` then :data:`COLUMNS` (with ``missing_sequences`` after ``case_id`` when the
    rows have it: ``t1,t2``, empty for a complete case). (Not MONAI's ``MetricsSaver``: that saves an engine's
    metric handlers, and these metrics are computed afterwards on the written label maps in the input space.)"""
    columns = ("missing_sequences", *COLUMNS) if any("missing_sequences" in r for r in rows) else COLUMNS
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("case_id", *columns))
        for row in rows:
            writer.writerow([row["case_id"], *(_fmt_csv(row.get(c, "")) for c in columns)])
    return str(path)


def _missing_in_words(missing: Sequence[str]) -> str:
    """``["t1", "t2"]`` -> ``"T1, T2"``; ``[]`` -> ``"none"``."""
    return ", ".join(MODALITY_NAMES[MODALITIES.index(m)] for m in missing) or "none"


def _by_missing(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows grouped by their ``missing_sequences`` (``""``: complete cases first)."""
    groups: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (len(r["missing_sequences"]), r["missing_sequences"])):
        groups.setdefault(row["missing_sequences"], []).append(row)
    return groups


def missing_sequences_markdown(rows: list[dict]) -> str:
    """How many evaluated cases lacked sequences (imputed), which, and the mean Dice per set of missing
    sequences (rows with ``missing_sequences``)."""
    partial = [r for r in rows if r["missing_sequences"]]
    listed = ", ".join(f"{r['case_id']} ({_missing_in_words(r['missing_sequences'].split(','))})" for r in partial)
    lines = [f"{len(partial)} of {len(rows)} case(s) evaluated without some sequences (imputed)"
             + (f": {listed}" if listed else ""), ""]  # fmt: skip
    lines += ["| sequences missing | cases | " + " | ".join(f"Dice {r}" for r in REGIONS) + " |",
              "|---|---:|" + "---:|" * len(REGIONS)]  # fmt: skip
    for key, group in _by_missing(rows).items():
        dice = [_statistics([row[f"dice_{r}"] for row in group])["mean"] for r in REGIONS]
        cells = " | ".join("n/a" if d is None else f"{d:.3f}" for d in dice)
        lines.append(f"| {_missing_in_words(key.split(',') if key else [])} | {len(group)} | {cells} |")
    return "\n".join(lines) + "\n"


def _missing_sequences_summary(result: EvaluationResult) -> dict:
    """The summary JSON's entries about missing sequences (none when the run does not allow them):
    ``missing_sequences`` per case, ``n_cases_missing_sequences`` and ``dice_by_missing_sequences``."""
    if result.missing_sequences is None:
        return {}
    by_missing = {
        key or "none": {"n_cases": len(group)}
        | {r: _statistics([row[f"dice_{r}"] for row in group])["mean"] for r in REGIONS}
        for key, group in _by_missing(result.rows).items()
    }
    return {
        "missing_sequences": result.missing_sequences,
        "n_cases_missing_sequences": sum(1 for m in result.missing_sequences.values() if m),
        "dice_by_missing_sequences": by_missing,
    }


def write_boxplot(rows: list[dict], path) -> str:
    """Two panels, Dice and HD95, one box per region (NaN left out). Uses the Agg canvas directly, so it needs
    no display and leaves pyplot's global state alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (m, title) in enumerate((("dice", "Dice"), ("hd95", "HD95 (mm)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        data = []
        for r in REGIONS:
            vals = np.array([row[f"{m}_{r}"] for row in rows], dtype=float)
            data.append(vals[np.isfinite(vals)])
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(REGIONS) + 1), [f"{r}\n(n={len(d)})" for r, d in zip(REGIONS, data)])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if m == "dice":
            ax.set_ylim(-0.05, 1.05)
    fig.suptitle(f"{len(rows)} case(s)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return str(path)


def evaluate_folders(
    pred_dir,
    ref_dir,
    output_dir,
    labels: Sequence[int] = BRATS2020_LABELS,
    ref_labels: Sequence[int] | None = None,
    empty: str = "brats",
    plot: bool = True,
    hd95: str = "pooled",
) -> EvaluationResult:
    """Evaluate every prediction in ``pred_dir`` that has a reference under ``ref_dir``; write the outputs.

    Bad cases are skipped (one warning line each: case, file, problem) and listed in ``result.failed``;
    references without a prediction and predictions without a reference are listed too. Writes
    ``metrics_per_case.csv``, ``metrics_summary.json``, ``metrics_summary.md`` and (``plot``)
    ``metrics_boxplot.png`` into ``output_dir``, each atomically, from the cases that were evaluated.
    """
    _check_empty(empty)
    for d, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not Path(d).is_dir():
            raise FileNotFoundError(f"{d}: {what} folder does not exist")
    if _same_file(pred_dir, ref_dir):
        logger.warning(
            "warning: %s: the prediction folder is the reference folder; predictions that are the reference files "
            "themselves are not scored (failed)",
            pred_dir,
        )
    labels = tuple(int(v) for v in labels)
    ref_labels = labels if ref_labels is None else tuple(int(v) for v in ref_labels)
    result = EvaluationResult()
    preds, pred_problems = find_predictions(pred_dir)
    refs, ref_problems = find_references(ref_dir)
    for problem in pred_problems + ref_problems:
        _fail(result, problem["case_id"], problem["file"], problem["problem"])
    bad = {p["case_id"] for p in pred_problems + ref_problems}

    for cid in sorted(set(refs) - set(preds) - bad):
        result.missing_predictions.append({"case_id": cid, "file": str(refs[cid])})
        logger.warning("%s: no prediction for reference %s", cid, refs[cid])
    for cid in sorted(set(preds) - set(refs) - bad):
        result.unmatched_predictions.append({"case_id": cid, "file": str(preds[cid])})
        logger.warning("%s: no reference for prediction %s (not evaluated)", cid, preds[cid])

    pairs = [
        {"case_id": cid, "pred": preds[cid], "ref": refs[cid], "image": _case_image(refs[cid], cid)}
        for cid in sorted((set(preds) & set(refs)) - bad)
    ]
    return _evaluate_and_write(result, pairs, output_dir, labels, ref_labels, empty, plot, hd95)


def evaluate_pairs(
    pairs: Sequence[dict],
    output_dir,
    labels: Sequence[int] = BRATS2020_LABELS,
    ref_labels: Sequence[int] | None = None,
    empty: str = "brats",
    plot: bool = True,
    failed: Sequence[dict] = (),
    hd95: str = "pooled",
    missing_sequences: bool = False,
) -> EvaluationResult:
    """Evaluate explicit (prediction, reference) pairs and write the same outputs as :func:`evaluate_folders`.

    ``pairs``: dicts ``{"case_id", "pred", "ref"}``, optionally with the pair's own ``labels`` / ``ref_labels``
    convention (e.g. a datalist item's ``"labels": [1, 2, 3]``). A prediction file that does not exist is
    listed in ``missing_predictions``; a pair that cannot be evaluated is skipped with one line (case, file,
    problem) and listed in ``failed``. ``failed`` are failures recorded before (e.g. cases the inference
    skipped): they are listed in the outputs and make ``result.ok`` false. ``missing_sequences``: the cases may
    lack sequences (a pair's ``missing_sequences``, :data:`~scripts.conventions.MODALITIES` names); the outputs
    record them per case and count them (:func:`missing_sequences_markdown`).
    """
    _check_empty(empty)
    labels = tuple(int(v) for v in labels)
    ref_labels = labels if ref_labels is None else tuple(int(v) for v in ref_labels)
    result = EvaluationResult(failed=[dict(f) for f in failed], missing_sequences={} if missing_sequences else None)
    present = []
    for pair in pairs:
        if Path(pair["pred"]).is_file():
            present.append(pair)
        else:
            result.missing_predictions.append({"case_id": pair["case_id"], "file": str(pair["ref"])})
            logger.warning("%s: no prediction %s for reference %s", pair["case_id"], pair["pred"], pair["ref"])
    return _evaluate_and_write(result, present, output_dir, labels, ref_labels, empty, plot, hd95)


def evaluate_datalist(
    items: Sequence[dict],
    pred_dir,
    output_dir,
    labels: Sequence[int] = BRATS2020_LABELS,
    empty: str = "brats",
    plot: bool = True,
    failed: Sequence[dict] = (),
    image_key: str = "image",
    label_key: str = "label",
    hd95: str = "pooled",
    missing_sequences: bool = False,
) -> EvaluationResult:
    """Evaluate the predictions the inference config wrote into ``pred_dir`` for datalist ``items`` against the
    items' ``label`` files (see :func:`evaluate_pairs`).

    The prediction of an item is ``pred_dir/<case_id>.nii.gz`` (the item's ``case_id``, else its first image
    file's: the name ``scripts.io.case_name_formatter`` gives it); prediction and reference use the item's
    ``labels`` convention when it has one, ``labels`` otherwise. Items whose case is in ``failed`` (e.g.
    skipped by the inference) are not evaluated; items without a label are failures. An entry listed twice is
    evaluated once; two different entries with one case id are a failure. A grid mismatch blames the file off
    the grid of the item's first image (see :func:`evaluate_case`). ``missing_sequences``
    (``--allow_missing_modalities``): a case given as one file per sequence may lack some of them; the outputs
    record which (:func:`evaluate_pairs`).
    """
    failed = [dict(f) for f in failed]
    skip = {f["case_id"] for f in failed}
    pairs, seen = [], {}
    for item in items:
        cid = case_id_of(item, image_key)
        if cid in skip:
            continue
        files = item.get(image_key)
        first = files[0] if isinstance(files, (list, tuple)) else files
        problem = None if item.get(label_key) else f"no '{label_key}' (reference segmentation) in the datalist entry"
        if cid in seen:
            if seen[cid] == item:
                logger.warning("%s: listed twice in the datalist; evaluated once", cid)
                continue
            problem = f"duplicate case id: another datalist entry ({seen[cid].get(label_key)}) has it too"
        seen.setdefault(cid, item)
        if problem:
            record = failure(cid, first, problem)
            failed.append(record)
            logger.warning("case skipped: %s", format_failure(record))
            continue
        pair = {
            "case_id": cid,
            "pred": str(Path(pred_dir) / prediction_name(cid)),
            "ref": str(item[label_key]),
            "image": str(first),
        }
        if item.get("labels") is not None:
            pair["labels"] = pair["ref_labels"] = [int(v) for v in item["labels"]]
        if missing_sequences:
            pair["missing_sequences"] = [MODALITIES[i] for i in missing_modalities(list(np.atleast_1d(files)))]
        pairs.append(pair)
    return evaluate_pairs(pairs, output_dir, labels, None, empty, plot, failed, hd95, missing_sequences)


def _evaluate_and_write(
    result: EvaluationResult,
    pairs: Sequence[dict],
    output_dir,
    labels: tuple,
    ref_labels: tuple,
    empty: str,
    plot: bool,
    hd95: str = "pooled",
) -> EvaluationResult:
    """Evaluate ``pairs`` into ``result`` (rows and failures) and write the CSV, JSON, markdown and box plot."""
    _check_hd95(hd95)
    progress = CaseProgress(len(pairs), logger)
    for pair in pairs:
        cid = pair["case_id"]
        if _same_file(pair["pred"], pair["ref"]):
            _fail(result, cid, pair["pred"], SAME_FILE_PROBLEM)
            progress.case_done(cid, "failed")
            continue
        try:
            labels_i, ref_labels_i = pair.get("labels", labels), pair.get("ref_labels", ref_labels)
            row = evaluate_case(pair["pred"], pair["ref"], labels_i, empty, ref_labels_i, hd95, pair.get("image"))
        except CaseError as e:
            _fail(result, cid, e.path, e.problem)
            progress.case_done(cid, "failed")
            continue
        except Exception as e:  # anything else about one case must not stop the others
            _fail(result, cid, str(pair["pred"]), f"{type(e).__name__}: {e}")
            progress.case_done(cid, "failed")
            continue
        if result.missing_sequences is not None:
            result.missing_sequences[cid] = list(pair.get("missing_sequences", []))
            row["missing_sequences"] = ",".join(result.missing_sequences[cid])
        result.rows.append({"case_id": cid, **row})
        progress.case_done(cid, None, f"Dice TC/WT/ET {row['dice_TC']:.3f}/{row['dice_WT']:.3f}/{row['dice_ET']:.3f}")
    result.rows.sort(key=lambda r: r["case_id"])

    result.summary = summarize(result.rows)
    result.markdown = summary_markdown(result.summary, len(result.rows), empty)
    if result.missing_sequences is not None:
        result.markdown += "\n" + missing_sequences_markdown(result.rows)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.outputs["csv"] = write_csv(result.rows, out / "metrics_per_case.csv")
    result.outputs["json"] = write_json(
        {
            "empty_convention": empty,
            "hd95": hd95,
            "labels": list(labels),
            "ref_labels": list(ref_labels),
            "n_cases": len(result.rows),
            "metrics": result.summary,
            "failed": result.failed,
            "missing_predictions": result.missing_predictions,
            "unmatched_predictions": result.unmatched_predictions,
            **_missing_sequences_summary(result),
        },
        out / "metrics_summary.json",
    )
    md_path = out / "metrics_summary.md"
    with atomic_path(md_path) as tmp, open(tmp, "w") as f:
        f.write("# Segmentation metrics\n\n" + result.markdown)
    result.outputs["md"] = str(md_path)
    if plot:
        result.outputs["png"] = write_boxplot(result.rows, out / "metrics_boxplot.png")
    return result


SAME_FILE_PROBLEM = (
    "the prediction and the reference are the same file (a perfect score would mean nothing; check --pred_dir and "
    "--ref_dir)"
)


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _fail(result: EvaluationResult, case_id: str, file, problem: str) -> None:
    result.failed.append({"case_id": case_id, "file": str(file), "problem": problem})
    logger.warning("case %s skipped: %s: %s", case_id, file, problem)


# --------------------------------------------------------------------------------------------------- report
def accounting(result: EvaluationResult) -> str:
    """``N case(s) found, M evaluated, K skipped (F failed, R reference(s) without a prediction, P prediction(s)
    without a reference)``, which adds up: every case found (a prediction, a reference or a failure recorded
    before) is evaluated or skipped for one of these reasons."""
    reasons = (
        (len(result.failed), "failed"),
        (len(result.missing_predictions), "reference(s) without a prediction"),
        (len(result.unmatched_predictions), "prediction(s) without a reference"),
    )
    skipped = sum(n for n, _ in reasons)
    why = ", ".join(f"{n} {reason}" for n, reason in reasons if n)
    line = f"{len(result.rows) + skipped} case(s) found, {len(result.rows)} evaluated, {skipped} skipped"
    return line + (f" ({why})" if why else "")


def print_report(result: EvaluationResult) -> None:
    """The metrics table, the written files, the :func:`accounting` line, predictions/references without a
    partner and one line per failed case (``case: file: problem``), on stdout."""
    print()
    print(result.markdown, end="")
    print(f"\nwritten: {', '.join(result.outputs.values())}")
    print(f"\n{accounting(result)}")
    if result.unmatched_predictions:
        print(f"\n{len(result.unmatched_predictions)} prediction(s) without a reference (not evaluated):")
        for m in result.unmatched_predictions:
            print(f"  {m['case_id']}: {m['file']}")
    if result.missing_predictions:
        print(f"\n{len(result.missing_predictions)} reference(s) without a prediction:")
        for m in result.missing_predictions:
            print(f"  {m['case_id']}: {m['file']}")
    if result.failed:
        print(f"\n{len(result.failed)} case(s) FAILED:")
        for f in result.failed:
            print(f"  {format_failure(f)}")
    if not result.rows:
        print("\nno case was evaluated")
    sys.stdout.flush()


def finish(result: EvaluationResult) -> EvaluationResult:
    """End of the evaluate config: :func:`print_report`, then ``SystemExit(1)`` unless ``result.ok`` (every case
    evaluated), so ``python -m monai.bundle run evaluating`` exits non-zero when a case was bad."""
    print_report(result)
    if not result.ok:
        raise SystemExit(1)
    return result


# --------------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.evaluation",
        description="Dice, HD95, sensitivity, specificity and volume difference of BraTS segmentations (TC, WT, ET).",
    )
    parser.add_argument("--pred_dir", required=True, help="folder of <case_id>.nii.gz predictions")
    parser.add_argument("--ref_dir", required=True, help="references: <case_id>_seg.nii.gz files or BraTS case folders")
    parser.add_argument("--output_dir", required=True, help="where the CSV, JSON, markdown and box plot go")
    parser.add_argument(
        "--labels",
        type=int,
        nargs=3,
        default=list(BRATS2020_LABELS),
        metavar=("NCR", "ED", "ET"),
        help="prediction labels (necrotic, oedema, enhancing); default 1 2 4",
    )
    parser.add_argument(
        "--ref_labels",
        type=int,
        nargs=3,
        default=None,
        metavar=("NCR", "ED", "ET"),
        help="reference labels; default: --labels (use 1 2 3 for BraTS 2021+ references)",
    )
    parser.add_argument(
        "--empty",
        choices=EMPTY_CONVENTIONS,
        default="brats",
        help="empty-structure convention (default brats: Dice 1/0, HD95 0/373.13 mm)",
    )
    parser.add_argument(
        "--hd95",
        choices=HD95_MODES,
        default="pooled",
        help="HD95 definition: pooled (official BraTS, default) or max_directed (larger directed 95th percentile)",
    )
    parser.add_argument("--no_plot", action="store_true", help="skip the box plot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    try:
        result = evaluate_folders(
            args.pred_dir,
            args.ref_dir,
            args.output_dir,
            args.labels,
            args.ref_labels,
            args.empty,
            not args.no_plot,
            args.hd95,
        )
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
