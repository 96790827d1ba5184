"""Generator ablations: what each part of the synthetic generator contributes to the real-case result.

Each arm is a training run of ``configs/synthetic_train.json`` on data generated with one part of the generator
switched off (``python -m scripts.synthetic.generator ... --no_deform | --fixed_contrast | --no_distractors``),
stopped after the same number of epochs as the full generator's run it is compared with. Every arm is scored the
same way, on the same data, at the same epochs (several epoch checkpoints, because single checkpoints of these
short runs swing):

- the real case (``--case_dir``): Dice of WT and TC against the consensus (inference as a user runs it);
- the held-out synthetic cases of the **full** generator (``--synthetic_dir``, fold 0 of ``--num_folds``, the
  cases the full run never trained on), through the ``evaluating`` workflow: mean Dice of TC, WT and ET.

    python -m benchmarks.ablations --arm full=runs/curve --arm fixed_contrast=runs/ablation_fixed_contrast \\
        --epochs 13 14 15 16 --output benchmarks/results/ablations.json --plot docs/images/ablations.png

Results already in ``--output`` (same checkpoint file, same size and time) are reused, so arms can be added by
later runs. Prints a markdown table of the means over the epochs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.cli import name_equals_path
from benchmarks.clinical_figures import bundle
from benchmarks.real_case import score_checkpoint, write_dice_plot
from scripts.conventions import REGIONS
from scripts.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def synthetic_scores(ckpt: Path, synthetic_dir: Path, num_folds: int, overlays=()) -> dict:
    """Dice per region (and mean) of ``ckpt`` on fold 0 of ``synthetic_dir``, through the ``evaluating`` workflow
    (``overlays``: more config files, e.g. the network's norm)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--dataset_dir", str(synthetic_dir), "--num_folds", str(num_folds), "--fold", "0",
                "--ckpt_path", str(ckpt), "--output_dir", tmp]  # fmt: skip
        try:
            bundle("evaluating", "evaluate.json", *args, overlays=overlays)
        except SystemExit as e:
            raise SystemExit(f"{ckpt}: {e}") from None
        result = json.loads((Path(tmp) / "metrics_summary.json").read_text())
    dice = {r: round(result["metrics"]["dice"][r]["mean"], 4) for r in REGIONS}
    return {"n_cases": result["n_cases"], **{f"dice_{r}": d for r, d in dice.items()}, "dice_mean": _mean(dice)}


def _mean(values: dict) -> float:
    return round(sum(values.values()) / len(values), 4)


def checkpoint_key(ckpt: Path) -> str:
    stat = ckpt.stat()
    return f"{ckpt}:{stat.st_size}:{int(stat.st_mtime)}"


def score_arms(arms: dict[str, Path], epochs: list[int], args, done: dict) -> dict:
    """{arm: {epoch: {"real": ..., "synthetic": ...}}}, reusing ``done`` ({checkpoint key: scores})."""
    results = {}
    for arm, folder in arms.items():
        results[arm] = {}
        for epoch in epochs:
            ckpt = folder / f"checkpoint_epoch={epoch}.pt"
            if not ckpt.is_file():
                raise SystemExit(f"{arm}: {ckpt}: no such checkpoint (the arm's run must reach epoch {epoch})")
            key = checkpoint_key(ckpt)
            if key not in done:
                real = score_checkpoint(ckpt, args.case_dir)["consensus"]
                done[key] = {"real": real, "synthetic": synthetic_scores(ckpt, args.synthetic_dir, args.num_folds)}
                write_json({"scores": done}, args.output)
            results[arm][epoch] = done[key]
            s = done[key]
            print(f"{arm} epoch {epoch}: real WT {s['real']['dice_WT']:.3f} TC {s['real']['dice_TC']:.3f}, "
                  f"synthetic mean {s['synthetic']['dice_mean']:.3f}")  # fmt: skip
    return results


def table(results: dict) -> str:
    """Markdown: per arm, the mean (min-max) over the epochs of real WT, real TC and synthetic mean Dice."""

    def cell(values: list[float]) -> str:
        return f"{sum(values) / len(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    lines = ["| arm | epochs | real WT Dice | real TC Dice | synthetic held-out mean Dice |", "|---|---|---|---|---|"]
    for arm, by_epoch in results.items():
        rows = list(by_epoch.values())
        lines.append(
            f"| {arm} | {', '.join(str(e) for e in by_epoch)} | {cell([r['real']['dice_WT'] for r in rows])} | "
            f"{cell([r['real']['dice_TC'] for r in rows])} | {cell([r['synthetic']['dice_mean'] for r in rows])} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, png: Path) -> None:
    """One group per arm: the per-epoch scores as dots and their mean as a bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.8 + 1.6 * len(results), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    series = (
        ("real WT", "real", "dice_WT"),
        ("real TC", "real", "dice_TC"),
        ("synthetic mean", "synthetic", "dice_mean"),
    )
    width = 0.8 / len(series)
    for j, (label, group, metric) in enumerate(series):
        for i, by_epoch in enumerate(results.values()):
            values = [r[group][metric] for r in by_epoch.values()]
            x = i + (j - 1) * width
            ax.bar(x, sum(values) / len(values), width, color=f"C{j}", alpha=0.6, label=label if i == 0 else None)
            ax.plot([x] * len(values), values, "k.", markersize=4)
    ax.set_xticks(range(len(results)), list(results))
    epochs = ", ".join(str(e) for e in next(iter(results.values())))
    ax.set_title(f"bars: mean over epochs {epochs}; dots: each epoch", fontsize=9)
    write_dice_plot(fig, ax, "", "Dice", png, grid_axis="y")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arm",
        action="append",
        required=True,
        type=name_equals_path,
        help="NAME=RUN_FOLDER with checkpoint_epoch=N.pt",
    )
    parser.add_argument("--epochs", type=int, nargs="+", required=True)
    parser.add_argument("--case_dir", type=Path, default=ROOT.parent / "shared" / "data" / "TCGA-DU-7294")
    parser.add_argument("--synthetic_dir", type=Path, default=ROOT / "data" / "synthetic_mni")
    parser.add_argument("--num_folds", type=int, default=48, help="as in configs/synthetic_train.json")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    done = json.loads(args.output.read_text())["scores"] if args.output.is_file() else {}
    results = score_arms(dict(args.arm), args.epochs, args, done)
    print(table(results))
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
