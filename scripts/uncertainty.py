"""Uncertainty from flip test-time augmentation (:class:`scripts.inferers.FlipTTAInferer`).

Every mirrored pass gives region probabilities p_k = sigmoid(logits_k) (TC, WT, ET). Per voxel and region:

* the segmentation is the one ``--tta true`` inference gives: sigmoid(mean of the logits) > 0.5;
* the uncertainty map is the binary entropy (bits, 0 to 1) of the mean probability over the passes, high where
  the passes disagree or are unsure;
* the region's score is the TTA disagreement: the fraction of the voxels predicted by at least one pass that
  not every pass predicts (0 = all passes agree, 1 = no voxel is agreed on; 0 when no pass predicts the region).

The case score is the largest region score. :func:`review_scores` adds the other candidate scores of a case
(:data:`REVIEW_SCORES`) that ``benchmarks/review_flag.py`` compares against measured Dice to choose the report's
review flag (:func:`load_calibration`); :func:`flag_text` says what the flag means on the page.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scripts.conventions import REGIONS
from scripts.inferers import FlipTTAInferer
from scripts.metrics import lesions

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.25
"""Case flag threshold on the TTA disagreement when no calibration file is given; a starting point, not
calibrated."""
DEFAULT_SCORE = "disagreement"
"""The review score used when no calibration file is given."""
REVIEW_SCORES = {
    "disagreement": "the largest TTA disagreement over TC, WT and ET (fraction of the voxels some flipped pass "
    "predicts but not every pass does)",
    "disagreement_WT": "the TTA disagreement of the whole tumour",
    "entropy_WT": "the mean TTA entropy (bits) inside the predicted whole tumour",
    "uncertain_volume_WT": "the volume of whole-tumour entropy above 0.5 bit over the predicted whole-tumour volume",
    "fragmentation_WT": "the fraction of the predicted whole-tumour volume outside its largest piece",
}
"""Candidate case scores (higher = more suspect) and their meaning in words. A case with no predicted whole
tumour scores 1 on the whole-tumour scores (nothing to trust)."""


@dataclass
class TTAResult:
    logits: torch.Tensor
    """(B, R, *S) mean logits over the passes (the TTA prediction)."""
    entropy: torch.Tensor
    """(B, R, *S) binary entropy of the mean probability, in bits."""
    region_scores: dict = field(default_factory=dict)
    """{region: TTA disagreement} of the first item of the batch."""
    passes: int = 0

    def case_score(self) -> float:
        return max(self.region_scores.values()) if self.region_scores else 0.0


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of Bernoulli probabilities ``p`` (0 at p = 0 or 1, 1 at p = 0.5)."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def tta_uncertainty(inputs: torch.Tensor, network, tta: FlipTTAInferer) -> TTAResult:
    """Run every pass of ``tta`` once and collect the mean logits, the entropy map and the region scores."""
    sum_logits = sum_prob = agree = seen = None
    n = 0
    for logits in tta.passes(inputs, network):
        logits = logits.float()
        prob, mask = torch.sigmoid(logits), logits > 0
        if n == 0:
            sum_logits, sum_prob, agree, seen = logits.clone(), prob, mask.clone(), mask.clone()
        else:
            sum_logits += logits
            sum_prob = sum_prob + prob
            agree &= mask
            seen |= mask
        n += 1
    scores = {}
    for i, region in enumerate(REGIONS):
        union = int(seen[0, i].sum())
        scores[region] = 1.0 - int(agree[0, i].sum()) / union if union else 0.0
    return TTAResult(sum_logits / n, binary_entropy(sum_prob / n), scores, n)


def review_scores(result: TTAResult) -> dict:
    """Every score of :data:`REVIEW_SCORES` for the first item of ``result``."""
    wt = REGIONS.index("WT")
    mask = (result.logits[0, wt] > 0).cpu().numpy()
    entropy = result.entropy[0, wt].cpu().numpy()
    scores = {"disagreement": result.case_score(), "disagreement_WT": result.region_scores.get("WT", 0.0)}
    volume = int(mask.sum())
    if not volume:
        return scores | {k: 1.0 for k in ("entropy_WT", "uncertain_volume_WT", "fragmentation_WT")}
    pieces, n = lesions(mask)
    largest = int(np.bincount(pieces.ravel())[1:].max()) if n else 0
    scores["entropy_WT"] = float(entropy[mask].mean())
    scores["uncertain_volume_WT"] = float((entropy > 0.5).sum()) / volume
    scores["fragmentation_WT"] = 1.0 - largest / volume
    return scores


@dataclass
class Calibration:
    """The review flag: ``score`` (a key of :data:`REVIEW_SCORES`) above ``threshold`` flags a case. A
    calibration file (``benchmarks/review_flag.py``) adds what it was measured on: ``dice_cutoff`` (a case is
    bad when its WT Dice is below it), ``cases``, ``bad``, ``sensitivity``, ``specificity``, ``weights_md5``."""

    score: str = DEFAULT_SCORE
    threshold: float = DEFAULT_THRESHOLD
    measured: dict = field(default_factory=dict)
    source: str = ""

    def flags(self, scores: dict) -> bool:
        return scores[self.score] > self.threshold


def load_calibration(path, threshold=None, weights_md5: str = "", tta_axes=None) -> Calibration:
    """The review flag of the calibration JSON at ``path`` (``None``/missing: the uncalibrated default).
    A ``threshold`` given by the user replaces the calibrated one (the page then says it is not calibrated);
    a file calibrated for other weights (``weights_md5``) or other TTA flips (``tta_axes``) is ignored with a
    warning."""
    cal = Calibration()
    if path and Path(path).is_file():
        data = json.loads(Path(path).read_text())
        if data.get("score") not in REVIEW_SCORES:
            raise ValueError(f"{path}: review score {data.get('score')!r} is not one of {sorted(REVIEW_SCORES)}")
        other = []
        if weights_md5 and data.get("weights_md5", weights_md5) != weights_md5:
            other.append(f"weights md5 {data['weights_md5']}")
        if tta_axes is not None and list(data.get("tta_axes", tta_axes)) != list(tta_axes):
            other.append(f"TTA axes {data['tta_axes']}")
        if other:
            logger.warning("%s: calibrated for other %s; review flag not calibrated", path, " and ".join(other))
        else:
            cal = Calibration(data["score"], float(data["threshold"]), data, str(path))
    elif path:
        logger.warning("%s: no review flag calibration file; review flag not calibrated", path)
    if threshold is not None:
        cal = Calibration(cal.score, float(threshold))
    return cal


def flag_text(cal: Calibration, scores: dict) -> str:
    """One paragraph for the page: the score, the threshold, the decision and what the flag is worth."""
    value, flagged = scores[cal.score], cal.flags(scores)
    head = (f"Review score {value:.3f} ({REVIEW_SCORES[cal.score]}) is {'above' if flagged else 'at or below'} "
            f"the threshold {cal.threshold:.3g}: "
            + ("REVIEW: check this segmentation carefully." if flagged else "not flagged."))  # fmt: skip
    m = cal.measured
    if not m:
        return head + " The threshold is not calibrated: the flag's reliability is unknown."
    return head + (
        f" Calibrated on {m['cases']} held-out synthetic cases ({m['bad']} with WT Dice < {m['dice_cutoff']:g}): "
        f"sensitivity {m['sensitivity']:.2f}, specificity {m['specificity']:.2f}."
        + _real_cases_text(m.get("real_leave_one_out", []))
        + " So few cases give a rough guide, not a guarantee: an unflagged case still needs a reader's check."
    )


def _real_cases_text(rows: list) -> str:
    """`` On 2 real cases (leave-one-out) it was right on 1.`` or ``""``."""
    if not rows:
        return ""
    return f" On {len(rows)} real cases (leave-one-out) it was right on {sum(bool(r['correct']) for r in rows)}."
