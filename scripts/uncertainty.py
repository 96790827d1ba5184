"""Uncertainty from flip test-time augmentation (:class:`scripts.inferers.FlipTTAInferer`).

Every mirrored pass gives region probabilities p_k = sigmoid(logits_k) (TC, WT, ET). Per voxel and region:

* the segmentation is the one ``--tta true`` inference gives: sigmoid(mean of the logits) > 0.5;
* the uncertainty map is the binary entropy (bits, 0 to 1) of the mean probability over the passes, high where
  the passes disagree or are unsure;
* the region's score is the TTA disagreement: the fraction of the voxels predicted by at least one pass that
  not every pass predicts (0 = all passes agree, 1 = no voxel is agreed on; 0 when no pass predicts the region).

The case score is the largest region score, and a case is flagged uncertain when it exceeds ``threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scripts.conventions import REGIONS
from scripts.inferers import FlipTTAInferer

DEFAULT_THRESHOLD = 0.25
"""Case flag threshold on the TTA disagreement; a starting point, not calibrated on real cases."""


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
