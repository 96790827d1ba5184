"""ResUNet-Swin hybrid: the ResUNet whose deepest encoder levels add Swin transformer blocks (long-range context).

The transformer stages are built from MONAI's SwinUNETR building blocks (``monai.networks.nets.swin_unetr``):
:class:`~monai.networks.nets.swin_unetr.SwinTransformerBlock` (window or shifted-window multi-head
self-attention and an MLP, pre-norm LayerNorm, residual connections), ``compute_mask`` and ``get_window_size``,
stacked as SwinUNETR's ``BasicLayer`` stacks them but without its patch-merging downsampling (the level's
convolutional :class:`~scripts.networks.blocks.ResidualBlock` still does the striding and the channel change)
and without its einops dependency.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
from monai.networks.nets.swin_unetr import SwinTransformerBlock, compute_mask, get_window_size

from .resunet import ResUNet

__all__ = ["SwinStage", "SwinResUNet"]


class SwinStage(nn.Module):
    """``depth`` Swin transformer blocks on a channel-first feature map (window, then shifted window, ...).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: feature channels ``C`` (the token dimension); must be divisible by ``num_heads``.
        depth: number of transformer blocks (even numbers alternate plain and shifted windows evenly).
        num_heads: attention heads.
        window_size: attention window per spatial dim (int or one per dim); a window larger than the map is
            clipped to the map, which makes the attention global and switches the shift off.
        mlp_ratio: hidden width of the MLPs as a multiple of ``C``.
        drop_path: stochastic-depth rate of every block.

    Shapes:
        input ``(B, C, *S)`` -> output ``(B, C, *S)``.

    Attributes:
        blocks: ``nn.ModuleList`` of MONAI ``SwinTransformerBlock`` (odd indices use shifted windows).
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        depth: int = 2,
        num_heads: int = 4,
        window_size: Sequence[int] | int = 7,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads}).")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}.")
        window = (window_size,) * spatial_dims if isinstance(window_size, int) else tuple(window_size)
        if len(window) != spatial_dims:
            raise ValueError(f"window_size must be an int or {spatial_dims} ints, got {window_size}.")
        self.window_size = window
        self.shift_size = tuple(w // 2 for w in window)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim=channels,
                num_heads=num_heads,
                window_size=window,
                shift_size=self.shift_size if i % 2 else (0,) * spatial_dims,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                drop_path=drop_path,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` -> ``(B, C, *S)``."""
        spatial = tuple(x.shape[2:])
        window, shift = get_window_size(spatial, self.window_size, self.shift_size)
        padded = [-(-s // w) * w for s, w in zip(spatial, window)]  # the blocks pad to whole windows
        mask = compute_mask(padded, window, shift, x.device)
        n = x.dim()  # explicit permutations: ONNX export rejects negative ones
        x = x.permute([0] + list(range(2, n)) + [1]).contiguous()  # tokens: (B, *S, C)
        for block in self.blocks:
            x = block(x, mask)
        return x.permute([0, n - 1] + list(range(1, n - 1))).contiguous()


class SwinResUNet(ResUNet):
    """:class:`ResUNet` with a :class:`SwinStage` after the encoder block of each level in ``swin_levels``.

    Encoder level ``i`` in ``swin_levels`` becomes ``nn.Sequential(ResidualBlock, SwinStage)``; everything else
    (decoder, skip adapters, heads, deep supervision, input checks) is the ResUNet's.

    Args:
        swin_levels: encoder levels (0-based) that get a transformer stage; by default the deepest two.
        swin_depth: transformer blocks per stage.
        num_heads: attention heads per stage (one number, or one per entry of ``swin_levels``).
        window_size: attention window (see :class:`SwinStage`).
        mlp_ratio, drop_path: see :class:`SwinStage`.
        **resunet_kwargs: the :class:`ResUNet` arguments (``spatial_dims``, ``channels``, ``strides``, ...).

    Shapes:
        as :class:`ResUNet`: ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``.

    Not TorchScript-scriptable (MONAI's Swin blocks are not); traceable. Its ONNX export (torch's
    TorchScript-based exporter) matches torch only where ``window_size`` divides the feature maps: the blocks'
    padding of shifted windows is exported wrongly, so ``configs/swin.json`` runs inference with torch.

    Attributes:
        swin_levels: the sorted levels with a transformer stage; see :class:`ResUNet` for the others.
    """

    def __init__(
        self,
        swin_levels: Iterable[int] | None = None,
        swin_depth: int = 2,
        num_heads: Sequence[int] | int = 4,
        window_size: Sequence[int] | int = 7,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        **resunet_kwargs,
    ) -> None:
        super().__init__(**resunet_kwargs)
        n_levels = len(self.channels)
        levels = sorted({int(i) for i in (swin_levels if swin_levels is not None else (n_levels - 2, n_levels - 1))})
        if any(not 0 <= i < n_levels for i in levels):
            raise ValueError(f"swin_levels must be in [0, {n_levels - 1}], got {levels}.")
        heads = [num_heads] * len(levels) if isinstance(num_heads, int) else [int(h) for h in num_heads]
        if len(heads) != len(levels):
            raise ValueError(f"num_heads must be an int or have one entry per swin level {levels}, got {heads}.")
        self.swin_levels = tuple(levels)
        for level, n_heads in zip(levels, heads):
            stage = SwinStage(
                self.spatial_dims, self.channels[level], swin_depth, n_heads, window_size, mlp_ratio, drop_path
            )
            self.encoder[level] = nn.Sequential(self.encoder[level], stage)
