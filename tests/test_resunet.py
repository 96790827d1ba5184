"""Tests for scripts/networks/resunet.py (ResUNet)."""

import json

import pytest
import torch
import torch.nn as nn

from scripts.networks import ResidualBlock, ResUNet, SeparableConv

SMALL = (8, 16, 32, 64)  # 4 levels, divisor 8
NO_JIT_DEPRECATION = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


def _x(spatial_dims, size=32, channels=4, batch=1):
    torch.manual_seed(0)
    return torch.randn(batch, channels, *([size] * spatial_dims))


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


def _kxk_params(model):
    """Parameters of the k x k convs (conv1/conv2 of every ResidualBlock; standard or separable)."""
    return sum(
        p.numel()
        for block in model.modules()
        if isinstance(block, ResidualBlock)
        for conv in (block.conv1, block.conv2)
        for p in conv.parameters()
    )


def _level_blocks(model):
    """{(part, level): ResidualBlock} for the encoder and decoder blocks."""
    blocks = {("enc", i): b for i, b in enumerate(model.encoder)}
    blocks.update({("dec", i): model.decoder_stage(i).block for i in range(len(model.channels) - 1)})
    return blocks


@pytest.mark.parametrize("spatial_dims,size", [(2, 32), (3, 32)])
@pytest.mark.parametrize("separable_levels", [(), (0, 1, 2, 3)])
def test_output_shape(spatial_dims, size, separable_levels):
    model = ResUNet(spatial_dims=spatial_dims, channels=SMALL, separable_levels=separable_levels)
    for train in (True, False):
        model.train(train)
        out = model(_x(spatial_dims, size, batch=2))
        assert isinstance(out, torch.Tensor)  # deep_supervision=False: always a tensor
        assert out.shape == (2, 3, *([size] * spatial_dims))


def test_anisotropic_strides_and_decoder_channels():
    model = ResUNet(spatial_dims=3, channels=SMALL, strides=(1, (2, 2, 1), 2, 2), decoder_channels=(4, 8, 16))
    assert model.divisors == [8, 8, 4]
    assert model.decoder_stage(0).block.conv2.out_channels == 4
    assert model(torch.randn(1, 4, 16, 16, 8)).shape == (1, 3, 16, 16, 8)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_supervision_list_in_train_tensor_in_eval(spatial_dims):
    model = ResUNet(spatial_dims=spatial_dims, channels=SMALL, deep_supervision=True).train()
    x = _x(spatial_dims, 32)
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == len(SMALL) - 1
    assert [tuple(o.shape) for o in outs] == [(1, 3, *([s] * spatial_dims)) for s in (32, 16, 8)]
    model.eval()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, *([32] * spatial_dims))


def test_deep_supervision_works_with_monai_loss():
    from monai.losses import DeepSupervisionLoss, DiceLoss

    model = ResUNet(spatial_dims=2, channels=SMALL, deep_supervision=True).train()
    target = (torch.rand(1, 3, 32, 32) > 0.5).float()
    loss = DeepSupervisionLoss(DiceLoss(sigmoid=True))(model(_x(2, 32)), target)
    loss.backward()
    assert all(h.weight.grad is not None for h in model.ds_heads)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradients_reach_first_layer(spatial_dims):
    model = ResUNet(spatial_dims=spatial_dims, channels=SMALL)
    model(_x(spatial_dims, 16)).square().mean().backward()
    grad = model.encoder[0].conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_divisibility_error_message():
    model = ResUNet(channels=SMALL)
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 4, 32, 36, 32))
    msg = str(err.value)
    assert "[1, 4, 32, 36, 32]" in msg  # input shape
    assert "spatial dim 1" in msg and "size 36" in msg  # offending dim
    assert "divisible by 8" in msg  # required divisor (product of strides)
    with pytest.raises(ValueError, match="5D input"):
        model(torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"channels": (8, 16), "strides": (1, 2, 2)}, "len\\(strides\\)"),
        ({"channels": (8,), "strides": (1,)}, "at least 2"),
        ({"strides": (2, 2, 2, 2)}, "strides\\[0\\] must be 1"),
        ({"separable_levels": (4,)}, "separable_levels"),
        ({"decoder_channels": (8, 16)}, "decoder_channels"),
        ({"decoder_channels": (8, 16, 32, 99)}, "bottleneck"),
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"kernel_size": 4}, "odd"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResUNet(**kwargs)


@NO_JIT_DEPRECATION
def test_torchscript_matches_eager():
    model = ResUNet(channels=SMALL, separable_levels=(1,), dropout=0.1).eval()
    scripted = torch.jit.script(model)
    x = _x(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
    with pytest.raises(Exception, match="not divisible by 8"):  # the check survives scripting
        scripted(torch.randn(1, 4, 16, 12, 16))


@NO_JIT_DEPRECATION
def test_torchscript_deep_supervision():
    model = ResUNet(spatial_dims=2, channels=SMALL, deep_supervision=True)
    scripted = torch.jit.script(model)
    x = _x(2, 32)
    assert [o.shape for o in scripted.train()(x)] == [o.shape for o in model.train()(x)]
    with torch.no_grad():
        torch.testing.assert_close(scripted.eval()(x), model.eval()(x))


@NO_JIT_DEPRECATION
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # raised inside torch's InstanceNorm size check
def test_trace_matches_eager():
    model = ResUNet(channels=SMALL).eval()
    traced = torch.jit.trace(model, _x(3, 16))
    x = _x(3, 32)  # a different size than the trace input
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_verify_net_in_out(tmp_path):
    from monai.bundle import verify_net_in_out

    meta = {
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 4, "spatial_shape": ["8*n"] * 3, "dtype": "float32"}},
            "outputs": {"pred": {"type": "image", "num_channels": 3, "spatial_shape": ["8*n"] * 3, "dtype": "float32"}},
        }
    }
    config = {"network_def": {"_target_": "scripts.networks.ResUNet", "channels": list(SMALL)}}
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    (tmp_path / "inference.json").write_text(json.dumps(config))
    # n=2 -> 16^3 input; (n=1 gives a 1-voxel bottleneck, which InstanceNorm rejects)
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(tmp_path / "metadata.json"),
        config_file=str(tmp_path / "inference.json"),
        device="cpu",
        n=2,
    )


def test_parameter_reduction_all_separable():
    """Default widths: all-separable vs standard ResUNet, whole model and k x k convs alone."""
    channels = (16, 32, 64, 128)
    standard = ResUNet(channels=channels)
    separable = ResUNet(channels=channels, separable_levels=range(len(channels)))
    total_std, total_sep = _n_params(standard), _n_params(separable)
    kxk_std, kxk_sep = _kxk_params(standard), _kxk_params(separable)
    whole_reduction = 1 - total_sep / total_std
    kxk_reduction = 1 - kxk_sep / kxk_std
    print(
        f"\nResUNet{channels}: params standard={total_std:,} all-separable={total_sep:,} "
        f"(-{whole_reduction:.1%}); kxk convs standard={kxk_std:,} separable={kxk_sep:,} (-{kxk_reduction:.1%})"
    )
    # measured: 1,430,355 -> 182,735 (-87.2%) whole model; 1,315,008 -> 67,388 (-94.9%) kxk convs
    assert whole_reduction >= 0.80
    assert kxk_reduction >= 0.90
    # everything other than the k x k convs (norms, projections, skip adapters, transposed convs, head) is unchanged
    assert total_std - kxk_std == total_sep - kxk_sep
    # exact count: a separable k^3 conv C_in -> C_out has C_in * 27 + C_in * C_out weights
    expected = 0
    for block in separable.modules():
        if isinstance(block, ResidualBlock):
            for conv in (block.conv1, block.conv2):
                c_in, c_out = conv.depthwise.in_channels, conv.pointwise.out_channels
                expected += c_in * 27 + c_in * c_out
    assert kxk_sep == expected


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_separable_levels_changes_exactly_that_level(level):
    standard = ResUNet(channels=SMALL)
    model = ResUNet(channels=SMALL, separable_levels=(level,))
    for (part, lvl), block in _level_blocks(model).items():
        expected = SeparableConv if lvl == level else nn.Conv3d
        assert isinstance(block.conv1, expected), (part, lvl)
        assert isinstance(block.conv2, expected), (part, lvl)
    # 1x1 projections, skip adapters, transposed convs and heads stay standard
    for stage in model.decoder:
        assert isinstance(stage.upsample, nn.ConvTranspose3d) and isinstance(stage.skip.conv, nn.Conv3d)
    # the parameter names/shapes differ from the standard model exactly under that level's conv1/conv2
    prefixes = {f"encoder.{level}.conv1.", f"encoder.{level}.conv2."}
    if level < len(SMALL) - 1:
        j = len(SMALL) - 2 - level  # decoder is stored deepest first
        prefixes |= {f"decoder.{j}.block.conv1.", f"decoder.{j}.block.conv2."}
    std_shapes = {k: v.shape for k, v in standard.state_dict().items()}
    sep_shapes = {k: v.shape for k, v in model.state_dict().items()}
    changed = {k for k in std_shapes.keys() | sep_shapes.keys() if std_shapes.get(k) != sep_shapes.get(k)}
    assert changed and all(any(k.startswith(p) for p in prefixes) for k in changed)
    assert {p for p in prefixes if any(k.startswith(p) for k in changed)} == prefixes
