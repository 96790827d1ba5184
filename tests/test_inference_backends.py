"""The networks the inference evaluator can call: ONNX Runtime, torch under autocast, and their checks."""

import sys
import warnings

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from scripts import inferers
from scripts.inferers import AutocastNetwork, OnnxRuntimeNetwork, default_backend, inference_network
from scripts.networks import ResUNet

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def tiny_resunet():
    torch.manual_seed(0)
    return ResUNet(spatial_dims=3, in_channels=4, out_channels=3, channels=[4, 8, 16], strides=[1, 2, 2]).eval()


def test_onnxruntime_network_matches_torch_for_any_batch_and_shape():
    net = tiny_resunet()
    ort_net = OnnxRuntimeNetwork(net)
    with torch.no_grad():
        for shape in [(4, 4, 16, 16, 16), (1, 4, 16, 16, 16), (3, 4, 24, 16, 32)]:  # dynamic batch and spatial axes
            x = torch.rand(shape)
            out = ort_net(x)
            assert out.shape == (shape[0], 3, *shape[2:]) and out.dtype == torch.float32
            torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-4)


def test_onnxruntime_network_in_a_sliding_window_gives_the_torch_result():
    net = tiny_resunet()
    sw = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=3, overlap=0.25, mode="gaussian")
    x = torch.rand(1, 4, 30, 21, 17)
    with torch.no_grad():
        torch.testing.assert_close(sw(x, OnnxRuntimeNetwork(net)), sw(x, net), rtol=1e-4, atol=1e-4)


def test_onnxruntime_network_is_exported_at_the_first_call_so_loaded_weights_count():
    net, trained = tiny_resunet(), tiny_resunet()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.1)
    ort_net = OnnxRuntimeNetwork(net)
    net.load_state_dict(trained.state_dict())  # what the bundle's CheckpointLoader does after construction
    x = torch.rand(2, 4, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ort_net(x), trained(x), rtol=1e-4, atol=1e-4)


def test_onnxruntime_missing_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="inference_backend torch"):
        OnnxRuntimeNetwork(tiny_resunet())


def test_default_backend_is_onnxruntime_on_cpu_where_installed(monkeypatch):
    assert default_backend("cpu") == "onnxruntime"
    assert default_backend("cuda:0") == "torch"
    real = inferers.importlib.util.find_spec
    monkeypatch.setattr(inferers.importlib.util, "find_spec", lambda m: None if m == "onnxruntime" else real(m))
    assert default_backend("cpu") == "torch"


def test_bf16_on_a_cpu_without_native_bf16_falls_back_to_fp32(monkeypatch):
    monkeypatch.setattr(inferers, "cpu_bf16_supported", lambda: False)
    net = tiny_resunet()
    with pytest.warns(UserWarning, match="falls back to fp32"):
        assert inference_network(net, "torch", "bf16", "cpu") is net


def test_bf16_autocast_where_supported_returns_float32_close_to_fp32(monkeypatch):
    monkeypatch.setattr(inferers, "cpu_bf16_supported", lambda: True)
    net = torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 3, 1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapped = inference_network(net, "torch", "bf16", "cpu")
    assert isinstance(wrapped, AutocastNetwork)
    x = torch.rand(1, 4, 8, 8, 8)
    with torch.no_grad():
        out = wrapped(x)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, net(x), rtol=0.05, atol=0.05)


def test_fp32_torch_is_the_network_itself():
    net = tiny_resunet()
    assert inference_network(net, "torch", "fp32", "cpu") is net


@pytest.mark.parametrize(
    "backend, precision, device, match",
    [
        ("tensorrt", "fp32", "cpu", "inference_backend must be one of"),
        ("torch", "fp64", "cpu", "precision must be one of"),
        ("torch", "fp16", "cpu", "needs a CUDA device"),
        ("onnxruntime", "bf16", "cpu", "needs inference_backend 'torch'"),
    ],
)
def test_bad_backend_or_precision_is_a_clear_error(backend, precision, device, match):
    with pytest.raises(ValueError, match=match):
        inference_network(tiny_resunet(), backend, precision, device)
