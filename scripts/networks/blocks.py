"""Small composable building blocks for the segmentation networks of this bundle.

The blocks follow the conventions of ``monai.networks.blocks`` and nnU-Net's
``dynamic_network_architectures``: every block takes ``spatial_dims`` (2 or 3) and explicit
constructor arguments with defaults, and layers are built through MONAI's factories
(:class:`monai.networks.layers.factories.Conv`, :func:`~monai.networks.layers.utils.get_norm_layer`,
:func:`~monai.networks.layers.utils.get_act_layer`, :func:`~monai.networks.layers.utils.get_dropout_layer`).

Shapes below use ``B`` for the batch size, ``C_in``/``C_out`` for channels and ``*S`` for the
``spatial_dims`` spatial sizes. A convolution with stride ``s`` and "same" padding maps a spatial
size ``n`` to ``ceil(n / s)`` (``n / s`` when ``n`` is divisible by ``s``).

All blocks are TorchScript-scriptable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks.squeeze_and_excitation import ChannelSELayer
from monai.networks.layers.factories import Act, Conv
from monai.networks.layers.utils import get_act_layer, get_dropout_layer, get_norm_layer

__all__ = [
    "SeparableConv",
    "conv_layer",
    "ResidualBlock",
    "SkipAdapter",
    "InvertedResidual",
    "conv_norm_act",
    "same_padding",
    "is_unit_stride",
    "level_strides",
    "check_input_shape",
    "check_spatial_dims",
]

DEFAULT_NORM: tuple = ("instance", {"affine": True})
DEFAULT_ACT: tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})

# MobileNetV3's activations, registered in MONAI's activation factory (which lacks them) so that every block
# and config can name them: ``act="hardswish"``, ``("hardsigmoid", {})``.
for _name, _cls in (("HARDSWISH", nn.Hardswish), ("HARDSIGMOID", nn.Hardsigmoid)):
    if _name not in Act.names:
        Act.add_factory_callable(_name, lambda cls=_cls: cls)


def _as_tuple(value: Sequence[int] | int, spatial_dims: int, name: str) -> tuple[int, ...]:
    """Expand an int to a ``spatial_dims``-tuple, or check the length of a sequence."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    value = tuple(int(v) for v in value)
    if len(value) != spatial_dims:
        raise ValueError(f"{name} must be an int or a sequence of {spatial_dims} ints, got {value}.")
    return value


def check_spatial_dims(spatial_dims: int) -> None:
    """Raise ``ValueError`` unless ``spatial_dims`` is 2 or 3 (the networks' blocks are 2D or 3D)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")


def level_strides(
    strides: Sequence[Sequence[int] | int], channels: Sequence[int], spatial_dims: int
) -> tuple[list[tuple[int, ...]], list[int]]:
    """Check the per-level strides of an encoder with one level per entry of ``channels``.

    Returns:
        the strides as ``spatial_dims``-tuples, one per level, and per spatial dim the factor an input size must
        be divisible by (the product of the strides along that dim).

    Raises:
        ValueError: fewer than 2 levels, a non-positive width, ``len(strides) != len(channels)``, a non-positive
            stride, or ``strides[0]`` not 1 (the full-resolution level must keep the input resolution).
    """
    n_levels = len(channels)
    if n_levels < 2:
        raise ValueError(f"channels must have at least 2 levels, got {tuple(channels)}.")
    if any(c < 1 for c in channels):
        raise ValueError(f"channels must be positive, got {tuple(channels)}.")
    if len(strides) != n_levels:
        raise ValueError(
            f"len(strides) must equal len(channels) ({n_levels}), got strides={tuple(strides)} "
            f"and channels={tuple(channels)}."
        )
    stride_tuples = [_as_tuple(s, spatial_dims, f"strides[{i}]") for i, s in enumerate(strides)]
    if any(s < 1 for st in stride_tuples for s in st):
        raise ValueError(f"strides must be positive, got {tuple(strides)}.")
    if any(s != 1 for s in stride_tuples[0]):
        raise ValueError(f"strides[0] must be 1 so that the output has the input resolution, got {strides[0]}.")
    divisors = [1] * spatial_dims
    for st in stride_tuples:
        for d in range(spatial_dims):
            divisors[d] *= st[d]
    return stride_tuples, divisors


def check_input_shape(x: torch.Tensor, spatial_dims: int, divisors: list[int], name: str) -> None:
    """Raise a ``ValueError`` naming ``name``, the shape and the offending dim unless ``x`` is
    ``(B, C, *S)`` with ``spatial_dims`` spatial dims and every ``S[d]`` divisible by ``divisors[d]``
    (TorchScript-compatible; a scripted caller raises it as ``torch.jit.Error`` with the same message)."""
    if x.dim() != spatial_dims + 2:
        raise ValueError(f"{name} expects a {spatial_dims + 2}D input (B, C, *spatial), got shape {list(x.shape)}.")
    shape = x.shape
    for d in range(spatial_dims):
        size = shape[d + 2]
        if size % divisors[d] != 0:
            raise ValueError(
                f"{name} input shape {list(shape)}: spatial dim {d} has size {size}, which is not divisible "
                f"by {divisors[d]} (the product of the strides along that dim); "
                f"pad or crop spatial dims to multiples of {divisors}."
            )


def same_padding(kernel_size: Sequence[int] | int, spatial_dims: int) -> tuple[int, ...]:
    """Padding ``(k - 1) // 2`` per dimension ("same" for stride 1, ``ceil(n / s)`` for stride ``s``).

    Raises:
        ValueError: if a kernel size is even or not positive (no symmetric "same" padding exists).
    """
    ks = _as_tuple(kernel_size, spatial_dims, "kernel_size")
    if any(k < 1 or k % 2 == 0 for k in ks):
        raise ValueError(f"kernel_size must be odd and positive for 'same' padding, got {ks}.")
    return tuple((k - 1) // 2 for k in ks)


def is_unit_stride(stride: Sequence[int] | int) -> bool:
    """True when every entry of ``stride`` is 1."""
    if isinstance(stride, int):
        return stride == 1
    return all(int(s) == 1 for s in stride)


class SeparableConv(nn.Module):
    """Depthwise-separable convolution: a depthwise ``k x k (x k)`` conv then a pointwise ``1 x 1`` conv.

    The depthwise conv has ``groups=in_channels`` (one filter per input channel, depth multiplier 1),
    the given kernel size and stride and "same" padding; the pointwise conv mixes channels.
    It replaces a standard ``Conv(in_channels, out_channels, kernel_size, stride)`` with
    ``in_channels * prod(kernel_size) + in_channels * out_channels`` weights instead of
    ``in_channels * out_channels * prod(kernel_size)``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: odd kernel size of the depthwise conv (int or one per spatial dim).
        stride: stride of the depthwise conv (int or one per spatial dim).
        bias: whether the pointwise conv has a bias. The depthwise conv never has one: a bias
            there is a per-channel constant that the (linear) pointwise conv would absorb.

    Shapes:
        input ``(B, C_in, *S)`` -> output ``(B, C_out, *ceil(S / stride))``.

    Attributes:
        depthwise: the depthwise conv, ``C_in -> C_in``.
        pointwise: the ``1 x 1`` conv, ``C_in -> C_out``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int = 3,
        stride: Sequence[int] | int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.depthwise = conv_type(
            in_channels,
            in_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=same_padding(kernel_size, spatial_dims),
            groups=in_channels,
            bias=False,
        )
        self.pointwise = conv_type(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *S)`` -> ``(B, C_out, *ceil(S / stride))``."""
        return self.pointwise(self.depthwise(x))


def conv_layer(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: Sequence[int] | int = 3,
    stride: Sequence[int] | int = 1,
    separable: bool = False,
    bias: bool = False,
) -> nn.Module:
    """A "same"-padded convolution, standard or depthwise-separable.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: odd kernel size (int or one per spatial dim).
        stride: stride (int or one per spatial dim).
        separable: return a :class:`SeparableConv` instead of a standard conv.
        bias: whether the (last) conv has a bias.

    Returns:
        a module mapping ``(B, C_in, *S)`` -> ``(B, C_out, *ceil(S / stride))``.
    """
    check_spatial_dims(spatial_dims)
    if separable:
        return SeparableConv(spatial_dims, in_channels, out_channels, kernel_size, stride, bias=bias)
    return Conv[Conv.CONV, spatial_dims](
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=same_padding(kernel_size, spatial_dims),
        bias=bias,
    )


def _norm_or_identity(norm: tuple | str | None, spatial_dims: int, channels: int) -> nn.Module:
    if norm is None:
        return nn.Identity()
    return get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels)


class ResidualBlock(nn.Module):
    """Residual block ``act(norm(conv(drop(act(norm(conv_s(x)))))) + shortcut(x))``.

    Main path: conv (with ``stride``) - norm - act - [dropout] - conv - norm.
    Shortcut: identity when ``in_channels == out_channels`` and ``stride`` is 1, otherwise a projection
    ``1 x 1`` conv with the same ``stride`` followed by norm. The activation is applied after the addition
    (as in nnU-Net's ``BasicBlockD`` / MONAI's ``UnetResBlock``).

    Convs have no bias when a norm follows them (``norm`` not ``None``).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: odd kernel size of the two main-path convs (int or one per spatial dim).
        stride: stride of the first main-path conv and of the projection (int or one per spatial dim).
        norm: MONAI norm name/args, e.g. ``("instance", {"affine": True})``; ``None`` for no norm.
        act: MONAI activation name/args; ``None`` for no activation.
        dropout: MONAI dropout name/args or a probability; ``None`` or ``0`` for no dropout.
        separable: use :class:`SeparableConv` for the two ``k x k`` convs (the projection stays a standard
            ``1 x 1`` conv).

    Shapes:
        input ``(B, C_in, *S)`` -> output ``(B, C_out, *ceil(S / stride))``.

    Attributes:
        conv1, norm1, act, dropout, conv2, norm2: main-path layers (``dropout`` is ``nn.Identity`` when unused).
        projection: ``nn.Sequential(conv1x1, norm)`` or ``None`` when the shortcut is the identity.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int = 3,
        stride: Sequence[int] | int = 1,
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
        dropout: tuple | str | float | None = None,
        separable: bool = False,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        _as_tuple(stride, spatial_dims, "stride")
        bias = norm is None
        self.conv1 = conv_layer(spatial_dims, in_channels, out_channels, kernel_size, stride, separable, bias)
        self.norm1 = _norm_or_identity(norm, spatial_dims, out_channels)
        self.act = nn.Identity() if act is None else get_act_layer(act)
        use_dropout = dropout is not None and not (isinstance(dropout, (int, float)) and dropout == 0)
        self.dropout = get_dropout_layer(dropout, spatial_dims) if use_dropout else nn.Identity()
        self.conv2 = conv_layer(spatial_dims, out_channels, out_channels, kernel_size, 1, separable, bias)
        self.norm2 = _norm_or_identity(norm, spatial_dims, out_channels)

        self.projection = None  # identity shortcut (TorchScript prunes the branch when None)
        if in_channels != out_channels or not is_unit_stride(stride):
            self.projection = nn.Sequential(
                Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1, stride=stride, bias=bias),
                _norm_or_identity(norm, spatial_dims, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *S)`` -> ``(B, C_out, *ceil(S / stride))``."""
        shortcut = x
        if self.projection is not None:
            shortcut = self.projection(x)
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(self.dropout(out)))
        return self.act(out + shortcut)


class SkipAdapter(nn.Module):
    """``1 x 1`` conv (+ norm) adapting encoder channels to decoder channels on a skip connection.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: encoder channels ``C_enc``.
        out_channels: decoder channels ``C_dec``.
        norm: MONAI norm name/args; ``None`` for a plain ``1 x 1`` conv with bias.

    Shapes:
        input ``(B, C_enc, *S)`` -> output ``(B, C_dec, *S)``.

    Attributes:
        conv: the ``1 x 1`` conv.
        norm: the norm layer (``nn.Identity`` when ``norm is None``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: tuple | str | None = DEFAULT_NORM,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1, bias=norm is None)
        self.norm = _norm_or_identity(norm, spatial_dims, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_enc, *S)`` -> ``(B, C_dec, *S)``."""
        return self.norm(self.conv(x))


def conv_norm_act(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: Sequence[int] | int = 1,
    stride: Sequence[int] | int = 1,
    groups: int = 1,
    norm: tuple | str | None = DEFAULT_NORM,
    act: tuple | str | None = DEFAULT_ACT,
) -> nn.Sequential:
    """``conv - norm - act`` with "same" padding; the conv has a bias only when ``norm`` is ``None``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: odd kernel size (int or one per spatial dim).
        stride: stride (int or one per spatial dim).
        groups: conv groups (``groups = C_in = C_out`` is a depthwise conv).
        norm: MONAI norm name/args; ``None`` for no norm.
        act: MONAI activation name/args; ``None`` for no activation (a linear layer).

    Returns:
        ``nn.Sequential(conv, norm, act)`` (``nn.Identity`` for the missing ones) mapping
        ``(B, C_in, *S)`` -> ``(B, C_out, *ceil(S / stride))``.
    """
    check_spatial_dims(spatial_dims)
    conv = Conv[Conv.CONV, spatial_dims](
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=same_padding(kernel_size, spatial_dims),
        groups=groups,
        bias=norm is None,
    )
    activation = nn.Identity() if act is None else get_act_layer(act)
    return nn.Sequential(conv, _norm_or_identity(norm, spatial_dims, out_channels), activation)


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: expand ``1 x 1`` - depthwise ``k x k`` (stride) - squeeze-excite - project ``1 x 1``.

    Main path: ``1 x 1`` conv ``C_in -> C_hid`` - norm - act (left out when ``C_hid == C_in``), depthwise
    ``k x k (x k)`` conv with ``stride`` - norm - act, optional squeeze-and-excitation on the ``C_hid`` channels
    (MONAI's :class:`~monai.networks.blocks.squeeze_and_excitation.ChannelSELayer`: global average pool, FC with
    reduction ``se_reduction`` and ReLU, FC and hard-sigmoid gate), then a linear ``1 x 1`` projection
    ``C_hid -> C_out`` - norm (no activation: the linear bottleneck). The input is added back when
    ``C_in == C_out`` and ``stride`` is 1. ``C_hid = round(C_in * expansion)``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        expansion: width multiplier of the hidden (depthwise) layer, ``>= 1``.
        kernel_size: odd kernel size of the depthwise conv (int or one per spatial dim).
        stride: stride of the depthwise conv (int or one per spatial dim).
        norm: MONAI norm name/args (MobileNetV3 uses batch norm); ``None`` for no norm.
        act: MONAI activation name/args of the expansion and depthwise layers (``"hardswish"`` in MobileNetV3's
            deeper layers, ``"relu"`` in its first ones).
        se_reduction: reduction ratio of the squeeze-and-excitation layer; ``None`` or 0 for none.

    Shapes:
        input ``(B, C_in, *S)`` -> output ``(B, C_out, *ceil(S / stride))``.

    Attributes:
        expand: the expansion ``conv_norm_act`` or ``None``; depthwise: the depthwise ``conv_norm_act``;
        se: the ``ChannelSELayer`` or ``nn.Identity``; project: the projection ``conv_norm_act`` (no act);
        use_residual: whether the input is added to the output.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        expansion: float = 4.0,
        kernel_size: Sequence[int] | int = 3,
        stride: Sequence[int] | int = 1,
        norm: tuple | str | None = "batch",
        act: tuple | str | None = "hardswish",
        se_reduction: int | None = 4,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        _as_tuple(stride, spatial_dims, "stride")
        if expansion < 1:
            raise ValueError(f"expansion must be >= 1, got {expansion}.")
        hidden = int(round(in_channels * expansion))
        self.expand = None  # TorchScript prunes the branch when None
        if hidden != in_channels:
            self.expand = conv_norm_act(spatial_dims, in_channels, hidden, 1, 1, 1, norm, act)
        self.depthwise = conv_norm_act(spatial_dims, hidden, hidden, kernel_size, stride, hidden, norm, act)
        se = ChannelSELayer(spatial_dims, hidden, r=se_reduction, acti_type_2="hardsigmoid") if se_reduction else None
        self.se = nn.Identity() if se is None else se
        self.project = conv_norm_act(spatial_dims, hidden, out_channels, 1, 1, 1, norm, None)
        self.use_residual = in_channels == out_channels and is_unit_stride(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *S)`` -> ``(B, C_out, *ceil(S / stride))``."""
        out = x
        if self.expand is not None:
            out = self.expand(out)
        out = self.project(self.se(self.depthwise(out)))
        if self.use_residual:
            out = out + x
        return out
