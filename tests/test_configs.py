"""Every config parses with ConfigParser and its components instantiate; metadata carries the bundle fields;
train.json and inference.json stand alone and share their common blocks verbatim; overlays patch by id; the
model zoo's checks pass on configs/inference.json alone."""

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai import handlers as monai_handlers
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out

import scripts.handlers

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
META = CONFIGS / "metadata.json"

COMBINATIONS = {
    "train": ["train.json"],
    "inference": ["inference.json"],
    "evaluate": ["inference.json", "evaluate.json"],
    "step_lr": ["train.json", "step_lr.json"],
    "multi_gpu_train": ["train.json", "multi_gpu_train.json"],
    "deepedit_train": ["train.json", "deepedit_train.json"],
    "deepedit_inference": ["inference.json", "deepedit_inference.json"],
}
TRAINING = ("train", "step_lr", "multi_gpu_train", "deepedit_train")
SHARED = {
    ("train.json", "inference.json"): (  # not ckpt_dir: training writes a run folder, inference reads models/
        "imports",
        "bundle_root",
        "output_dir",
        "ckpt_path",
        "dataset_dir",
        "layout",
        "device",
        "amp",
        "num_workers",
        "brats_labels",
        "pixdim",
        "roi_size",
        "overlap",
        "network_def",
        "network",
        "preprocessing_transforms",
        "sw_inferer",
    ),
    ("train.json", "evaluate.json"): ("fold", "num_folds", "seed", "num_synthetic_cases"),
    ("deepedit_train.json", "deepedit_inference.json"): (  # not ckpt_dir, as for train.json and inference.json
        "label_names",
        "number_intensity_ch",
        "number_guidance_ch",
        "network_def#in_channels",
        "network_def#out_channels",
        "guidance_sigma",
        "interactive_preprocessing_transforms",
        "add_guidance_signal",
    ),
}
"""Blocks two configs both define: they must stay identical (the zoo's standalone configs repeat them)."""


def _parser(files, **overrides):
    parser = ConfigParser()
    parser.read_meta(str(META))
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update({"bundle_root": str(ROOT), **overrides})
    parser.parse()
    return parser


def _raw(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


@pytest.mark.parametrize("name", COMBINATIONS)
def test_config_parses_with_bundle_ids(name):
    parser = _parser(COMBINATIONS[name])
    for key in ("bundle_root", "network_def", "dataset_dir", "ckpt_dir", "run"):
        assert key in parser, f"{name}: missing id '{key}'"
    if name in TRAINING:
        assert "initialize" in parser


@pytest.mark.parametrize("name", ["train", "inference", "evaluate", "step_lr"])
def test_components_instantiate(name):
    parser = _parser(COMBINATIONS[name], device="cpu")
    net = parser.get_parsed_content("network_def")
    out = net(torch.rand(1, 4, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32)
    for key in ("sw_inferer", "preprocessing_transforms"):
        assert parser.get_parsed_content(key) is not None
    if name in TRAINING:
        for key in ("loss", "optimizer", "lr_scheduler", "train#preprocessing", "validate#postprocessing"):
            assert parser.get_parsed_content(key) is not None
    else:
        assert parser.get_parsed_content("postprocessing") is not None
        assert parser.get_parsed_content("inferer") is not None


@pytest.mark.parametrize("pair", SHARED, ids="~".join)
def test_shared_blocks_are_identical(pair):
    first, second = (_raw(name) for name in pair)
    for key in SHARED[pair]:
        assert key in first and key in second, f"{key} missing from {pair}"
        assert first[key] == second[key], f"{key} differs between {pair[0]} and {pair[1]}"


def test_training_and_inference_configs_stand_alone():
    for name in ("train.json", "inference.json"):
        parser = _parser([name], device="cpu")
        assert isinstance(parser.get_parsed_content("network_def"), torch.nn.Module)
    train = _parser(["train.json"], device="cpu").get_parsed_content("preprocessing_transforms")
    infer = _parser(["inference.json"], device="cpu").get_parsed_content("preprocessing_transforms")
    assert [type(t) for t in train] == [type(t) for t in infer]


def _ids(config: dict, prefix: str = ""):
    for key, value in config.items():
        yield prefix + key
        if isinstance(value, dict):
            yield from _ids(value, f"{prefix}{key}#")


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.json") if p.name != "metadata.json"))
def test_configs_patch_by_id_never_by_list_position(name):
    config = _raw(name)
    positional = [i for i in _ids(config) if any(part.isdigit() for part in i.split("#"))]
    assert not positional, f"{name} patches list items by position: {positional}"
    slices = [k for k, v in config.items() if isinstance(v, str) and v.startswith("$") and "handlers[" in v]
    assert not slices, f"{name} slices a handler list: {slices}"


@pytest.mark.parametrize("rank", [0, 1])
def test_multi_gpu_overlay_logs_on_rank_0_only(rank):
    """The overlay's handler list, evaluated over stand-ins for the train config's handlers on each rank: every
    handler on rank 0, only those that drive training (LR schedule, validation) on the others."""
    targets = [h["_target_"] for h in _raw("train.json")["train"]["handlers"]]
    validation = type("ValidationHandler", (), {})  # scripts.handlers.EpochValidationHandler is one
    assert issubclass(scripts.handlers.EpochValidationHandler, monai_handlers.ValidationHandler)
    kinds = {
        name: type(name.rsplit(".", 1)[-1], (validation,) if name.endswith(".EpochValidationHandler") else (), {})
        for name in targets
    }
    handlers = [kinds[name]() for name in targets]
    expression = _raw("multi_gpu_train.json")["train#trainer#train_handlers"]
    assert expression.startswith("$")

    class dist:  # what the expression asks of torch.distributed
        get_rank = staticmethod(lambda: rank)

    monai = SimpleNamespace(
        handlers=SimpleNamespace(LrScheduleHandler=kinds["LrScheduleHandler"], ValidationHandler=validation)
    )
    chosen = eval(
        expression[1:].replace("@train#handlers", "handlers"), {"dist": dist, "monai": monai, "handlers": handlers}
    )
    names = [type(h).__name__ for h in chosen]
    short = [name.rsplit(".", 1)[-1] for name in targets]
    assert names == (short if rank == 0 else ["LrScheduleHandler", "EpochValidationHandler"])


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
        "required_packages_version",
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


def test_model_zoo_checks_on_inference_json_alone(tmp_path):
    """What the model zoo's ``ci/verify_bundle.py`` runs, on configs/inference.json only: the network's input
    and output shapes against the metadata, TorchScript export of a checkpoint, and the inference workflow's
    required properties."""
    config = str(CONFIGS / "inference.json")
    verify_net_in_out(
        net_id="network_def", meta_file=str(META), config_file=config, bundle_root=str(ROOT), device="cpu", n=1
    )
    network = _parser(["inference.json"], device="cpu").get_parsed_content("network_def").eval()
    torch.save(network.state_dict(), tmp_path / "model.pt")  # same architecture, untrained weights
    ts_path = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(META),
        config_file=config,
        bundle_root=str(ROOT),
    )
    x = torch.rand(1, 4, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts_path))(x), network(x), rtol=1e-4, atol=1e-4)

    study = tmp_path / "study.nii.gz"  # one four-modality study: the dataset property is instantiated
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16, 4), np.int16), np.eye(4)), study)
    workflow = ConfigWorkflow(
        config_file=config,
        meta_file=str(META),
        workflow_type="inference",
        bundle_root=str(ROOT),
        device="cpu",
        dataset_dir=str(study),
    )
    workflow.initialize()
    assert not workflow.check_properties()
    assert workflow.network_def is not None and workflow.inferer is not None
    assert [item["image"] for item in workflow.dataset.data] == [str(study)]


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
    network.eval()  # as the evaluator runs it (BatchNorm uses its running statistics)
    x = torch.rand(2, 4, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(evaluator_net(x), network(x), rtol=1e-4, atol=1e-4)


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
