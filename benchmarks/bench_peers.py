#!/usr/bin/env python
"""Benchmark this bundle's ResUNet against its peers on one machine, in one run, with one input.

Peers:

* ``resunet``     -- this bundle's ResUNet exactly as ``configs/train.json`` ``network_def`` builds it.
* ``resunet_sep`` -- the same ResUNet with every level depthwise-separable (``separable_levels = all``).
* ``student``     -- the bundle's distilled student, if one can be found (``--student_target``, a
  ``student_def`` / ``student_network_def`` entry in ``configs/*.json``, or a ``scripts.networks`` attribute
  whose name contains "student"); skipped with a note otherwise.
* ``segresnet``   -- MONAI ``SegResNet`` as the model zoo's ``brats_mri_segmentation`` bundle configures it.
* ``resenc_m``    -- nnU-Net's ResEnc-M ``3d_fullres`` network (``dynamic_network_architectures``
  ``ResidualEncoderUNet``) with a BraTS-like plan.

Measured per model: parameters; forward FLOPs per ``4 x 128^3`` patch (``torch.utils.flop_counter``, a
multiply-add counts as 2 FLOPs); forward latency per patch; whole-volume sliding-window inference time on a
``4 x 240 x 240 x 155`` case with the model's own sliding-window settings; peak memory (RSS high-water mark
of a fresh subprocess per model and phase on CPU, ``torch.cuda.max_memory_allocated`` on CUDA); training
throughput (forward + backward + Adam step on the model's own training patch); ratios against SegResNet;
achieved GFLOP/s against the machine's measured large-matmul GFLOP/s.

Full run (quiet machine)::

    python benchmarks/bench_peers.py --device cpu

Smoke run (small sizes, writes nothing under docs/)::

    python benchmarks/bench_peers.py --quick --output_md /tmp/b.md --output_png /tmp/b.png \
        --output_json /tmp/b.json

Outputs: ``docs/benchmarks.md`` (tables, machine, settings), ``docs/images/benchmarks.png`` and the raw
numbers as JSON in ``benchmarks/results/`` (gitignored). Every output is written atomically.
Needs ``dynamic-network-architectures`` for ``resenc_m`` (see ``benchmarks/requirements.txt``); without it
that peer is skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

ALL_MODELS = ("resunet", "resunet_sep", "student", "segresnet", "resenc_m")
ALL_TASKS = ("patch", "volume", "train")
BASELINE = "segresnet"

# --- sizes -------------------------------------------------------------------------------------------------
IN_CHANNELS = 4
OUT_CHANNELS = 3
REF_PATCH = (128, 128, 128)  # the FLOPs / latency reference patch (4 x 128^3)
VOLUME_SHAPE = (240, 240, 155)  # a BraTS case
QUICK_PATCH = (64, 32, 32)  # ResEnc-M (5 stride-2 stages) needs > 1 bottleneck voxel for InstanceNorm
QUICK_VOLUME = (64, 64, 40)
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


def _bundle_settings(device: str) -> dict:
    """``network_def``, the sliding-window inferer and the training patch/batch from ``configs/train.json``;
    the inference backend that ``configs/inference.json`` picks on ``device``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([os.path.join(REPO_ROOT, "configs", f) for f in ("train.json", "inference.json")])
    parser.update({"device": device})
    net = dict(parser.get_parsed_content("network_def", instantiate=False).get_config())
    sw = dict(parser.get_parsed_content("sw_inferer", instantiate=False).get_config())
    roi = [int(v) for v in parser.get_parsed_content("roi_size")]
    batch = int(parser["train"]["dataloader"].get("batch_size", 1))
    samples = 1
    for t in parser["train"].get("random_transforms", []):
        if "RandCropByPosNegLabel" in str(t.get("_target_", "")) or "RandCropByLabelClasses" in str(
            t.get("_target_", "")
        ):
            samples = int(t.get("num_samples", 1))
    return {
        "network_def": net,
        "sw": {
            "roi_size": [int(v) for v in sw["roi_size"]],
            "sw_batch_size": int(sw.get("sw_batch_size", 1)),
            "overlap": float(sw.get("overlap", 0.25)),
            "mode": str(sw.get("mode", "constant")),
            "backend": parser.get_parsed_content("inference_backend"),
        },
        "train": {"patch": roi, "batch": batch * samples},
    }


def _import_target(target: str) -> Any:
    import importlib

    module, _, attr = target.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _find_student(explicit_target: str | None, explicit_kwargs: dict) -> tuple[dict | None, str]:
    """A JSON-able builder description of the student network, or ``(None, reason)``."""
    if explicit_target:
        return {"target": explicit_target, "kwargs": explicit_kwargs}, f"--student_target {explicit_target}"
    import glob

    for path in sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "*.json"))):
        try:
            with open(path) as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            continue
        for key in ("student_def", "student_network_def"):
            if isinstance(cfg, dict) and isinstance(cfg.get(key), dict) and "_target_" in cfg[key]:
                from monai.bundle import ConfigParser

                parser = ConfigParser()
                parser.read_config(path)
                resolved = dict(parser.get_parsed_content(key, instantiate=False).get_config())
                target = resolved.pop("_target_")
                if "." not in target:
                    target = f"scripts.networks.{target}"
                return {"target": target, "kwargs": resolved}, f"{os.path.relpath(path, REPO_ROOT)} `{key}`"
    import scripts.networks as nets

    names = sorted(n for n in dir(nets) if "student" in n.lower() and callable(getattr(nets, n)))
    if names:
        return {"target": f"scripts.networks.{names[0]}", "kwargs": {}}, f"scripts.networks.{names[0]}"
    return None, "scripts.networks has no student network (no `*student*` attribute, no `student_def` config)"


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


def build_model(spec: dict):
    """Build the network of ``spec`` (on the current default device)."""
    import torch.nn as nn

    kind = spec["builder"]
    if kind == "resunet":
        from scripts.networks import ResUNet

        kwargs = {k: v for k, v in spec["kwargs"].items() if k != "_target_"}
        return ResUNet(**kwargs)
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


def make_specs(args, quick: bool) -> tuple[list[dict], dict[str, str]]:
    """The model specs to benchmark (in ``ALL_MODELS`` order) and the skipped ones with the reason."""
    specs: list[dict] = []
    skipped: dict[str, str] = {}
    wanted = [m for m in ALL_MODELS if m in args.models]
    bundle = _bundle_settings(args.device) if {"resunet", "resunet_sep", "student"} & set(wanted) else None

    def sw_for(sw: dict, quick_roi: list[int] | None) -> dict:
        sw = dict(sw)
        if "backend" in sw and (args.resunet_backend or args.precision != "fp32"):
            sw["backend"] = args.resunet_backend or "torch"  # autocast needs the torch backend
        if quick and quick_roi is not None:
            sw["roi_size"] = quick_roi
        return sw

    def train_for(train: dict) -> dict:
        return {"patch": list(QUICK_TRAIN_PATCH), "batch": train["batch"]} if quick else dict(train)

    for key in wanted:
        if key in ("resunet", "resunet_sep"):
            net = dict(bundle["network_def"])
            if key == "resunet_sep":
                net["separable_levels"] = list(range(len(net["channels"])))
                label = "ResUNet, all levels separable"
                source = "configs/train.json `network_def` with `separable_levels` = all levels"
            else:
                label = "ResUNet (bundle)"
                source = "configs/train.json `network_def`"
            specs.append(
                {
                    "key": key,
                    "label": label,
                    "short": "ResUNet" if key == "resunet" else "ResUNet\nall separable",
                    "source": source,
                    "builder": "resunet",
                    "kwargs": net,
                    "arch": ", ".join(f"{k}={v}" for k, v in net.items() if k != "_target_"),
                    "sw": sw_for(bundle["sw"], None),
                    "train": train_for(bundle["train"]),
                    "sw_source": "configs/train.json `sw_inferer`, configs/inference.json `inference_backend`",
                    "train_source": "configs/train.json: roi_size, batch_size x RandCropByPosNegLabeld num_samples",
                }
            )
        elif key == "student":
            try:
                kwargs = json.loads(args.student_kwargs) if args.student_kwargs else {}
                found, reason = _find_student(args.student_target, kwargs)
            except Exception as e:  # noqa: BLE001 - a broken student must not stop the benchmark
                found, reason = None, f"student lookup failed: {type(e).__name__}: {e}"
            if found is None:
                skipped[key] = reason
                continue
            specs.append(
                {
                    "key": key,
                    "label": "ResUNet student",
                    "short": "ResUNet\nstudent",
                    "source": reason,
                    "builder": "target",
                    "kwargs": found,
                    "arch": f"{found['target']}({', '.join(f'{k}={v}' for k, v in found['kwargs'].items())})",
                    "sw": sw_for(bundle["sw"], None),
                    "train": train_for(bundle["train"]),
                    "sw_source": "configs/train.json `sw_inferer`, configs/inference.json `inference_backend`",
                    "train_source": "configs/train.json (same as the ResUNet)",
                }
            )
        elif key == "segresnet":
            quick_roi = [int(math.ceil(s / 8) * 8) for s in QUICK_VOLUME]
            specs.append(
                {
                    "key": key,
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
            )
        elif key == "resenc_m":
            try:
                import dynamic_network_architectures  # noqa: F401
            except ImportError as e:
                skipped[key] = (
                    f"dynamic_network_architectures is not installed ({e}); "
                    "pip install -c constraints.txt -r benchmarks/requirements.txt"
                )
                continue
            arch = (
                "ResidualEncoderUNet("
                + ", ".join(f"{k}={v}" for k, v in RESENC_M_PLAN.items() if k != "patch_size")
                + ", deep_supervision=False at inference / True in training)"
            )
            specs.append(
                {
                    "key": key,
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
                }
            )
    return specs, skipped


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


# =============================================================================================================
# worker (a fresh subprocess per model and task)
# =============================================================================================================


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _autocast(device, precision: str):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _timed(fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None], what: str) -> list[float]:
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync()
        log(f"    {what}: warm-up {i + 1}/{warmup} {time.perf_counter() - t0:.3f} s")
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        log(f"    {what}: {i + 1}/{repeats} {times[-1]:.3f} s")
    return times


def _summary(times: list[float]) -> dict:
    return {
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
    }


def worker_main(task_path: str) -> int:
    with open(task_path) as f:
        task = json.load(f)
    if task.get("mem_limit") and task["device"] == "cpu":
        # allocations beyond the limit raise (RuntimeError "can't allocate memory") instead of waking the OOM killer
        resource.setrlimit(resource.RLIMIT_DATA, (int(task["mem_limit"]), int(task["mem_limit"])))
    try:
        _worker(task)
    except Exception as e:  # noqa: BLE001 - reported to the main process, which goes on with the next job
        import traceback

        traceback.print_exc()
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        oom = "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower()
        _write_json(
            task["result_path"], {"error": ("out of memory: " if oom else "") + f"{type(e).__name__}: {msg[:300]}"}
        )
        return 1
    return 0


def _worker(task: dict) -> None:
    import torch

    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    device = torch.device(task["device"])
    is_cuda = device.type == "cuda"
    if is_cuda:
        torch.backends.cudnn.benchmark = True
    precision = task["precision"]
    warmup, repeats = int(task["warmup"]), int(task["repeats"])

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize(device)

    result: dict = {"threads": torch.get_num_threads()}
    torch.manual_seed(0)

    if task["task"] == "matmul":
        n = int(task["size"])
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        with torch.inference_mode():
            times = _timed(lambda: torch.mm(a, b), max(warmup, 1), max(repeats, 3), sync, f"matmul {n}^2 {precision}")
        result.update(_summary(times))
        result["size"] = n
        result["dtype"] = precision
        result["gflops"] = 2 * n**3 / result["median_s"] / 1e9
        result["gflops_best"] = 2 * n**3 / result["min_s"] / 1e9
        _write_json(task["result_path"], result)
        return

    spec = task["spec"]
    if task["task"] == "train" and spec.get("train_deep_supervision"):
        spec = dict(spec, deep_supervision=True)
    model = build_model(spec).to(device)
    baseline_rss = _current_rss_bytes()
    if is_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline_cuda = torch.cuda.memory_allocated(device)

    if task["task"] == "patch":
        model.eval()
        x = torch.randn((1, IN_CHANNELS, *task["patch"]), device=device)

        def fwd():
            with _autocast(device, precision):
                return model(x)

        with torch.inference_mode():
            times = _timed(fwd, warmup, repeats, sync, f"{spec['key']} forward 1x4x{'x'.join(map(str, task['patch']))}")
        result.update(_summary(times))
        result["patch"] = task["patch"]

    elif task["task"] == "volume":
        from monai.inferers import SlidingWindowInferer

        model.eval()
        sw = spec["sw"]
        if sw.get("backend", "torch") != "torch":  # exported at the warm-up call
            from scripts.inferers import inference_network

            model = inference_network(model, sw["backend"], precision, device)
        inferer = SlidingWindowInferer(
            roi_size=sw["roi_size"],
            sw_batch_size=sw["sw_batch_size"],
            overlap=sw["overlap"],
            mode=sw["mode"],
            sw_device=device,
            device=device,
            progress=False,
        )
        g = torch.Generator().manual_seed(0)
        image = torch.randn((1, IN_CHANNELS, *task["volume"]), generator=g).to(device)
        windows = [0]

        def predictor(batch):
            windows[0] += batch.shape[0]
            with _autocast(device, precision):
                return model(batch)

        with torch.inference_mode():
            # warm-up: one batch of windows (a whole extra volume would double the cost of this step)
            warm = torch.randn((sw["sw_batch_size"], IN_CHANNELS, *sw["roi_size"]), device=device)
            for i in range(max(warmup, 1)):
                t0 = time.perf_counter()
                predictor(warm)
                sync()
                log(f"    {spec['key']} volume: warm-up window batch {i + 1} {time.perf_counter() - t0:.3f} s")
            del warm
            windows[0] = 0
            out_shape = None

            def run():
                nonlocal out_shape
                out = inferer(image, predictor)
                out_shape = list(out.shape)

            times = _timed(
                run, 0, repeats, sync, f"{spec['key']} whole volume 1x4x{'x'.join(map(str, task['volume']))}"
            )
        result.update(_summary(times))
        result["windows"] = windows[0] // max(repeats, 1)
        result["volume"] = task["volume"]
        result["output_shape"] = out_shape

    elif task["task"] == "train":
        from monai.losses import DiceCELoss

        model.train()
        patch, batch = task["train_patch"], int(task["train_batch"])
        loss_fn = DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        g = torch.Generator().manual_seed(0)
        x = torch.randn((batch, IN_CHANNELS, *patch), generator=g).to(device)
        with torch.no_grad():
            probe = model(torch.zeros((1, IN_CHANNELS, *patch), device=device))
        probes = probe if isinstance(probe, (list, tuple)) else [probe]
        targets = [(torch.rand((batch, *p.shape[1:]), generator=g) > 0.5).float().to(device) for p in probes]
        del probe, probes
        n_out = len(targets)
        # nnU-Net's deep-supervision weights: 1/2^i, the lowest resolution 0, normalised to sum 1
        weights = [1.0 / 2**i for i in range(n_out)]
        if n_out > 1:
            weights[-1] = 0.0
        total = sum(weights)
        weights = [w / total for w in weights]

        def step():
            opt.zero_grad(set_to_none=True)
            with _autocast(device, precision):
                out = model(x)
                outs = out if isinstance(out, (list, tuple)) else [out]
                loss = sum(w * loss_fn(o.float(), t) for w, o, t in zip(weights, outs, targets) if w > 0)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()

        times = _timed(step, warmup, repeats, sync, f"{spec['key']} train step {batch}x4x{'x'.join(map(str, patch))}")
        result.update(_summary(times))
        result["train_patch"] = patch
        result["train_batch"] = batch
        result["outputs"] = n_out
        result["patches_per_s"] = batch / result["median_s"]
        result["voxels_per_s"] = batch * math.prod(patch) / result["median_s"]
    else:
        raise ValueError(f"unknown task {task['task']!r}")

    result["peak_rss_bytes"] = _peak_rss_bytes()
    result["baseline_rss_bytes"] = baseline_rss
    if is_cuda:
        result["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        result["cuda_baseline_bytes"] = int(baseline_cuda)
    _write_json(task["result_path"], result)


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def run_worker(task: dict, args, label: str) -> dict:
    """Run ``task`` in a fresh Python process; return its result or ``{"error": ...}``."""
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        env["MKL_NUM_THREADS"] = str(args.threads)
    env["PYTHONWARNINGS"] = env.get("PYTHONWARNINGS", "ignore")
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmpdir:
        task = dict(task, result_path=os.path.join(tmpdir, "result.json"))
        task_path = os.path.join(tmpdir, "task.json")
        with open(task_path, "w") as f:
            json.dump(task, f)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--_worker", task_path],
                env=env,
                cwd=REPO_ROOT,
                timeout=args.worker_timeout or None,
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {args.worker_timeout} s", "wall_s": time.perf_counter() - t0}
        wall = time.perf_counter() - t0
        if os.path.exists(task["result_path"]):
            with open(task["result_path"]) as f:
                res = json.load(f)
            res["wall_s"] = wall
            return res
        why = f"worker exited with {rc}"
        if rc < 0:
            why = f"worker killed by signal {-rc}" + (" (likely out of memory)" if -rc == 9 else "")
        return {"error": why, "wall_s": wall}


# =============================================================================================================
# machine description
# =============================================================================================================


def machine_info(device: str, threads: int | None) -> dict:
    import torch

    info: dict = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname_platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("monai", "dynamic_network_architectures", "numpy"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            info[dist] = None
    cpu = None
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu is None:
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    info["cpu_model"] = cpu or platform.processor() or "unknown"
    info["cpu_isa"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags.split()]
    try:
        with open("/proc/meminfo") as f:
            mem = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()}
        info["mem_total_bytes"] = mem.get("MemTotal")
        info["mem_available_bytes"] = mem.get("MemAvailable")
    except (OSError, ValueError, IndexError):
        info["mem_total_bytes"] = info["mem_available_bytes"] = None
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_bytes"] = props.total_memory
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


# =============================================================================================================
# report
# =============================================================================================================


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v != v:
            return "—"
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _shape(s) -> str:
    return "x".join(str(int(v)) for v in s)


def _mib(b) -> float | None:
    return None if b is None else b / 2**20


def _gib(b) -> float | None:
    return None if b is None else b / 2**30


def _ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _failed(err: str) -> str:
    """A short table cell for a failed measurement (the full message is in the JSON)."""
    return "failed: out of memory" if err.startswith("out of memory") else f"failed: {err[:80]}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(c) for c in r) + " |")
    return "\n".join(out)


def _backend(sw: dict) -> str:
    return f", {sw['backend']}" if sw.get("backend", "torch") != "torch" else ""


def _phase_rows(
    specs: list[dict],
    res: dict,
    phase: str,
    width: int,
    lead: Callable[[dict, dict], list],
    cells: Callable[[dict, dict, dict], list],
) -> list[list[Any]]:
    """One table row per model for a measured phase (``patch``, ``volume``, ``train``): the model's label,
    ``lead(spec, result)`` (e.g. its setting), then ``cells(spec, result, phase_result)``; when the phase
    failed, the failure and empty cells up to ``width`` columns."""
    rows = []
    for s in specs:
        r = res.get(s["key"], {})
        p = r.get(phase) or {}
        head = [s["label"], *lead(s, r)]
        if "error" in p:
            rows.append(head + [_failed(p["error"])] + [None] * (width - len(head) - 1))
        else:
            rows.append(head + cells(s, r, p))
    return rows


def render_markdown(report: dict) -> str:
    m = report["machine"]
    cfg = report["config"]
    res = report["results"]
    specs = report["specs"]
    base = res.get(BASELINE, {})
    mm = report.get("matmul", {})
    peak = mm.get("gflops")
    dev = cfg["device"]
    mem_name = "peak CUDA allocated" if dev == "cuda" else "peak RSS"

    def mem_of(r: dict | None) -> float | None:
        if not r or "error" in r:
            return None
        return _mib(r.get("cuda_peak_bytes") if dev == "cuda" else r.get("peak_rss_bytes"))

    L = []
    L.append("# Benchmarks: ResUNet vs. peers")
    L.append("")
    if cfg["quick"]:
        L.append("> **Smoke run (`--quick`)**: small sizes, numbers are not representative.")
        L.append("")
    L.append(
        "Generated by `benchmarks/bench_peers.py` (all models in one run, same machine, same random input). "
        "Reproduce with:"
    )
    L.append("")
    L.append("```bash")
    L.append(report["command"])
    L.append("```")
    L.append("")
    L.append(f"![benchmarks]({cfg['png_rel_to_md']})")
    L.append("")
    L.append("## Machine")
    L.append("")
    rows = [
        ["date", m["date"]],
        [
            "CPU",
            f"{m['cpu_model']} ({m['cpus_usable']} usable of {m['logical_cpus']} logical CPUs; "
            f"ISA: {', '.join(m['cpu_isa']) or '—'})",
        ],
        [
            "memory",
            f"{_fmt(_gib(m.get('mem_total_bytes')), 1)} GiB total, "
            f"{_fmt(_gib(m.get('mem_available_bytes')), 1)} GiB available at start",
        ],
        [
            "device",
            dev
            + (
                f" ({m.get('gpu')}, {_fmt(_gib(m.get('gpu_memory_bytes')), 1)} GiB, CUDA {m.get('cuda')}, "
                f"cuDNN {m.get('cudnn')})"
                if dev == "cuda" and m.get("gpu")
                else ""
            ),
        ],
        ["torch threads", m["torch_threads"]],
        ["precision", cfg["precision"] + ("" if cfg["precision"] == "fp32" else " (torch.autocast)")],
        ["load average at start / end", f"{m.get('loadavg_start')} / {m.get('loadavg_end')}"],
        [
            "software",
            f"python {m['python']}, torch {m['torch']}, monai {m['monai']}, "
            f"dynamic_network_architectures {m['dynamic_network_architectures']}, numpy {m['numpy']}",
        ],
        ["platform", m["hostname_platform"]],
        ["repeats", f"median of {cfg['repeats']} timed repetitions after {cfg['warmup']} warm-up(s)"],
    ]
    L.append(_table(["", ""], rows))
    L.append("")

    L.append("## Models and settings")
    L.append("")
    rows = []
    for s in specs:
        r = res.get(s["key"], {})
        tr = r.get("train_setting", s["train"])
        sw = s["sw"]
        rows.append(
            [
                s["label"],
                s["source"],
                f"roi {_shape(sw['roi_size'])}, overlap {sw['overlap']}, {sw['mode']}, sw_batch_size {sw['sw_batch_size']}"
                + _backend(sw),
                f"{tr['batch']} x 4x{_shape(tr['patch'])}" + (" (common patch)" if r.get("train_common") else ""),
            ]
        )
    L.append(_table(["model", "source", "whole-volume sliding window", "training batch x patch"], rows))
    L.append("")
    for s in specs:
        L.append(f"- **{s['label']}**: `{s['arch']}`; sliding window: {s['sw_source']}; training: {s['train_source']}.")
    for k, why in report["skipped"].items():
        L.append(f"- **{k}**: skipped: {why}.")
    L.append("")

    L.append("## Size and compute")
    L.append("")
    L.append(
        f"FLOPs of one forward pass on a 1x4x{_shape(REF_PATCH)} patch, counted with "
        "`torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts as 2 FLOPs; convolutions, transposed "
        "convolutions and matmuls only: normalisation, activations, additions and the sliding-window blending are not "
        "counted)."
    )
    L.append("")
    rows = []
    for s in specs:
        r = res.get(s["key"], {})
        rows.append(
            [
                s["label"],
                r.get("params") / 1e6 if r.get("params") is not None else None,
                _ratio(r.get("params"), base.get("params")),
                r.get("flops_ref") / 1e9 if r.get("flops_ref") is not None else None,
                _ratio(r.get("flops_ref"), base.get("flops_ref")),
            ]
        )
    L.append(
        _table(
            ["model", "params (M)", "params / SegResNet", f"GFLOP per 4x{_shape(REF_PATCH)}", "FLOPs / SegResNet"], rows
        )
    )
    L.append("")

    if "patch" in cfg["tasks"]:
        L.append("## Forward latency per patch")
        L.append("")
        L.append(
            f"Batch 1 forward on 1x4x{_shape(cfg['patch'])} under `torch.inference_mode()`, eval mode. "
            f"Achieved GFLOP/s = forward FLOPs / median latency; machine peak = {cfg['matmul_size']}x{cfg['matmul_size']} "
            f"{mm.get('dtype', cfg['precision'])} matmul: {_fmt(peak, 1)} GFLOP/s."
        )
        L.append("")

        def patch_cells(s: dict, r: dict, p: dict) -> list:
            med = p.get("median_s")
            gfs = r.get("flops_patch") / med / 1e9 if med and r.get("flops_patch") else None
            return [
                med * 1e3 if med else None,
                p.get("min_s") * 1e3 if p.get("min_s") else None,
                _ratio(med, (base.get("patch") or {}).get("median_s")),
                gfs,
                (gfs / peak * 100) if gfs and peak else None,
                mem_of(p),
            ]

        rows = _phase_rows(specs, res, "patch", 7, lambda s, r: [], patch_cells)
        L.append(
            _table(
                [
                    "model",
                    "median (ms)",
                    "min (ms)",
                    "latency / SegResNet",
                    "achieved GFLOP/s",
                    "% of matmul peak",
                    f"{mem_name} (MiB)",
                ],
                rows,
            )
        )
        L.append("")

    if "volume" in cfg["tasks"]:
        L.append("## Whole-volume inference")
        L.append("")
        L.append(
            f"One random 1x4x{_shape(cfg['volume'])} case, MONAI `SlidingWindowInferer` with each model's own settings "
            "(below), output on the same device, eval mode, `torch.inference_mode()`. Warm-up: one batch of windows. "
            "No test-time augmentation for any model (nnU-Net's default mirroring would multiply ResEnc-M's time by up to 8). "
            "GFLOP = windows x forward FLOPs per window."
        )
        ort = [s["label"] for s in specs if s["sw"].get("backend", "torch") != "torch"]
        if ort:
            L.append("")
            L.append(
                f"{', '.join(ort)}: the network backend the bundle's inference config uses on this device "
                "(`inference_backend`; ONNX Runtime is exported from the torch model during the warm-up); every other "
                "model and measurement runs in torch."
            )
        L.append("")

        def volume_setting(s: dict, r: dict) -> list:
            sw = s["sw"]
            return [
                f"roi {_shape(sw['roi_size'])}, overlap {sw['overlap']}, {sw['mode']}, sw_batch {sw['sw_batch_size']}"
                + _backend(sw)
            ]

        def volume_cells(s: dict, r: dict, v: dict) -> list:
            med = v.get("median_s")
            total = (r.get("flops_window") or 0) * (v.get("windows") or 0) or None
            return [
                v.get("windows"),
                total / 1e9 if total else None,
                med,
                _ratio(med, (base.get("volume") or {}).get("median_s")),
                (total / med / 1e9) if total and med else None,
                mem_of(v),
            ]

        rows = _phase_rows(specs, res, "volume", 8, volume_setting, volume_cells)
        L.append(
            _table(
                [
                    "model",
                    "sliding window",
                    "windows",
                    "GFLOP",
                    "median time (s)",
                    "time / SegResNet",
                    "achieved GFLOP/s",
                    f"{mem_name} (MiB)",
                ],
                rows,
            )
        )
        L.append("")

    if "train" in cfg["tasks"]:
        L.append("## Training throughput")
        L.append("")
        L.append(
            "One step = forward + backward + `torch.optim.Adam` step (lr 1e-4, weight decay 1e-5) on random input, "
            "the bundle's `DiceCELoss(sigmoid=True)` on random binary 3-channel targets for every model (nnU-Net itself "
            "trains with SGD + Nesterov; the zoo SegResNet with DiceLoss: the optimiser and loss are a negligible part of "
            "a step). Train mode (SegResNet dropout 0.2 active). ResEnc-M trains with nnU-Net's deep supervision "
            "(loss weights 1/2^i, the lowest resolution 0). Patches/s = batch / median step time. FLOPs: forward + "
            "backward, optimiser excluded. Memory estimate: tensors saved for backward + 4x the parameter bytes (weights, "
            "gradients, two Adam moments), counted on the meta device; it only decides whether the own patch is tried."
        )
        L.append("")

        def train_setting(s: dict, r: dict) -> list:
            tr = r.get("train_setting", s["train"])
            return [f"{tr['batch']} x 4x{_shape(tr['patch'])}" + (" (common)" if r.get("train_common") else "")]

        def train_cells(s: dict, r: dict, t: dict) -> list:
            med = t.get("median_s")
            fl = r.get("train_flops")
            return [
                med,
                t.get("patches_per_s"),
                t.get("voxels_per_s") / 1e6 if t.get("voxels_per_s") else None,
                _ratio(t.get("voxels_per_s"), (base.get("train") or {}).get("voxels_per_s")),
                (fl / med / 1e9) if fl and med else None,
                mem_of(t),
                _mib(r.get("train_mem_estimate_bytes")),
            ]

        rows = _phase_rows(specs, res, "train", 9, train_setting, train_cells)
        L.append(
            _table(
                [
                    "model",
                    "batch x patch",
                    "median step (s)",
                    "patches/s",
                    "Mvoxel/s",
                    "voxel/s vs SegResNet",
                    "achieved GFLOP/s",
                    f"{mem_name} (MiB)",
                    "estimate (MiB)",
                ],
                rows,
            )
        )
        L.append("")
        notes = [
            f"- {s['label']}: {res[s['key']]['train_note']}" for s in specs if res.get(s["key"], {}).get("train_note")
        ]
        if notes:
            L.extend(notes)
            L.append("")

    L.append("## Memory")
    L.append("")
    if dev == "cuda":
        L.append(
            "`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (model weights included), in a fresh "
            "subprocess per model and phase."
        )
    else:
        L.append(
            "Peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) of a fresh subprocess per model and phase, so peaks "
            "do not mix; it includes the interpreter, torch and MONAI (the baseline column: RSS after imports and model "
            "construction)."
        )
    L.append("")
    rows = []
    for s in specs:
        r = res.get(s["key"], {})
        base_rss = None
        for ph in ("patch", "volume", "train"):
            if (r.get(ph) or {}).get("baseline_rss_bytes"):
                base_rss = r[ph]["baseline_rss_bytes"]
                break
        rows.append(
            [s["label"], _mib(base_rss) if dev != "cuda" else None]
            + [mem_of(r.get(ph)) for ph in ("patch", "volume", "train")]
            + [_ratio(mem_of(r.get("volume")), mem_of(base.get("volume")))]
        )
    L.append(
        _table(
            [
                "model",
                "baseline RSS (MiB)",
                f"forward 1x4x{_shape(cfg['patch'])} (MiB)",
                "whole volume (MiB)",
                "training step (MiB)",
                "whole-volume memory / SegResNet",
            ],
            rows,
        )
    )
    L.append("")

    L.append("## Machine peak (matmul)")
    L.append("")
    if mm and "error" not in mm:
        L.append(
            f"`torch.mm` of two {mm['size']}x{mm['size']} {mm['dtype']} matrices: median {_fmt(mm['median_s'] * 1e3, 1)} ms "
            f"= **{_fmt(mm['gflops'], 1)} GFLOP/s** (best {_fmt(mm['gflops_best'], 1)}; 2·n³ FLOPs)."
        )
    else:
        L.append(f"not measured ({mm.get('error', 'skipped')}).")
    L.append("")
    L.append("## Notes")
    L.append("")
    L.append(
        "- Ratios are against MONAI SegResNet (model zoo); > 1 means more (params, FLOPs, time, memory) or faster (voxel/s)."
    )
    L.append("- Inputs are random; convolution cost does not depend on the values.")
    L.append(
        f"- All models see the same {_shape(cfg['volume'])} case; nnU-Net would normally first crop to the brain's "
        "bounding box, which lowers its window count."
    )
    L.append(
        "- Memory limit: on CPU each worker runs under `RLIMIT_DATA` = "
        + (f"{_fmt(_gib(cfg['cpu_mem_limit_bytes']), 1)} GiB" if cfg.get("cpu_mem_limit_bytes") else "none")
        + " so that a training step that does not fit fails cleanly (and is retried on the common patch) instead of "
        "invoking the OOM killer."
    )
    if dev == "cuda" and cfg["precision"] == "fp32":
        L.append(
            "- CUDA fp32: cuDNN convolutions run in TF32 by default (`torch.backends.cudnn.allow_tf32`), the fp32 "
            "matmul peak does not (`torch.backends.cuda.matmul.allow_tf32` is False), so achieved/peak can exceed 100%."
        )
    L.append("- Raw numbers (every repetition): `" + cfg["output_json_rel"] + "` (relative to the repository root).")
    L.append("")
    return "\n".join(L)


def render_plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scripts.io import atomic_path

    specs = report["specs"]
    res = report["results"]
    labels = [s.get("short", s["label"]) for s in specs]
    dev = report["config"]["device"]

    def series(fn):
        out = []
        for s in specs:
            try:
                out.append(fn(res.get(s["key"], {})))
            except (TypeError, KeyError, ZeroDivisionError):
                out.append(None)
        return out

    panels = [
        ("parameters (M)", series(lambda r: r["params"] / 1e6)),
        (f"GFLOP per 4x{_shape(REF_PATCH)} forward", series(lambda r: r["flops_ref"] / 1e9)),
        ("whole-volume inference (s)", series(lambda r: r["volume"]["median_s"])),
        (f"forward latency 4x{_shape(report['config']['patch'])} (ms)", series(lambda r: r["patch"]["median_s"] * 1e3)),
        ("training (Mvoxel/s)", series(lambda r: r["train"]["voxels_per_s"] / 1e6)),
        (
            ("peak CUDA memory" if dev == "cuda" else "peak RSS") + ", whole volume (MiB)",
            series(
                lambda r: (
                    (r["volume"].get("cuda_peak_bytes") if dev == "cuda" else r["volume"]["peak_rss_bytes"]) / 2**20
                )
            ),
        ),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colors = ["#4C72B0" if not s["key"].startswith(BASELINE) else "#DD8452" for s in specs]
    for ax, (title, vals) in zip(axes.ravel(), panels):
        xs = range(len(labels))
        ax.bar(xs, [v if v is not None else 0 for v in vals], color=colors)
        for x, v in zip(xs, vals):
            ax.text(x, v if v else 0, "n/a" if v is None else f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=8)
        ax.margins(y=0.15)
    m = report["machine"]
    where = m.get("gpu") if dev == "cuda" else f"{m['cpu_model']}, {m['torch_threads']} threads"
    fig.suptitle(
        f"ResUNet vs. peers — {where}, torch {m['torch']}, {report['config']['precision']}"
        + (" (SMOKE RUN, not representative)" if report["config"]["quick"] else ""),
        fontsize=11,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _write_text_atomic(path: str, text: str) -> None:
    from scripts.io import atomic_path

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


# =============================================================================================================
# main
# =============================================================================================================


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="fp32, or torch.autocast to bf16/fp16 (meant for CUDA)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed repetitions per measurement (default 3; 1 with --quick)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up repetitions per measurement")
    p.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads in every worker (default: torch's)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: forward patch {_shape(QUICK_PATCH)}, volume {_shape(QUICK_VOLUME)}, training patch "
        f"{_shape(QUICK_TRAIN_PATCH)}, ResEnc-M/SegResNet rois shrunk to fit, matmul {QUICK_MATMUL}",
    )
    p.add_argument("--models", nargs="+", choices=ALL_MODELS, default=list(ALL_MODELS))
    p.add_argument("--tasks", nargs="+", choices=ALL_TASKS, default=list(ALL_TASKS))
    p.add_argument("--volume_shape", type=int, nargs=3, default=None, help=f"default {_shape(VOLUME_SHAPE)}")
    p.add_argument("--matmul_size", type=int, default=None, help="default 4096 (1024 with --quick)")
    p.add_argument(
        "--train_patch",
        choices=["auto", "own", "common"],
        default="auto",
        help="own: each model's training patch; common: every model on --common_train_patch; auto: own, "
        "unless the estimated memory exceeds 85%% of what is available, or the own-patch run fails",
    )
    p.add_argument("--common_train_patch", type=int, nargs=3, default=COMMON_TRAIN["patch"])
    p.add_argument("--common_train_batch", type=int, default=COMMON_TRAIN["batch"])
    p.add_argument(
        "--resunet_backend",
        choices=["torch", "onnxruntime"],
        default=None,
        help="network backend of the ResUNet whole-volume runs (default: what configs/inference.json picks "
        "on --device; torch with --precision bf16/fp16)",
    )
    p.add_argument("--student_target", default=None, help="dotted path of the student network class/factory")
    p.add_argument("--student_kwargs", default=None, help="JSON kwargs for --student_target")
    p.add_argument(
        "--cpu_mem_limit_gb",
        type=float,
        default=None,
        help="RLIMIT_DATA of every CPU worker (default: 90%% of MemAvailable at start; 0 = no limit)",
    )
    p.add_argument("--worker_timeout", type=float, default=0, help="seconds per worker process, 0 = none")
    p.add_argument("--output_md", default=os.path.join(REPO_ROOT, "docs", "benchmarks.md"))
    p.add_argument("--output_png", default=os.path.join(REPO_ROOT, "docs", "images", "benchmarks.png"))
    p.add_argument("--output_json", default=None, help="default benchmarks/results/bench_peers_<device>_<time>.json")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._worker:
        return worker_main(args._worker)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        log("error: --device cuda but torch.cuda.is_available() is False")
        return 2
    quick = args.quick
    repeats = args.repeats if args.repeats is not None else (1 if quick else 3)
    patch = list(QUICK_PATCH if quick else REF_PATCH)
    volume = list(args.volume_shape or (QUICK_VOLUME if quick else VOLUME_SHAPE))
    matmul_size = args.matmul_size or (QUICK_MATMUL if quick else 4096)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_json = args.output_json or os.path.join(
        REPO_ROOT, "benchmarks", "results", f"bench_peers_{args.device}_{stamp}.json"
    )
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    machine = machine_info(args.device, args.threads)
    log(
        f"bench_peers: {machine['cpu_model']}, device {args.device}, {machine['torch_threads']} threads, torch {machine['torch']}"
        + (" [QUICK smoke run]" if quick else "")
    )

    specs, skipped = make_specs(args, quick)
    for k, why in skipped.items():
        log(f"  skip {k}: {why}")
    if not specs:
        log("nothing to benchmark")
        return 1

    results: dict[str, dict] = {s["key"]: {} for s in specs}
    cpu_mem_limit = None
    if args.device == "cpu":
        if args.cpu_mem_limit_gb is None:
            avail = machine.get("mem_available_bytes")
            cpu_mem_limit = int(0.9 * avail) if avail else None
        elif args.cpu_mem_limit_gb > 0:
            cpu_mem_limit = int(args.cpu_mem_limit_gb * 2**30)
    mem_budget = machine.get("gpu_memory_bytes") if args.device == "cuda" else machine.get("mem_available_bytes")

    # --- static: params and FLOPs on the meta device -----------------------------------------------------------
    log("[static] parameters and FLOPs (meta device)")
    for s in specs:
        r = results[s["key"]]
        r["params"] = count_params(s)
        r["flops_ref"] = forward_flops(s, REF_PATCH)
        r["flops_patch"] = forward_flops(s, tuple(patch))
        r["flops_window"] = forward_flops(s, tuple(s["sw"]["roi_size"]))
        own = s["train"]
        common = {
            "patch": list(QUICK_TRAIN_PATCH) if quick else list(args.common_train_patch),
            "batch": args.common_train_batch,
        }
        setting, common_used, note = own, False, None
        if args.train_patch == "common":
            setting, common_used = common, True
        try:
            est = train_step_estimates(s, tuple(setting["patch"]), setting["batch"])
        except Exception as e:  # noqa: BLE001 - reported, the worker will fail the same way
            log(f"  {s['key']}: training estimate failed: {type(e).__name__}: {e}")
            est = {"train_flops_fwd_bwd": None, "train_mem_estimate_bytes": None}
        est_bytes = est["train_mem_estimate_bytes"]
        budget = min(b for b in (mem_budget, cpu_mem_limit) if b) if (mem_budget or cpu_mem_limit) else None
        if args.train_patch == "auto" and budget and est_bytes and est_bytes > 0.85 * budget:
            note = (
                f"own patch {setting['batch']} x 4x{_shape(setting['patch'])} needs an estimated "
                f"{est_bytes / 2**30:.1f} GiB > 85% of the {budget / 2**30:.1f} GiB available: "
                f"measured on the common patch instead"
            )
            setting, common_used = common, True
            est = train_step_estimates(s, tuple(setting["patch"]), setting["batch"])
        r["train_setting"], r["train_common"], r["train_note"] = setting, common_used, note
        r["train_flops"] = est["train_flops_fwd_bwd"]
        r["train_mem_estimate_bytes"] = est["train_mem_estimate_bytes"]
        r["_common"] = common
        log(
            f"  {s['key']:<12} params {r['params'] / 1e6:8.3f} M   fwd 4x{_shape(REF_PATCH)} {r['flops_ref'] / 1e9:9.1f} GFLOP"
            f"   train {setting['batch']}x4x{_shape(setting['patch'])}: est. memory {_fmt(_gib(r['train_mem_estimate_bytes']))} GiB"
            + (" (common patch)" if common_used else "")
        )

    # --- measured, each in a fresh subprocess -------------------------------------------------------------------
    base_task = {
        "device": args.device,
        "precision": args.precision,
        "threads": args.threads,
        "mem_limit": cpu_mem_limit,
        "warmup": args.warmup,
        "repeats": repeats,
    }
    jobs: list[tuple[str, str | None]] = [("matmul", None)]
    for s in specs:
        for t in ALL_TASKS:
            if t in args.tasks:
                jobs.append((t, s["key"]))
    matmul: dict = {}
    by_key = {s["key"]: s for s in specs}
    for i, (task, key) in enumerate(jobs, 1):
        label = f"[{i}/{len(jobs)}] {task}" + (f" {key}" if key else f" {matmul_size}x{matmul_size}")
        log(f"{label} ... (elapsed {time.perf_counter() - t_start:.0f} s)")
        if task == "matmul":
            matmul = run_worker(dict(base_task, task="matmul", size=matmul_size), args, label)
            if "error" not in matmul:
                log(f"  -> {matmul['gflops']:.1f} GFLOP/s")
            else:
                log(f"  -> failed: {matmul['error']}")
            continue
        s, r = by_key[key], results[key]
        t = dict(
            base_task,
            task=task,
            spec=s,
            patch=patch,
            volume=volume,
            train_patch=r["train_setting"]["patch"],
            train_batch=r["train_setting"]["batch"],
        )
        out = run_worker(t, args, label)
        if task == "train" and "error" in out and args.train_patch == "auto" and not r["train_common"]:
            log(f"  -> own training patch failed ({out['error']}); retrying on the common patch")
            common = r["_common"]
            r["train_note"] = (
                f"own patch {r['train_setting']['batch']} x 4x{_shape(r['train_setting']['patch'])} "
                f"{_failed(out['error'])}: measured on the common patch instead"
            )
            r["train_setting"], r["train_common"] = common, True
            est = train_step_estimates(s, tuple(common["patch"]), common["batch"])
            r["train_flops"], r["train_mem_estimate_bytes"] = (
                est["train_flops_fwd_bwd"],
                est["train_mem_estimate_bytes"],
            )
            out = run_worker(dict(t, train_patch=common["patch"], train_batch=common["batch"]), args, label)
        r[task] = out
        if "error" in out:
            log(f"  -> failed: {out['error']}")
        else:
            mem = out.get("cuda_peak_bytes", out.get("peak_rss_bytes", 0)) / 2**20
            extra = f", {out['windows']} windows" if task == "volume" else ""
            extra += f", {out['patches_per_s']:.3f} patches/s" if task == "train" else ""
            log(f"  -> median {out['median_s']:.3f} s{extra}, peak {mem:.0f} MiB (worker wall {out['wall_s']:.0f} s)")
    for r in results.values():
        r.pop("_common", None)

    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    rel = lambda p: os.path.relpath(os.path.abspath(p), REPO_ROOT)  # noqa: E731
    command = "python " + " ".join(
        shlex.quote(a) for a in [rel(__file__)] + list(sys.argv[1:] if argv is None else argv)
    )
    report = {
        "command": command,
        "machine": machine,
        "config": {
            "device": args.device,
            "precision": args.precision,
            "repeats": repeats,
            "warmup": args.warmup,
            "threads": args.threads,
            "quick": quick,
            "patch": patch,
            "ref_patch": list(REF_PATCH),
            "volume": volume,
            "matmul_size": matmul_size,
            "tasks": [t for t in ALL_TASKS if t in args.tasks],
            "train_patch_policy": args.train_patch,
            "output_png_rel": rel(args.output_png),
            "png_rel_to_md": os.path.relpath(
                os.path.abspath(args.output_png), os.path.dirname(os.path.abspath(args.output_md))
            ),
            "cpu_mem_limit_bytes": cpu_mem_limit,
            "output_json_rel": rel(out_json),
            "flops_convention": "torch.utils.flop_counter.FlopCounterMode; multiply-add = 2 FLOPs",
        },
        "specs": specs,
        "skipped": skipped,
        "matmul": matmul,
        "results": results,
        "total_wall_s": time.perf_counter() - t_start,
    }
    _write_text_atomic(out_json, json.dumps(report, indent=1, default=str))
    from scripts.io import keep_other_markdown_sections

    previous = open(args.output_md).read() if os.path.exists(args.output_md) else ""
    _write_text_atomic(args.output_md, keep_other_markdown_sections(previous, render_markdown(report)))
    render_plot(report, args.output_png)
    log(f"done in {report['total_wall_s']:.0f} s: {rel(args.output_md)}, {rel(args.output_png)}, {rel(out_json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
