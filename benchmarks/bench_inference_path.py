"""The bundle's inference path, step by step: where the time goes, and what each optimisation changes.

Runs the inference post-processing of configs/inference.json (preprocessing, sliding window, sigmoid,
Invertd, thresholds, label map, NIfTI writing) with the trained weights on the validation fold of the
synthetic data (configs/train.json ``datalist``), first as the unoptimised path (torch, fp32, ``no_grad``
as MONAI's evaluator runs it, roi = the training patch, overlap 0.25, Gaussian blending, 4 windows per
batch) and then with one change at a time: ``torch.inference_mode``, bf16/fp16 autocast, ``torch.compile``,
ONNX Runtime, overlap 0.1 and 0, sw_batch_size 1 and 8, and finally the path the shipped configs run by
default. The steps are interleaved (every step once per repetition, all cases each time) so that a shared
machine's load affects them alike. Each step's label maps are compared with the unoptimised path's (Dice per
region; equivalent = every case and region >= 0.99) and with the ground truth.

    python -m benchmarks.bench_inference_path --device cpu

Writes the section "Inference path, step by step" of docs/benchmarks.md (the rest of the file is left as it
is) and the raw numbers to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

from scripts.conventions import REGIONS
from scripts.metrics import dice

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SECTION = "Inference path, step by step"
EQUIVALENCE = 0.99  # Dice of every case and region against the unoptimised path
# the unoptimised path: the sliding window as configs/train.json shipped it before this benchmark
BASELINE = {
    "backend": "torch",
    "precision": "fp32",
    "grad": "no_grad",
    "compile": False,
    "overlap": 0.25,
    "sw_batch_size": 4,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_steps(device_type: str, default: dict) -> list[dict]:
    """The baseline, one change at a time, and the shipped default (``default``: its settings)."""
    steps = [{"name": "baseline", "change": "unoptimised path", **BASELINE}]

    def one(name: str, change: str, **kw) -> None:
        steps.append({"name": name, "change": change, **BASELINE, **kw})

    one("inference_mode", "`torch.inference_mode()` instead of `no_grad`", grad="inference_mode")
    one("bf16", "bf16 autocast", precision="bf16")
    if device_type == "cuda":
        one("fp16", "fp16 autocast", precision="fp16")
    one("compile", "`torch.compile` (inductor)", compile=True)
    if device_type == "cpu":  # the onnxruntime package is CPU-only
        one("onnxruntime", "ONNX Runtime session instead of torch", backend="onnxruntime")
    one("overlap_0.1", "overlap 0.1", overlap=0.1)
    one("overlap_0", "overlap 0", overlap=0.0)
    one("sw_batch_1", "sw_batch_size 1", sw_batch_size=1)
    one("sw_batch_8", "sw_batch_size 8", sw_batch_size=8)
    changes = [
        f"{k} {default[k]}"
        for k in ("backend", "precision", "grad", "overlap", "sw_batch_size")
        if default[k] != BASELINE[k]
    ]
    steps.append(
        {"name": "default", "change": "shipped configs: " + (", ".join(changes) or "no change"), **BASELINE, **default}
    )
    return steps


# =============================================================================================================
# the pipeline
# =============================================================================================================


class TimedNetwork:
    """Calls ``network`` and adds up the seconds spent in it (device synchronised) and the windows seen."""

    def __init__(self, network, sync) -> None:
        self.network, self.sync = network, sync
        self.seconds, self.windows = 0.0, 0

    def __call__(self, x):
        t0 = time.perf_counter()
        out = self.network(x)
        self.sync()
        self.seconds += time.perf_counter() - t0
        self.windows += int(x.shape[0])
        return out


def regions(t) -> Any:
    import numpy as np

    return np.asarray(t.detach().cpu().numpy() > 0.5)


class Pipeline:
    """The inference configs' preprocessing and post-processing around one network and inferer per step."""

    def __init__(self, args, device) -> None:
        import torch

        from scripts.casework import load_weights, parse_configs

        self.device = device
        self._predictions = tempfile.TemporaryDirectory(prefix="bench_inference_path_")  # removed at exit
        train = parse_configs(os.path.join(REPO_ROOT, "configs", "train.json"), {"bundle_root": REPO_ROOT})
        train["dataset_dir"] = args.dataset_dir or train["dataset_dir"]
        if args.num_folds:
            train["num_folds"] = args.num_folds
        self.cases = train.get_parsed_content("val_datalist")[: args.max_cases or None]
        self.fold = f"{train['fold']} of {train['num_folds']}"
        parser = parse_configs(
            os.path.join(REPO_ROOT, "configs", "inference.json"),
            {"bundle_root": REPO_ROOT, "device": str(device), "prediction_dir": self._predictions.name},
        )
        self.parser = parser
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.postprocessing = parser.get_parsed_content("postprocessing")
        self.sw_inferer = parser.get_parsed_content("sw_inferer")
        self.network = parser.get_parsed_content("network")
        self.ckpt_mtime = datetime.datetime.fromtimestamp(os.path.getmtime(args.ckpt_path), datetime.timezone.utc)
        self.ckpt_mtime = self.ckpt_mtime.isoformat(timespec="seconds")
        load_weights(self.network, args.ckpt_path, device)
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def default_settings(self) -> dict:
        """What configs/inference.json runs by default on this device."""
        p = self.parser
        return {
            "backend": p.get_parsed_content("inference_backend"),
            "precision": p.get_parsed_content("precision"),
            "grad": "no_grad",
            "compile": False,
            "overlap": float(self.sw_inferer.overlap),
            "sw_batch_size": int(self.sw_inferer.sw_batch_size),
        }

    def build(self, step: dict) -> dict:
        """Network and inferer of one step; ``torch.compile`` and ONNX export happen at the first call."""
        import torch

        from scripts.inferers import cpu_bf16_supported, inference_network

        if step["precision"] == "bf16" and self.device.type == "cpu" and not cpu_bf16_supported():
            return {"skip": "this CPU has no native bf16 (no avx512_bf16/AMX); the bundle falls back to fp32"}
        net = inference_network(self.network, step["backend"], step["precision"], self.device)
        if step["compile"]:
            net = torch.compile(net)
        inferer = copy.copy(self.sw_inferer)
        inferer.overlap, inferer.sw_batch_size = step["overlap"], step["sw_batch_size"]
        return {"network": net, "inferer": inferer}

    def run_case(self, built: dict, step: dict, item: dict) -> dict:
        import torch
        from monai.data import decollate_batch, list_data_collate
        from monai.transforms import Activationsd, AsDiscreted

        times: dict[str, float] = {}
        t0 = time.perf_counter()
        data = self.preprocessing(copy.deepcopy(item))
        times["load + preprocessing"] = time.perf_counter() - t0
        net = TimedNetwork(built["network"], self.sync)
        grad = torch.inference_mode() if step["grad"] == "inference_mode" else torch.no_grad()
        t0 = time.perf_counter()
        batch = list_data_collate([data])
        with grad:
            batch["pred"] = built["inferer"](batch["image"].to(self.device), net)
        self.sync()
        sw = time.perf_counter() - t0
        times["network (windows)"] = net.seconds
        times["sliding window: rest (window copies, Gaussian blending)"] = sw - net.seconds
        out = decollate_batch(batch)[0]
        val_dice = final = None
        for t in self.postprocessing.transforms:
            t0 = time.perf_counter()
            out = t(out)
            name = type(t).__name__ + (" (writing)" if "Save" in type(t).__name__ else "")
            times[name] = time.perf_counter() - t0
            if isinstance(t, Activationsd):  # cropped 1 mm space, as the bundle's validation scores it
                pred, label = regions(out["pred"]), regions(out["label"])
                val_dice = [dice(pred[i], label[i]) for i in range(len(REGIONS))]
            elif isinstance(t, AsDiscreted):  # the regions in the input's space, i.e. the written label map
                final = regions(out["pred"])
        times["sliding window"] = sw
        times["end to end"] = sum(v for k, v in times.items() if k != "sliding window")
        return {"times": times, "windows": net.windows, "val_dice": val_dice, "regions": final}


# =============================================================================================================
# measuring
# =============================================================================================================


def measure(pipe: Pipeline, steps: list[dict], repeats: int) -> dict:
    built = {}
    results: dict[str, dict] = {}
    for s in steps:
        b = pipe.build(s)
        results[s["name"]] = {"step": s, "reps": [], "agreement": [], "val_dice": []}
        if "skip" in b:
            results[s["name"]]["skip"] = b["skip"]
            log(f"{s['name']}: skipped ({b['skip']})")
            continue
        built[s["name"]] = b
        t0 = time.perf_counter()
        pipe.run_case(b, s, pipe.cases[0])  # warm-up (compilation / ONNX export included)
        results[s["name"]]["warmup_s"] = time.perf_counter() - t0
        log(f"{s['name']}: warm-up {results[s['name']]['warmup_s']:.1f} s")
    reference: list = []
    for rep in range(repeats):
        for s in steps:
            if s["name"] not in built:
                continue
            r = results[s["name"]]
            per_case = []
            for i, item in enumerate(pipe.cases):
                out = pipe.run_case(built[s["name"]], s, item)
                per_case.append({"times": out["times"], "windows": out["windows"]})
                if rep == 0:
                    if s["name"] == "baseline":
                        reference.append(out["regions"])
                    r["agreement"].append([dice(out["regions"][j], reference[i][j]) for j in range(len(REGIONS))])
                    r["val_dice"].append(out["val_dice"])
            r["reps"].append(per_case)
            e2e = statistics.mean(c["times"]["end to end"] for c in per_case)
            log(f"rep {rep + 1}/{repeats} {s['name']}: {e2e:.2f} s/case end to end")
    return results


def bf16_probe(pipe: Pipeline, repeats: int) -> dict | None:
    """Where the CPU lacks native bf16: one batch of windows in fp32 and under bf16 autocast, interleaved."""
    import torch

    from scripts.inferers import AutocastNetwork, cpu_bf16_supported

    if pipe.device.type != "cpu" or cpu_bf16_supported():
        return None
    x = torch.rand(1, pipe.network.in_channels, *pipe.sw_inferer.roi_size, generator=torch.Generator().manual_seed(0))
    nets = {"fp32": pipe.network, "bf16": AutocastNetwork(pipe.network, torch.bfloat16)}
    times: dict[str, list[float]] = {k: [] for k in nets}
    with torch.inference_mode():
        for _ in range(repeats):
            for k, net in nets.items():
                t0 = time.perf_counter()
                net(x)
                times[k].append(time.perf_counter() - t0)
            log(f"bf16 probe: fp32 {times['fp32'][-1]:.2f} s, bf16 {times['bf16'][-1]:.2f} s")
    return {
        "window": [1, x.shape[1], *x.shape[2:]],
        "times_s": times,
        "ratio": statistics.median(b / a for a, b in zip(times["fp32"], times["bf16"])),
    }


def summarise(results: dict) -> dict:
    base = results["baseline"]
    out = {}
    for name, r in results.items():
        if "skip" in r:
            out[name] = {"skip": r["skip"]}
            continue
        s: dict[str, Any] = {}
        for key in ("end to end", "sliding window", "network (windows)"):
            per_rep = [statistics.mean(c["times"][key] for c in rep) for rep in r["reps"]]
            s[key] = statistics.median(per_rep)
            s[f"speedup {key}"] = statistics.median(
                statistics.mean(c["times"][key] for c in b) / v for b, v in zip(base["reps"], per_rep)
            )
        s["windows"] = statistics.mean(c["windows"] for c in r["reps"][0])
        s["stages"] = {
            k: statistics.median(statistics.mean(c["times"][k] for c in rep) for rep in r["reps"])
            for k in r["reps"][0][0]["times"]
        }
        agree = r["agreement"]
        s["agreement_mean"] = [statistics.mean(a[j] for a in agree) for j in range(len(REGIONS))]
        s["agreement_min"] = min(min(a) for a in agree)
        s["equivalent"] = s["agreement_min"] >= EQUIVALENCE
        s["val_dice"] = [statistics.mean(v[j] for v in r["val_dice"]) for j in range(len(REGIONS))]
        s["val_dice_mean"] = statistics.mean(s["val_dice"])
        s["warmup_s"] = r["warmup_s"]
        out[name] = s
    return out


# =============================================================================================================
# report
# =============================================================================================================


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(report: dict) -> str:
    parts = (_render_intro, _render_stages, _render_steps, _render_notes)
    return "\n".join(line for part in parts for line in part(report))


def _render_intro(report: dict) -> list[str]:
    """Heading and how the numbers were made."""
    m, cfg = report["machine"], report["config"]
    L = [f"## {SECTION}", ""]
    L.append(
        f"Generated by `benchmarks/bench_inference_path.py` (`{report['command']}`) on {m['date']}: "
        f"{m['cpu']} ({m['cpus']} cores, shared with other jobs: load average {m['loadavg_start'][0]:.2f} at the "
        f"start, {m['loadavg_end'][0]:.2f} at the end), device {cfg['device']}, {m['torch_threads']} torch threads; "
        f"torch {m['torch']}, monai {m['monai']}, onnxruntime {m['onnxruntime']}. "
        f"{len(report['cases'])} synthetic validation cases (fold {cfg['fold']}, {cfg['shape']}), weights "
        f"`{cfg['ckpt_path']}` (written {cfg['ckpt_mtime']}). Every step runs the inference configs' whole path per case; the steps are "
        f"interleaved, {cfg['repeats']} repetition(s) after one warm-up case each; times are the median over the "
        f"repetitions of the mean per case, speed-ups the median of the per-repetition ratios to the baseline."
    )
    L.append("")
    return L


def _render_stages(report: dict) -> list[str]:
    """Where the time goes, per stage."""
    summ = report["summary"]
    base = summ["baseline"]
    L = []
    L.append("### Where the time goes")
    L.append("")
    L.append(
        f"Seconds per case, median over the repetitions, for the unoptimised path and the shipped default "
        f"({summ['default'].get('windows', 0):.0f} vs {base['windows']:.0f} window(s) per case)."
    )
    L.append("")
    rows = []
    dflt = summ["default"]
    stages = [k for k in base["stages"] if k not in ("sliding window", "end to end")]
    for k in stages + ["end to end"]:
        b, d = base["stages"][k], dflt["stages"].get(k)
        bold = "**" if k == "end to end" else ""
        rows.append(
            [
                f"{bold}{k}{bold}",
                f"{b:.3f}",
                f"{100 * b / base['stages']['end to end']:.1f} %",
                f"{d:.3f}",
                f"{100 * d / dflt['stages']['end to end']:.1f} %",
            ]
        )
    L.append(_table(["stage", "baseline (s)", "share", "default (s)", "share"], rows))
    L.append("")
    return L


def _render_steps(report: dict) -> list[str]:
    """Each step against the unoptimised path."""
    summ, steps = report["summary"], report["steps"]
    L = []
    L.append("### Each step against the unoptimised path")
    L.append("")
    L.append(
        f"Agreement = Dice of the step's written regions with the unoptimised path's, per region: mean over "
        f"the cases, and the lowest case/region value (equivalent when >= {EQUIVALENCE}). Validation Dice = "
        f"against the ground truth, in the cropped 1 mm space as the bundle's validation scores it, mean over "
        f"the cases."
    )
    L.append("")
    rows = []
    for s in steps:
        r = summ[s["name"]]
        if "skip" in r:
            rows.append([s["name"], s["change"], "skipped: " + r["skip"]] + [""] * 8)
            continue
        rows.append(
            [
                f"**{s['name']}**" if s["name"] == "default" else s["name"],
                s["change"],
                f"{r['windows']:.0f}",
                f"{r['sliding window']:.2f}",
                f"{r['end to end']:.2f}",
                f"{r['speedup sliding window']:.2f}x",
                f"{r['speedup end to end']:.2f}x",
                " / ".join(f"{v:.4f}" for v in r["agreement_mean"]) + f" (min {r['agreement_min']:.4f})",
                "yes" if r["equivalent"] else "**no**",
                " / ".join(f"{v:.3f}" for v in r["val_dice"]) + f" / {r['val_dice_mean']:.3f}",
                f"{r['warmup_s']:.1f}",
            ]
        )
    L.append(
        _table(
            [
                "step",
                "change",
                "windows / case",
                "sliding window (s/case)",
                "end to end (s/case)",
                "speed-up (sliding window)",
                "speed-up (end to end)",
                "agreement TC / WT / ET (min)",
                "equivalent",
                "val Dice TC / WT / ET / mean",
                "warm-up case (s)",
            ],
            rows,
        )
    )
    L.append("")
    return L


def _render_notes(report: dict) -> list[str]:
    """The bf16 probe and where the raw numbers are."""
    cfg = report["config"]
    L = []
    probe = report.get("bf16_probe")
    if probe:
        L.append(
            f"- bf16 on this CPU: not run over the cases (no native bf16, so the bundle falls back to fp32); "
            f"one {'x'.join(map(str, probe['window']))} window under bf16 autocast took "
            f"{statistics.median(probe['times_s']['bf16']):.2f} s vs {statistics.median(probe['times_s']['fp32']):.2f} s "
            f"in fp32 (median of {len(probe['times_s']['fp32'])}, interleaved): {probe['ratio']:.1f}x slower."
        )
    L.append(f"- Raw numbers (every case and repetition): `{cfg['output_json_rel']}`.")
    L.append("")
    return L


def machine_info(device) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import monai
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        ort = version("onnxruntime")
    except PackageNotFoundError:
        ort = None
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "onnxruntime": ort,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions of every step over all cases")
    p.add_argument(
        "--steps",
        nargs="+",
        default=None,
        help="only these steps (the baseline and the default always run), e.g. onnxruntime overlap_0.1",
    )
    p.add_argument("--dataset_dir", default=None, help="default: configs/train.json dataset_dir")
    p.add_argument(
        "--num_folds",
        type=int,
        default=0,
        help="the validation cases are fold 0 of this many (0: configs/train.json's"
        " num_folds; 48 for data/synthetic_mni, as configs/synthetic_train.json splits it for the shipped weights)",
    )
    p.add_argument("--ckpt_path", default=os.path.join(REPO_ROOT, "models", "model.pt"))
    p.add_argument("--max_cases", type=int, default=0, help="only the first N validation cases (0 = all)")
    p.add_argument("--output_md", default=os.path.join(REPO_ROOT, "docs", "benchmarks.md"))
    p.add_argument(
        "--output_json", default=None, help="default benchmarks/results/bench_inference_path_<device>_<time>.json"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from benchmarks.markdown import replace_markdown_sections

    if args.device == "cuda" and not torch.cuda.is_available():
        log("error: --device cuda but torch.cuda.is_available() is False")
        return 2
    if not os.path.isfile(args.ckpt_path):
        log(f"error: no trained weights at {args.ckpt_path} (train first, see README)")
        return 2
    if args.repeats < 1:
        log("error: --repeats must be at least 1")
        return 2
    device = torch.device(args.device)
    machine = machine_info(device)
    warnings.filterwarnings("ignore")
    pipe = Pipeline(args, device)
    steps = make_steps(device.type, pipe.default_settings())
    if args.steps:
        unknown = set(args.steps) - {s["name"] for s in steps}
        if unknown:
            log(f"error: unknown steps {sorted(unknown)}; known: {[s['name'] for s in steps]}")
            return 2
        steps = [s for s in steps if s["name"] in ("baseline", "default", *args.steps)]
    log(f"{len(pipe.cases)} cases, steps: {[s['name'] for s in steps]}, load average {machine['loadavg_start']}")
    results = measure(pipe, steps, args.repeats)
    probe = bf16_probe(pipe, args.repeats) if any(s["name"] == "bf16" for s in steps) else None
    machine["loadavg_end"] = list(os.getloadavg())
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_json = args.output_json or os.path.join(
        REPO_ROOT, "benchmarks", "results", f"bench_inference_path_{args.device}_{stamp}.json"
    )
    rel = lambda p: os.path.relpath(os.path.abspath(p), REPO_ROOT)  # noqa: E731
    shape = pipe.preprocessing(copy.deepcopy(pipe.cases[0]))["image"].shape[1:]
    report = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [rel(__file__), *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine,
        "config": {
            "device": args.device,
            "repeats": args.repeats,
            "fold": pipe.fold,
            "ckpt_path": rel(args.ckpt_path),
            "output_json_rel": rel(out_json),
            "ckpt_mtime": pipe.ckpt_mtime,
            "shape": "first case cropped to " + "x".join(str(int(v)) for v in shape),
        },
        "cases": [c["image"] if isinstance(c["image"], str) else c["image"][0] for c in pipe.cases],
        "steps": steps,
        "results": {k: {kk: vv for kk, vv in v.items() if kk != "step"} for k, v in results.items()},
        "bf16_probe": probe,
    }
    report["summary"] = summarise(results)
    from scripts.io import atomic_path

    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    with atomic_path(out_json) as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=str)
    old = open(args.output_md).read() if os.path.exists(args.output_md) else ""
    with atomic_path(args.output_md) as tmp, open(tmp, "w") as f:
        f.write(replace_markdown_sections(old, render(report)))
    for s in steps:
        r = report["summary"][s["name"]]
        log(
            f"{s['name']:>15}: "
            + (
                f"skipped ({r['skip']})"
                if "skip" in r
                else f"{r['end to end']:.2f} s/case, x{r['speedup end to end']:.2f}, agreement min {r['agreement_min']:.4f}, "
                f"val Dice {r['val_dice_mean']:.3f}"
            )
        )
    log(f"wrote {rel(args.output_md)} and {rel(out_json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
