"""Click curve of the interactive (DeepEdit-style) model: validation Dice with 0 clicks (automatic mode) and after
1, 2, ... simulated corrective clicks.

Each validation case of the training configs' fold is preprocessed as in ``configs/deepedit_train.json`` (no
clicks), segmented with the sliding-window inferer, and then corrected click by click: every click goes to the
largest connected error region (reference class ``c`` where the prediction is not ``c``; background for
over-segmentation) at its most interior voxel (``scripts.interactive.largest_error_click``), the clicks
accumulate, and the case is segmented again with all clicks so far. Dice is computed in the preprocessed grid
(1 mm, cropped to the brain) per class (necrotic core, oedema, enhancing tumour) and per BraTS region (TC, WT,
ET); an empty reference scores 1 for an empty prediction, 0 otherwise.

Run by hand (not part of the tests), e.g. after a training under ``/tmp/de``::

    python -m benchmarks.bench_interactive --bundle_root /tmp/de --dataset_dir data/synthetic \
        --channels "[8,16,32,64]" --max_clicks 5 --output_dir benchmarks/results/interactive

Writes ``click_curve.json`` (per case and mean), ``click_curve.md`` (the table) and ``click_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.quality import load_cases
from scripts.conventions import CLASS_NAMES, REGIONS
from scripts.metrics import dice

ROOT = Path(__file__).resolve().parents[1]


CLASSES = CLASS_NAMES[1:]


def scores(pred: np.ndarray, ref: np.ndarray, label_names: dict) -> dict:
    """Dice per class and per region of two class-index maps (H, W, D)."""
    out = {name: dice(pred == label_names[name], ref == label_names[name]) for name in CLASSES}
    nc, ed, et = (label_names[n] for n in CLASSES)
    regions = {"TC": (nc, et), "WT": (nc, ed, et), "ET": (et,)}
    for region, members in regions.items():
        out[region] = dice(np.isin(pred, members), np.isin(ref, members))
    out["mean_regions"] = float(np.mean([out[r] for r in REGIONS]))
    out["mean_classes"] = float(np.mean([out[c] for c in CLASSES]))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", default=str(ROOT), help="the model is <bundle_root>/models/deepedit/model.pt")
    parser.add_argument("--ckpt_path", default=None, help="other weights (default: the bundle_root's)")
    parser.add_argument("--dataset_dir", default=str(ROOT / "data" / "synthetic"))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--channels", default="[16,32,64,128]", help="network_def#channels of the trained model")
    parser.add_argument("--roi_size", default="[48,48,48]")
    parser.add_argument("--max_clicks", type=int, default=5, help="clicks (or rounds, with --per_label)")
    parser.add_argument(
        "--per_label",
        action="store_true",
        help="each round clicks once for every label (background included) the prediction gets wrong: the curve "
        "is then Dice against clicks per label",
    )
    parser.add_argument(
        "--real",
        type=Path,
        action="append",
        default=[],
        help="a real case folder with its reference <id>_seg*.nii.gz (repeatable): scored instead of the fold",
    )
    parser.add_argument("--max_cases", type=int, default=None)
    parser.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results" / "interactive"))
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = _load_model(args)
    t0 = time.time()
    per_case = [_click_curve(item, model, args.max_clicks, args.per_label) for item in model["cases"]]
    keys = (*CLASSES, *REGIONS, "mean_classes", "mean_regions")
    mean = [{k: float(np.mean([c["curve"][n][k] for c in per_case])) for k in keys} for n in range(args.max_clicks + 1)]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "checkpoint": str(model["ckpt"]),
        "dataset_dir": args.dataset_dir if not args.real else None,
        "real": [str(p) for p in args.real],
        "clicks_per_round": "one per label in error" if args.per_label else "one",
        "fold": args.fold,
        "num_cases": len(per_case),
        "seconds": round(time.time() - t0, 1),
        "mean": mean,
        "cases": per_case,
    }
    (out / "click_curve.json").write_text(json.dumps(result, indent=1))
    header = "| clicks | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1) + "\n"
    rows = "".join(f"| {n} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |\n" for n, m in enumerate(mean))
    table = header + rows
    (out / "click_curve.md").write_text(table)
    print(f"\n{len(per_case)} case(s), {time.time() - t0:.0f} s\n\n{table}")
    _plot(mean, len(per_case), args.max_clicks, out / "click_curve.png", args.per_label, bool(args.real))
    print(f"wrote {out / 'click_curve.json'}, click_curve.md, click_curve.png")


def _load_model(args) -> dict:
    """The interactive model with its weights, its preprocessing, inferer and guidance, and the validation cases
    of the training configs' fold."""
    from monai.transforms import Compose

    import scripts  # noqa: F401  (config expressions use it)
    from scripts.casework import load_weights, parse_configs
    from scripts.interactive import AddGuidanceSignald

    cfg = parse_configs(
        [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "deepedit_train.json")],
        {
            "bundle_root": args.bundle_root,
            "device": "cpu",
            "dataset_dir": args.dataset_dir,
            "fold": args.fold,
            "num_folds": args.num_folds,
            "network_def#channels": json.loads(args.channels),
            "roi_size": json.loads(args.roi_size),
            "num_workers": 0,
        },
    )
    cfg.parse()
    label_names = cfg.get_parsed_content("label_names")
    network = cfg.get_parsed_content("network_def")
    ckpt = args.ckpt_path or str(Path(args.bundle_root) / "models" / "deepedit" / "model.pt")
    load_weights(network, ckpt, "cpu")
    guidance_signal = AddGuidanceSignald(
        sigma=cfg.get_parsed_content("guidance_sigma"),
        number_intensity_ch=cfg.get_parsed_content("number_intensity_ch"),
        label_names=label_names,
    )
    return {
        "ckpt": ckpt,
        "label_names": label_names,
        "network": network,
        "inferer": cfg.get_parsed_content("sw_inferer"),
        "preprocessing": Compose(cfg.get_parsed_content("interactive_preprocessing_transforms")),
        "guidance_signal": guidance_signal,
        "cases": (load_cases(args.real, None, 1) if args.real else cfg.get_parsed_content("val_datalist"))[
            : args.max_cases
        ],
    }


def _click_curve(item: dict, model: dict, max_clicks: int, per_label: bool = False) -> dict:
    """Scores of one case with 0..``max_clicks`` simulated clicks, each at the centre of the largest error (with
    ``per_label``: 0..``max_clicks`` rounds, each clicking the largest error of every label that has one)."""
    from scripts.interactive import largest_error_click

    label_names = model["label_names"]
    d = model["preprocessing"](dict(item))
    image, ref = d["image"], np.asarray(d["label"][0]).round().astype(int)
    clicks = {name: [] for name in label_names}
    curve, placed = [], []
    for n in range(max_clicks + 1):
        x = model["guidance_signal"]({"image": image, "guidance": clicks})["image"]
        with torch.no_grad():
            pred = model["inferer"](torch.as_tensor(x)[None].float(), model["network"])[0].argmax(0).numpy()
        curve.append(scores(pred, ref, label_names))
        if n == max_clicks:
            break
        targets = list(label_names) if per_label else [None]
        new = [c for c in (largest_error_click(pred, ref, label_names, only=t) for t in targets) if c is not None]
        if not new:  # perfect: further clicks change nothing
            curve += [curve[-1]] * (max_clicks - n)
            break
        for name, point in new:
            clicks[name].append(point)
        placed.append(new)
    case_id = item.get("case_id") or Path(item["image"][0]).parent.name
    print(f"{case_id}: mean region Dice " + " -> ".join(f"{c['mean_regions']:.3f}" for c in curve), flush=True)
    return {"case_id": case_id, "curve": curve, "clicks": placed}


def _plot(mean: list[dict], num_cases: int, max_clicks: int, path: Path, per_label: bool, real: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = np.arange(max_clicks + 1)
    for k, style in zip((*REGIONS, "mean_regions"), ("-o", "-s", "-^", "--k")):
        ax.plot(xs, [m[k] for m in mean], style, label=k.replace("mean_regions", "mean (TC, WT, ET)"))
    ax.set_xlabel("simulated corrective clicks" + (" per label" if per_label else ""))
    ax.set_ylabel("validation Dice")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Interactive ResUNet, {num_cases} {'real' if real else 'validation'} cases", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
