"""Every config parses with ConfigParser and its components instantiate; metadata carries the bundle fields."""

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, verify_net_in_out

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
META = CONFIGS / "metadata.json"

COMBINATIONS = {
    "train": ["train.json"],
    "inference": ["train.json", "inference.json"],
    "evaluate": ["train.json", "inference.json", "evaluate.json"],
    "step_lr": ["train.json", "step_lr.json"],
    "multi_gpu_train": ["train.json", "multi_gpu_train.json"],
}


def _parser(files, **overrides):
    parser = ConfigParser()
    parser.read_meta(str(META))
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update({"bundle_root": str(ROOT), **overrides})
    parser.parse()
    return parser


@pytest.mark.parametrize("name", COMBINATIONS)
def test_config_parses_with_bundle_ids(name):
    parser = _parser(COMBINATIONS[name])
    for key in ("bundle_root", "network_def", "dataset_dir", "ckpt_dir", "run", "initialize"):
        assert key in parser, f"{name}: missing id '{key}'"


@pytest.mark.parametrize("name", ["train", "inference", "evaluate", "step_lr"])
def test_components_instantiate(name):
    parser = _parser(COMBINATIONS[name], device="cpu")
    net = parser.get_parsed_content("network_def")
    out = net(torch.rand(1, 4, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32)
    for key in ("loss", "optimizer", "lr_scheduler", "sw_inferer", "preprocessing_transforms"):
        assert parser.get_parsed_content(key) is not None
    if name in ("train", "step_lr", "evaluate"):
        assert parser.get_parsed_content("train#preprocessing") is not None
        assert parser.get_parsed_content("validate#postprocessing") is not None
    if name in ("inference", "evaluate"):
        assert parser.get_parsed_content("postprocessing") is not None
        assert parser.get_parsed_content("inferer") is not None


def test_step_lr_override_decays_tenfold_every_ten_epochs():
    scheduler = _parser(COMBINATIONS["step_lr"], device="cpu").get_parsed_content("lr_scheduler")
    optimizer = scheduler.optimizer
    lrs = []
    for _ in range(21):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-4) and lrs[20] == pytest.approx(1e-5)


def test_default_schedule_is_cosine_annealing_from_1e3():
    parser = _parser(COMBINATIONS["train"], device="cpu", epochs=10)
    scheduler = parser.get_parsed_content("lr_scheduler")
    optimizer = scheduler.optimizer
    assert isinstance(optimizer, torch.optim.Adam)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[5] == pytest.approx(5e-4, rel=1e-6)


def test_network_override_from_the_command_line_form():
    parser = _parser(COMBINATIONS["train"], **{"network_def#channels": [8, 16, 32, 64]})
    net = parser.get_parsed_content("network_def")
    assert net(torch.rand(1, 4, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    assert sum(p.numel() for p in net.parameters()) < sum(
        p.numel() for p in _parser(COMBINATIONS["train"]).get_parsed_content("network_def").parameters()
    )


def test_metadata_fields_and_network_io():
    meta = json.loads(META.read_text())
    for key in (
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "optional_packages_version",
        "name",
        "task",
        "description",
        "authors",
        "copyright",
        "data_source",
        "data_type",
        "image_classes",
        "label_classes",
        "pred_classes",
        "eval_metrics",
        "intended_use",
        "references",
        "network_data_format",
    ):
        assert key in meta, key
    assert meta["version"] in meta["changelog"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 4 and list(image["channel_def"].values()) == ["T1", "T1ce", "T2", "FLAIR"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 3 and list(pred["channel_def"].values()) == ["TC", "WT", "ET"]
    verify_net_in_out(
        net_id="network_def", meta_file=str(META), config_file=str(CONFIGS / "train.json"), device="cpu", n=1
    )


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_inference_backend_and_overlap_overrides(backend):
    pytest.importorskip("onnxruntime")
    parser = _parser(
        COMBINATIONS["inference"],
        device="cpu",
        inference_backend=backend,
        overlap=0.1,
        **{"network_def#channels": [4, 8, 16, 32]},
    )
    assert parser.get_parsed_content("sw_inferer").overlap == 0.1
    network = parser.get_parsed_content("network")
    evaluator_net = parser.get_parsed_content("inference_network")
    assert (evaluator_net is network) == (backend == "torch")
    x = torch.rand(2, 4, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(evaluator_net(x), network.eval()(x), rtol=1e-4, atol=1e-4)


def test_default_inference_backend_is_onnxruntime_on_cpu():
    pytest.importorskip("onnxruntime")
    parser = _parser(COMBINATIONS["inference"], device="cpu")
    assert parser.get_parsed_content("inference_backend") == "onnxruntime"
    assert parser.get_parsed_content("precision") == "fp32"
    assert parser.get_parsed_content("sw_inferer").overlap == 0.25


def test_bad_inference_backend_is_a_clear_error():
    parser = _parser(COMBINATIONS["inference"], device="cpu", inference_backend="tensorrt")
    with pytest.raises(RuntimeError) as err:  # ConfigParser's error; the cause is what the user reads
        parser.get_parsed_content("inference_network")
    assert "inference_backend must be one of" in str(err.value.__cause__)
