"""Exports of the bundle's networks as users run them: ``python -m monai.bundle ckpt_export`` (TorchScript) and
``python -m monai.bundle onnx_export`` (ONNX, run with ONNX Runtime) from small checkpoints, each compared with
torch on the sliding-window logits of the real TCGA-DU-7294 case (max abs difference <= 1e-4).

The ResUNet is exported with batch norm, as the shipped teacher is trained. With instance norm, windows of the
all-zero background have (almost) zero variance, and normalising them amplifies the rounding differences of the
two runtimes about 300-fold (1 / sqrt(eps)): 8e-4 on this case with random weights."""

import json
import os
import subprocess
import sys

import pytest
import torch

from scripts.casework import load_network
from scripts.export import main
from tests._bundle import EXAMPLE_CASE, ROOT

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4
ONNX_KWARGS = {
    "dynamo": False,
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {k: {0: "batch", 2: "x", 3: "y", 4: "z"} for k in ("image", "pred")},
}


def _configs(tmp_path, overlay):
    configs = [str(ROOT / "configs" / "train.json")]
    if overlay == "student":
        configs.append(str(ROOT / "configs" / "student.json"))
    else:  # the ResUNet teacher with batch norm, narrower so that the test stays fast
        tiny = {"network_def#channels": [8, 16, 32, 64], "network_def#norm": "batch"}
        (tmp_path / "tiny.json").write_text(json.dumps(tiny))
        configs.append(str(tmp_path / "tiny.json"))
    return configs


def _checkpoint(tmp_path, configs):
    """Random weights, with norm statistics and affine parameters away from the identity (as after training)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    network = parser.get_parsed_content("network_def")
    torch.manual_seed(0)
    for m in network.modules():
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
        if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 1:
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    torch.save(network.state_dict(), tmp_path / "weights.pt")
    return str(tmp_path / "weights.pt")


def _bundle(command, configs, *args):
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        command,
        "network_def",
        "--meta_file",
        str(ROOT / "configs" / "metadata.json"),
    ]
    cmd += ["--config_file", str(configs), *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("network", ["student", "resunet"])
def test_exports_match_torch_on_the_real_case(tmp_path, network):
    configs = _configs(tmp_path, network)
    ckpt = _checkpoint(tmp_path, configs)
    onnx = tmp_path / "model.onnx"
    _bundle(
        "onnx_export",
        configs,
        "--filepath",
        str(onnx),
        "--ckpt_file",
        ckpt,
        "--use_trace",
        "true",
        "--input_shape",
        "[1,4,48,48,48]",
        "--converter_kwargs",
        repr(ONNX_KWARGS),
    )
    args = ["--config_file", str(configs), "--ckpt_file", ckpt, "--case", str(EXAMPLE_CASE), "--onnx", str(onnx)]
    if network == "student":  # the ResUNet's TorchScript export is run in test_bundle_e2e.py
        ts = tmp_path / "model.ts"
        _bundle("ckpt_export", configs, "--filepath", str(ts), "--ckpt_file", ckpt)
        args += ["--torchscript", str(ts)]
    result = main(args)
    assert len(result["case_shape"]) == 3 and min(result["case_shape"]) > 100  # the brain-cropped real case
    assert result["max_abs_logit"] > 0.1  # logits of non-trivial size, so the tolerance means something
    assert result["onnx_max_abs_diff"] <= TOLERANCE
    if network == "student":
        assert result["torchscript_max_abs_diff"] <= TOLERANCE
        assert isinstance(torch.jit.load(str(ts)), torch.jit.ScriptModule)
    assert load_network(configs, ckpt).training is False
