"""A small network that fills in missing MRI sequences from the present ones (missing-sequence imputation).

The segmentation networks of this bundle were trained on four sequences. When a case lacks some of them, the
:class:`SequenceImputer` predicts the missing channels from the present ones, voxel by voxel with a small
neighbourhood, in the space the segmentation network sees (brain-normalised, histogram-equalised intensities in
(0, 1] inside the brain, 0 outside). The present channels pass through unchanged, so a complete case is never
altered.

Shapes use ``B`` for the batch size, ``M`` for the number of sequences and ``*S`` for the spatial sizes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer

from .blocks import DEFAULT_ACT, check_spatial_dims

__all__ = ["SequenceImputer", "presence"]


def presence(x: torch.Tensor) -> torch.Tensor:
    """(B, M, *S) -> (B, M) float: 1 where a sequence holds a non-zero voxel (present), 0 where it is all zero."""
    return (x != 0).flatten(2).any(dim=2).to(x.dtype)


class SequenceImputer(nn.Module):
    """Predict missing sequences from present ones; present sequences pass through unchanged.

    The input is the image with every missing sequence as an all-zero channel, plus the presence of each
    sequence as ``M`` constant channels (derived from the image by :func:`presence` when not given). A stack of
    ``kernel_size`` convolutions (receptive field ``1 + num_layers * (kernel_size - 1)`` voxels) and 1x1
    convolutions maps them to ``M`` channels through a sigmoid, kept only where a sequence is missing and inside
    the brain (where any present sequence is non-zero).

    Args:
        spatial_dims: 2 or 3.
        num_sequences: ``M``, the number of sequences (4: T1, T1ce, T2, FLAIR).
        channels: width of the hidden layers.
        num_layers: number of ``kernel_size`` convolutions.
        kernel_size: size of the spatial convolutions.
        num_pointwise: number of hidden 1x1 convolutions after them.

    Shapes: ``x`` (B, M, *S) -> (B, M, *S).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        num_sequences: int = 4,
        channels: int = 32,
        num_layers: int = 2,
        kernel_size: int = 3,
        num_pointwise: int = 1,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        conv = Conv[Conv.CONV, spatial_dims]
        layers: list[nn.Module] = []
        width = 2 * num_sequences
        for _ in range(num_layers):
            layers += [conv(width, channels, kernel_size, padding=kernel_size // 2), get_act_layer(DEFAULT_ACT)]
            width = channels
        for _ in range(num_pointwise):
            layers += [conv(width, channels, 1), get_act_layer(DEFAULT_ACT)]
            width = channels
        layers.append(conv(width, num_sequences, 1))
        self.body = nn.Sequential(*layers)
        self.num_sequences = num_sequences

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        present = presence(x)  # (B, M)
        shape = (*present.shape, *([1] * (x.dim() - 2)))
        given = present.view(shape).expand_as(x)
        brain = (x != 0).any(dim=1, keepdim=True).to(x.dtype)
        imputed = torch.sigmoid(self.body(torch.cat([x, given], dim=1))) * brain
        return torch.where(given > 0, x, imputed)
