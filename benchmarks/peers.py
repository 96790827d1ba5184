"""The peers of ``bench_peers.py``: model specs (this bundle's ResUNet as the configs build it, MONAI
SegResNet as the model zoo configures it, nnU-Net's ResEnc-M), model builders, parameter and FLOP counts, and
training-step estimates on the meta device."""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from scripts.conventions import MODALITIES, REGIONS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALL_MODELS = ("resunet", "resunet_sep", "student", "swin", "segresnet", "resenc_m")
MODEL_TASKS = ("patch", "case", "volume", "train")  # one worker per model and task
ALL_TASKS = (*MODEL_TASKS, "roofline")  # roofline: one worker for the machine (benchmarks/roofline.py)
WHOLE_CASE_TASKS = ("case", "volume")  # whole-case inference: the real brain-cropped case, the full volume
QUICK_TASKS = (*WHOLE_CASE_TASKS, "roofline")  # --quick: what the whole-case comparison needs
BASELINE = "segresnet"
CASE_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "TCGA-DU-7294")

# --- sizes -------------------------------------------------------------------------------------------------
IN_CHANNELS = len(MODALITIES)
OUT_CHANNELS = len(REGIONS)
REF_PATCH = (128, 128, 128)  # the FLOPs / latency reference patch (4 x 128^3)
VOLUME_SHAPE = (240, 240, 155)  # a BraTS case
QUICK_PATCH = (64, 32, 32)  # ResEnc-M (5 stride-2 stages) needs > 1 bottleneck voxel for InstanceNorm
QUICK_VOLUME = (64, 64, 40)
QUICK_CASE_MAX = (48, 64, 48)  # --quick: the real case's brain crop, each side cut to at most this
QUICK_TRAIN_PATCH = QUICK_PATCH
QUICK_MATMUL = 1024

# model zoo brats_mri_segmentation (configs/train.json + configs/inference.json)
SEGRESNET_KWARGS = {
    "spatial_dims": 3,
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
    "init_filters": 16,
    "in_channels": IN_CHANNELS,
    "out_channels": OUT_CHANNELS,
    "dropout_prob": 0.2,
}
SEGRESNET_SW = {"roi_size": [240, 240, 160], "sw_batch_size": 1, "overlap": 0.5, "mode": "constant"}
SEGRESNET_TRAIN = {"patch": [224, 224, 144], "batch": 1}

# nnU-Net ResEnc-M 3d_fullres, BraTS-like plan
RESENC_M_PLAN = {
    "n_stages": 6,
    "features_per_stage": [32, 64, 128, 256, 320, 320],
    "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
    "n_blocks_per_stage": [1, 3, 4, 6, 6, 6],
    "n_conv_per_stage_decoder": [1, 1, 1, 1, 1],
    "conv_bias": True,
    "norm_op": "InstanceNorm3d(eps=1e-5, affine=True)",
    "nonlin": "LeakyReLU(negative_slope=0.01, inplace=True)",
    "dropout_op": None,
    "patch_size": [128, 128, 128],
}
RESENC_SW = {"roi_size": [128, 128, 128], "sw_batch_size": 1, "overlap": 0.5, "mode": "gaussian"}
RESENC_TRAIN = {"patch": [128, 128, 128], "batch": 2}

COMMON_TRAIN = {"patch": [128, 128, 128], "batch": 1}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# =============================================================================================================
# model specs and builders (run in the main process and in the workers)
# =============================================================================================================


def bundle_parser(overlays: list[str], overrides: dict, device: str):
    """A ``ConfigParser`` of ``configs/train.json`` + ``inference.json`` + ``overlays``, with ``overrides`` and
    ``device`` set."""
    from scripts.casework import parse_configs

    files = [os.path.join(REPO_ROOT, "configs", f) for f in ("train.json", "inference.json", *overlays)]
    return parse_configs(files, {**overrides, "device": device})


def _bundle_settings(parser) -> dict:
    """The inferer and the inference backend of ``configs/inference.json`` (``sw_inferer``, ``inference_backend``
    on the parser's device), and the training patch/batch of ``configs/train.json``."""
    batch = int(parser.get_parsed_content("train#dataloader#batch_size"))
    samples = 1
    for i, t in enumerate(parser["train"].get("random_transforms", [])):
        if any(c in str(t.get("_target_", "")) for c in ("RandCropByPosNegLabel", "RandCropByLabelClasses")):
            samples = int(parser.get_parsed_content(f"train#random_transforms#{i}#num_samples"))
    return {
        "sw": {
            "roi_size": [int(v) for v in parser.get_parsed_content("sw_inferer#roi_size")],
            "sw_batch_size": int(parser.get_parsed_content("sw_inferer#sw_batch_size")),
            "overlap": float(parser.get_parsed_content("sw_inferer#overlap")),
            "mode": str(parser.get_parsed_content("sw_inferer#mode")),
            "backend": parser.get_parsed_content("inference_backend"),
        },
        "train": {"patch": [int(v) for v in parser.get_parsed_content("roi_size")], "batch": batch * samples},
    }


def bundle_shapes(case_dir: str, volume: tuple[int, ...]) -> dict:
    """The inputs of the bundle's network, made by the preprocessing of ``configs/inference.json`` up to its
    ``CropForegroundd``: ``case``, the real case in ``case_dir`` brain-cropped; ``volume``, an all-foreground
    volume of shape ``volume`` (the crop's ``k_divisible`` padding)."""
    import torch
    from monai.transforms import Compose, CropForegroundd

    from scripts.data.layouts import find_inference_cases

    parser = bundle_parser([], {}, "cpu")
    transforms = parser.get_parsed_content("preprocessing_transforms")
    crops = [i for i, t in enumerate(transforms) if isinstance(t, CropForegroundd)]
    if len(crops) != 1:
        raise ValueError(f"configs/inference.json: expected one CropForegroundd in preprocessing, found {len(crops)}")
    (item,) = find_inference_cases(case_dir, "testing", parser.get_parsed_content("layout"), exit_on_error=True)
    case = Compose(transforms[: crops[0] + 1])(item)["image"]
    full = transforms[crops[0]]({"image": torch.ones((IN_CHANNELS, *volume))})["image"]
    return {
        "case_id": item.get("case_id", os.path.basename(os.path.normpath(case_dir))),
        "case_original": [int(v) for v in nib_shape(item["image"][0])],
        "case": [int(v) for v in case.shape[1:]],
        "volume": [int(v) for v in full.shape[1:]],
    }


def nib_shape(path: str) -> tuple[int, ...]:
    import nibabel as nib

    return tuple(nib.load(path).shape[:3])


def window_plan(sw: dict, shape) -> dict:
    """What MONAI's sliding window does on an input of ``shape``: the window (``roi_size`` with -1 = the input
    size), the padded input (at least one window) and the number of windows."""
    from monai.data.utils import dense_patch_slices
    from monai.utils import fall_back_tuple

    roi = fall_back_tuple(sw["roi_size"], shape)
    padded = [max(r, s) for r, s in zip(roi, shape)]
    # the step between windows, as monai.inferers.sliding_window_inference takes it: a whole axis when the window
    # covers it, else (1 - overlap) of the window (at least one voxel)
    scan = [p if r == p else max(1, int(r * (1 - sw["overlap"]))) for r, p in zip(roi, padded)]
    return {"roi": list(roi), "padded": padded, "windows": len(dense_patch_slices(padded, roi, scan))}


def _import_target(target: str) -> Any:
    import importlib

    module, _, attr = target.rpartition(".")
    return getattr(importlib.import_module(module), attr)


# the bundle's networks: config overlays over train.json + inference.json, and overrides of their values
BUNDLE_MODELS = {
    "resunet": ([], "ResUNet (bundle)", "ResUNet"),
    "resunet_sep": ([], "ResUNet, all levels separable", "ResUNet\nall separable"),
    "student": (["student.json"], "ResUNet student (MobileNetV3-style)", "ResUNet\nstudent"),
    "swin": (["swin.json"], "ResUNet-Swin hybrid", "ResUNet-Swin\nhybrid"),
}


def _bundle_spec(key: str, args, sw_for: Callable, train_for: Callable) -> tuple[dict | None, str | None]:
    """The spec of ``BUNDLE_MODELS[key]`` as the configs build and place it (``resunet_sep``: every level
    separable; ``--student_target`` replaces the student's config), or ``(None, reason)``."""
    overlays, label, short = BUNDLE_MODELS[key]
    where = " + ".join(f"configs/{f}" for f in ["train.json", "inference.json", *overlays])
    try:
        parser = bundle_parser(overlays, {}, args.device)
        net = dict(parser.get_parsed_content("network_def", instantiate=False).get_config())
        overrides = {}
        if key == "resunet_sep":
            overrides = {"network_def#separable_levels": list(range(len(net["channels"])))}
            net["separable_levels"] = overrides["network_def#separable_levels"]
        settings = _bundle_settings(parser)
    except Exception as e:  # noqa: BLE001 - a broken overlay must not stop the benchmark
        return None, f"{where} failed: {type(e).__name__}: {e}"
    spec = {
        "key": key,
        "label": label,
        "short": short,
        "source": f"{where} `network` (`network_def`"
        + (", every level separable)" if overrides else ")")
        + ", placed as the config places it",
        "builder": "bundle",
        "bundle": {"overlays": overlays, "overrides": overrides},
        "arch": ", ".join(f"{k}={v}" for k, v in net.items()),
        "sw": sw_for(settings["sw"], None),
        "train": train_for(settings["train"]),
        "sw_source": f"`sw_inferer` and `inference_backend` of {where}",
        "train_source": "configs/train.json: roi_size, batch_size x RandCropByPosNegLabeld num_samples",
    }
    if key == "student" and args.student_target:
        kwargs = json.loads(args.student_kwargs) if args.student_kwargs else {}
        found = {"target": args.student_target, "kwargs": kwargs}
        spec.update(builder="target", kwargs=found, source=f"--student_target {args.student_target}")
        spec["arch"] = f"{found['target']}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    return spec, None


def _call_with_supported(fn: Callable, kwargs: dict, defaults: dict) -> Any:
    """``fn(**kwargs)`` plus those ``defaults`` that ``fn`` accepts and ``kwargs`` does not set."""
    merged = dict(kwargs)
    try:
        params = inspect.signature(fn).parameters
        for k, v in defaults.items():
            if k in params and k not in merged:
                merged[k] = v
    except (TypeError, ValueError):
        pass
    return fn(**merged)


def worker_model(spec: dict, device):
    """The network of ``spec`` on ``device`` as it runs: the bundle's networks through the configs' ``network``
    (their placement, e.g. channels-last), the others moved to ``device``."""
    if spec["builder"] == "bundle":
        b = spec["bundle"]
        return bundle_parser(b["overlays"], b["overrides"], str(device)).get_parsed_content("network")
    return build_model(spec).to(device)


def build_model(spec: dict):
    """Build the network of ``spec`` (on the current default device, not placed)."""
    import torch.nn as nn

    kind = spec["builder"]
    if kind == "bundle":
        b = spec["bundle"]
        return bundle_parser(b["overlays"], b["overrides"], "cpu").get_parsed_content("network_def")
    if kind == "segresnet":
        from monai.networks.nets import SegResNet

        return SegResNet(**spec["kwargs"])
    if kind == "resenc_m":
        from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

        plan = spec["kwargs"]
        model = ResidualEncoderUNet(
            input_channels=IN_CHANNELS,
            n_stages=plan["n_stages"],
            features_per_stage=plan["features_per_stage"],
            conv_op=nn.Conv3d,
            kernel_sizes=plan["kernel_sizes"],
            strides=plan["strides"],
            n_blocks_per_stage=plan["n_blocks_per_stage"],
            num_classes=OUT_CHANNELS,
            n_conv_per_stage_decoder=plan["n_conv_per_stage_decoder"],
            conv_bias=plan["conv_bias"],
            norm_op=nn.InstanceNorm3d,
            norm_op_kwargs={"eps": 1e-5, "affine": True},
            dropout_op=None,
            dropout_op_kwargs=None,
            nonlin=nn.LeakyReLU,
            nonlin_kwargs={"inplace": True},
            deep_supervision=bool(spec.get("deep_supervision", False)),
        )
        if hasattr(model, "initialize"):  # what nnU-Net's get_network_from_plans does
            model.apply(model.initialize)
        return model
    if kind == "target":
        fn = _import_target(spec["kwargs"]["target"])
        defaults = {"spatial_dims": 3, "in_channels": IN_CHANNELS, "out_channels": OUT_CHANNELS}
        return _call_with_supported(fn, spec["kwargs"]["kwargs"], defaults)
    raise ValueError(f"unknown builder {kind!r}")


def make_specs(args, quick: bool, shapes: dict) -> tuple[list[dict], dict[str, str]]:
    """The model specs to benchmark (in ``ALL_MODELS`` order) and the skipped ones with the reason. Every spec's
    ``inputs`` holds its whole-case inputs: ``case``, the brain-cropped real case (``shapes["case"]``) for every
    model; ``volume``, the full volume as the bundle pads it (``shapes["volume"]``) for the bundle's networks
    and as it is (``shapes["raw_volume"]``) for the peers."""
    specs: list[dict] = []
    skipped: dict[str, str] = {}

    def sw_for(sw: dict, quick_roi: list[int] | None) -> dict:
        sw = dict(sw)
        if "backend" in sw and (args.resunet_backend or args.precision != "fp32"):
            sw["backend"] = args.resunet_backend or "torch"  # autocast needs the torch backend
        if quick and quick_roi is not None:
            sw["roi_size"] = quick_roi
        return sw

    def train_for(train: dict) -> dict:
        return {"patch": list(QUICK_TRAIN_PATCH), "batch": train["batch"]} if quick else dict(train)

    for key in [m for m in ALL_MODELS if m in args.models]:
        if key in BUNDLE_MODELS:
            spec, reason = _bundle_spec(key, args, sw_for, train_for)
        elif key == "segresnet":
            spec, reason = _segresnet_spec(sw_for, train_for), None
        else:
            spec, reason = _resenc_spec(sw_for, train_for)
        if spec is None:
            skipped[key] = reason
            continue
        volume = shapes["volume"] if key in BUNDLE_MODELS else shapes["raw_volume"]
        spec["inputs"] = {"case": list(shapes["case"]), "volume": list(volume)}
        specs.append(spec)
    return specs, skipped


def _segresnet_spec(sw_for: Callable, train_for: Callable) -> dict:
    """MONAI SegResNet as the model zoo's brats_mri_segmentation bundle configures it."""
    quick_roi = [int(math.ceil(max(v, c) / 8) * 8) for v, c in zip(QUICK_VOLUME, QUICK_CASE_MAX)]
    return {
        "key": "segresnet",
        "label": "MONAI SegResNet (model zoo)",
        "short": "SegResNet\n(model zoo)",
        "source": "model-zoo brats_mri_segmentation configs/train.json + inference.json",
        "builder": "segresnet",
        "kwargs": SEGRESNET_KWARGS,
        "arch": ", ".join(f"{k}={v}" for k, v in SEGRESNET_KWARGS.items()),
        "sw": sw_for(SEGRESNET_SW, quick_roi),
        "train": train_for(SEGRESNET_TRAIN),
        "sw_source": "zoo inference.json `inferer` (mode: MONAI default 'constant')",
        "train_source": "zoo train.json RandSpatialCropd roi 224x224x144, batch_size 1",
    }


def _resenc_spec(sw_for: Callable, train_for: Callable) -> tuple[dict | None, str | None]:
    """nnU-Net's ResEnc-M with a BraTS-like plan, or None and the reason when its package is missing."""
    try:
        import dynamic_network_architectures  # noqa: F401
    except ImportError as e:
        return None, (
            f"dynamic_network_architectures is not installed ({e}); "
            "pip install -c constraints.txt -r benchmarks/requirements.txt"
        )
    arch = (
        "ResidualEncoderUNet("
        + ", ".join(f"{k}={v}" for k, v in RESENC_M_PLAN.items() if k != "patch_size")
        + ", deep_supervision=False at inference / True in training)"
    )
    return {
        "key": "resenc_m",
        "label": "nnU-Net ResEnc-M 3d_fullres",
        "short": "nnU-Net\nResEnc-M",
        "source": "dynamic_network_architectures ResidualEncoderUNet, BraTS-like ResEnc-M plan",
        "builder": "resenc_m",
        "kwargs": RESENC_M_PLAN,
        "arch": arch,
        "sw": sw_for(RESENC_SW, list(QUICK_PATCH)),
        "train": train_for(RESENC_TRAIN),
        "sw_source": "nnU-Net default: tile = patch size 128^3, step 0.5, gaussian; no mirroring TTA",
        "train_source": "nnU-Net plan patch 128^3, batch 2; deep supervision on (5 outputs)",
        "train_deep_supervision": True,
    }, None


# =============================================================================================================
# static analysis on the meta device (no compute, no memory)
# =============================================================================================================


def count_params(spec: dict) -> int:
    import torch

    with torch.device("meta"):
        model = build_model(spec)
    return sum(p.numel() for p in model.parameters())


def forward_flops(spec: dict, shape: tuple[int, ...], batch: int = 1) -> int:
    """FLOPs of one forward pass on ``(batch, 4, *shape)`` (FlopCounterMode: multiply-add = 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(spec)
    model.eval()
    x = torch.empty((batch, IN_CHANNELS, *shape), device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def _conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape,
    **kwargs,
) -> int:
    """``aten.convolution_backward`` FLOPs: grad-input and grad-weight each cost what the forward conv costs.

    torch's own formula counts the grad-weight of a grouped conv as if it were dense (``groups`` times too many
    FLOPs: 16-320x for depthwise convs); for dense convs it gives the same numbers as this one.
    """
    from torch.utils.flop_counter import conv_flop_count

    fwd = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def train_step_estimates(spec: dict, shape: tuple[int, ...], batch: int) -> dict:
    """Forward+backward FLOPs of one training step and an estimate of its memory (saved activations +
    parameters, gradients and the two Adam moments), both on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ds_spec = dict(spec, deep_supervision=spec.get("train_deep_supervision", False))
    with torch.device("meta"):
        model = build_model(ds_spec)
    model.train()
    x = torch.empty((batch, IN_CHANNELS, *shape), device="meta")
    saved: dict[int, int] = {}
    keep: list = []

    def pack(t):
        if id(t) not in saved:
            saved[id(t)] = t.numel() * t.element_size()
            keep.append(t)
        return t

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        loss = sum(o.float().mean() for o in outs)
        loss.backward()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    largest = max(saved.values()) if saved else 0
    est = sum(saved.values()) + 4 * param_bytes + 2 * largest
    return {"train_flops_fwd_bwd": int(counter.get_total_flops()), "train_mem_estimate_bytes": int(est)}
