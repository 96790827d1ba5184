"""Tests for the ResUNet-Swin hybrid (scripts/networks/swin.py) and its overlay configs/swin.json."""

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets.swin_unetr import SwinTransformerBlock

from scripts.networks import ResidualBlock, ResUNet, SwinResUNet, SwinStage
from tests._bundle import ROOT

SMALL = {"channels": (8, 16, 32, 64), "num_heads": 2, "window_size": 3}


def _x(spatial_dims, size=16, channels=4, batch=2):
    torch.manual_seed(0)
    return torch.randn(batch, channels, *([size] * spatial_dims))


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("spatial_dims,size", [(2, 6), (3, 6), (3, 5)])
def test_swin_stage_keeps_the_shape_and_alternates_shifted_windows(spatial_dims, size):
    stage = SwinStage(spatial_dims, 16, depth=2, num_heads=4, window_size=3)
    x = _x(spatial_dims, size, 16)
    assert stage(x).shape == x.shape  # size 5 is padded to whole windows inside the blocks and cropped back
    assert all(isinstance(b, SwinTransformerBlock) for b in stage.blocks)
    assert [b.shift_size for b in stage.blocks] == [(0,) * spatial_dims, (1,) * spatial_dims]


def test_swin_stage_mixes_information_across_windows():
    """A shifted second block lets a change in one 3^3 window reach the neighbouring window."""
    stage = SwinStage(3, 8, depth=2, num_heads=2, window_size=3).eval()
    x = _x(3, 6, 8, batch=1)
    y = x.clone()
    y[..., 0, 0, 0] += torch.linspace(-1, 1, 8)  # not constant over channels: LayerNorm would remove that
    with torch.no_grad():
        diff = (stage(x) - stage(y)).abs()
    assert diff[..., 3, 3, 3].amax() > 1e-5  # in the next window, reached through the shifted window [1, 3]^3
    assert diff[..., 4:, :, :].amax() == 0  # two blocks reach no further


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_hybrid_output_shape_and_structure(spatial_dims):
    model = SwinResUNet(spatial_dims=spatial_dims, **SMALL)
    assert model.swin_levels == (2, 3)  # the deepest two by default
    for level in (2, 3):
        block, stage = model.encoder[level]
        assert isinstance(block, ResidualBlock) and isinstance(stage, SwinStage)
    assert isinstance(model.encoder[1], ResidualBlock)
    for train in (True, False):
        model.train(train)
        assert model(_x(spatial_dims, 16)).shape == (2, 3, *([16] * spatial_dims))


def test_hybrid_is_the_resunet_plus_the_transformer_stages():
    base = ResUNet(channels=SMALL["channels"])
    hybrid = SwinResUNet(swin_levels=(3,), **SMALL)
    assert _n_params(hybrid) == _n_params(base) + _n_params(hybrid.encoder[3][1])
    hybrid(_x(3, 16)).mean().backward()
    assert all(p.grad is not None for p in hybrid.encoder[3][1].parameters())


def test_hybrid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="swin_levels"):
        SwinResUNet(swin_levels=(4,), **SMALL)
    with pytest.raises(ValueError, match="num_heads"):
        SwinResUNet(**{**SMALL, "num_heads": (2, 2, 2)})
    with pytest.raises(ValueError, match="divisible by num_heads"):
        SwinResUNet(**{**SMALL, "num_heads": 3})
    with pytest.raises(ValueError, match="not divisible by 8"):
        SwinResUNet(**SMALL)(torch.randn(1, 4, 16, 12, 16))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_hybrid_trace_matches_eager():
    model = SwinResUNet(**SMALL).eval()
    x = _x(3, 24, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.trace(model, x)(x), model(x))


def test_swin_overlay_patches_network_def_by_id():
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / c) for c in ("train.json", "inference.json", "swin.json")])
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, SwinResUNet) and net.swin_levels == (2, 3)
    train = ConfigParser()
    train.read_config(str(ROOT / "configs" / "train.json"))
    for key, value in train.get("network_def").items():  # the ResUNet settings of train.json are kept
        if key != "_target_":
            assert parser.get(f"network_def#{key}") == value
    assert parser.get_parsed_content("inference_backend") == "torch"
    assert parser.get_parsed_content("ckpt_path").endswith("models/swin.pt")


def test_verify_net_in_out_with_the_bundle_configs():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(ROOT / "configs" / "metadata.json"),
        config_file=[str(ROOT / "configs" / c) for c in ("train.json", "swin.json")],
        device="cpu",
        n=2,
    )
