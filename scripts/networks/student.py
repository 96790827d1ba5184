"""MobileNetV3-style U-Net: the small student network distilled from the ResUNet.

The encoder is a MobileNetV3-like stack of :class:`~scripts.networks.blocks.InvertedResidual` blocks
(depthwise convs, squeeze-and-excitation, hard-swish, batch norm) after a standard-conv stem; the light decoder
upsamples with transposed convs, *adds* the skip connection (a :class:`~scripts.networks.blocks.SkipAdapter`,
``1 x 1`` conv + norm) instead of concatenating it, and refines with one inverted residual block per level.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from .blocks import InvertedResidual, SkipAdapter, check_input_shape, check_spatial_dims, conv_norm_act, level_strides

__all__ = ["StudentUNet", "AdditiveDecoderStage"]

STUDENT_NORM: tuple = ("batch", {})
STUDENT_ACT: tuple = ("hardswish", {})


def _per_level(value: Sequence[float] | float, n_levels: int, name: str) -> list[float]:
    """One value per level: a scalar is repeated, a sequence must have ``n_levels`` entries."""
    if isinstance(value, (int, float)):
        return [value] * n_levels
    values = list(value)
    if len(values) != n_levels:
        raise ValueError(f"{name} must be a number or have {n_levels} entries (one per level), got {tuple(values)}.")
    return values


class AdditiveDecoderStage(nn.Module):
    """One light decoder level: ``block(upsample(deeper) + skip_adapter(encoder_feature))``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        deeper_channels: channels ``C_deep`` of the deeper map being upsampled.
        skip_channels: channels ``C_enc`` of this level's encoder map.
        out_channels: decoder channels ``C_dec`` of this level.
        up_stride: kernel size and stride of the transposed conv (the deeper encoder level's stride).
        expansion, kernel_size, norm, act: passed to the :class:`InvertedResidual` (no squeeze-excitation).

    Shapes:
        ``deeper``: ``(B, C_deep, *S / up_stride)``, ``skip``: ``(B, C_enc, *S)`` -> ``(B, C_dec, *S)``.

    Attributes:
        upsample: transposed conv ``C_deep -> C_dec``; skip: :class:`SkipAdapter` ``C_enc -> C_dec``;
        block: :class:`InvertedResidual` ``C_dec -> C_dec``.
    """

    def __init__(
        self,
        spatial_dims: int,
        deeper_channels: int,
        skip_channels: int,
        out_channels: int,
        up_stride: Sequence[int] | int,
        expansion: float = 1.0,
        kernel_size: Sequence[int] | int = 3,
        norm: tuple | str | None = STUDENT_NORM,
        act: tuple | str | None = STUDENT_ACT,
    ) -> None:
        super().__init__()
        self.upsample = Conv[Conv.CONVTRANS, spatial_dims](
            deeper_channels, out_channels, kernel_size=up_stride, stride=up_stride, bias=False
        )
        self.skip = SkipAdapter(spatial_dims, skip_channels, out_channels, norm=norm)
        self.block = InvertedResidual(
            spatial_dims, out_channels, out_channels, expansion, kernel_size, 1, norm, act, se_reduction=None
        )

    def forward(self, deeper: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``(B, C_deep, *S / up_stride)``, ``(B, C_enc, *S)`` -> ``(B, C_dec, *S)``."""
        return self.block(self.upsample(deeper) + self.skip(skip))


class StudentUNet(nn.Module):
    """MobileNetV3-style U-Net for 2D/3D segmentation (the distillation student of the ResUNet).

    * Stem: standard ``k x k`` conv ``in_channels -> channels[0]`` - norm - act at full resolution.
    * Encoder level ``i``: ``blocks[i]`` :class:`InvertedResidual` blocks (expansion ``expansion[i]``,
      squeeze-and-excitation when ``i`` is in ``se_levels``); the first one has stride ``strides[i]`` and maps
      ``channels[i-1] -> channels[i]``, the others keep the width (identity shortcut). ``blocks[0]`` may be 0
      (level 0 is then the stem alone).
    * Decoder: for ``i = L-2 ... 0`` an :class:`AdditiveDecoderStage` (transposed conv, added skip, one
      inverted residual block with expansion ``decoder_expansion``) back to ``channels[i]`` channels.
    * Head: ``1 x 1`` conv ``channels[0] -> out_channels`` giving raw logits.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels (4 MRI modalities).
        out_channels: output channels (3 overlapping regions; apply a sigmoid outside).
        channels: width per level, at least 2 levels.
        strides: stride per level (int or one per spatial dim); ``strides[0]`` must be 1.
        blocks: inverted residual blocks per level (level 0: ``>= 0``, deeper levels: ``>= 1``).
        expansion: hidden-width multiplier of the encoder blocks, one number or one per level.
        se_levels: levels whose encoder blocks use squeeze-and-excitation.
        se_reduction: reduction ratio of the squeeze-and-excitation layers.
        decoder_expansion: hidden-width multiplier of the decoder blocks.
        kernel_size: odd kernel size of the stem and the depthwise convs.
        norm: MONAI norm name/args (batch norm, as in MobileNetV3; folded into the convs by ONNX Runtime).
        act: MONAI activation name/args (hard-swish).

    Shapes:
        input ``(B, in_channels, *S)`` with every ``S[d]`` divisible by ``prod(strides[:, d])``
        -> output ``(B, out_channels, *S)``.

    Attributes:
        stem, encoder (``nn.ModuleList`` of ``nn.Sequential`` per level), decoder (deepest first), head, divisors.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        out_channels: int = 3,
        channels: Sequence[int] = (8, 16, 32, 48),
        strides: Sequence[Sequence[int] | int] = (1, 2, 2, 2),
        blocks: Sequence[int] = (0, 1, 2, 2),
        expansion: Sequence[float] | float = (1, 1, 3, 3),
        se_levels: Iterable[int] = (2, 3),
        se_reduction: int = 4,
        decoder_expansion: float = 1.0,
        kernel_size: Sequence[int] | int = 3,
        norm: tuple | str | None = STUDENT_NORM,
        act: tuple | str | None = STUDENT_ACT,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        channels = [int(c) for c in channels]
        n_levels = len(channels)
        stride_tuples, divisors = level_strides(strides, channels, spatial_dims)
        n_blocks = [int(b) for b in _per_level(blocks, n_levels, "blocks")]
        if n_blocks[0] < 0 or any(b < 1 for b in n_blocks[1:]):
            raise ValueError(f"blocks must be >= 0 at level 0 and >= 1 deeper, got {tuple(n_blocks)}.")
        expansions = _per_level(expansion, n_levels, "expansion")
        se = {int(i) for i in se_levels}
        if any(not 0 <= i < n_levels for i in se):
            raise ValueError(f"se_levels must be in [0, {n_levels - 1}], got {sorted(se)}.")

        self.spatial_dims = spatial_dims
        self.channels = tuple(channels)
        self.divisors = divisors
        self.stem = conv_norm_act(spatial_dims, in_channels, channels[0], kernel_size, 1, 1, norm, act)
        self.encoder = nn.ModuleList()
        for i in range(n_levels):
            layers = []
            for j in range(n_blocks[i]):
                c_in = channels[max(i - 1, 0)] if j == 0 else channels[i]
                stride = stride_tuples[i] if j == 0 else 1
                reduction = se_reduction if i in se else None
                layers.append(
                    InvertedResidual(
                        spatial_dims, c_in, channels[i], expansions[i], kernel_size, stride, norm, act, reduction
                    )
                )
            self.encoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(
            AdditiveDecoderStage(
                spatial_dims,
                channels[i + 1],
                channels[i],
                channels[i],
                stride_tuples[i + 1],
                decoder_expansion,
                kernel_size,
                norm,
                act,
            )
            for i in range(n_levels - 2, -1, -1)
        )
        self.head = Conv[Conv.CONV, spatial_dims](channels[0], out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S)`` -> ``(B, out_channels, *S)`` logits.

        Raises:
            ValueError: wrong number of dims or a spatial size not divisible by ``divisors`` (eager and scripted;
                skipped while tracing).
        """
        if not torch.jit.is_tracing():
            check_input_shape(x, self.spatial_dims, self.divisors, "StudentUNet")
        x = self.stem(x)
        features: list[torch.Tensor] = []
        for level in self.encoder:
            x = level(x)
            features.append(x)
        n_dec = len(features) - 1
        j = 0
        for stage in self.decoder:
            x = stage(x, features[n_dec - 1 - j])
            j += 1
        return self.head(x)
