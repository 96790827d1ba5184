"""The official BraTS definitions in scripts.metrics: pooled HD95, lesion-wise metrics (hand-made volumes whose
values follow from the definitions), and the cross-check against the official package on the real case."""

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import brats_official_crosscheck as crosscheck
from scripts.metrics import hd95_mm, lesion_wise_metrics, match_lesions

ROOT = Path(__file__).resolve().parents[1]


def _cube(mask, corner, size):
    mask[tuple(slice(c, c + size) for c in corner)] = True
    return mask


def test_lesion_wise_counts_and_panoptic_quality():
    ref = np.zeros((40, 40, 40), bool)
    _cube(ref, (2, 2, 2), 3)  # lesion A, found exactly
    _cube(ref, (20, 20, 20), 2)  # lesion B, missed
    pred = _cube(np.zeros_like(ref), (2, 2, 2), 3)
    _cube(pred, (30, 5, 30), 2)  # spurious lesion C
    out = lesion_wise_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert (out["tp"], out["fp"], out["fn"]) == (1, 1, 1)
    assert out["sq_dsc"] == 1.0 and out["sq_hd95"] == 0.0
    assert out["pq_dsc"] == pytest.approx(1.0 / (1 + 0.5 + 0.5))  # sq x tp / (tp + fp/2 + fn/2)


def test_lesions_are_26_connected_and_matched_one_to_one():
    ref = np.zeros((20, 20, 20), bool)
    ref[5, 5, 5] = ref[6, 6, 6] = True  # touching by a corner: one lesion with 26-connectivity
    pred = np.zeros_like(ref)
    pred[5, 5, 5] = True
    pred[6, 6, 6] = False
    pairs, _, _, n_pred, n_ref = match_lesions(pred, ref)
    assert n_ref == 1 and n_pred == 1 and len(pairs) == 1
    assert pairs[0][2] == pytest.approx(2 * 1 / (1 + 2))

    # one reference lesion split in two predicted parts: the part with the higher Dice is matched, the other
    # is a false positive (no many-to-one merging)
    ref = _cube(np.zeros((30, 30, 30), bool), (5, 5, 5), 6)
    pred = np.zeros_like(ref)
    pred[5:11, 5:11, 5:9] = True  # 144 voxels of the 216
    pred[5:11, 5:11, 10:11] = True  # 36 voxels, separated by an empty plane
    out = lesion_wise_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert (out["tp"], out["fp"], out["fn"]) == (1, 1, 0)
    assert out["sq_dsc"] == pytest.approx(2 * 144 / (144 + 216))


def test_lesion_wise_edge_cases_follow_the_official_package():
    empty = np.zeros((10, 10, 10), bool)
    none = lesion_wise_metrics(empty, empty, (1, 1, 1))
    assert (none["tp"], none["fp"], none["fn"]) == (0, 0, 0)
    assert math.isnan(none["pq_dsc"]) and math.isnan(none["sq_dsc"]) and math.isnan(none["sq_hd95"])
    one = _cube(empty.copy(), (2, 2, 2), 2)
    missed = lesion_wise_metrics(empty, one, (1, 1, 1))
    assert (missed["tp"], missed["fn"]) == (0, 1) and missed["pq_dsc"] == 0.0 and math.isinf(missed["sq_hd95"])


def test_pooled_hd95_is_the_percentile_of_both_directions():
    ref = np.zeros((12, 12, 12), bool)
    ref[2, 2, 2] = True
    pred = np.zeros_like(ref)
    pred[2:6, 2, 2] = True  # surface distances pred -> ref 0, 2, 4, 6 mm (2 mm voxels), ref -> pred 0
    spacing = (2.0, 1.0, 1.0)
    assert hd95_mm(pred, ref, spacing) == pytest.approx(np.percentile([0, 2, 4, 6, 0], 95))
    assert hd95_mm(pred, ref, spacing, "max_directed") == pytest.approx(np.percentile([0, 2, 4, 6], 95))
    with pytest.raises(ValueError, match="hd95 mode"):
        hd95_mm(pred, ref, spacing, "mean")


@pytest.mark.slow
def test_cross_check_with_the_official_package_on_the_real_case():
    if not crosscheck.REAL_CASE.is_dir():
        pytest.skip(f"real case not found at {crosscheck.REAL_CASE}")
    if not crosscheck.official_available():
        pytest.skip(
            f"official package's environment not found at {crosscheck.DEFAULT_VENV} "
            "(make it with: python benchmarks/brats_official_crosscheck.py)"
        )
    pairs = crosscheck.real_case_pairs()
    rows = crosscheck.compare(pairs, crosscheck.official_metrics(pairs, crosscheck.venv_python()))
    assert len(rows) == 5 * 3 * len(crosscheck.COMPARED)
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad
    dice = [r for r in rows if r["metric"] == "global_bin_dsc" and not math.isnan(r["official"])]
    assert len(dice) >= 10 and max(r["diff"] for r in dice) <= 1e-3


def test_one_dice_for_arrays_and_tensors():
    """``scripts.metrics.dice``, the one Dice of the bundle (evaluation, robustness, benchmarks)."""
    import torch

    from scripts.metrics import dice

    a, b = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)
    assert dice(a, b) == 1.0 and math.isnan(dice(a, b, empty=math.nan))
    a[0], b[:2] = True, True  # 16 and 32 voxels, 16 shared
    assert dice(a, b) == pytest.approx(2 * 16 / 48)
    assert dice(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(2 * 16 / 48)
    assert dice(a.astype(np.uint8) * 4, b) == pytest.approx(2 * 16 / 48)  # non-zero is inside
    assert dice(a, np.zeros_like(b)) == 0.0
