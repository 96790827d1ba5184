"""Segment the bundled real example case with the shipped weights, score it and draw an overlay.

    python -m scripts.example [--case_dir examples/TCGA-DU-7294] [--output_dir eval/example]

Runs the standalone inference workflow (``python -m monai.bundle run --config_file configs/inference.json``) on
the case folder, then writes into ``--output_dir``:

- ``predictions/<case_id>.nii.gz``: the BraTS label map (0/1/2/4) on the input's grid;
- ``overlay.png``: FLAIR and T1ce through the tumour with the prediction and the reference outlined;
- ``metrics.json``: Dice and HD95 per region (TC, WT, ET) against the case's reference segmentation
  (``<case_id>_seg.nii.gz``; for the example case, the consensus of five BraTS 2020 algorithms).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from scripts.conventions import BRATS2020_LABELS, CLASS_COLOURS, MODALITIES, REGIONS, colour_legend
from scripts.data.checks import check_output_dirs
from scripts.evaluation import evaluate_case
from scripts.io import atomic_path, write_json

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CASE = BUNDLE_ROOT / "examples" / "TCGA-DU-7294"


def run_inference(case_dir: Path, prediction_dir: Path, ckpt_path: Path, extra=(), overlays=()) -> None:
    """The bundle's inference workflow on one case folder, as a user runs it (``extra``: more overrides;
    ``overlays``: config files under ``configs/`` merged over ``inference.json``, e.g. ``student.json``)."""
    configs = [str(BUNDLE_ROOT / "configs" / name) for name in ("inference.json", *overlays)]
    command = [sys.executable, "-m", "monai.bundle", "run", "--meta_file", str(BUNDLE_ROOT / "configs/metadata.json")]
    command += ["--config_file", str(configs) if overlays else configs[0], "--bundle_root", str(BUNDLE_ROOT)]
    command += ["--dataset_dir", str(case_dir), "--output_dir", str(prediction_dir), "--ckpt_path", str(ckpt_path)]
    subprocess.run([*command, *extra], check=True)


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask)


def save_overlay(case_dir: Path, case_id: str, prediction: Path, reference: Path | None, png: Path) -> None:
    """FLAIR and T1ce (RAS, axial slice through the predicted tumour) with coloured region outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def load(path):
        return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)

    images = {m: load(case_dir / f"{case_id}_{m}.nii.gz") for m in ("flair", "t1ce")}
    maps = {"prediction": load(prediction)}
    if reference is not None:
        maps["reference"] = load(reference)
    tumour = np.argwhere(maps["prediction"] > 0) if (maps["prediction"] > 0).any() else np.argwhere(images["flair"])
    z = int(np.median(tumour[:, 2]))
    fig, axes = plt.subplots(len(maps), 2, figsize=(8, 4 * len(maps)), squeeze=False)
    for row, (name, label) in enumerate(maps.items()):
        for col, (modality, image) in enumerate(images.items()):
            ax = axes[row, col]
            ax.imshow(image[:, :, z].T, origin="lower", cmap="gray")
            for value, colour in zip(BRATS2020_LABELS, CLASS_COLOURS):
                edge = _outline(label[:, :, z] == value)
                rgb = tuple(v / 255 for v in colour)
                ax.contour(edge.T, levels=[0.5], colors=[rgb], linewidths=0.8, origin="lower")
            ax.set_title(f"{modality.upper()} + {name} (axial {z})")
            ax.axis("off")
    fig.suptitle(f"{case_id} (outlines): {colour_legend()}", fontsize=9)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case_dir", type=Path, default=EXAMPLE_CASE)
    parser.add_argument("--output_dir", type=Path, default=BUNDLE_ROOT / "eval" / "example")
    parser.add_argument("--ckpt_path", type=Path, default=BUNDLE_ROOT / "models" / "model.pt")
    args = parser.parse_args(argv)
    case_id = args.case_dir.name
    missing = [m for m in MODALITIES if not (args.case_dir / f"{case_id}_{m}.nii.gz").is_file()]
    if missing:
        raise SystemExit(f"{case_id}: {args.case_dir}: missing modality file(s) {missing} (<id>_<modality>.nii.gz)")
    prediction_dir = args.output_dir / "predictions"
    prediction = prediction_dir / f"{case_id}.nii.gz"
    reference = args.case_dir / f"{case_id}_seg.nii.gz"
    reference = reference if reference.is_file() else None
    outputs = {"prediction": prediction, "overlay": args.output_dir / "overlay.png"}
    outputs["metrics"] = args.output_dir / "metrics.json"
    case = {"image": [str(args.case_dir / f"{case_id}_{m}.nii.gz") for m in MODALITIES], "label": reference}
    planned = [(case_id, f) for f in outputs.values()]
    check_output_dirs(args.output_dir, inputs=[case, args.ckpt_path], outputs=planned, exit_on_error=True)
    run_inference(args.case_dir, prediction_dir, args.ckpt_path)
    save_overlay(args.case_dir, case_id, prediction, reference, outputs["overlay"])
    result = {"case_id": case_id, "prediction": str(prediction), "overlay": str(outputs["overlay"])}
    if reference is not None:
        metrics = evaluate_case(prediction, reference)
        result.update({k: metrics[k] for r in REGIONS for k in (f"dice_{r}", f"hd95_{r}") if k in metrics})
        write_json(result, outputs["metrics"])
        print("  ".join(f"Dice {r} {result[f'dice_{r}']:.3f}" for r in REGIONS if f"dice_{r}" in result))
    print(f"label map: {prediction}\noverlay: {result['overlay']}")
    return result


if __name__ == "__main__":
    main()
