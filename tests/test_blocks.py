"""Tests for scripts/networks/blocks.py (SeparableConv, conv_layer, ResidualBlock, SkipAdapter)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from scripts.networks import ResidualBlock, SeparableConv, SkipAdapter, conv_layer

RELU = ("relu", {"inplace": False})


def _x(spatial_dims, channels=4, size=8, batch=2):
    torch.manual_seed(0)
    return torch.randn(batch, channels, *([size] * spatial_dims))


def _conv_type(spatial_dims):
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


# ---------------------------------------------------------------------------------------------- SeparableConv


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_separable_conv_shapes_and_structure(spatial_dims, stride):
    conv = SeparableConv(spatial_dims, 4, 6, kernel_size=3, stride=stride)
    y = conv(_x(spatial_dims, 4, 8))
    assert y.shape == (2, 6, *([8 // stride] * spatial_dims))
    assert isinstance(conv.depthwise, _conv_type(spatial_dims))
    assert conv.depthwise.groups == 4 and conv.depthwise.out_channels == 4
    assert conv.depthwise.kernel_size == (3,) * spatial_dims
    assert conv.depthwise.stride == (stride,) * spatial_dims
    assert conv.depthwise.bias is None
    assert conv.pointwise.kernel_size == (1,) * spatial_dims and conv.pointwise.out_channels == 6
    # weights: C_in * k^d (depthwise) + C_in * C_out (pointwise), no bias by default
    assert sum(p.numel() for p in conv.parameters()) == 4 * 3**spatial_dims + 4 * 6


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_layer_matches_standard_conv_shape(spatial_dims, separable, stride):
    layer = conv_layer(spatial_dims, 4, 6, kernel_size=3, stride=stride, separable=separable)
    assert isinstance(layer, SeparableConv if separable else _conv_type(spatial_dims))
    x = _x(spatial_dims, 4, 8)
    reference = conv_layer(spatial_dims, 4, 6, kernel_size=3, stride=stride, separable=False)
    assert layer(x).shape == reference(x).shape == (2, 6, *([8 // stride] * spatial_dims))


def test_conv_layer_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        conv_layer(3, 4, 4, kernel_size=2)
    with pytest.raises(ValueError, match="odd"):
        SeparableConv(2, 4, 4, kernel_size=(3, 4))


# ---------------------------------------------------------------------------------------------- ResidualBlock


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("in_ch,out_ch,stride", [(4, 4, 1), (4, 8, 1), (4, 4, 2), (4, 8, 2)])
@pytest.mark.parametrize("separable", [False, True])
def test_residual_block_shapes(spatial_dims, in_ch, out_ch, stride, separable):
    block = ResidualBlock(spatial_dims, in_ch, out_ch, stride=stride, separable=separable)
    y = block(_x(spatial_dims, in_ch, 8))
    assert y.shape == (2, out_ch, *([8 // stride] * spatial_dims))
    conv_cls = SeparableConv if separable else _conv_type(spatial_dims)
    assert isinstance(block.conv1, conv_cls) and isinstance(block.conv2, conv_cls)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(
    "in_ch,out_ch,stride,expect_projection",
    [(4, 4, 1, False), (4, 8, 1, True), (4, 4, 2, True), (8, 4, 2, True), (4, 4, (1, 2, 1), True)],
)
@pytest.mark.parametrize("separable", [False, True])
def test_projection_exactly_when_channels_or_stride_change(
    spatial_dims, in_ch, out_ch, stride, expect_projection, separable
):
    if isinstance(stride, tuple):
        stride = stride[:spatial_dims]
    block = ResidualBlock(spatial_dims, in_ch, out_ch, stride=stride, separable=separable)
    assert (block.projection is not None) == expect_projection
    if expect_projection:
        proj_conv = block.projection[0]
        assert isinstance(proj_conv, _conv_type(spatial_dims))  # projections stay standard 1x1 convs
        assert proj_conv.kernel_size == (1,) * spatial_dims and proj_conv.out_channels == out_ch


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_identity_shortcut_forward_is_act_of_residual_plus_input(spatial_dims):
    block = ResidualBlock(spatial_dims, 4, 4, act=("leakyrelu", {"negative_slope": 0.01, "inplace": True})).eval()
    assert block.projection is None
    x = _x(spatial_dims, 4, 8)
    with torch.no_grad():
        out = block(x.clone())
        residual = block.norm2(block.conv2(block.act(block.norm1(block.conv1(x)))))
        expected = F.leaky_relu(residual + x, negative_slope=0.01)
    torch.testing.assert_close(out, expected)


def test_projection_shortcut_forward():
    block = ResidualBlock(3, 4, 8, stride=2, act=RELU).eval()
    x = _x(3, 4, 8)
    with torch.no_grad():
        residual = block.norm2(block.conv2(block.act(block.norm1(block.conv1(x)))))
        expected = F.relu(residual + block.projection(x))
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("in_ch,out_ch,stride", [(4, 4, 1), (4, 8, 2)])
def test_activation_applied_after_addition(in_ch, out_ch, stride):
    block = ResidualBlock(3, in_ch, out_ch, stride=stride, act=RELU).eval()
    x = _x(3, in_ch, 8)
    with torch.no_grad():
        out = block(x)
        residual = block.norm2(block.conv2(block.act(block.norm1(block.conv1(x)))))
        shortcut = x if block.projection is None else block.projection(x)
    pre_act = residual + shortcut
    assert (pre_act < 0).any()  # the check below is not vacuous
    assert (out >= 0).all()
    torch.testing.assert_close(out, pre_act.clamp_min(0))


@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_reach_first_conv(separable, stride):
    block = ResidualBlock(3, 4, 8, stride=stride, separable=separable)
    block(_x(3, 4, 8)).square().mean().backward()
    first = block.conv1.depthwise if separable else block.conv1
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    assert block.projection[0].weight.grad.abs().sum() > 0


def test_residual_block_dropout_and_no_norm():
    block = ResidualBlock(2, 4, 4, dropout=0.2)
    assert isinstance(block.dropout, nn.Dropout2d) and block.dropout.p == pytest.approx(0.2)
    assert isinstance(ResidualBlock(2, 4, 4, dropout=0.0).dropout, nn.Identity)
    plain = ResidualBlock(2, 4, 4, norm=None)
    assert isinstance(plain.norm1, nn.Identity) and plain.conv1.bias is not None  # bias when no norm follows
    assert ResidualBlock(2, 4, 4).conv1.bias is None


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_residual_block_is_scriptable():
    for block in (ResidualBlock(2, 4, 4), ResidualBlock(2, 4, 8, stride=2, separable=True)):
        block.eval()
        x = _x(2, 4, 8)
        torch.testing.assert_close(torch.jit.script(block)(x), block(x))


# ---------------------------------------------------------------------------------------------- SkipAdapter


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_skip_adapter(spatial_dims):
    adapter = SkipAdapter(spatial_dims, 6, 4)
    assert adapter(_x(spatial_dims, 6, 8)).shape == (2, 4, *([8] * spatial_dims))
    assert adapter.conv.kernel_size == (1,) * spatial_dims and adapter.conv.bias is None
    no_norm = SkipAdapter(spatial_dims, 6, 4, norm=None)
    assert isinstance(no_norm.norm, nn.Identity) and no_norm.conv.bias is not None


# ---------------------------------------------------------------------------------------------- placement


def _graph_nodes(tensor: torch.Tensor) -> set[str]:
    seen, names, todo = set(), set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo += [n for n, _ in node.next_functions]
    return names


def test_plain_batch_feeds_the_network_plain_tensors():
    """The trainer's ``prepare_batch``: MetaTensors in the batch become plain tensors sharing their data, so the
    backward pass copies no activation (with a MetaTensor input every in-place activation is a CopySlices)."""
    from monai.data import MetaTensor

    from scripts.handlers import plain_batch
    from scripts.networks import ResUNet, place

    image, label = MetaTensor(_x(3, 4, 16)), MetaTensor(torch.ones(2, 3, 16, 16, 16))
    x, y = plain_batch({"image": image, "label": label}, torch.device("cpu"))
    assert type(x) is torch.Tensor and type(y) is torch.Tensor
    assert x.data_ptr() == image.data_ptr() and torch.equal(y, label.as_tensor())
    assert plain_batch({"image": image})[1] is None
    net = place(ResUNet(3, 4, 3, channels=(4, 8), strides=(1, 2), norm="batch"), "cpu").train()  # as the configs
    assert "CopySlices" in _graph_nodes(net(image))
    assert "CopySlices" not in _graph_nodes(net(x))
