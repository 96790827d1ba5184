"""Window-independence candidates: normalisation layers and training patches measured against the shipped
batch-norm ResUNet (issue: inference cost no longer tied to the training patch).

Each candidate is a 16-epoch run of the shipped recipe (``configs/train.json`` + ``configs/synthetic_train.json``)
with an overlay from ``benchmarks/configs/``:

- ``groupnorm.json``: GroupNorm, 8 groups;
- ``instancenorm.json`` + ``random_patch_train.json``: instance norm trained on cubes of a random edge length
  (48-112 voxels, drawn per case, as many patches as fit the shipped recipe's voxels per case).

    python -m monai.bundle run training --meta_file configs/metadata.json --config_file \\
        "['configs/train.json','configs/synthetic_train.json','benchmarks/configs/groupnorm.json']" \\
        --ckpt_dir runs/candidate_groupnorm --output_dir runs/candidate_groupnorm \\
        --train#trainer#max_epochs 16 --train#checkpoint#n_saved 16

(the random-patch run lists ``instancenorm.json`` and ``random_patch_train.json``). Every candidate is scored at
the same epochs (``--epochs``) on the real case, with one window over the brain crop and with ``--window_size``
sliding windows (agreement between the two label maps), and on the held-out synthetic cases (the ``evaluating``
workflow, whole-volume window):

    python -m benchmarks.window_candidates --arm batch=runs/curve \\
        --arm group=runs/candidate_groupnorm:benchmarks/configs/groupnorm.json \\
        --arm instance_random_patch=runs/candidate_random_patch:benchmarks/configs/instancenorm.json \\
        --epochs 15 16 --output benchmarks/results/window_candidates.json \\
        --output_md docs/benchmarks.md --plot docs/images/window_candidates.png

Results already in ``--output`` (same checkpoint file, size and time) are reused. Then each network is timed alone
(one window and sliding windows, repetitions interleaved across the candidates), and a markdown table of the means
over the epochs is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.transforms import RandCropByPosNegLabeld

from benchmarks.ablations import checkpoint_key, plot, synthetic_scores
from benchmarks.bench_student import time_case
from benchmarks.markdown import replace_markdown_sections
from benchmarks.real_case import first_prediction, score_checkpoint
from scripts.casework import load_network
from scripts.export import preprocess_case
from scripts.inferers import inference_network
from scripts.io import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]


class RandPatchSizeCropByPosNegLabeld(RandCropByPosNegLabeld):
    """:class:`~monai.transforms.RandCropByPosNegLabeld` (``pos = neg = 1``) with a cube edge drawn per call from
    ``sizes`` and as many patches as fit ``voxels`` (at least one). The input must be padded to ``max(sizes)``.

    Returns a list of ``num_samples`` dicts of ``(C, s, s, s)`` crops, ``s`` the drawn edge.
    """

    def __init__(self, keys, label_key: str, sizes: Sequence[int], voxels: int, **kwargs) -> None:
        super().__init__(keys, label_key, spatial_size=max(sizes), **kwargs)
        self.sizes = [int(s) for s in sizes]
        self.voxels = int(voxels)

    def randomize(self, label=None, fg_indices=None, bg_indices=None, image=None) -> None:
        size = self.sizes[self.R.randint(len(self.sizes))]
        self.cropper.spatial_size = (size,) * 3
        self.cropper.num_samples = max(1, round(self.voxels / size**3))
        super().randomize(label, fg_indices, bg_indices, image)


def replace_crop(transforms: list, crop) -> list:
    """``transforms`` with each :class:`~monai.transforms.RandCropByPosNegLabeld` replaced by ``crop``."""
    if not any(isinstance(t, RandCropByPosNegLabeld) for t in transforms):
        raise ValueError("no RandCropByPosNegLabeld in the training transforms to replace")
    return [crop if isinstance(t, RandCropByPosNegLabeld) else t for t in transforms]


def arm(text: str) -> tuple[str, Path, Path | None]:
    """argparse ``type`` of ``--arm NAME=RUN_FOLDER[:OVERLAY]``."""
    name, sep, rest = text.partition("=")
    folder, _, overlay = rest.partition(":")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=RUN_FOLDER[:OVERLAY]")
    return name, Path(folder), Path(overlay).resolve() if overlay else None


def score(ckpt: Path, overlay: Path | None, args) -> dict:
    """Real case (one window, then ``--window_size`` windows compared with it) and held-out synthetic scores."""
    overlays = [str(overlay)] if overlay else []
    whole = score_checkpoint(ckpt, args.case_dir, overlays=overlays)  # leaves its label map at first_prediction()
    first = first_prediction()
    windowed = score_checkpoint(ckpt, args.case_dir, args.window_size, first, overlays)
    first.unlink()
    return {
        "real": whole["consensus"],
        "real_s": whole["inference_s"],
        "windowed": windowed["consensus"],
        "windowed_s": windowed["inference_s"],
        "agreement": windowed["agreement_with_first"],
        "synthetic": synthetic_scores(ckpt, args.synthetic_dir, args.num_folds, overlays),
    }


def score_arms(arms: list, epochs: list[int], args, done: dict) -> dict:
    """{arm: {epoch: scores}}, reusing ``done`` ({checkpoint key: scores}) and saving each new score."""
    results = {}
    for name, folder, overlay in arms:
        results[name] = {}
        for epoch in epochs:
            ckpt = folder / f"checkpoint_epoch={epoch}.pt"
            if not ckpt.is_file():
                raise SystemExit(f"{name}: {ckpt}: no such checkpoint (the run must reach epoch {epoch})")
            key = f"{checkpoint_key(ckpt)}:{args.window_size}"
            if key not in done:
                done[key] = score(ckpt, overlay, args)
                write_json({"scores": done}, args.output)
            results[name][epoch] = s = done[key]
            print(f"{name} epoch {epoch}: real WT {s['real']['dice_WT']:.3f} TC {s['real']['dice_TC']:.3f} "
                  f"({s['real_s']} s; windows {s['windowed_s']} s, agreement WT {s['agreement']['dice_WT']:.4f}), "
                  f"synthetic mean {s['synthetic']['dice_mean']:.3f}")  # fmt: skip
    return results


def table(results: dict, window: str, times: dict) -> str:
    """Markdown: per arm, Dice means over the epochs (lowest-highest), the network times (``times``, from
    :func:`network_times`) and the lowest agreement between one window and ``window`` windows."""

    def mean(values: list[float]) -> str:
        return f"{sum(values) / len(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    lines = [
        f"| candidate | real WT Dice | real TC Dice | real WT Dice, {window} windows | synthetic held-out mean Dice | "
        f"network, one window (s) | network, {window} windows (s) | agreement one window vs {window} windows, WT / TC "
        "/ ET (lowest) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_epoch in results.items():
        rows = list(by_epoch.values())
        agree = " / ".join(f"{min(r['agreement'][f'dice_{k}'] for r in rows):.4f}" for k in ("WT", "TC", "ET"))
        lines.append(
            f"| {name} | {mean([r['real']['dice_WT'] for r in rows])} | {mean([r['real']['dice_TC'] for r in rows])} "
            f"| {mean([r['windowed']['dice_WT'] for r in rows])} | {mean([r['synthetic']['dice_mean'] for r in rows])} "
            f"| {times[name]['one_window_s']:.2f} | {times[name]['windows_s']:.2f} | {agree} |"
        )
    return "\n".join(lines) + "\n"


def markdown(results: dict, times: dict, args) -> str:
    """The ``## Window-independence candidates`` section of docs/benchmarks.md."""
    arms = ", ".join(f"`{name}` = `{folder}`" + (f" + `{os.path.relpath(overlay, ROOT)}`" if overlay else "")
                     for name, folder, overlay in args.arm)  # fmt: skip
    epochs = ", ".join(str(e) for e in args.epochs)
    return (
        "## Window-independence candidates\n\n"
        f"`benchmarks/window_candidates.py`: each candidate is a 16-epoch run of the shipped recipe with one change "
        f"({arms}), scored at epochs {epochs}. Real case: Dice against the consensus with one window over the brain "
        "crop (the shipped default) and, for WT, with the sliding windows; agreement is the Dice between that label "
        f"map and the one from {args.window_size} sliding windows (overlap 0.25, Gaussian blending), lowest over the "
        "epochs. Synthetic: mean Dice of TC, WT "
        "and ET on the 6 held-out cases of fold 0 (one window). Dice columns: mean over the epochs (lowest-highest). "
        f"Network times: ONNX Runtime, {torch.get_num_threads()} torch thread(s), median of {args.repeats} "
        f"repetitions interleaved across the candidates, epoch-{max(args.epochs)} weights, on the real case's "
        "preprocessed image.\n\n" + table(results, args.window_size, times)
    )


def network_times(args) -> dict:
    """{arm: {"one_window_s", "windows_s"}}: median seconds of each arm's network alone (ONNX Runtime, its last
    ``--epochs`` checkpoint) on the real case's preprocessed image, with one window and with ``--window_size``
    windows; repetitions interleaved across arms so that every network sees the same load."""
    from monai.inferers import SlidingWindowInferer

    inference = [str(ROOT / "configs" / "inference.json")]
    image = preprocess_case(inference, str(args.case_dir))
    nets = {}
    for name, folder, overlay in args.arm:
        ckpt = folder / f"checkpoint_epoch={max(args.epochs)}.pt"
        nets[name] = inference_network(
            load_network(inference + ([str(overlay)] if overlay else []), str(ckpt)), "onnxruntime"
        )
    windows = SlidingWindowInferer(json.loads(args.window_size), sw_batch_size=4, overlap=0.25, mode="gaussian")
    times: dict = {name: {} for name in nets}
    for key, inferer in (("one_window_s", SlidingWindowInferer([-1] * 3)), ("windows_s", windows)):
        for name, seconds in time_case(image, nets, inferer, args.repeats).items():
            times[name][key] = round(statistics.median(seconds), 2)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", required=True, type=arm,
                        help="NAME=RUN_FOLDER[:OVERLAY]: checkpoint_epoch=N.pt files and the config file of the "
                        "network's norm (none for the shipped batch norm)")  # fmt: skip
    parser.add_argument("--epochs", type=int, nargs="+", required=True)
    parser.add_argument("--window_size", default="[64,64,64]", help="the sliding windows compared with one window")
    parser.add_argument("--case_dir", type=Path, default=ROOT.parent / "shared" / "data" / "TCGA-DU-7294")
    parser.add_argument("--synthetic_dir", type=Path, default=ROOT / "data" / "synthetic_mni")
    parser.add_argument("--num_folds", type=int, default=48, help="as in configs/synthetic_train.json")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--output_md", type=Path, help="markdown page whose candidates section is rewritten")
    parser.add_argument("--plot", type=Path, help="PNG: per candidate, the Dice of each epoch and their mean")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each network")
    args = parser.parse_args(argv)
    done = json.loads(args.output.read_text())["scores"] if args.output.is_file() else {}
    results = score_arms(args.arm, args.epochs, args, done)
    times = network_times(args)
    print(table(results, args.window_size, times))
    if args.output_md:
        old = args.output_md.read_text() if args.output_md.is_file() else ""
        write_text(replace_markdown_sections(old, markdown(results, times, args)), args.output_md)
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
