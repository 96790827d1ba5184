#!/usr/bin/env python
"""Benchmark this bundle's ResUNet against its peers on one machine, in one run, with one input.

Peers:

* ``resunet``     -- this bundle's ResUNet as ``configs/train.json`` + ``inference.json`` build and place it
  (``network``: ``network_def`` placed channels-last by ``scripts.networks.place``).
* ``resunet_sep`` -- the same ResUNet with every level depthwise-separable (``separable_levels = all``).
* ``student``     -- the distilled MobileNetV3-style student as ``configs/student.json`` builds it (or
  ``--student_target``/``--student_kwargs``).
* ``swin``        -- the ResUNet-Swin hybrid as ``configs/swin.json`` builds it.
* ``segresnet``   -- MONAI ``SegResNet`` as the model zoo's ``brats_mri_segmentation`` bundle configures it.
* ``resenc_m``    -- nnU-Net's ResEnc-M ``3d_fullres`` network (``dynamic_network_architectures``
  ``ResidualEncoderUNet``) with a BraTS-like plan.

Measured per model: parameters; forward FLOPs per ``4 x 128^3`` patch (``torch.utils.flop_counter``, a
multiply-add counts as 2 FLOPs); forward latency per patch; whole-case inference with the model's own settings
(the bundle's networks: ``sw_inferer`` and ``inference_backend`` of the configs, i.e. one window over the input
and ONNX Runtime on CPU; SegResNet: one 240x240x160 window; ResEnc-M: 128^3 tiles, step 0.5) on (``case``) the
real case ``--case_dir`` brain-cropped by the bundle's preprocessing and (``volume``) the full 240x240x155
volume (the bundle's networks get it padded as their crop pads it); peak memory (RSS high-water mark of a
fresh subprocess per model and phase on CPU, ``torch.cuda.max_memory_allocated`` on CUDA); training throughput
(forward + backward + Adam step on the model's own training patch); ratios against SegResNet; achieved GFLOP/s
against the machine's measured large-matmul GFLOP/s; and (``roofline``, ``benchmarks/roofline.py``) dense,
depthwise and 1x1x1 conv kernels at the ResUNet's level sizes against the measured memory bandwidth and matmul
peak.

Full run (quiet machine)::

    python -m benchmarks.bench_peers --device cpu

Smoke run (small sizes; tasks case, volume and roofline unless --tasks says otherwise; writes nothing under docs/)::

    python -m benchmarks.bench_peers --quick --output_md /tmp/b.md --output_png /tmp/b.png \
        --output_json /tmp/b.json

Outputs: ``docs/benchmarks.md`` (tables, machine, settings), ``docs/images/benchmarks.png`` and the raw
numbers as JSON in ``benchmarks/results/`` (gitignored). Every output is written atomically.
Needs ``dynamic-network-architectures`` for ``resenc_m`` (see ``benchmarks/requirements.txt``); without it
that peer is skipped with a note.

This file is the command line; the peers and their counts are in ``benchmarks/peers.py``, the measurements (one
worker process each) in ``benchmarks/timing.py``, the markdown and the plot in ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time

from benchmarks.markdown import keep_other_markdown_sections
from benchmarks.peers import (
    ALL_MODELS,
    ALL_TASKS,
    CASE_DIR,
    COMMON_TRAIN,
    MODEL_TASKS,
    QUICK_CASE_MAX,
    QUICK_MATMUL,
    QUICK_PATCH,
    QUICK_TASKS,
    QUICK_TRAIN_PATCH,
    QUICK_VOLUME,
    REF_PATCH,
    VOLUME_SHAPE,
    WHOLE_CASE_TASKS,
    bundle_parser,
    bundle_shapes,
    count_params,
    forward_flops,
    log,
    make_specs,
    train_step_estimates,
    window_plan,
)
from benchmarks.report import failed_note, fmt, gib, render_markdown, render_plot, shape_str
from benchmarks.roofline import COPY_MIB, QUICK_COPY_MIB, resunet_levels
from benchmarks.timing import machine_info, run_worker, worker_main
from scripts.io import write_text

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        help=f"smoke run: forward patch {shape_str(QUICK_PATCH)}, real case cut to {shape_str(QUICK_CASE_MAX)}, "
        f"volume {shape_str(QUICK_VOLUME)}, training patch {shape_str(QUICK_TRAIN_PATCH)}, ResEnc-M/SegResNet rois "
        f"shrunk to fit, matmul {QUICK_MATMUL}, copy {QUICK_COPY_MIB} MiB",
    )
    p.add_argument("--models", nargs="+", choices=ALL_MODELS, default=list(ALL_MODELS))
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=ALL_TASKS,
        default=None,
        help=f"default: all; with --quick {' '.join(QUICK_TASKS)} (one worker process per model and task)",
    )
    p.add_argument(
        "--case_dir",
        default=CASE_DIR,
        help="the real case: brain-cropped by configs/inference.json's preprocessing for the `case` task "
        f"(--quick: each side cut to at most {shape_str(QUICK_CASE_MAX)})",
    )
    p.add_argument(
        "--volume_shape",
        type=int,
        nargs=3,
        default=None,
        help=f"the full volume of the `volume` task (default {shape_str(VOLUME_SHAPE)}; {shape_str(QUICK_VOLUME)} "
        "with --quick)",
    )
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
    if args.tasks is None:
        args.tasks = list(QUICK_TASKS if args.quick else ALL_TASKS)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        log("error: --device cuda but torch.cuda.is_available() is False")
        return 2
    run = _settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    machine = machine_info(args.device, args.threads)
    log(
        f"bench_peers: {machine['cpu_model']}, device {args.device}, {machine['torch_threads']} threads, torch {machine['torch']}"
        + (" [QUICK smoke run]" if run["quick"] else "")
    )
    run["shapes"] = _shapes(args, run)
    log(f"whole-case inputs: {run['shapes']}")
    specs, skipped = make_specs(args, run["quick"], run["shapes"])
    for k, why in skipped.items():
        log(f"  skip {k}: {why}")
    if not specs:
        log("nothing to benchmark")
        return 1
    run["cpu_mem_limit"] = _cpu_mem_limit(args, machine)
    mem_budget = machine.get("gpu_memory_bytes") if args.device == "cuda" else machine.get("mem_available_bytes")
    budgets = [b for b in (mem_budget, run["cpu_mem_limit"]) if b]
    results = _static_measures(specs, args, run, min(budgets) if budgets else None)
    matmul = _measure_all(specs, results, args, run, t_start)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = _report(args, argv, run, machine, specs, skipped, matmul, results)
    report["total_wall_s"] = time.perf_counter() - t_start
    _write_outputs(report, args, run["out_json"])
    return 0


def _rel(path: str) -> str:
    return os.path.relpath(os.path.abspath(path), REPO_ROOT)


def _settings(args) -> dict:
    """Sizes and repetitions of this run (smaller with ``--quick``) and the raw-results JSON path."""
    quick = args.quick
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return {
        "quick": quick,
        "repeats": args.repeats if args.repeats is not None else (1 if quick else 3),
        "patch": list(QUICK_PATCH if quick else REF_PATCH),
        "volume": list(args.volume_shape or (QUICK_VOLUME if quick else VOLUME_SHAPE)),
        "matmul_size": args.matmul_size or (QUICK_MATMUL if quick else 4096),
        "copy_mib": QUICK_COPY_MIB if quick else COPY_MIB,
        "case_dir": _rel(args.case_dir),
        "out_json": args.output_json
        or os.path.join(REPO_ROOT, "benchmarks", "results", f"bench_peers_{args.device}_{stamp}.json"),
    }


def _shapes(args, run: dict) -> dict:
    """The whole-case inputs: the real case brain-cropped by the bundle's preprocessing (cut to
    ``QUICK_CASE_MAX`` with ``--quick``), the full volume as it is and as the bundle's crop pads it."""
    shapes = bundle_shapes(args.case_dir, tuple(run["volume"]))
    if run["quick"]:
        shapes["case_cropped"] = shapes["case"]
        shapes["case"] = [min(s, q) for s, q in zip(shapes["case"], QUICK_CASE_MAX)]
    shapes["raw_volume"] = list(run["volume"])
    return shapes


def _cpu_mem_limit(args, machine: dict) -> int | None:
    """RLIMIT_DATA of the CPU workers: 90% of the memory available at start unless given; None on CUDA."""
    if args.device != "cpu":
        return None
    if args.cpu_mem_limit_gb is None:
        avail = machine.get("mem_available_bytes")
        return int(0.9 * avail) if avail else None
    return int(args.cpu_mem_limit_gb * 2**30) if args.cpu_mem_limit_gb > 0 else None


def _static_measures(specs: list[dict], args, run: dict, budget: int | None) -> dict[str, dict]:
    """Parameters, FLOPs and the training setting of every model (meta device, no timing)."""
    log("[static] parameters and FLOPs (meta device)")
    results: dict[str, dict] = {}
    for s in specs:
        r = results[s["key"]] = {}
        r["params"] = count_params(s)
        r["flops_ref"] = forward_flops(s, REF_PATCH)
        r["flops_patch"] = forward_flops(s, tuple(run["patch"]))
        r["plan"] = {t: window_plan(s["sw"], s["inputs"][t]) for t in WHOLE_CASE_TASKS}
        r["flops_window"] = {t: forward_flops(s, tuple(r["plan"][t]["roi"])) for t in WHOLE_CASE_TASKS}
        r.update(_train_setting(s, args, run, budget))
        log(
            f"  {s['key']:<12} params {r['params'] / 1e6:8.3f} M   fwd 4x{shape_str(REF_PATCH)} {r['flops_ref'] / 1e9:9.1f} GFLOP"
            f"   train {r['train_setting']['batch']}x4x{shape_str(r['train_setting']['patch'])}: est. memory "
            f"{fmt(gib(r['train_mem_estimate_bytes']))} GiB" + (" (common patch)" if r["train_common"] else "")
        )
    return results


def _train_setting(s: dict, args, run: dict, budget: int | None) -> dict:
    """The model's own training patch, or the common one (``--train_patch common``, or ``auto`` when the
    estimated memory exceeds 85% of ``budget``), with its FLOP and memory estimates."""
    common = {
        "patch": list(QUICK_TRAIN_PATCH) if run["quick"] else list(args.common_train_patch),
        "batch": args.common_train_batch,
    }
    setting, common_used, note = s["train"], False, None
    if args.train_patch == "common":
        setting, common_used = common, True
    try:
        est = train_step_estimates(s, tuple(setting["patch"]), setting["batch"])
    except Exception as e:  # noqa: BLE001 - reported, the worker will fail the same way
        log(f"  {s['key']}: training estimate failed: {type(e).__name__}: {e}")
        est = {"train_flops_fwd_bwd": None, "train_mem_estimate_bytes": None}
    est_bytes = est["train_mem_estimate_bytes"]
    if args.train_patch == "auto" and budget and est_bytes and est_bytes > 0.85 * budget:
        note = (
            f"own patch {setting['batch']} x 4x{shape_str(setting['patch'])} needs an estimated "
            f"{est_bytes / 2**30:.1f} GiB > 85% of the {budget / 2**30:.1f} GiB available: "
            f"measured on the common patch instead"
        )
        setting, common_used = common, True
        est = train_step_estimates(s, tuple(setting["patch"]), setting["batch"])
    return {
        "train_setting": setting,
        "train_common": common_used,
        "train_note": note,
        "train_flops": est["train_flops_fwd_bwd"],
        "train_mem_estimate_bytes": est["train_mem_estimate_bytes"],
        "_common": common,
    }


def _measure_all(specs: list[dict], results: dict, args, run: dict, t_start: float) -> dict:
    """The matmul peak, then every task of every model, each in a fresh worker process; returns the matmul
    result and fills ``results``."""
    base_task = {
        "device": args.device,
        "precision": args.precision,
        "threads": args.threads,
        "mem_limit": run["cpu_mem_limit"],
        "warmup": args.warmup,
        "repeats": run["repeats"],
    }
    size = run["matmul_size"]
    jobs = [(t, s["key"]) for s in specs for t in MODEL_TASKS if t in args.tasks]
    roofline = "roofline" in args.tasks
    n_jobs = len(jobs) + 1 + roofline
    log(f"[1/{n_jobs}] matmul {size}x{size} ... (elapsed {time.perf_counter() - t_start:.0f} s)")
    matmul = run_worker(dict(base_task, task="matmul", size=size), args, f"[1/{n_jobs}] matmul")
    log(f"  -> {matmul['gflops']:.1f} GFLOP/s" if "error" not in matmul else f"  -> failed: {matmul['error']}")
    if roofline:
        log(f"[2/{n_jobs}] roofline kernels ... (elapsed {time.perf_counter() - t_start:.0f} s)")
        levels = resunet_levels(
            bundle_parser([], {}, args.device).get_parsed_content("network_def", instantiate=False).get_config(),
            run["shapes"]["case"],
        )
        task = dict(base_task, task="roofline", levels=levels, copy_mib=run["copy_mib"], backends=_backends(args))
        run["roofline"] = run_worker(task, args, f"[2/{n_jobs}] roofline")
        log(f"  -> failed: {run['roofline']['error']}" if "error" in run["roofline"] else "  -> done")
    by_key = {s["key"]: s for s in specs}
    for i, (task, key) in enumerate(jobs, 2 + roofline):
        label = f"[{i}/{n_jobs}] {task} {key}"
        log(f"{label} ... (elapsed {time.perf_counter() - t_start:.0f} s)")
        results[key][task] = out = _measure_one(task, by_key[key], results[key], base_task, args, run, label)
        if "error" in out:
            log(f"  -> failed: {out['error']}")
        else:
            mem = out.get("cuda_peak_bytes", out.get("peak_rss_bytes", 0)) / 2**20
            extra = f", {out['windows']} windows" if task in WHOLE_CASE_TASKS else ""
            extra += f", {out['patches_per_s']:.3f} patches/s" if task == "train" else ""
            log(f"  -> median {out['median_s']:.3f} s{extra}, peak {mem:.0f} MiB (worker wall {out['wall_s']:.0f} s)")
    for r in results.values():
        r.pop("_common", None)
    return matmul


def _backends(args) -> list[str]:
    """The kernel backends of the roofline: torch, and the bundle's CPU backend when it is another one."""
    from scripts.inferers import default_backend

    backend = "torch" if args.precision != "fp32" else (args.resunet_backend or default_backend(args.device))
    return ["torch"] + ([backend] if backend != "torch" else [])


def _measure_one(task: str, s: dict, r: dict, base_task: dict, args, run: dict, label: str) -> dict:
    """One model's task in a worker; a training run that fails on the model's own patch is retried on the
    common patch (``--train_patch auto``)."""
    t = dict(
        base_task,
        task=task,
        spec=s,
        patch=run["patch"],
        shape=s["inputs"].get(task),
        train_patch=r["train_setting"]["patch"],
        train_batch=r["train_setting"]["batch"],
    )
    out = run_worker(t, args, label)
    if task == "train" and "error" in out and args.train_patch == "auto" and not r["train_common"]:
        log(f"  -> own training patch failed ({out['error']}); retrying on the common patch")
        common = r["_common"]
        r["train_note"] = (
            f"own patch {r['train_setting']['batch']} x 4x{shape_str(r['train_setting']['patch'])} "
            f"{failed_note(out['error'])}: measured on the common patch instead"
        )
        r["train_setting"], r["train_common"] = common, True
        est = train_step_estimates(s, tuple(common["patch"]), common["batch"])
        r["train_flops"], r["train_mem_estimate_bytes"] = est["train_flops_fwd_bwd"], est["train_mem_estimate_bytes"]
        out = run_worker(dict(t, train_patch=common["patch"], train_batch=common["batch"]), args, label)
    return out


def _report(args, argv, run: dict, machine: dict, specs, skipped, matmul: dict, results: dict) -> dict:
    """Everything the markdown, the plot and the raw JSON are made from."""
    command = "python " + " ".join(
        shlex.quote(a) for a in [_rel(__file__)] + list(sys.argv[1:] if argv is None else argv)
    )
    return {
        "command": command,
        "machine": machine,
        "config": {
            "device": args.device,
            "precision": args.precision,
            "repeats": run["repeats"],
            "warmup": args.warmup,
            "threads": args.threads,
            "quick": run["quick"],
            "patch": run["patch"],
            "ref_patch": list(REF_PATCH),
            "volume": run["volume"],
            "shapes": run["shapes"],
            "case_dir": run["case_dir"],
            "matmul_size": run["matmul_size"],
            "tasks": [t for t in ALL_TASKS if t in args.tasks],
            "train_patch_policy": args.train_patch,
            "output_png_rel": _rel(args.output_png),
            "png_rel_to_md": os.path.relpath(
                os.path.abspath(args.output_png), os.path.dirname(os.path.abspath(args.output_md))
            ),
            "cpu_mem_limit_bytes": run["cpu_mem_limit"],
            "output_json_rel": _rel(run["out_json"]),
            "flops_convention": "torch.utils.flop_counter.FlopCounterMode; multiply-add = 2 FLOPs",
        },
        "specs": specs,
        "skipped": skipped,
        "matmul": matmul,
        "roofline": run.get("roofline"),
        "results": results,
    }


def _write_outputs(report: dict, args, out_json: str) -> None:
    """The raw JSON, the markdown page (other scripts' sections kept) and the plot, each atomically."""
    write_text(json.dumps(report, indent=1, default=str), out_json)
    previous = open(args.output_md).read() if os.path.exists(args.output_md) else ""
    write_text(keep_other_markdown_sections(previous, render_markdown(report)), args.output_md)
    render_plot(report, args.output_png)
    log(
        f"done in {report['total_wall_s']:.0f} s: {_rel(args.output_md)}, {_rel(args.output_png)}, "
        f"{report['config']['output_json_rel']}"
    )


if __name__ == "__main__":
    sys.exit(main())
