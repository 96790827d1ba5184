"""Quality of weights per case, per set of available sequences and per post-processing, in one pass.

    python -m benchmarks.quality --ckpt NAME=runs/x/model.pt [--ckpt ...] [--overlay NAME=student.json] \\
        --real ../shared/data/TCGA-DU-7294 --real ../shared/data/UPENN-GBM-00003_11 \\
        --synthetic data/synthetic_mni --num_folds 48 --subsets all --output benchmarks/results/quality.json

Each case goes through ``configs/inference.json``'s preprocessing once (its reference too). For every set of
sequences (``--subsets``: ``all`` for the 15 non-empty subsets, ``main`` for four sequences, FLAIR + T1ce and
FLAIR alone, or names such as ``flair+t1ce``) the missing channels are zero, as inference with
``--allow_missing_modalities true`` gives them to the network. The network runs once (one window over the brain,
as inference.json does) and every ``--postprocessing`` variant (``NAME=min_fraction,min_piece_ml,et_min_ml`` of
:func:`scripts.transforms.keep_main_tumour`; ``none`` keeps every piece) is scored on its output: Dice, HD95,
lesion-wise PQ, the number of pieces and the volumes per region, on the preprocessed 1 mm grid.

The synthetic cases are the validation fold of ``--synthetic`` (fold 0 of ``--num_folds``, seed 0), the cases the
training run held out. Results go to ``--output`` (JSON, one row per checkpoint, case, subset and variant) and a
summary table is printed; ``--markdown`` writes it too. ``--test_time plain,tta,adabn`` scores each test-time
option (one pass; the mean of the 8 flips; one pass after re-estimating the BatchNorm statistics on the case).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose

from benchmarks.cli import name_equals_path
from scripts.casework import load_network, parse_configs
from scripts.conventions import MODALITIES, MODALITY_NAMES, REGIONS
from scripts.data.layouts import find_inference_cases, prepare_datalist
from scripts.evaluation import region_metrics
from scripts.inferers import FlipTTAInferer
from scripts.io import atomic_path, write_json
from scripts.transforms import ImputeMissingSequencesd, brain_mask, keep_main_tumour, nested

CONFIG = "configs/inference.json"
MAIN_SUBSETS = ("t1+t1ce+t2+flair", "t1ce+flair", "flair")


def all_subsets() -> list[str]:
    """The 15 non-empty subsets of the four sequences, largest first."""
    subsets = []
    for n in range(len(MODALITIES), 0, -1):
        subsets += ["+".join(c) for c in itertools.combinations(MODALITIES, n)]
    return subsets


def subset_channels(subset: str) -> list[int]:
    """``'t1ce+flair'`` -> the channel indices of those sequences."""
    names = [s.strip().lower() for s in subset.split("+") if s.strip()]
    unknown = [n for n in names if n not in MODALITIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"subset {subset!r}: use '+'-joined names of {MODALITIES}")
    return [MODALITIES.index(n) for n in names]


def subset_label(subset: str) -> str:
    channels = subset_channels(subset)
    return "all four" if len(channels) == 4 else " + ".join(MODALITY_NAMES[c] for c in channels)


def variant(text: str) -> tuple[str, tuple[float, float, float] | None]:
    """``NAME=min_fraction,min_piece_ml,et_min_ml`` or ``none``."""
    if text == "none":
        return text, None
    name, _, values = text.partition("=")
    try:
        fraction, piece, et = (float(v) for v in values.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME=min_fraction,min_piece_ml,et_min_ml or none") from e
    return name, (fraction, piece, et)


def load_cases(real: list[Path], synthetic: Path | None, num_folds: int) -> list[dict]:
    """Datalist items of the real case folders (their four modalities and ``<id>_seg*.nii.gz``) and of the
    synthetic validation fold."""
    items = []
    for folder in real:
        case = find_inference_cases(folder, "testing")[0]
        refs = sorted(folder.glob(f"{folder.name}_seg*.nii.gz"))
        if not refs:
            raise SystemExit(f"{folder.name}: no reference {folder.name}_seg*.nii.gz in {folder}")
        items.append({"case_id": folder.name, "image": case["image"], "label": str(refs[0]), "kind": "real"})
    if synthetic is not None:
        for case in prepare_datalist(synthetic, 0, num_folds, 0)["validation"]:
            items.append(dict(case, kind="synthetic"))
    return items


def score(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Per region: Dice, HD95, lesion-wise PQ, pieces, volumes (mL) of boolean (3, *S) masks on a 1 mm grid."""
    row = {}
    for i, r in enumerate(REGIONS):
        m = region_metrics(pred[i], ref[i], (1.0, 1.0, 1.0))
        row |= {f"dice_{r}": m["dice"], f"hd95_{r}": m["hd95"], f"pq_{r}": m["pq_dsc"]}
        row |= {f"pieces_{r}": m["tp"] + m["fp"], f"pred_ml_{r}": pred[i].sum() / 1000.0}
        row[f"ref_ml_{r}"] = ref[i].sum() / 1000.0
    return {k: round(float(v), 4) for k, v in row.items()}


TEST_TIME = ("plain", "tta", "adabn")


def adapted_to(network: torch.nn.Module, inferer, x: torch.Tensor) -> torch.nn.Module:
    """A copy of ``network`` whose BatchNorm statistics are re-estimated on ``x`` (1, C, *S) alone (AdaBN: the
    running statistics are reset and replaced by the case's own, seen through ``inferer``'s windows)."""
    adapted = copy.deepcopy(network)
    norms = [m for m in adapted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise SystemExit("--test_time adabn: the network has no BatchNorm layers")
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the windows
    adapted.train()
    with torch.no_grad():
        inferer(x, adapted)
    return adapted.eval()


def predict(
    network, inferer, image: torch.Tensor, channels: list[int], test_time: str = "plain", impute=None
) -> np.ndarray:
    """Nested boolean regions (3, *S) of ``image`` (4, *S) with only ``channels`` given; ``test_time`` is one of
    :data:`TEST_TIME`: one pass, the mean of the 8 flips (:class:`scripts.inferers.FlipTTAInferer`), or one pass
    after re-estimating the BatchNorm statistics on the case (:func:`adapted_to`). The other channels are zero,
    or filled in by ``impute`` (:class:`scripts.transforms.ImputeMissingSequencesd`) when given."""
    x = torch.zeros_like(image)
    x[channels] = image[channels]
    if impute is not None and len(channels) < len(image):
        x = torch.as_tensor(impute({"image": x})["image"]).float()
    if test_time == "adabn":
        network = adapted_to(network, inferer, x[None])
    elif test_time == "tta":
        inferer = FlipTTAInferer(inferer)
    with torch.no_grad():
        prob = torch.sigmoid(inferer(x[None], network))[0]
    prob = prob * brain_mask(x)
    return nested(prob > 0.5).numpy()


def run(args) -> list[dict]:
    parser = parse_configs(CONFIG)
    transform = Compose(parser.get_parsed_content("preprocessing_transforms"))
    inferer = parser.get_parsed_content("sw_inferer")
    cases = load_cases(args.real, args.synthetic, args.num_folds)
    overlays = {name: [f"configs/{file}"] for name, file in args.overlay}
    unknown = sorted(set(overlays) - {name for name, _ in args.ckpt})
    if unknown:
        raise SystemExit(f"error: --overlay names no --ckpt: {', '.join(unknown)}")
    networks = {name: load_network([CONFIG, *overlays.get(name, [])], str(path)) for name, path in args.ckpt}
    fills = {
        "imputed": ImputeMissingSequencesd("image", str(args.imputer)),
        "t1ce_for_t1": ImputeMissingSequencesd("image", str(args.imputer), stand_ins={"t1": "t1ce"}),
        "zero": None,
    }
    rows = []
    for case in cases:
        data = transform(case)
        image, ref = torch.as_tensor(data["image"]).float(), torch.as_tensor(data["label"]).numpy() > 0.5
        subsets = args.subsets if case["kind"] == "synthetic" else args.real_subsets
        for (name, network), subset, mode, fill in itertools.product(
            networks.items(), subsets, args.test_time, args.missing
        ):
            channels = subset_channels(subset)
            if len(channels) == len(MODALITIES) and fill != args.missing[0]:
                continue  # nothing is missing: one row
            start = time.perf_counter()
            pred = predict(network, inferer, image, channels, mode, fills[fill])
            seconds = time.perf_counter() - start
            for post_name, params in args.postprocessing:
                out = pred if params is None else keep_main_tumour(pred, 0.001, *params)
                row = {"ckpt": name, "case": case["case_id"], "kind": case["kind"], "subset": subset}
                row |= {"missing": fill if len(channels) < len(MODALITIES) else "-", "test_time": mode}
                row |= {"postprocessing": post_name, "network_s": round(seconds, 2)}
                rows.append(row | score(out, ref))
            line = summary_line(rows[-len(args.postprocessing) :])
            print(f"{name} {case['case_id']} {subset} {fill} {mode} ({seconds:.1f} s): {line}", flush=True)
        write_json(rows, args.output)
    return rows


def summary_line(rows: list[dict]) -> str:
    return "; ".join(
        f"{r['postprocessing']} WT {r['dice_WT']:.3f} TC {r['dice_TC']:.3f} ET {r['dice_ET']:.3f} "
        f"HD95 WT {r['hd95_WT']:.1f} pieces {r['pieces_WT']:.0f}/{r['pieces_TC']:.0f}/{r['pieces_ET']:.0f}"
        for r in rows
    )


def mean_of(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if not math.isnan(r[key])]
    return float(np.mean(values)) if values else math.nan


def table(rows: list[dict], kind: str, keys=("dice_WT", "dice_TC", "dice_ET", "hd95_WT", "pq_WT", "pieces_WT")) -> str:
    """Markdown: mean over the ``kind`` cases per checkpoint, subset, missing-sequence fill, test-time option and
    post-processing."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["kind"] == kind:
            key = (r["ckpt"], r["subset"], r.get("missing", "-"), r.get("test_time", "plain"), r["postprocessing"])
            groups.setdefault(key, []).append(r)
    head = "| weights | sequences | missing | test time | post-processing | cases | " + " | ".join(keys)
    lines = [head + " | network s |", "|" + "---|" * (7 + len(keys))]
    for (ckpt, subset, fill, mode, post), group in groups.items():
        values = " | ".join(
            f"{mean_of(group, k):.3f}" if "pieces" not in k else f"{mean_of(group, k):.1f}" for k in keys
        )
        seconds = mean_of(group, "network_s")
        lines.append(
            f"| {ckpt} | {subset_label(subset)} | {fill} | {mode} | {post} | {len(group)} | {values} | {seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=name_equals_path, action="append", required=True, help="NAME=weights.pt")
    parser.add_argument(
        "--overlay",
        type=name_equals_path,
        action="append",
        default=[],
        help="NAME=student.json: a config under configs/ merged over inference.json for --ckpt NAME (its network)",
    )
    parser.add_argument("--real", type=Path, action="append", default=[], help="a real case folder with a reference")
    parser.add_argument("--synthetic", type=Path, help="the generated data folder of the training run")
    parser.add_argument("--num_folds", type=int, default=48)
    parser.add_argument("--subsets", default="main", help="synthetic cases: all, main, or a comma-separated list")
    parser.add_argument("--real_subsets", default="main", help="real cases: all, main, or a comma-separated list")
    parser.add_argument("--postprocessing", type=variant, action="append", default=[])
    parser.add_argument("--test_time", default="plain", help=f"comma-separated, of {TEST_TIME}")
    parser.add_argument(
        "--missing",
        default="imputed",
        help="missing sequences, comma-separated: imputed, t1ce_for_t1 (imputed, T1ce "
        "standing in for a missing T1), zero",
    )
    parser.add_argument("--imputer", type=Path, default=Path("models/imputer.pt"), help="the imputer's weights")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, help="also write the summary tables here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    for key in ("subsets", "real_subsets"):
        value = getattr(args, key)
        subsets = all_subsets() if value == "all" else list(MAIN_SUBSETS) if value == "main" else value.split(",")
        for s in subsets:
            subset_channels(s)
        setattr(args, key, subsets)
    args.postprocessing = args.postprocessing or [variant("none")]
    args.test_time = args.test_time.split(",")
    args.missing = args.missing.split(",")
    if not set(args.missing) <= {"imputed", "t1ce_for_t1", "zero"}:
        parser.error(f"--missing {','.join(args.missing)}: use a comma-separated list of imputed, t1ce_for_t1, zero")
    if not set(args.test_time) <= set(TEST_TIME):
        parser.error(f"--test_time {','.join(args.test_time)}: use a comma-separated list of {TEST_TIME}")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    text = "".join(f"\n{kind} cases\n\n{table(rows, kind)}" for kind in ("real", "synthetic"))
    print(text)
    if args.markdown:
        with atomic_path(args.markdown) as tmp:
            Path(tmp).write_text(text)
    return rows


if __name__ == "__main__":
    main()
