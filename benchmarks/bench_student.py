#!/usr/bin/env python
"""The distilled student against its ResUNet teacher, in one run: parameters, whole-case CPU inference time, Dice.

Both networks are loaded with their weights from the bundle's configs (teacher: ``configs/inference.json`` +
``models/model.pt``; student: ``configs/inference.json`` + ``configs/student.json`` + ``models/student.pt``), one
real case is preprocessed as inference does, and the sliding-window inferer of the configs runs over the whole
case with each network on each backend (ONNX Runtime, the CPU default, and torch), repetitions interleaved so
that both see the same machine load; the median is reported. Dice per region (sigmoid > 0.5, ONNX Runtime) is
measured on the real case against its consensus and, with ``--datalist``, on the validation fold of a datalist
(held-out synthetic cases), for the teacher, the student and any ``--extra_student NAME=CKPT``::

    python -m benchmarks.bench_student --case ../shared/data/TCGA-DU-7294 --repeats 3 \
        --datalist data/synthetic_mni --num_folds 48 --student_ckpt runs/student_distill/model.pt \
        --extra_student no_teacher=runs/student_scratch/model.pt --output_md docs/benchmarks.md \
        --curve distilled=data/logs/student_distill.log --curve no_teacher=data/logs/student_scratch.log \
        --plot docs/images/student_distillation.png

With ``--output_md`` the "Student vs teacher" section of that page is replaced (other sections are kept); with
``--plot`` the validation Dice of the training logs (``--curve``) is drawn against epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.cli import name_equals_path
from scripts.casework import load_network, parse_configs
from scripts.inferers import inference_network

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SECTION = "## Student vs teacher"


def _configs(*names: str) -> list[str]:
    return [os.path.join(REPO_ROOT, "configs", n) for n in names]


def time_case(image: torch.Tensor, networks: dict, inferer, repeats: int) -> dict[str, list[float]]:
    """Seconds of ``inferer(image, network)`` per network, repetitions interleaved (first call: warm-up, which
    includes the ONNX export)."""
    times: dict[str, list[float]] = {k: [] for k in networks}
    with torch.no_grad():
        for rep in range(repeats + 1):
            for key, net in networks.items():
                start = time.perf_counter()
                inferer(image, net)
                if rep:
                    times[key].append(time.perf_counter() - start)
    return times


def load_item(parser, item: dict) -> dict:
    """``item`` (image files, label file, label values) after the configs' ``preprocessing_transforms``."""
    from monai.transforms import Compose

    return Compose(parser.get_parsed_content("preprocessing_transforms"))(dict(item))


def region_dice(networks: dict, items: list[dict], parser, inferer) -> dict[str, list[list[float]]]:
    """Per network, per case: Dice of TC, WT, ET (sigmoid > 0.5 against the label's regions; NaN where the
    reference region is empty)."""
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    dice: dict[str, list[list[float]]] = {k: [] for k in networks}
    with torch.no_grad():
        for item in items:
            data = load_item(parser, item)
            image, label = torch.as_tensor(data["image"])[None].float(), torch.as_tensor(data["label"])[None]
            for key, net in networks.items():
                pred = (torch.sigmoid(inferer(image, net)) > 0.5).float()
                dice[key].append([float(v) for v in metric(pred, label)[0]])
    return dice


def real_case_item(case: str, parser) -> dict:
    """The real case's image item with its consensus segmentation as label."""
    from scripts.data.layouts import find_inference_cases

    item = find_inference_cases(case, "testing", parser.get_parsed_content("layout"))[0]
    (label,) = sorted(Path(case).glob("*seg*.nii*"))
    return dict(item, label=str(label), labels=[1, 2, 4])


def _mean(rows: list[list[float]]) -> list[float]:
    return [float(torch.tensor([r[i] for r in rows]).nanmean()) for i in range(3)]


def measure(args) -> dict:
    parser = parse_configs(_configs("inference.json"))
    inferer = parser.get_parsed_content("sw_inferer")
    nets = {"teacher": load_network(_configs("inference.json"), args.teacher_ckpt)}
    for name, ckpt in [("student", args.student_ckpt), *args.extra_student]:
        nets[name] = load_network(_configs("inference.json", "student.json"), ckpt)
    real = real_case_item(args.case, parser)
    image = torch.as_tensor(load_item(parser, real)["image"])[None].float()
    timed = {
        f"{n}/{b}": inference_network(nets[n], b) for b in ("onnxruntime", "torch") for n in ("teacher", "student")
    }
    medians = {k: statistics.median(v) for k, v in time_case(image, timed, inferer, args.repeats).items()}
    ort = {n: inference_network(net, "onnxruntime") for n, net in nets.items()}
    result = {"case": os.path.basename(os.path.normpath(args.case)), "case_shape": list(image.shape[2:])}
    result.update(threads=torch.get_num_threads(), repeats=args.repeats, median_s=medians)
    result["params"] = {n: sum(p.numel() for p in net.parameters()) for n, net in nets.items()}
    result["params_ratio"] = result["params"]["teacher"] / result["params"]["student"]
    result["speedup"] = {b: medians[f"teacher/{b}"] / medians[f"student/{b}"] for b in ("onnxruntime", "torch")}
    result["real_dice_tc_wt_et"] = {n: d[0] for n, d in region_dice(ort, [real], parser, inferer).items()}
    if args.datalist:
        from scripts.data.layouts import prepare_datalist

        held_out = prepare_datalist(args.datalist, 0, args.num_folds)["validation"]
        per_case = region_dice(ort, held_out, parser, inferer)
        result["held_out"] = {"n": len(held_out), "mean_dice_tc_wt_et": {n: _mean(d) for n, d in per_case.items()}}
    return result


def _dice_rows(r: dict) -> list[str]:
    names = [n for n in r["params"] if n != "teacher"]
    fmt = "| {} | {} | " + " | ".join("{}" for _ in names) + " |"
    rows = []
    if "held_out" in r:
        for i, region in enumerate(("TC", "WT", "ET")):
            values = [f"{r['held_out']['mean_dice_tc_wt_et'][n][i]:.3f}" for n in ["teacher", *names]]
            rows.append(fmt.format(f"Dice {region}, {r['held_out']['n']} held-out synthetic cases (mean)", *values))
    for i, region in enumerate(("TC", "WT")):
        values = [f"{r['real_dice_tc_wt_et'][n][i]:.3f}" for n in ["teacher", *names]]
        rows.append(fmt.format(f"Dice {region}, {r['case']} (consensus)", *values))
    return rows


def markdown(r: dict) -> str:
    names = [n for n in r["params"] if n != "teacher"]
    header = "| | teacher (ResUNet) | " + " | ".join(names) + " |"
    sep = "|---|---|" + "---|" * len(names)
    pad = " |" * (len(names) - 1)
    rows = [f"| parameters | {r['params']['teacher']:,} | " + " | ".join(f"{r['params'][n]:,}" for n in names) + " |"]
    for b in ("onnxruntime", "torch"):
        t, s = r["median_s"][f"teacher/{b}"], r["median_s"][f"student/{b}"]
        rows.append(f"| whole case, {b} (s, median of {r['repeats']}) | {t:.2f} | {s:.2f} ({t / s:.2f}x faster) |{pad}")
    return "\n".join(
        [
            SECTION,
            "",
            f"`benchmarks/bench_student.py`, one run: parameters; sliding-window inference of the network over the "
            f"whole preprocessed {r['case']} case ({' x '.join(map(str, r['case_shape']))} voxels after brain "
            f"cropping), {r['threads']} torch thread(s), repetitions interleaved so that every network sees the same "
            f"load; Dice (sigmoid > 0.5 per region, ONNX Runtime) on held-out synthetic cases and on the real case "
            f"({r['params_ratio']:.1f}x fewer parameters).",
            "",
            header,
            sep,
            *rows,
            *_dice_rows(r),
            "",
        ]
    )


def plot_curves(curves: list[tuple[str, Path]], png: str) -> None:
    """Validation mean Dice per validated epoch of each ``NAME=TRAINING_LOG`` (one line each), as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from benchmarks.real_case import training_hours, write_dice_plot

    fig = Figure(figsize=(6, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, log in curves:
        _, val = training_hours(log)
        if not val:
            raise SystemExit(f"--curve {name}: {log} holds no 'Epoch[N] Metrics -- ... val_mean_dice' line")
        ax.plot(sorted(val), [val[e] for e in sorted(val)], "o-", label=name)
    write_dice_plot(fig, ax, "epoch (16 steps of 2 cases x 4 patches of 64³)", "validation mean Dice (TC/WT/ET)", png)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default=os.path.join(REPO_ROOT, "..", "shared", "data", "TCGA-DU-7294"))
    p.add_argument("--teacher_ckpt", default=os.path.join(REPO_ROOT, "models", "model.pt"))
    p.add_argument("--student_ckpt", default=os.path.join(REPO_ROOT, "models", "student.pt"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--datalist",
        default=None,
        help="datalist JSON whose validation list is the held-out set, or a data folder "
        "whose fold 0 of --num_folds is (the training configs' split)",
    )
    p.add_argument("--num_folds", type=int, default=5, help="as in the training config (synthetic_train.json: 48)")
    p.add_argument(
        "--extra_student",
        action="append",
        default=[],
        type=name_equals_path,
        help="NAME=CKPT, another student's weights",
    )
    p.add_argument("--output_json", default=None)
    p.add_argument("--output_md", default=None, help="replace the section of this Markdown page")
    p.add_argument(
        "--curve",
        action="append",
        default=[],
        type=name_equals_path,
        help="NAME=TRAINING_LOG: plot its validation Dice",
    )
    p.add_argument("--plot", default=None, help="PNG of the --curve validation Dice against epochs")
    args = p.parse_args(argv)
    if args.plot:
        plot_curves(args.curve, args.plot)
    result = measure(args)
    print(json.dumps(result, indent=1))
    print(markdown(result))
    from benchmarks.markdown import replace_markdown_sections
    from scripts.io import write_json, write_text

    if args.output_json:
        write_json(result, args.output_json)
    if args.output_md:
        old = open(args.output_md).read() if os.path.exists(args.output_md) else ""
        write_text(replace_markdown_sections(old, markdown(result)), args.output_md)
    return result


if __name__ == "__main__":
    main()
