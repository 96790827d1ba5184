"""Inference helpers MONAI lacks: flip test-time augmentation around any inferer."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from monai.inferers import Inferer


class FlipTTAInferer(Inferer):
    """Average an inferer's logits over all flips of the given spatial axes (2^len(axes) passes).

    ``inputs``: (B, C, *spatial); the result has the shape of ``inferer(inputs, network)``. Each flipped
    prediction is flipped back before averaging. With ``spatial_axes=(0, 1, 2)`` that is 8 passes, the
    mirroring nnU-Net uses at test time.
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = (0, 1, 2)) -> None:
        super().__init__()
        self.inferer = inferer
        self.spatial_axes = tuple(spatial_axes)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs) -> torch.Tensor:
        total, count = None, 0
        for n in range(len(self.spatial_axes) + 1):
            for axes in itertools.combinations(self.spatial_axes, n):
                dims = [a + 2 for a in axes]
                x = torch.flip(inputs, dims) if dims else inputs
                pred = self.inferer(x, network, *args, **kwargs)
                pred = torch.flip(pred, dims) if dims else pred
                total = pred if total is None else total + pred
                count += 1
        return total / count
