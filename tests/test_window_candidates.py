"""The window-independence candidates of benchmarks/window_candidates.py: the random-size patch crop, the
training overlays that use it and the norm overlays."""

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import RandCropByPosNegLabeld

from benchmarks.window_candidates import RandPatchSizeCropByPosNegLabeld, arm, markdown, replace_crop

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = ROOT / "benchmarks" / "configs"


def test_random_patch_crop_draws_sizes_and_fills_the_voxel_budget():
    label = torch.zeros(1, 20, 20, 20)
    label[0, 8:12, 8:12, 8:12] = 1
    crop = RandPatchSizeCropByPosNegLabeld(["image", "label"], "label", sizes=[8, 12, 16], voxels=16**3)
    crop.set_random_state(0)
    seen = {}
    for _ in range(30):
        out = crop({"image": torch.rand(4, 20, 20, 20), "label": label})
        shapes = {tuple(item["image"].shape) for item in out} | {tuple(item["label"].shape[1:]) for item in out}
        assert len(shapes) == 2, shapes  # image and label crops agree
        edge = out[0]["label"].shape[-1]
        seen[edge] = len(out)
    assert seen == {8: 8, 12: 2, 16: 1}  # round(16^3 / edge^3) patches, every size drawn


def test_replace_crop_swaps_only_the_crop_and_refuses_a_pipeline_without_one():
    crop = RandPatchSizeCropByPosNegLabeld("label", "label", sizes=[8], voxels=512)
    original = RandCropByPosNegLabeld("label", "label", spatial_size=8)
    assert replace_crop(["a", original, "b"], crop) == ["a", crop, "b"]
    with pytest.raises(ValueError, match="no RandCropByPosNegLabeld"):
        replace_crop(["a"], crop)


def _parser(*overlays: str) -> ConfigParser:
    parser = ConfigParser()
    files = [ROOT / "configs" / "train.json", ROOT / "configs" / "synthetic_train.json"]
    parser.read_config([str(f) for f in files] + [str(CANDIDATES / name) for name in overlays])
    parser["bundle_root"] = str(ROOT)
    return parser


def test_random_patch_overlay_trains_on_random_sizes_with_instance_norm():
    parser = _parser("instancenorm.json", "random_patch_train.json")
    transforms = parser.get_parsed_content("train#preprocessing").transforms
    crops = [t for t in transforms if isinstance(t, RandCropByPosNegLabeld)]
    assert len(crops) == 1 and isinstance(crops[0], RandPatchSizeCropByPosNegLabeld)
    assert crops[0].sizes == [48, 64, 80, 96, 112] and crops[0].voxels == 4 * 64**3
    assert parser.get_parsed_content("roi_size") == [112, 112, 112]  # padding before the crop fits every size
    net = parser.get_parsed_content("network_def", instantiate=True)
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())


def test_groupnorm_overlay():
    net = _parser("groupnorm.json").get_parsed_content("network_def", instantiate=True)
    groups = {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {8} and not any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())


def test_arm_option():
    overlay = CANDIDATES / "groupnorm.json"
    assert arm(f"gn=runs/x:{overlay}") == ("gn", Path("runs/x"), overlay)
    assert arm("batch=runs/curve") == ("batch", Path("runs/curve"), None)
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=RUN_FOLDER"):
        arm("runs/curve")


def _scores(wt: float, seconds: float, agreement: float) -> dict:
    dice = {"dice_WT": wt, "dice_TC": wt / 2, "dice_ET": wt / 4}
    return {"real": dice, "real_s": seconds, "windowed": dice, "windowed_s": 2 * seconds,
            "agreement": {k: agreement for k in dice}, "synthetic": {"dice_mean": wt / 3}}  # fmt: skip


def test_markdown_section_means_over_epochs_and_lowest_agreement():
    results = {"batch": {15: _scores(0.6, 30.0, 0.999), 16: _scores(0.8, 40.0, 0.997)}}
    args = SimpleNamespace(arm=[arm("batch=runs/curve")], epochs=[15, 16], window_size="[64,64,64]", repeats=3)
    text = markdown(results, {"batch": {"one_window_s": 4.4, "windows_s": 9.25}}, args)
    assert text.startswith("## Window-independence candidates\n") and "`batch` = `runs/curve`" in text
    row = text.strip().splitlines()[-1]
    assert (
        row
        == "| batch | 0.700 (0.600-0.800) | 0.350 (0.300-0.400) | 0.700 (0.600-0.800) | 0.233 (0.200-0.267) | 4.40 | 9.25 | 0.9970 / 0.9970 / 0.9970 |"
    )
