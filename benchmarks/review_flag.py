"""Calibrate the report's review flag against measured Dice.

    python -m benchmarks.review_flag --synthetic data/synthetic_mni --num_folds 48 \\
        --real ../shared/data/TCGA-DU-7294 --real ../shared/data/UPENN-GBM-00003_11 \\
        --output benchmarks/results/review_flag.json --calibration models/review_flag.json

Every case (the held-out synthetic cases: fold 0 of ``--num_folds``, seed 0, as ``benchmarks/quality.py`` picks
them; and the ``--real`` case folders) goes through ``configs/inference.json``'s preprocessing, then through the
report's flip TTA (``scripts.uncertainty.tta_uncertainty``, ``--tta_axes`` as the report's ``report_tta_axes``,
one window over the brain, the inference backend of the CPU). Each case gets every candidate score of ``scripts.uncertainty.REVIEW_SCORES`` and
the Dice of the TTA prediction against its reference (preprocessed 1 mm grid). Rows go to ``--output`` as they
are measured (a rerun skips the cases already there).

A case is *bad* when its WT Dice is below ``--dice_cutoff``. On the synthetic cases only, each score's threshold
is the midpoint of the cut that maximises sensitivity + specificity; the score with the best sum (then the
widest gap between bad and good cases) is chosen and written to ``--calibration`` with its sensitivity,
specificity, case counts and the weights' md5 (the report reads it). The real cases are scored leave-one-out:
the threshold is re-chosen on the synthetic cases plus the other real case and applied to the held-out one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose

from benchmarks.quality import CONFIG, load_cases
from scripts.casework import load_network, parse_configs
from scripts.conventions import REGIONS
from scripts.inferers import FlipTTAInferer, default_backend, inference_network
from scripts.io import file_md5, write_json
from scripts.transforms import nested
from scripts.uncertainty import REVIEW_SCORES, review_scores, tta_uncertainty


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty, the BraTS convention)."""
    total = int(pred.sum()) + int(ref.sum())
    return 2.0 * int((pred & ref).sum()) / total if total else 1.0


def measure_case(case: dict, transform, network, inferer) -> dict:
    """The candidate scores, the Dice per region and the seconds of one case."""
    start = time.perf_counter()
    data = transform(case)
    image, ref = torch.as_tensor(data["image"]).float(), torch.as_tensor(data["label"]).numpy() > 0.5
    with torch.no_grad():
        result = tta_uncertainty(image[None], network, inferer)
    pred = nested(result.logits[0] > 0).numpy()
    row = {"case": case["case_id"], "kind": case["kind"], "passes": result.passes}
    for i, region in enumerate(REGIONS):
        row[f"dice_{region}"] = dice(pred[i], ref[i])
    row |= review_scores(result)
    return row | {"seconds": round(time.perf_counter() - start, 1)}


def best_cut(scores: list[float], bad: list[bool]) -> tuple[float, float, float, float]:
    """``(threshold, sensitivity, specificity, gap)``: the midpoint cut (flag when score > threshold) with the
    largest sensitivity + specificity; ``gap`` is the distance between the two scores around it (wider first)."""
    values = sorted(set(scores))
    cuts = [values[0] - 1e-6] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1]]
    n_bad, n_good = sum(bad), len(bad) - sum(bad)
    best = None
    for cut in cuts:
        sens = sum(s > cut and b for s, b in zip(scores, bad)) / n_bad if n_bad else float("nan")
        spec = sum(s <= cut and not b for s, b in zip(scores, bad)) / n_good if n_good else float("nan")
        above, below = [s for s in scores if s > cut], [s for s in scores if s <= cut]
        gap = (min(above) if above else cut) - (max(below) if below else cut)
        key = (np.nan_to_num(sens) + np.nan_to_num(spec), gap)
        if best is None or key > best[0]:
            best = (key, (float(cut), sens, spec, float(gap)))
    return best[1]


def calibrate(rows: list[dict], cutoff: float, score: str | None = None) -> dict:
    """The chosen score (``score``, or the best of :data:`REVIEW_SCORES` on ``rows``) and its cut."""
    bad = [r["dice_WT"] < cutoff for r in rows]
    candidates = [score] if score else list(REVIEW_SCORES)
    results = {}
    for name in candidates:
        values = [r[name] for r in rows]
        span = (max(values) - min(values)) or 1.0
        cut, sens, spec, gap = best_cut(values, bad)
        results[name] = {"threshold": cut, "sensitivity": sens, "specificity": spec, "gap": gap / span}
    name = max(results, key=lambda k: (np.nan_to_num(results[k]["sensitivity"] + results[k]["specificity"]),
                                       results[k]["gap"]))  # fmt: skip
    return {"score": name, **results[name], "cases": len(rows), "bad": sum(bad), "dice_cutoff": cutoff,
            "all_scores": results}  # fmt: skip


def leave_one_out(rows: list[dict], cutoff: float, score: str) -> list[dict]:
    """Each real case judged by the threshold chosen on every other case (synthetic and the other real ones)."""
    out = []
    for held in (r for r in rows if r["kind"] == "real"):
        cut = calibrate([r for r in rows if r is not held], cutoff, score)["threshold"]
        flagged, bad = held[score] > cut, held["dice_WT"] < cutoff
        out.append({"case": held["case"], "score": held[score], "threshold": cut, "dice_WT": held["dice_WT"],
                    "flagged": bool(flagged), "bad": bool(bad), "correct": bool(flagged == bad)})  # fmt: skip
    return out


def markdown(rows: list[dict], cal: dict, loo: list[dict]) -> str:
    keys = list(REVIEW_SCORES)
    lines = ["| case | kind | WT Dice | " + " | ".join(keys) + " |", "|---|---|---:|" + "---:|" * len(keys)]
    lines += [f"| {r['case']} | {r['kind']} | {r['dice_WT']:.3f} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |"
              for r in rows]  # fmt: skip
    lines += ["", "| score | threshold | sensitivity | specificity |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['threshold']:.3f} | {v['sensitivity']:.2f} | {v['specificity']:.2f} |"
              for k, v in cal["all_scores"].items()]  # fmt: skip
    lines += [
        "",
        "| real case (leave-one-out) | score | threshold | WT Dice | flagged | right |",
        "|---|---:|---:|---:|---|---|",
    ]
    lines += [f"| {r['case']} | {r['score']:.3f} | {r['threshold']:.3f} | {r['dice_WT']:.3f} | {r['flagged']} | "
              f"{r['correct']} |" for r in loo]  # fmt: skip
    return "\n".join(lines) + "\n"


def measure(args) -> list[dict]:
    rows = json.loads(args.output.read_text()) if args.output.is_file() else []
    for extra in args.merge:  # rows measured by another run (e.g. a parallel one with --only)
        rows += [r for r in json.loads(extra.read_text()) if r["case"] not in {q["case"] for q in rows}]
    done = {r["case"] for r in rows}
    if args.no_measure:
        return rows
    parser = parse_configs(CONFIG)
    transform = Compose(parser.get_parsed_content("preprocessing_transforms"))
    inferer = FlipTTAInferer(parser.get_parsed_content("sw_inferer"), args.tta_axes)
    network = inference_network(load_network(CONFIG, str(args.ckpt)), default_backend("cpu"))
    cases = load_cases(args.real, args.synthetic, args.num_folds)
    if args.only:
        done |= {c["case_id"] for c in cases} - set(args.only)
    for case in sorted(cases, key=lambda c: c["kind"] != "synthetic"):  # the calibration set first
        if case["case_id"] not in done:
            rows.append(measure_case(case, transform, network, inferer))
            write_json(rows, args.output)
            r = rows[-1]
            print(f"{r['case']}: WT Dice {r['dice_WT']:.3f}, " + ", ".join(f"{k} {r[k]:.3f}" for k in REVIEW_SCORES)
                  + f" ({r['seconds']} s)", flush=True)  # fmt: skip
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=Path, required=True, help="the generated data folder of the training run")
    parser.add_argument("--num_folds", type=int, default=48)
    parser.add_argument("--real", type=Path, action="append", default=[], help="a real case folder with a reference")
    parser.add_argument("--ckpt", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--tta_axes", type=int, nargs="*", default=[0], help="flipped axes (the report's default)")
    parser.add_argument("--dice_cutoff", type=float, default=0.7, help="a case is bad below this WT Dice")
    parser.add_argument("--output", type=Path, required=True, help="JSON of the per-case rows")
    parser.add_argument("--calibration", type=Path, help="write the chosen score and threshold here")
    parser.add_argument("--only", nargs="*", default=[], help="measure only these case ids")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="row files of other runs to add")
    parser.add_argument("--no_measure", action="store_true", help="calibrate on the rows already measured")
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rows = measure(args)
    if args.only:
        return {}
    synthetic = [r for r in rows if r["kind"] == "synthetic"]
    cal = calibrate(synthetic, args.dice_cutoff)
    loo = leave_one_out(rows, args.dice_cutoff, cal["score"])
    print(markdown(rows, cal, loo))
    if args.calibration:
        keep = {k: v for k, v in cal.items() if k != "all_scores"}
        keep |= {
            "weights_md5": file_md5(args.ckpt),
            "tta_axes": list(args.tta_axes),
            "real_leave_one_out": loo,
            "measured_by": "benchmarks/review_flag.py",
        }
        write_json(keep, args.calibration)
    return cal


if __name__ == "__main__":
    main()
