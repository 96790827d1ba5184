"""Tests for the MobileNetV3-style student (scripts/networks/student.py, InvertedResidual in blocks.py) and
its overlay configs/student.json."""

import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser
from monai.networks.blocks.squeeze_and_excitation import ChannelSELayer
from monai.networks.layers.utils import get_act_layer

from scripts.networks import InvertedResidual, StudentUNet
from tests._bundle import ROOT

NO_JIT_DEPRECATION = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
TINY = {"channels": (4, 8, 8, 16), "blocks": (0, 1, 1, 1)}


def _x(spatial_dims, size=16, channels=4, batch=2):
    torch.manual_seed(0)
    return torch.randn(batch, channels, *([size] * spatial_dims))


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


def _network(configs):
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / c) for c in configs])
    return parser.get_parsed_content("network_def")


def test_mobilenetv3_activations_are_in_monais_factory():
    assert isinstance(get_act_layer("hardswish"), nn.Hardswish)
    assert isinstance(get_act_layer(("hardsigmoid", {})), nn.Hardsigmoid)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("in_ch,out_ch,stride,residual", [(8, 8, 1, True), (8, 16, 1, False), (8, 8, 2, False)])
def test_inverted_residual_shapes_and_shortcut(spatial_dims, in_ch, out_ch, stride, residual):
    block = InvertedResidual(spatial_dims, in_ch, out_ch, expansion=3, stride=stride).eval()
    x = _x(spatial_dims, 8, in_ch)
    assert block(x).shape == (2, out_ch, *([8 // stride] * spatial_dims))
    assert block.use_residual is residual
    depthwise = block.depthwise[0]
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == 3 * in_ch
    assert depthwise.stride == (stride,) * spatial_dims
    assert isinstance(block.depthwise[2], nn.Hardswish) and isinstance(block.project[2], nn.Identity)
    assert isinstance(block.se, ChannelSELayer) and isinstance(block.se.fc[-1], nn.Hardsigmoid)
    if residual:  # the identity shortcut: zeroing the projection leaves exactly the input
        nn.init.zeros_(block.project[1].weight)
        torch.testing.assert_close(block(x), x)


def test_inverted_residual_expansion_one_has_no_expand_conv_and_se_is_optional():
    block = InvertedResidual(3, 8, 16, expansion=1, se_reduction=None)
    assert block.expand is None and isinstance(block.se, nn.Identity)
    # depthwise 8 x 27 + pointwise 8 x 16, plus 2 batch norms (2 x 8 and 2 x 16 affine parameters)
    assert _n_params(block) == 8 * 27 + 8 * 16 + 2 * 8 + 2 * 16
    with pytest.raises(ValueError, match="expansion"):
        InvertedResidual(3, 8, 8, expansion=0.5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_student_output_shape_train_and_eval(spatial_dims):
    model = StudentUNet(spatial_dims=spatial_dims, **TINY)
    for train in (True, False):
        model.train(train)
        assert model(_x(spatial_dims, 16)).shape == (2, 3, *([16] * spatial_dims))


def test_student_anisotropic_strides_and_level_zero_blocks():
    model = StudentUNet(channels=(4, 8, 16), strides=(1, (2, 2, 1), 2), blocks=(1, 1, 2), expansion=2, se_levels=(2,))
    assert model.divisors == [4, 4, 2]
    assert len(model.encoder[0]) == 1 and len(model.encoder[2]) == 2
    assert model.eval()(torch.randn(1, 4, 8, 8, 6)).shape == (1, 3, 8, 8, 6)


def test_student_gradients_reach_the_stem():
    model = StudentUNet(**TINY)
    model(_x(3, 16)).mean().backward()
    assert model.stem[0].weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0


def test_student_rejects_bad_inputs_and_arguments():
    model = StudentUNet(**TINY)
    with pytest.raises(ValueError, match="not divisible by 8"):
        model(torch.randn(1, 4, 16, 12, 16))
    with pytest.raises(ValueError, match="5D input"):
        model(torch.randn(1, 4, 16, 16))
    for kwargs, match in [
        ({"blocks": (0, 0, 1, 1)}, "blocks"),
        ({"expansion": (1, 2)}, "expansion"),
        ({"se_levels": (4,)}, "se_levels"),
        ({"strides": (2, 2, 2, 2)}, "strides\\[0\\] must be 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            StudentUNet(**{**TINY, **kwargs})


@NO_JIT_DEPRECATION
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_student_torchscript_matches_eager(spatial_dims):
    model = StudentUNet(spatial_dims=spatial_dims, **TINY).eval()
    scripted = torch.jit.script(model)
    x = _x(spatial_dims, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
    with pytest.raises(Exception, match="not divisible by 8"):  # the check survives scripting
        scripted(torch.randn(1, 4, *([12] * spatial_dims)))


def test_student_overlay_replaces_network_def_and_weights_path():
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / c) for c in ("train.json", "inference.json", "student.json")])
    assert isinstance(parser.get_parsed_content("network_def"), StudentUNet)
    assert parser.get_parsed_content("ckpt_path").endswith("models/student.pt")
    assert parser.get_parsed_content("ckpt_dir").endswith("models/student")  # not the teacher's checkpoints


def test_shipped_student_has_ten_times_fewer_parameters_than_the_shipped_resunet():
    teacher = _network(["train.json"])
    student = _network(["train.json", "student.json"])
    assert _n_params(teacher) >= 10 * _n_params(student)


def test_verify_net_in_out_with_the_bundle_configs():
    from monai.bundle import verify_net_in_out

    configs = [str(ROOT / "configs" / c) for c in ("train.json", "student.json")]
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(ROOT / "configs" / "metadata.json"),
        config_file=configs,
        device="cpu",
        n=2,
    )
