"""Robustness to acquisition changes: every case segmented clean and under each degradation of
:mod:`scripts.degradations` at each severity, seeded.

The preprocessing is split before its first intensity normalisation (:class:`scripts.transforms.BrainNormalized`):
the degradation acts on the loaded, reoriented, resampled and brain-cropped raw image, then the intensity steps
and the network run as in inference (sliding window, region threshold 0.5, regions nested as in the label map).
Per case, degradation and severity:

* ``dice_TC``, ``dice_WT``, ``dice_ET``: Dice against the reference segmentation (NaN without one);
* ``dice_clean_<region>``: Dice against the clean prediction of the same case;
* ``volume_ml_<region>`` and ``volume_change_ml_<region>``: predicted volume and its change from the clean one.

Dice of two empty masks is 1. The clean prediction is the row ``degradation = none``.

``configs/robustness.json`` (run id ``robustness``) writes ``robustness.csv``, ``robustness.md`` (means over the
cases) and ``robustness.png`` (degradation curves) into ``output_dir``, each atomically; bad cases are skipped
and listed, and the run exits with code 1 when there was one.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose
from tqdm import tqdm

from scripts.casework import CaseWorkflow
from scripts.conventions import REGIONS
from scripts.data.checks import case_id_of, exit_on_failures
from scripts.data.layouts import find_cases, find_inference_cases
from scripts.degradations import DEGRADATIONS, degrade
from scripts.io import atomic_path, write_text
from scripts.metrics import dice
from scripts.transforms import BrainNormalized, nested

logger = logging.getLogger(__name__)

COLUMNS = (
    "case_id",
    "degradation",
    "severity",
    *(f"dice_{r}" for r in REGIONS),
    *(f"dice_clean_{r}" for r in REGIONS),
    *(f"volume_ml_{r}" for r in REGIONS),
    *(f"volume_change_ml_{r}" for r in REGIONS),
)


def find_robustness_cases(source, layout: str = "auto", exclude: Sequence = ()) -> list[dict]:
    """Cases with their reference ``label`` when there is one (folders in any layout; a datalist JSON's
    ``testing`` list or a single file through :func:`scripts.data.layouts.find_inference_cases`); the
    ``exclude`` folders inside ``source`` (the output folder) are not searched."""
    source = Path(source)
    if source.is_dir():
        return find_cases(source, layout, incomplete="keep", exclude=exclude)[1]
    return find_inference_cases(source, "testing", layout, incomplete="keep")


def split_preprocessing(transforms: Sequence) -> tuple[Compose, Compose]:
    """(geometry, intensity): the transforms before the first ``BrainNormalized`` and the rest."""
    transforms = list(transforms.transforms if isinstance(transforms, Compose) else transforms)
    for i, t in enumerate(transforms):
        if isinstance(t, BrainNormalized):
            return Compose(transforms[:i]), Compose(transforms[i:])
    raise ValueError("the preprocessing has no BrainNormalized step to apply the degradations before")


def case_seed(seed: int, case_id: str, degradation: str) -> int:
    """A stable seed per (case, degradation), shared by its severities."""
    return zlib.crc32(f"{seed}:{case_id}:{degradation}".encode()) & 0x7FFFFFFF


class RobustnessStudy(CaseWorkflow):
    """Run the study over ``datalist`` (see the module docstring); ``degradations``: names to run (all of
    :data:`scripts.degradations.DEGRADATIONS` when None)."""

    def __init__(
        self,
        datalist: Sequence[dict],
        preprocessing_transforms: Sequence,
        network: torch.nn.Module,
        inference_network: torch.nn.Module,
        inferer,
        ckpt_path: str,
        output_dir: str,
        device="cpu",
        degradations: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(datalist, network, inference_network, inferer, ckpt_path, output_dir, device)
        self.geometry, self.intensity = split_preprocessing(preprocessing_transforms)
        self.degradations = list(degradations or DEGRADATIONS)
        unknown = [d for d in self.degradations if d not in DEGRADATIONS]
        if unknown:
            raise ValueError(f"unknown degradation(s) {unknown}; known: {', '.join(DEGRADATIONS)}")
        self.seed = int(seed)
        self.rows: list[dict] = []

    desc = "robustness"

    def run(self) -> list[dict]:
        """Study every case, write the outputs; exits with code 1 after the others when a case failed."""
        per_case, failures = self.each_case(self.geometry)
        self.rows = [row for rows in per_case for row in rows]
        self.write_outputs()
        exit_on_failures(failures, len(per_case), "studied")
        return self.rows

    def process(self, item: dict) -> list[dict]:
        return self.study_case(item)

    def _predict(self, item: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(predicted regions (R, *S) bool, reference regions or None) of a geometry-preprocessed item."""
        data = self.intensity(dict(item))
        with torch.no_grad():
            logits = self.inferer(data["image"][None].to(self.device), self.inference_network)
        label = data.get("label")
        return nested(logits[0] > 0).cpu(), (None if label is None else torch.as_tensor(label).cpu() > 0.5)

    def study_case(self, item: dict) -> list[dict]:
        case_id = case_id_of(item)
        spacing = [float(s) for s in item["image"].pixdim]
        voxel_ml = float(np.prod(spacing)) / 1000.0
        clean, ref = self._predict(item)
        rows = [self._row(case_id, "none", 0, clean, clean, ref, voxel_ml)]
        runs = [(d, s) for d in self.degradations for s in DEGRADATIONS[d][0]]
        for name, severity in tqdm(runs, desc=f"robustness {case_id}", unit="run", leave=False):
            degraded = dict(item)
            seed = case_seed(self.seed, case_id, name)
            image = item["image"]
            degraded["image"] = image.clone().set_array(degrade(image.as_tensor(), name, severity, spacing, seed))
            pred, _ = self._predict(degraded)
            rows.append(self._row(case_id, name, severity, pred, clean, ref, voxel_ml))
        logger.info("%s: %d degraded runs", case_id, len(runs))
        return rows

    @staticmethod
    def _row(case_id, name, severity, pred, clean, ref, voxel_ml) -> dict:
        row = {"case_id": case_id, "degradation": name, "severity": severity}
        for i, r in enumerate(REGIONS):
            row[f"dice_{r}"] = math.nan if ref is None else dice(pred[i], ref[i])
            row[f"dice_clean_{r}"] = dice(pred[i], clean[i])
            row[f"volume_ml_{r}"] = int(pred[i].sum()) * voxel_ml
            row[f"volume_change_ml_{r}"] = (int(pred[i].sum()) - int(clean[i].sum())) * voxel_ml
        return row

    def output_files(self) -> dict[str, Path]:
        """The files :meth:`write_outputs` writes: ``csv``, ``md`` and ``png`` (see the module docstring)."""
        return {ext: self.output_dir / f"robustness.{ext}" for ext in ("csv", "md", "png")}

    def outputs(self) -> list[tuple[str, Path]]:
        return [("robustness", path) for path in self.output_files().values()]

    def write_outputs(self) -> dict:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        summary, files = summarize(self.rows), self.output_files()
        return {
            "csv": write_rows(self.rows, files["csv"]),
            "md": write_text(markdown(summary, len(self.cases())), files["md"]),
            "png": write_curves(summary, files["png"]),
        }

    def cases(self) -> list[str]:
        return sorted({r["case_id"] for r in self.rows})


def write_rows(rows: list[dict], path) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return write_text(buf.getvalue(), path)


def summarize(rows: list[dict]) -> list[dict]:
    """Mean of every numeric column per (degradation, severity), NaN left out, in the order of the rows."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["degradation"], row["severity"]), []).append(row)
    out = []
    for (name, severity), group in groups.items():
        mean = {"degradation": name, "severity": severity, "n": len(group)}
        for column in COLUMNS[3:]:
            values = [g[column] for g in group if not math.isnan(g[column])]
            mean[column] = float(np.mean(values)) if values else math.nan
        out.append(mean)
    return out


def markdown(summary: list[dict], n_cases: int) -> str:
    regions = " / ".join(REGIONS)
    lines = [
        "# Robustness to acquisition changes",
        "",
        f"{n_cases} case(s); means over the cases. Dice against the reference (n/a without one) and against the "
        "clean prediction; change of the predicted WT volume from the clean one.",
        "",
        f"| degradation | severity | Dice {regions} | Dice vs clean {regions} | WT volume change (mL) |",
        "|---|---|---|---|---:|",
    ]
    for s in summary:
        ref = " / ".join("n/a" if math.isnan(s[f"dice_{r}"]) else f"{s[f'dice_{r}']:.3f}" for r in REGIONS)
        clean = " / ".join(f"{s[f'dice_clean_{r}']:.3f}" for r in REGIONS)
        lines.append(f"| {s['degradation']} | {s['severity']} | {ref} | {clean} | {s['volume_change_ml_WT']:+.2f} |")
    return "\n".join(lines) + "\n"


def write_curves(summary: list[dict], path) -> str:
    """One panel per degradation: mean Dice against the reference (solid) and the clean prediction (dashed)
    per region, over the severities."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [n for n in dict.fromkeys(s["degradation"] for s in summary) if n != "none"]
    cols = min(4, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows), dpi=90)
    FigureCanvasAgg(fig)
    colours = {"TC": "tab:red", "WT": "tab:green", "ET": "tab:orange"}
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        points = [s for s in summary if s["degradation"] == name]
        x = range(len(points))
        for r in REGIONS:
            ax.plot(x, [p[f"dice_{r}"] for p in points], "-o", color=colours[r], label=f"{r} vs reference", ms=3)
            ax.plot(x, [p[f"dice_clean_{r}"] for p in points], "--", color=colours[r], label=f"{r} vs clean")
        ax.set_xticks(list(x), [str(p["severity"]) for p in points])
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    if names:
        fig.axes[0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return str(path)
