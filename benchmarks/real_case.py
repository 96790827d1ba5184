"""Score weights on the real shared case: Dice/HD95 (WT, TC, ET) against the consensus and agreement with each of
the five BraTS 2020 algorithm outputs; optionally a learning curve over saved epoch checkpoints.

    python -m benchmarks.real_case --ckpt models/model.pt [--ckpt runs/curve/checkpoint_epoch=2.pt ...] \\
        [--overlay student.json] --case_dir ../shared/data/TCGA-DU-7294 --output results/real_case.json \\
        [--window_size '[64,64,64]'] \\
        [--plot docs/images/learning_curve.png --train_log data/logs/train.log]

``--plot`` draws the real-case Dice of the ``checkpoint_epoch=N.pt`` checkpoints against hours of training, read
from the ``Epoch[N] Complete. Time taken`` lines of the training log (``--train_log``), with the validation Dice
on held-out synthetic cases that the log holds.

The case folder holds ``<id>_{t1,t1ce,t2,flair}.nii.gz``, the reference ``<id>_seg_consensus.nii.gz`` (or
``<id>_seg.nii.gz``) and ``algorithms/*.nii.gz``. Inference runs through ``configs/inference.json`` as a user
runs it (``scripts.example.run_inference``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from scripts.conventions import MODALITIES, REGIONS
from scripts.evaluation import evaluate_case
from scripts.example import run_inference
from scripts.figures import png_bytes
from scripts.io import atomic_path, write_json


def _reference(case_dir: Path) -> Path:
    for name in (f"{case_dir.name}_seg_consensus.nii.gz", f"{case_dir.name}_seg.nii.gz"):
        if (case_dir / name).is_file():
            return case_dir / name
    raise SystemExit(f"{case_dir.name}: {case_dir}: no reference <id>_seg_consensus.nii.gz or <id>_seg.nii.gz")


def _scores(pred: Path, ref: Path) -> dict:
    metrics = evaluate_case(pred, ref)
    return {f"{m}_{r}": round(float(metrics[f"{m}_{r}"]), 4) for m in ("dice", "hd95") for r in REGIONS}


def first_prediction() -> Path:
    """Where :func:`score_checkpoint` called without ``first`` leaves its label map (one file per process), for the
    calls that compare other windows with it."""
    return Path(tempfile.gettempdir()) / f"real_case_first_{os.getpid()}.nii.gz"


def score_checkpoint(
    ckpt: Path, case_dir: Path, window: str | None = None, first: Path | None = None, overlays=()
) -> dict:
    """Inference with ``ckpt`` on the case (``window``: a ``window_size`` override; ``overlays``: config files
    merged over ``inference.json``), then its scores against the consensus, each algorithm and (``first``) another
    prediction."""
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images" / case_dir.name  # the four modalities only: algorithms/ holds no case
        images.mkdir(parents=True)
        for m in MODALITIES:
            (images / f"{case_dir.name}_{m}.nii.gz").symlink_to((case_dir / f"{case_dir.name}_{m}.nii.gz").resolve())
        start = time.perf_counter()
        run_inference(images, Path(tmp) / "pred", ckpt, ["--window_size", window] if window else [], overlays)
        seconds = time.perf_counter() - start
        pred = Path(tmp) / "pred" / f"{case_dir.name}.nii.gz"
        row = {"ckpt": str(ckpt), "window_size": window or "config default", "inference_s": round(seconds, 1)}
        row["consensus"] = _scores(pred, _reference(case_dir))
        for algo in sorted((case_dir / "algorithms").glob("*.nii.gz")):
            row[algo.name.split(".")[0]] = _scores(pred, algo)
        if first is not None:
            row["agreement_with_first"] = _scores(pred, first)
        else:
            shutil.copy(pred, first_prediction())
    return row


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, action="append", required=True)
    parser.add_argument("--case_dir", type=Path, default=Path("../shared/data/TCGA-DU-7294"))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--window_size",
        action="append",
        default=[],
        help="also run the last --ckpt with this window, e.g. "
        "'[64,64,64]', and compare its label map with the default window's",
    )
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        help="config file under configs/ merged over inference.json "
        "for every --ckpt, e.g. student.json (the student's weights)",
    )
    parser.add_argument("--plot", type=Path, help="learning-curve PNG of the checkpoint_epoch=N.pt checkpoints")
    parser.add_argument("--train_log", type=Path, help="the training log giving the hours of training per epoch")
    args = parser.parse_args(argv)
    rows, first = [], first_prediction()
    runs = [(ckpt, None) for ckpt in args.ckpt] + [(args.ckpt[-1], w) for w in args.window_size]
    for ckpt, window in runs:
        rows.append(score_checkpoint(ckpt, args.case_dir, window, first if window else None, args.overlay))
        c = rows[-1]["consensus"]
        print(
            f"{ckpt}: WT {c['dice_WT']:.3f} TC {c['dice_TC']:.3f} ET {c['dice_ET']:.3f} ({rows[-1]['inference_s']} s)"
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json(rows, args.output)
    if args.plot:
        plot_learning_curve(rows, args.train_log, args.plot)
    return rows


def training_hours(log: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Hours of training at the end of each epoch, and the validation mean Dice per validated epoch, from a
    training log (``Epoch[N] Complete. Time taken: HH:MM:SS`` and ``Epoch[N] Metrics -- val_mean_dice: D``)."""
    hours, val, total = {}, {}, 0.0
    for line in log.read_text(errors="replace").splitlines():
        done = re.search(r"Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)", line)
        if done and "SupervisedTrainer" in line:
            h, m, sec = (float(x) for x in done.groups()[1:])
            total += h + m / 60 + sec / 3600
            hours[int(done.group(1))] = total
        dice = re.search(r"Epoch\[(\d+)\] Metrics -- .*val_mean_dice: ([\d.]+)", line)
        if dice:
            val[int(dice.group(1))] = float(dice.group(2))
    return hours, val


def plot_learning_curve(rows: list[dict], log: Path | None, png: Path) -> None:
    """Real-case WT/TC Dice of the epoch checkpoints in ``rows`` against hours of training (``log``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if log is None:
        raise SystemExit("--plot needs --train_log (the training log gives the hours of training per epoch)")
    hours, val = training_hours(log)
    points = []
    for row in rows:
        epoch = re.search(r"epoch=(\d+)", row["ckpt"])
        if epoch and int(epoch.group(1)) in hours and row["window_size"] == "config default":
            points.append((hours[int(epoch.group(1))], row["consensus"]))
    if not points:
        raise SystemExit(f"no checkpoint_epoch=N.pt of --ckpt has an 'Epoch[N] Complete' line in {log}")
    fig = Figure(figsize=(6, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for region, style in (("WT", "o-"), ("TC", "s-")):
        ax.plot([h for h, _ in points], [c[f"dice_{region}"] for _, c in points], style, label=f"real case {region}")
    if val:
        ax.plot(
            [hours[e] for e in sorted(val) if e in hours],
            [val[e] for e in sorted(val) if e in hours],
            "^--",
            label="synthetic validation (mean of TC/WT/ET)",
        )
    write_dice_plot(fig, ax, "hours of training (2 CPU cores)", "Dice", png)


def write_dice_plot(fig, ax, xlabel: str, ylabel: str, png: Path, grid_axis: str = "both") -> None:
    """Label the axes (Dice from 0 to 1), add the grid (``grid_axis``) and legend and write ``fig`` to ``png``
    atomically."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(axis=grid_axis, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        Path(tmp).write_bytes(png_bytes(fig))


if __name__ == "__main__":
    main()
