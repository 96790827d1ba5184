"""Residual U-Net with optional depthwise-separable levels and deep supervision.

Level ``i`` (0 = full resolution) of the encoder is a :class:`ResidualBlock` with stride ``strides[i]``;
the decoder goes back up with transposed convs, :class:`SkipAdapter` skip connections (``1 x 1`` conv + norm),
concatenation and a :class:`ResidualBlock`, and ends in a ``1 x 1`` conv head giving raw logits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from .blocks import (
    DEFAULT_ACT,
    DEFAULT_NORM,
    ResidualBlock,
    SkipAdapter,
    check_input_shape,
    check_spatial_dims,
    level_strides,
)

__all__ = ["ResUNet", "DecoderStage"]


class DecoderStage(nn.Module):
    """One decoder level: ``block(cat(upsample(deeper), skip_adapter(encoder_feature)))``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        deeper_channels: channels ``C_deep`` of the deeper feature map being upsampled.
        skip_channels: channels ``C_enc`` of the encoder feature map of this level.
        out_channels: decoder channels ``C_dec`` of this level.
        up_stride: kernel size and stride of the transposed conv (the stride of the deeper encoder level).
        level: index of the level this stage produces (informative; 0 = full resolution).
        kernel_size, norm, act, dropout, separable: passed to the :class:`ResidualBlock`.

    Shapes:
        ``deeper``: ``(B, C_deep, *S / up_stride)``, ``skip``: ``(B, C_enc, *S)`` -> ``(B, C_dec, *S)``.

    Attributes:
        upsample: transposed conv ``C_deep -> C_dec``.
        skip: :class:`SkipAdapter` ``C_enc -> C_dec``.
        block: :class:`ResidualBlock` ``2 * C_dec -> C_dec``.
    """

    def __init__(
        self,
        spatial_dims: int,
        deeper_channels: int,
        skip_channels: int,
        out_channels: int,
        up_stride: Sequence[int] | int,
        level: int,
        kernel_size: Sequence[int] | int = 3,
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
        dropout: tuple | str | float | None = None,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.level = level
        self.upsample = Conv[Conv.CONVTRANS, spatial_dims](
            deeper_channels, out_channels, kernel_size=up_stride, stride=up_stride, bias=False
        )
        self.skip = SkipAdapter(spatial_dims, skip_channels, out_channels, norm=norm)
        self.block = ResidualBlock(
            spatial_dims,
            2 * out_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=1,
            norm=norm,
            act=act,
            dropout=dropout,
            separable=separable,
        )

    def forward(self, deeper: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``(B, C_deep, *S / up_stride)``, ``(B, C_enc, *S)`` -> ``(B, C_dec, *S)``."""
        return self.block(torch.cat([self.upsample(deeper), self.skip(skip)], dim=1))


def _decoder_widths(channels: list[int], decoder_channels: Sequence[int] | None) -> list[int]:
    """Decoder widths for levels ``0 .. L-2`` (see :class:`ResUNet`'s ``decoder_channels``)."""
    n_levels = len(channels)
    if decoder_channels is None:
        return channels[:-1]
    dec_channels = [int(c) for c in decoder_channels]
    if len(dec_channels) == n_levels:
        if dec_channels[-1] != channels[-1]:
            raise ValueError(
                f"decoder_channels[-1] ({dec_channels[-1]}) is the bottleneck width and must equal "
                f"channels[-1] ({channels[-1]}); or give only the {n_levels - 1} decoder levels."
            )
        dec_channels = dec_channels[:-1]
    elif len(dec_channels) != n_levels - 1:
        raise ValueError(f"decoder_channels must have {n_levels - 1} or {n_levels} entries, got {tuple(dec_channels)}.")
    if any(c < 1 for c in dec_channels):
        raise ValueError(f"decoder_channels must be positive, got {tuple(dec_channels)}.")
    return dec_channels


def _separable_set(separable_levels: Iterable[int], n_levels: int) -> set[int]:
    sep_levels = {int(i) for i in separable_levels}
    bad = sorted(i for i in sep_levels if not 0 <= i < n_levels)
    if bad:
        raise ValueError(f"separable_levels must be in [0, {n_levels - 1}], got out-of-range {bad}.")
    return sep_levels


def _check_dropout(dropout: tuple | str | float | None) -> None:
    if isinstance(dropout, (int, float)) and not isinstance(dropout, bool):
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {dropout}.")


class ResUNet(nn.Module):
    """Residual U-Net for 2D/3D segmentation.

    * Encoder: level ``i`` is ``ResidualBlock(channels[i-1] -> channels[i], stride=strides[i])``
      (``in_channels`` for level 0). The deepest level is the bottleneck.
    * Decoder: for ``i = L-2 ... 0`` (``L = len(channels)``), the deeper map is upsampled by a transposed
      conv (kernel = stride = ``strides[i+1]``) to ``decoder_channels[i]``, the level-``i`` encoder map goes
      through a :class:`SkipAdapter` (``channels[i] -> decoder_channels[i]``), both are concatenated and passed
      to ``ResidualBlock(2 * decoder_channels[i] -> decoder_channels[i])``.
    * Head: ``1 x 1`` conv ``decoder_channels[0] -> out_channels`` giving raw logits (no activation).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels (4 MRI modalities by default).
        out_channels: output channels (3 overlapping tumour regions by default; apply a sigmoid outside).
        channels: encoder channels per level, at least 2 levels.
        strides: stride per level (int or one per spatial dim); ``strides[0]`` must be 1 so that the output
            has the input's resolution.
        separable_levels: 0-based level indices whose encoder and decoder :class:`ResidualBlock` use
            :class:`~scripts.networks.blocks.SeparableConv` for their ``k x k`` convs (``1 x 1`` projections,
            skip adapters, transposed convs and heads stay standard). The deepest level has no decoder block.
        kernel_size: odd kernel size of the residual blocks.
        norm: MONAI norm name/args.
        act: MONAI activation name/args.
        dropout: dropout probability (or MONAI dropout name/args) inside every residual block; 0 disables it.
        deep_supervision: in training mode, also return lower-resolution logits (see ``forward``).
        decoder_channels: decoder channels per level, ``L - 1`` entries (levels ``0 .. L-2``) or ``L`` entries
            whose last one must equal ``channels[-1]`` (the bottleneck is shared). Defaults to ``channels``.

    Shapes:
        input ``(B, in_channels, *S)`` with every ``S[d]`` divisible by ``prod(strides[:, d])``
        -> output ``(B, out_channels, *S)``.

    Attributes:
        encoder: ``nn.ModuleList`` of :class:`ResidualBlock`, indexed by level.
        decoder: ``nn.ModuleList`` of :class:`DecoderStage`, ordered deepest first
            (``decoder[j].level == L - 2 - j``); see :meth:`decoder_stage`.
        head: full-resolution ``1 x 1`` conv head.
        ds_heads: ``nn.ModuleList`` of ``1 x 1`` heads for decoder levels ``1 .. L-2`` (``ds_heads[k]`` is on
            level ``k + 1``); empty when ``deep_supervision`` is False.
        divisors: per spatial dim, the factor the input size must be divisible by.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        out_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[Sequence[int] | int] = (1, 2, 2, 2),
        separable_levels: Iterable[int] = (),
        kernel_size: Sequence[int] | int = 3,
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
        dropout: tuple | str | float | None = 0.0,
        deep_supervision: bool = False,
        decoder_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        channels = [int(c) for c in channels]
        stride_tuples, divisors = level_strides(strides, channels, spatial_dims)
        dec_channels = _decoder_widths(channels, decoder_channels)
        sep_levels = _separable_set(separable_levels, len(channels))
        _check_dropout(dropout)

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = tuple(channels)
        self.decoder_channels = tuple(dec_channels)
        self.strides = tuple(stride_tuples)
        self.separable_levels = tuple(sorted(sep_levels))
        self.deep_supervision = bool(deep_supervision)
        self.divisors = divisors  # List[int] for TorchScript (inferred)

        block_kwargs = {"kernel_size": kernel_size, "norm": norm, "act": act, "dropout": dropout}
        self.encoder = self._build_encoder(block_kwargs)
        self.decoder = self._build_decoder(block_kwargs)

        conv_type = Conv[Conv.CONV, spatial_dims]
        self.head = conv_type(dec_channels[0], out_channels, kernel_size=1, bias=True)
        self.ds_heads = nn.ModuleList()
        if self.deep_supervision:
            for i in range(1, len(channels) - 1):
                self.ds_heads.append(conv_type(dec_channels[i], out_channels, kernel_size=1, bias=True))

    def _build_encoder(self, block_kwargs: dict) -> nn.ModuleList:
        """One :class:`ResidualBlock` per level, ``channels[i-1] -> channels[i]`` at ``strides[i]``."""
        encoder = nn.ModuleList()
        prev = self.in_channels
        for i, (c, s) in enumerate(zip(self.channels, self.strides)):
            separable = i in self.separable_levels
            encoder.append(ResidualBlock(self.spatial_dims, prev, c, stride=s, separable=separable, **block_kwargs))
            prev = c
        return encoder

    def _build_decoder(self, block_kwargs: dict) -> nn.ModuleList:
        """One :class:`DecoderStage` per level ``L-2 .. 0``, deepest first."""
        decoder = nn.ModuleList()
        deeper = self.channels[-1]
        for i in range(len(self.channels) - 2, -1, -1):
            decoder.append(
                DecoderStage(
                    self.spatial_dims,
                    deeper_channels=deeper,
                    skip_channels=self.channels[i],
                    out_channels=self.decoder_channels[i],
                    up_stride=self.strides[i + 1],
                    level=i,
                    separable=i in self.separable_levels,
                    **block_kwargs,
                )
            )
            deeper = self.decoder_channels[i]
        return decoder

    def decoder_stage(self, level: int) -> DecoderStage:
        """The :class:`DecoderStage` producing decoder level ``level`` (``0 .. L-2``)."""
        n = len(self.decoder)
        if not 0 <= level < n:
            raise ValueError(f"decoder levels are 0 .. {n - 1}, got {level}.")
        return self.decoder[n - 1 - level]

    def _check_input(self, x: torch.Tensor) -> None:
        check_input_shape(x, self.spatial_dims, self.divisors, "ResUNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x``.

        Args:
            x: ``(B, in_channels, *S)``, every ``S[d]`` divisible by ``divisors[d]``.

        Returns:
            ``(B, out_channels, *S)`` logits; when ``deep_supervision`` is set and the module is in training
            mode, a list ``[full_res, level_1, ..., level_{L-2}]`` whose entry ``k`` has shape
            ``(B, out_channels, *S / prod(strides[:k+1]))`` (lower-resolution logits are not upsampled).

        Raises:
            ValueError: if ``x`` has the wrong number of dims or a spatial size is not divisible (eager and
                scripted modules; a scripted module raises it as ``torch.jit.Error`` with the same message).
                The check is skipped while tracing, so traced modules do not contain it.
        """
        if not torch.jit.is_tracing():  # under tracing sizes are tensors: the trace keeps no python checks
            self._check_input(x)
        features: list[torch.Tensor] = []
        for block in self.encoder:
            x = block(x)
            features.append(x)

        n_dec = len(features) - 1
        decoded: list[torch.Tensor] = []  # deepest decoder level first
        j = 0
        for stage in self.decoder:
            x = stage(x, features[n_dec - 1 - j])
            decoded.append(x)
            j += 1

        out = self.head(x)
        if self.deep_supervision and self.training:
            outputs: list[torch.Tensor] = [out]
            k = 0
            for ds_head in self.ds_heads:
                # ds_heads[k] is on decoder level k + 1, stored at decoded[n_dec - 2 - k]
                outputs.append(ds_head(decoded[n_dec - 2 - k]))
                k += 1
            return outputs
        return out
