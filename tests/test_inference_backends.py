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


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """ONNX exports of these tests go to a temporary user cache (scripts.inferers.user_cache_dir)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


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


@pytest.mark.parametrize("package", ["onnxruntime", "onnx"])
def test_onnxruntime_missing_gives_a_clear_error(package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)
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


def _exports(monkeypatch) -> list:
    """Count the ONNX exports of every OnnxRuntimeNetwork from here on."""
    count, export = [], OnnxRuntimeNetwork._export_bytes

    def counted(self, example):
        count.append(1)
        return export(self, example)

    monkeypatch.setattr(OnnxRuntimeNetwork, "_export_bytes", counted)
    return count


def test_onnx_export_is_cached_in_the_user_cache_keyed_by_weights_md5_and_opset(tmp_path, monkeypatch):
    exports, net, x = _exports(monkeypatch), tiny_resunet(), torch.rand(1, 4, 16, 16, 16)
    with torch.no_grad():
        first = OnnxRuntimeNetwork(net)
        first(x)
        cached = tmp_path / "xdg" / "resunet-brats" / "onnx" / inferers.onnx_cache_name(net, 17)
        assert first.cache_path == str(cached) and cached.is_file()
        assert cached.name.startswith(inferers.weights_md5(net) + "-") and cached.name.endswith("-opset17.onnx")
        assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary file left
        torch.testing.assert_close(OnnxRuntimeNetwork(net)(x), net(x), rtol=1e-4, atol=1e-4)
        assert len(exports) == 1  # the second network read the cache
        for p in net.parameters():  # other weights: another key, a new export, the new weights' logits
            p.add_(0.05)
        torch.testing.assert_close(OnnxRuntimeNetwork(net)(x), net(x), rtol=1e-4, atol=1e-4)
        assert len(exports) == 2 and len(list(cached.parent.iterdir())) == 2
        OnnxRuntimeNetwork(net, opset_version=18)(x)
        assert len(exports) == 3


def test_an_unwritable_onnx_cache_is_a_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    net, x = tiny_resunet(), torch.rand(1, 4, 16, 16, 16)
    with torch.no_grad(), caplog.at_level("WARNING", logger="scripts.inferers"):
        out = OnnxRuntimeNetwork(net, cache_dir=str(blocker / "onnx"))(x)
    torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-4)
    assert "not written" in caplog.text and "uncached" in caplog.text
    assert blocker.read_text() == "not a folder"


def test_a_damaged_onnx_cache_entry_is_a_warning_and_exported_again(tmp_path, monkeypatch, caplog):
    exports, net, x = _exports(monkeypatch), tiny_resunet(), torch.rand(1, 4, 16, 16, 16)
    (tmp_path / inferers.onnx_cache_name(net, 17)).write_bytes(b"truncated")
    with torch.no_grad(), caplog.at_level("WARNING", logger="scripts.inferers"):
        out = OnnxRuntimeNetwork(net, cache_dir=str(tmp_path))(x)
    torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-4)
    assert "unreadable" in caplog.text and len(exports) == 1


@pytest.mark.parametrize("cache", ["default", None])
def test_a_released_session_is_built_again_without_exporting_again(cache, monkeypatch):
    exports, net = _exports(monkeypatch), tiny_resunet()
    ort_net = OnnxRuntimeNetwork(net, cache_dir=cache)
    with torch.no_grad():
        for shape in ((16, 16, 16), (32, 16, 16), (16, 16, 16)):  # the arena grows, then is freed
            x = torch.rand(1, 4, *shape)
            torch.testing.assert_close(ort_net(x), net(x), rtol=1e-4, atol=1e-4)
            ort_net.release()
            assert ort_net._session is None
    assert len(exports) == 1
