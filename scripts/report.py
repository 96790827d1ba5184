"""Per-case clinical report: segmentation, Grad-CAM per region, TTA uncertainty, volumes and, when a reference
segmentation exists, the metrics; one self-contained HTML page per case (figures embedded as PNG).

``configs/report.json`` (run id ``report``) builds a :class:`ReportWorkflow` over the inference config's
network, preprocessing and sliding-window inferer. For each case it writes into ``<output_dir>/<case_id>/``:

* ``<case_id>_seg.nii.gz``: the BraTS label map of the flip-TTA prediction, in the input's geometry;
* ``gradcam_TC.nii.gz``, ``gradcam_WT.nii.gz``, ``gradcam_ET.nii.gz``: Grad-CAM maps in [0, 1]
  (:mod:`scripts.explain`), in the input's geometry;
* ``uncertainty.nii.gz``: the TTA entropy (bits) of TC, WT and ET as three volumes (:mod:`scripts.uncertainty`);
* ``report.html``: the page.

Every file is written to a temporary name and renamed. A case that cannot be read or processed is skipped with
one line (case, file, problem) and listed at the end; the run then exits with code 1.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from scripts.casework import CaseWorkflow, sources_of
from scripts.conventions import BRATS2020_LABELS, MODALITY_NAMES, REGION_CLASSES, REGIONS, TUMOUR_CLASSES
from scripts.data.checks import case_id_of, exit_on_failures
from scripts.data.layouts import find_cases, find_inference_cases
from scripts.evaluation import label_map_metrics
from scripts.explain import RegionGradCAM
from scripts.figures import centre_of, heatmap_figure, png_bytes, segmentation_figure
from scripts.inferers import FlipTTAInferer
from scripts.io import write_nifti, write_text
from scripts.transforms import nested, regions_to_label
from scripts.uncertainty import DEFAULT_THRESHOLD, tta_uncertainty

logger = logging.getLogger(__name__)


def find_report_cases(source, layout: str = "auto", exclude: Sequence = ()) -> list[dict]:
    """Cases of a folder in any layout, each with its reference segmentation's path as ``reference`` when
    there is one (a datalist JSON or a single file: :func:`scripts.data.layouts.find_inference_cases`); the
    ``exclude`` folders inside ``source`` (the output folder) are not searched."""
    source = Path(source)
    if source.is_dir():
        cases = find_cases(source, layout, incomplete="keep", exclude=exclude)[1]
    else:
        cases = find_inference_cases(source, "testing", layout, incomplete="keep")
    return [{k: v for k, v in c.items() if k != "label"} | ({"reference": c["label"]} if c.get("label") else {})
            for c in cases]  # fmt: skip


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ReportWorkflow(CaseWorkflow):
    """Report every case of ``datalist`` (see the module docstring). ``network`` gets the weights of
    ``ckpt_path``; ``inference_network`` (e.g. the ONNX Runtime wrapper) runs the TTA passes through
    ``inferer``; Grad-CAM runs on ``network`` itself (it needs gradients). ``labels``: the output label values
    for items without their own ``labels``; ``info``: model and settings shown on the page."""

    def __init__(
        self,
        datalist: Sequence[dict],
        preprocessing,
        network: torch.nn.Module,
        inference_network: torch.nn.Module,
        inferer,
        ckpt_path: str,
        output_dir: str,
        device="cpu",
        labels: Sequence[int] = BRATS2020_LABELS,
        tta_axes: Sequence[int] = (0, 1, 2),
        gradcam_layer: str | None = None,
        uncertainty_threshold: float = DEFAULT_THRESHOLD,
        info: dict | None = None,
    ) -> None:
        super().__init__(datalist, network, inference_network, inferer, ckpt_path, output_dir, device)
        self.preprocessing = preprocessing
        self.labels, self.tta_axes = tuple(int(v) for v in labels), tuple(int(a) for a in tta_axes)
        self.gradcam_layer, self.threshold = gradcam_layer, float(uncertainty_threshold)
        self.info = dict(info or {})

    desc = "report"

    def run(self) -> list[str]:
        """Report every case; exits with code 1 after the others when a case failed."""
        self.gradcam = None
        done, failures = self.each_case(self.preprocessing)
        exit_on_failures(failures, len(done), "reported")
        return done

    def process(self, item: dict) -> str:
        if self.gradcam is None:  # after each_case loaded the weights
            self.info |= {"checkpoint": self.ckpt_path, "checkpoint sha256": file_sha256(self.ckpt_path)}
            self.gradcam = RegionGradCAM(self.network, self.gradcam_layer)
            self.info["Grad-CAM target layer"] = self.gradcam.target_layer
        return self.report_case(item)

    def case_files(self, case_id: str) -> dict[str, Path]:
        """The files :meth:`report_case` writes for ``case_id``: ``seg``, ``gradcam_<region>``, ``uncertainty``
        and ``page`` (see the module docstring)."""
        folder = self.output_dir / case_id
        files = {"seg": folder / f"{case_id}_seg.nii.gz"}
        files |= {f"gradcam_{r}": folder / f"gradcam_{r}.nii.gz" for r in REGIONS}
        return files | {"uncertainty": folder / "uncertainty.nii.gz", "page": folder / "report.html"}

    def outputs(self) -> list[tuple[str, Path]]:
        return [(case_id_of(c), f) for c in self.datalist for f in self.case_files(case_id_of(c)).values()]

    def report_case(self, item: dict) -> str:
        """All outputs of one preprocessed item; returns the case folder."""
        case_id, timings, start = case_id_of(item), {}, time.perf_counter()
        image = item["image"]
        x = image[None].to(self.device)
        with torch.no_grad():
            tta = tta_uncertainty(x, self.inference_network, FlipTTAInferer(self.inferer, self.tta_axes))
        timings["segmentation and uncertainty (TTA)"] = time.perf_counter() - start
        masks = nested(tta.logits[0] > 0)[None]  # the regions of the written label map
        cams = self.gradcam(x, masks).cpu()
        timings["Grad-CAM"] = time.perf_counter() - start - sum(timings.values())
        maps = torch.cat([torch.sigmoid(tta.logits[0]).cpu(), cams, tta.entropy[0].cpu()])
        original = self._invert(maps, image)
        labels = tuple(int(v) for v in item.get("labels", self.labels))
        files = self.case_files(case_id)
        seg = self._write_volumes(files, original, labels)
        timings["writing volumes"] = time.perf_counter() - start - sum(timings.values())
        page = _CasePage(case_id, item, image, masks[0].cpu(), cams, tta, seg, labels, self)
        write_text(page.html(timings, start), files["page"])
        score = tta.case_score()
        flag = " (flagged uncertain)" if score > self.threshold else ""
        logger.info("%s: TTA disagreement %.3f%s; report in %.1f s", case_id, score, flag, time.perf_counter() - start)
        return str(files["page"].parent)

    def _invert(self, maps: torch.Tensor, image: MetaTensor) -> MetaTensor:
        """``maps`` (channels, *preprocessed grid) back to the input's grid (the preprocessing inverted)."""
        pred = MetaTensor(maps, affine=image.affine, meta=dict(image.meta))
        pred.applied_operations = list(image.applied_operations)
        inverter = Invertd(keys="pred", transform=self.preprocessing, orig_keys="image", nearest_interp=False)
        return inverter({"pred": pred, "image": image})["pred"]

    def _write_volumes(self, files: dict[str, Path], original: MetaTensor, labels: tuple) -> np.ndarray:
        """Write the label map, Grad-CAM and uncertainty NIfTIs (:meth:`case_files`); returns the label map
        (input grid)."""
        files["seg"].parent.mkdir(parents=True, exist_ok=True)
        affine = np.asarray(original.affine, dtype=float)
        data = original.detach().cpu().float()
        seg = regions_to_label(data[0:3] > 0.5, labels)[0].numpy()
        write_nifti(seg, files["seg"], np.uint8, affine)
        for i, region in enumerate(REGIONS):
            write_nifti(data[3 + i].clamp(0, 1).numpy(), files[f"gradcam_{region}"], np.float32, affine)
        entropy = np.moveaxis(data[6:9].clamp(0, 1).numpy(), 0, -1)
        write_nifti(entropy, files["uncertainty"], np.float32, affine)
        return seg


class _CasePage:
    """The HTML page of one case (figures from the preprocessed grid, numbers from the input grid)."""

    def __init__(self, case_id, item, image, masks, cams, tta, seg, labels, workflow: ReportWorkflow):
        self.case_id, self.item, self.image, self.masks, self.cams = case_id, item, image, masks, cams
        self.tta, self.seg, self.labels, self.workflow = tta, seg, labels, workflow
        self.spacing = _spacing_of(item)

    def html(self, timings: dict, start: float) -> str:
        """The page; ``timings`` of the steps so far, ``start``: ``time.perf_counter()`` at the case's start."""
        score = self.tta.case_score()
        flag = score > self.workflow.threshold
        parts = [
            f"<h1>Case {_e(self.case_id)}</h1>",
            f"<p class='{'flag' if flag else 'ok'}'>TTA disagreement {score:.3f} "
            f"{'above' if flag else 'within'} the threshold {self.workflow.threshold:g}: "
            f"{'uncertain case, review the segmentation carefully' if flag else 'not flagged'}</p>",
            "<h2>Segmentation</h2>" + self._figure("segmentation"),
            _table(["region", "volume (mL)"], self._volumes()),
            "<h2>Grad-CAM</h2><p>Where the evidence for each predicted region comes from (Seg-Grad-CAM at the "
            f"layer <code>{_e(self.workflow.gradcam.target_layer)}</code>; white outline: the predicted region).</p>"
            + self._figure("gradcam"),
            "<h2>Uncertainty (flip TTA)</h2>" + self._figure("uncertainty"),
            _table(["region", "TTA disagreement"], [(r, f"{v:.3f}") for r, v in self.tta.region_scores.items()]),
            self._metrics_section(),
        ]
        timings["figures and metrics"] = time.perf_counter() - start - sum(timings.values())
        total = time.perf_counter() - start
        parts.append("<h2>Model and inputs</h2>" + _table(["item", "value"], self._provenance(timings, total)))
        return _PAGE.format(title=_e(f"Report {self.case_id}"), body="\n".join(p for p in parts if p))

    def _volumes(self) -> list:
        voxel_ml = float(np.prod(self.spacing)) / 1000.0
        value = dict(zip(TUMOUR_CLASSES, self.labels))
        count = {c: int((self.seg == value[c]).sum()) for c in TUMOUR_CLASSES}
        rows = [(r, f"{sum(count[c] for c in REGION_CLASSES[r]) * voxel_ml:.2f}") for r in REGIONS]
        return rows + [(f"label {value[c]} ({c})", f"{count[c] * voxel_ml:.2f}") for c in TUMOUR_CLASSES]

    def _figure(self, kind: str) -> str:
        img = self.image.detach().cpu().numpy()
        flair, t1ce = img[MODALITY_NAMES.index("FLAIR")], img[MODALITY_NAMES.index("T1ce")]
        masks = self.masks.numpy()
        centre = centre_of(masks[REGIONS.index("WT")], img.any(0))
        if kind == "segmentation":
            classes = regions_to_label(torch.as_tensor(masks), (1, 2, 3))[0].numpy()
            fig = segmentation_figure(flair, t1ce, classes, centre)
        elif kind == "gradcam":
            fig = heatmap_figure(t1ce, self.cams.numpy(), masks, centre, "Grad-CAM")
        else:
            fig = heatmap_figure(flair, self.tta.entropy[0].cpu().numpy(), masks, centre, "entropy")
        data = base64.b64encode(png_bytes(fig)).decode("ascii")
        return f"<img alt='{kind}' src='data:image/png;base64,{data}'>"

    def _metrics_section(self) -> str:
        ref_path = self.item.get("reference")
        if not ref_path:
            return "<h2>Metrics</h2><p>No reference segmentation for this case.</p>"
        ref = np.asanyarray(nib.load(str(ref_path)).dataobj)
        row = label_map_metrics(self.seg, ref, self.spacing, self.labels, self.labels, "brats",
                                self.case_id, str(ref_path))  # fmt: skip
        names = [("dice", "Dice"), ("hd95", "HD95 (mm)"), ("pq_dsc", "lesion-wise PQ"), ("sq_hd95", "lesion HD95")]
        rows = [(r, *(f"{row[f'{m}_{r}']:.3f}" for m, _ in names)) for r in REGIONS]
        return f"<h2>Metrics against {_e(Path(str(ref_path)).name)}</h2>" + _table(
            ["region", *(n for _, n in names)], rows
        )

    def _provenance(self, timings: dict, total: float) -> list:
        sources = sources_of(self.item)
        rows = [(k, v) for k, v in self.workflow.info.items()]
        rows += [("TTA passes (flipped axes)", f"{self.tta.passes} ({list(self.workflow.tta_axes)})"),
                 ("input files", "<br>".join(_e(str(s)) for s in np.atleast_1d(sources))),
                 ("input voxel spacing (mm)", ", ".join(f"{s:.3g}" for s in self.spacing)),
                 ("label values (necrotic, oedema, enhancing)", str(list(self.labels))),
                 ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]  # fmt: skip
        rows += [(f"time: {k}", f"{v:.1f} s") for k, v in timings.items()] + [("time: total", f"{total:.1f} s")]
        return rows


def _spacing_of(item: dict) -> tuple:
    """Voxel spacing (mm) of the case's input grid, from the original affine of the image."""
    image = item["image"]
    affine = np.asarray(image.meta.get("original_affine", image.affine), dtype=float)
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def _e(text) -> str:
    return html.escape(str(text))


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if '<br>' in str(c) else _e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
td, th {{ border: 1px solid #bbb; padding: 3px 8px; text-align: left; font-size: 0.9em; }}
img {{ max-width: 100%; }}
.flag {{ background: #fdd; padding: 6px; font-weight: bold; }}
.ok {{ background: #dfd; padding: 6px; }}
</style></head><body>
{body}
<p><small>Research use only; not a medical device.</small></p>
</body></html>
"""


def pages(output_dir) -> list[str]:
    """The report pages under ``output_dir`` (for scripts and tests)."""
    return sorted(str(p) for p in Path(output_dir).glob(f"*{os.sep}report.html"))
