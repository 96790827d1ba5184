"""Region metrics on top of MONAI's: HD95 in millimetres whatever the voxel spacing (the training handler), and
the official BraTS definitions used by :mod:`scripts.evaluation`: the pooled HD95 and the lesion-wise metrics."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler
from monai.metrics import HausdorffDistanceMetric
from monai.metrics.utils import get_mask_edges, get_surface_distance
from monai.utils import MetricReduction
from scipy import ndimage
from scipy.optimize import linear_sum_assignment


class SpacingAwareHausdorffDistanceMetric(HausdorffDistanceMetric):
    """``HausdorffDistanceMetric`` that reads the voxel spacing from the prediction's metadata (MetaTensor
    affine) when none is passed, so distances come out in millimetres rather than voxels."""

    def _compute_tensor(self, y_pred, y, **kwargs):
        if kwargs.get("spacing") is None and isinstance(y_pred, MetaTensor):
            kwargs["spacing"] = [float(s) for s in y_pred.pixdim]
        return super()._compute_tensor(y_pred, y, **kwargs)


class HD95(IgniteMetricHandler):
    """Ignite handler: 95th-percentile Hausdorff distance in mm between binary prediction and label.

    Inputs from ``output_transform``: (B, C, *spatial) binarised prediction and label, MetaTensors carrying
    their affine. Cases where the structure is empty in the prediction or the label give NaN and are left
    out of the mean.
    """

    def __init__(
        self,
        include_background: bool = True,
        percentile: float = 95.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = SpacingAwareHausdorffDistanceMetric(
            include_background=include_background, percentile=percentile, reduction=reduction
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


# ------------------------------------------------------------------------------ official BraTS definitions
HD95_MODES = ("pooled", "max_directed")
"""``pooled``: the 95th percentile of the surface distances of both directions pooled (the official BraTS
evaluation, ``brats-evaluation`` / panoptica, and medpy); ``max_directed``: the larger of the two directed 95th
percentiles (MONAI's ``HausdorffDistanceMetric``, never smaller than ``pooled``)."""
LESION_METRICS = ("pq_dsc", "sq_dsc", "sq_hd95", "tp", "fp", "fn")
"""Lesion-wise metrics of the official BraTS 2023+ evaluation, by their panoptica names."""
_MATCH_THRESHOLD = 1e-6
"""Minimum Dice for a (reference, prediction) lesion pair to be matched (the official ``matching_threshold``)."""


def dice(pred, ref, empty: float = 1.0) -> float:
    """Dice of two masks of one shape (numpy arrays or torch tensors, non-zero = inside).

    Args:
        pred: the predicted mask.
        ref: the reference mask.
        empty: the value when both masks are empty (1.0, BraTS; ``math.nan`` leaves the case out of means).
    """
    p = pred.bool() if hasattr(pred, "bool") and not isinstance(pred, np.ndarray) else np.asarray(pred, bool)
    r = ref.bool() if hasattr(ref, "bool") and not isinstance(ref, np.ndarray) else np.asarray(ref, bool)
    total = int(p.sum()) + int(r.sum())
    return empty if total == 0 else 2.0 * int((p & r).sum()) / total


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every surface voxel of ``pred`` to the surface of ``ref``, and from ``ref`` to
    ``pred``: surfaces by binary erosion (6-connectivity), Euclidean distance transforms with the voxel
    ``spacing``, with MONAI's ``get_mask_edges`` / ``get_surface_distance``. Both masks must be non-empty."""
    edges_pred, edges_ref = get_mask_edges(pred, ref, crop=True)
    spacing = [float(s) for s in spacing]
    d_pred = get_surface_distance(edges_pred, edges_ref, distance_metric="euclidean", spacing=spacing)
    d_ref = get_surface_distance(edges_ref, edges_pred, distance_metric="euclidean", spacing=spacing)
    return np.asarray(d_pred, float), np.asarray(d_ref, float)


def hd95_mm(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], mode: str = "pooled") -> float:
    """95th-percentile Hausdorff distance (mm) of two non-empty boolean masks (see :data:`HD95_MODES`)."""
    if mode not in HD95_MODES:
        raise ValueError(f"hd95 mode must be one of {HD95_MODES}, got {mode!r}")
    d_pred, d_ref = surface_distances(np.asarray(pred, bool), np.asarray(ref, bool), spacing)
    if mode == "pooled":
        return float(np.percentile(np.concatenate([d_pred, d_ref]), 95))
    return float(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)))


def lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components with 26-connectivity (the official evaluation's cc3d default in 3D)."""
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))


def match_lesions(pred: np.ndarray, ref: np.ndarray) -> tuple[list, np.ndarray, np.ndarray, int, int]:
    """One-to-one matching of the lesions (connected components) of two boolean masks that maximises the
    summed Dice (Hungarian algorithm), pairs with Dice above 1e-6 only, as the official evaluation does.

    Returns ``(pairs, pred_labels, ref_labels, n_pred, n_ref)``: ``pairs`` lists ``(ref_id, pred_id, dice)``."""
    pred_lab, n_pred = lesions(pred)
    ref_lab, n_ref = lesions(ref)
    if not n_pred or not n_ref:
        return [], pred_lab, ref_lab, n_pred, n_ref
    overlap = np.bincount(ref_lab.ravel() * (n_pred + 1) + pred_lab.ravel(), minlength=(n_ref + 1) * (n_pred + 1))
    overlap = overlap.reshape(n_ref + 1, n_pred + 1)[1:, 1:]
    sizes_ref = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)[1:]
    sizes_pred = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)[1:]
    dice = 2.0 * overlap / (sizes_ref[:, None] + sizes_pred[None, :])
    cost = np.where(dice > _MATCH_THRESHOLD, 1.0 - dice, 1.0 + _MATCH_THRESHOLD)
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(r) + 1, int(c) + 1, float(dice[r, c])) for r, c in zip(rows, cols) if cost[r, c] < 1.0]
    return pairs, pred_lab, ref_lab, n_pred, n_ref


def lesion_wise_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict:
    """The official BraTS 2023+ lesion-wise metrics of one region (boolean masks), as panoptica defines them:

    * ``tp``, ``fp``, ``fn``: matched lesion pairs, unmatched predicted lesions, unmatched reference lesions
      (lesions = 26-connected components, matched by :func:`match_lesions`);
    * ``sq_dsc``, ``sq_hd95``: mean Dice and mean pooled HD95 (mm) over the matched pairs, each pair's
      lesions alone;
    * ``pq_dsc`` = ``sq_dsc`` x RQ with RQ = tp / (tp + fp/2 + fn/2).

    With no matched pair: ``sq_dsc = pq_dsc = 0`` and ``sq_hd95 = inf`` when either mask has a lesion, and all
    three NaN when neither has one (the official edge cases; :func:`scripts.evaluation.region_metrics` maps
    them to its empty-structure convention)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    pairs, pred_lab, ref_lab, n_pred, n_ref = match_lesions(pred, ref)
    tp = len(pairs)
    out = {"tp": tp, "fp": n_pred - tp, "fn": n_ref - tp}
    if not tp:
        none = n_pred + n_ref == 0
        return out | {
            "sq_dsc": math.nan if none else 0.0,
            "pq_dsc": math.nan if none else 0.0,
            "sq_hd95": math.nan if none else math.inf,
        }
    hd95s = []
    for ref_id, pred_id, _ in pairs:
        box = _pair_box(ref_lab == ref_id, pred_lab == pred_id)
        hd95s.append(hd95_mm(pred_lab[box] == pred_id, ref_lab[box] == ref_id, spacing))
    out["sq_dsc"] = float(np.mean([d for _, _, d in pairs]))
    out["sq_hd95"] = float(np.mean(hd95s))
    out["pq_dsc"] = out["sq_dsc"] * tp / (tp + 0.5 * out["fp"] + 0.5 * out["fn"])
    return out


def _pair_box(a: np.ndarray, b: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    """Bounding box of ``a | b`` plus ``margin`` voxels (exact for surface distances: a background margin)."""
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = idx.max(0) + margin + 1
    return tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
