"""Per-case clinical report: segmentation, lesion table, reference comparison, Grad-CAM per region, TTA
uncertainty with a calibrated review flag, and the provenance; one self-contained HTML page per case (figures
embedded as PNG) and its PDF.

``configs/report.json`` (run id ``report``) builds a :class:`ReportWorkflow` over the inference config's
network, preprocessing and sliding-window inferer. For each case it writes into ``<output_dir>/<case_id>/``:

* ``<case_id>_seg.nii.gz``: the BraTS label map of the flip-TTA prediction, in the input's geometry;
* ``gradcam_TC.nii.gz``, ``gradcam_WT.nii.gz``, ``gradcam_ET.nii.gz``: Grad-CAM maps in [0, 1]
  (:mod:`scripts.explain`), in the input's geometry;
* ``uncertainty.nii.gz``: the TTA entropy (bits) of TC, WT and ET as three volumes (:mod:`scripts.uncertainty`);
* ``report.html``: the page (:mod:`scripts.figures` draws its figures: native images, windowed per sequence,
  in the radiological convention with orientation marks; one colour scheme,
  :data:`scripts.conventions.CLASS_COLOURS`);
* ``report.pdf``: the page printed by headless Chromium when it is installed (one log line says so otherwise).

The review flag compares one score of :data:`scripts.uncertainty.REVIEW_SCORES` with a threshold calibrated
against measured Dice (``benchmarks/review_flag.py`` writes the calibration file the config names).

Every file is written to a temporary name and renamed. A case that cannot be read or processed is skipped with
one line (case, file, problem) and listed at the end; the run then exits with code 1. Each stage of a case
(TTA, Grad-CAM, volumes, figures, PDF) is logged with its time.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from scripts.casework import CaseWorkflow, sources_of
from scripts.conventions import (
    BRATS2020_LABELS,
    CLASS_COLOURS,
    CLASS_DESCRIPTIONS,
    MODALITIES,
    MODALITY_NAMES,
    REFERENCE_COLOUR,
    REGION_CLASSES,
    REGIONS,
    TUMOUR_CLASSES,
)
from scripts.data.checks import case_id_of, exit_on_failures
from scripts.data.layouts import find_cases, find_inference_cases
from scripts.evaluation import label_map_metrics
from scripts.explain import RegionGradCAM
from scripts.figures import (
    MARK_COLOUR,
    canonical,
    centre_of,
    heatmap_figure,
    images_figure,
    png_bytes,
    reference_figure,
    segmentation_figure,
    window,
)
from scripts.inferers import FlipTTAInferer
from scripts.io import CHROMIUM_NAMES, atomic_path, file_md5, find_chromium, write_nifti, write_text
from scripts.metrics import lesions
from scripts.transforms import (
    CheckImageDatad,
    ImputeMissingSequencesd,
    LoadImageSharedGridd,
    SelectChannelsd,
    affines_match,
    brain_mask,
    missing_of,
    nested,
    regions_to_label,
)
from scripts.uncertainty import REVIEW_SCORES, flag_text, load_calibration, review_scores, tta_uncertainty

logger = logging.getLogger(__name__)

AXIS_NAMES = ("left-right", "front-back", "up-down")
"""The preprocessed (RAS) grid's axes in words, for the TTA flips."""
MIN_LESION_ML = 0.1
"""Lesions (connected pieces of the whole tumour) smaller than this are summed in one row of the lesion table."""


def peak_rss_gb() -> float:
    """The peak resident memory of this process so far, in GB (Linux: ``ru_maxrss`` is in kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def rss_gb() -> float:
    """The resident memory of this process now, in GB (``VmRSS`` of ``/proc/self/status``; NaN elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1e6
    except (OSError, StopIteration, ValueError):
        return float("nan")


def release_memory() -> None:
    """Give the freed heap back to the operating system (``malloc_trim(0)`` of glibc, after a garbage collection):
    the memory a stage freed stops counting in the resident size, so the next stage's peak starts lower. Nothing
    happens where glibc is not the C library."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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


def sequences_of(item: dict) -> tuple[list[str], list[str]]:
    """(acquired, missing) sequence names (:data:`~scripts.conventions.MODALITY_NAMES`) of a preprocessed item,
    from the ``missing_modalities`` entry that :class:`~scripts.transforms.LoadImageSharedGridd` puts in it."""
    missing = set(missing_of(item))
    names = dict(zip(MODALITIES, MODALITY_NAMES))
    return [names[m] for m in MODALITIES if m not in missing], [names[m] for m in MODALITIES if m in missing]


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def window_in_words(window_size: Sequence[int], overlap: float) -> str:
    """``[-1, -1, -1]`` -> ``"one window over the whole brain (no tiling)"``; ``[96, 96, -1]`` ->
    ``"sliding windows of 96 x 96 x whole-brain voxels, overlapping by 25%"``."""
    sizes = [int(v) for v in window_size]
    if all(v <= 0 for v in sizes):
        return "one window over the whole brain (no tiling)"
    shown = " x ".join(str(v) if v > 0 else "whole-brain" for v in sizes)
    return f"sliding windows of {shown} voxels, overlapping by {float(overlap) * 100:.0f}%"


def tta_in_words(axes: Sequence[int]) -> str:
    """``[]`` -> ``"off (1 pass)"``; ``[0]`` -> ``"on: 2 passes, mirrored left-right"``."""
    if not axes:
        return "off (1 pass)"
    return f"on: {2 ** len(axes)} passes, mirrored {', '.join(AXIS_NAMES[a] for a in axes)}"


def write_pdf(page: Path, pdf: Path, chromium: str, timeout: float = 120.0) -> str:
    """Print ``page`` to ``pdf`` with headless ``chromium`` (temporary name, then renamed); returns ``""`` or
    the problem in one line."""
    with tempfile.TemporaryDirectory() as profile, atomic_path(pdf) as tmp:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
               "--no-pdf-header-footer", f"--print-to-pdf={tmp}", page.resolve().as_uri()]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{chromium}: no PDF after {timeout:g} s") from None
        if not os.path.isfile(tmp) or open(tmp, "rb").read(5) != b"%PDF-":
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{chromium} wrote no PDF (exit code {proc.returncode}): {last}")
    return str(pdf)


class ReportWorkflow(CaseWorkflow):
    """Report every case of ``datalist`` (see the module docstring). ``network`` gets the weights of
    ``ckpt_path``; ``inference_network`` (e.g. the ONNX Runtime wrapper) runs the TTA passes through
    ``inferer``; Grad-CAM runs on ``network`` itself (it needs gradients). ``labels``: the output label values
    for items without their own ``labels``; ``review_calibration``: the review flag's calibration file
    (``None`` or missing: uncalibrated); ``uncertainty_threshold``: a threshold that replaces the calibrated
    one; ``pdf``: also print ``report.pdf``; ``info``: model and settings shown on the page;
    ``allow_missing_modalities``: report a case that lacks some of its sequence files (the page says which
    sequences were acquired and which were imputed)."""

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
        tta_axes: Sequence[int] = (0,),
        gradcam_layer: str | None = None,
        uncertainty_threshold: float | None = None,
        review_calibration: str | None = None,
        pdf: bool = True,
        info: dict | None = None,
        allow_missing_modalities: bool = False,
    ) -> None:
        super().__init__(datalist, network, inference_network, inferer, ckpt_path, output_dir, device)
        self.allow_missing_modalities = bool(allow_missing_modalities)
        self.preprocessing = preprocessing
        self.labels, self.tta_axes = tuple(int(v) for v in labels), tuple(int(a) for a in tta_axes)
        self.gradcam_layer, self.user_threshold = gradcam_layer, uncertainty_threshold
        self.review_calibration, self.pdf = review_calibration, bool(pdf)
        self.info = dict(info or {})
        self.entries = {case_id_of(e): e for e in self.datalist}
        native = (LoadImageSharedGridd, CheckImageDatad, SelectChannelsd)
        self.native = Compose([t for t in preprocessing.transforms if isinstance(t, native)])
        imputers = [t for t in preprocessing.transforms if isinstance(t, ImputeMissingSequencesd)]
        self.imputer = imputers[0].weights if imputers else None

    desc = "report"

    def run(self) -> list[str]:
        """Report every case; exits with code 1 after the others when a case failed."""
        self.gradcam = None
        self.chromium = find_chromium() if self.pdf else None
        if self.pdf and not self.chromium:
            logger.info("report.pdf not written: headless Chromium is not installed (%s)", " or ".join(CHROMIUM_NAMES))
        done, failures = self.each_case(self.preprocessing)
        exit_on_failures(failures, len(done), "reported")
        return done

    def process(self, item: dict) -> str:
        if self.gradcam is None:  # after each_case loaded the weights
            md5 = file_md5(self.ckpt_path)
            self.info |= {"weights file": self.ckpt_path, "weights md5": md5,
                          "checkpoint sha256": file_sha256(self.ckpt_path)}  # fmt: skip
            self.calibration = load_calibration(self.review_calibration, self.user_threshold, md5, self.tta_axes)
            self.gradcam = RegionGradCAM(self.network, self.gradcam_layer)
            self.info["Grad-CAM target layer"] = self.gradcam.target_layer
        return self.report_case(item)

    def case_files(self, case_id: str) -> dict[str, Path]:
        """The files :meth:`report_case` writes for ``case_id``: ``seg``, ``gradcam_<region>``, ``uncertainty``,
        ``page`` and ``pdf`` (see the module docstring)."""
        folder = self.output_dir / case_id
        files = {"seg": folder / f"{case_id}_seg.nii.gz"}
        files |= {f"gradcam_{r}": folder / f"gradcam_{r}.nii.gz" for r in REGIONS}
        files |= {"uncertainty": folder / "uncertainty.nii.gz", "page": folder / "report.html"}
        return files | {"pdf": folder / "report.pdf"}

    def outputs(self) -> list[tuple[str, Path]]:
        return [(case_id_of(c), f) for c in self.datalist for f in self.case_files(case_id_of(c)).values()]

    def _stage(self, case_id: str, timings: dict, name: str, start: float) -> None:
        timings[name] = time.perf_counter() - start - sum(timings.values())
        release_memory()
        logger.info("%s: %s done in %.1f s (%.1f s so far; memory %.2f GB now, peak %.2f GB)", case_id, name,
                    timings[name], sum(timings.values()), rss_gb(), peak_rss_gb())  # fmt: skip

    def report_case(self, item: dict) -> str:
        """All outputs of one preprocessed item; returns the case folder."""
        case_id, timings, start = case_id_of(item), {}, time.perf_counter()
        acquired, missing = sequences_of(item)
        if missing:
            logger.warning("case %s: %s missing: imputed from %s", case_id, ", ".join(missing), " + ".join(acquired))
        image = item["image"]
        x = image[None].to(self.device)
        logger.info("%s: TTA (%s), Grad-CAM, volumes, figures", case_id, tta_in_words(self.tta_axes))
        with torch.no_grad():
            tta = tta_uncertainty(x, self.inference_network, FlipTTAInferer(self.inferer, self.tta_axes))
        if hasattr(self.inference_network, "release"):
            self.inference_network.release()  # ONNX Runtime's arena, before Grad-CAM's peak
        self._stage(case_id, timings, "segmentation and uncertainty (TTA)", start)
        scores = review_scores(tta)  # from the passes as they are, like benchmarks/review_flag.py
        outside = ~brain_mask(torch.as_tensor(image)).to(tta.logits.device)
        tta.logits[0][:, outside] = -20.0  # no tumour outside the brain, as in inference (MaskOutsideBraind)
        tta.entropy[0][:, outside] = 0.0
        masks = nested(tta.logits[0] > 0)[None]  # the regions of the written label map
        cams = self.gradcam(x, masks).cpu()
        del x
        self._stage(case_id, timings, "Grad-CAM", start)
        files = self.case_files(case_id)
        labels = tuple(int(v) for v in item.get("labels", self.labels))
        volumes = self._write_volumes(files, image, tta, cams, labels)
        self._stage(case_id, timings, "writing volumes", start)
        page = _CasePage(case_id, item, self.entries.get(case_id, {}), volumes, tta, scores, labels, self)
        text = page.html(timings, start)  # adds the time of the figures and tables to timings
        logger.info("%s: figures and tables done in %.1f s (memory %.2f GB now, peak %.2f GB)", case_id,
                    timings["figures and tables"], rss_gb(), peak_rss_gb())  # fmt: skip
        write_text(text, files["page"])
        if self.chromium:
            write_pdf(files["page"], files["pdf"], self.chromium)
            self._stage(case_id, timings, "PDF", start)
        flag = " (flagged for review)" if self.calibration.flags(scores) else ""
        logger.info("%s: review score %s %.3f%s; report in %.1f s", case_id, self.calibration.score,
                    scores[self.calibration.score], flag, time.perf_counter() - start)  # fmt: skip
        return str(files["page"].parent)

    def _invert(self, maps: torch.Tensor, image: MetaTensor) -> np.ndarray:
        """``maps`` (channels, *preprocessed grid) back to the input's grid (the preprocessing inverted), float32."""
        pred = MetaTensor(maps, affine=image.affine, meta=dict(image.meta))
        pred.applied_operations = list(image.applied_operations)
        inverter = Invertd(keys="pred", transform=self.preprocessing, orig_keys="image", nearest_interp=False)
        out = inverter({"pred": pred, "image": image})["pred"]
        return out.detach().cpu().numpy().astype(np.float32, copy=False)

    def _write_volumes(self, files: dict[str, Path], image: MetaTensor, tta, cams: torch.Tensor, labels) -> dict:
        """Write the label map, Grad-CAM and uncertainty NIfTIs (:meth:`case_files`), one map inverted at a
        time (no stack of full-size copies); returns ``{"seg", "cams", "entropy", "affine"}`` on the input grid
        (float32 maps)."""
        files["seg"].parent.mkdir(parents=True, exist_ok=True)
        affine = np.asarray(image.meta.get("original_affine", image.affine), dtype=float)
        probs = self._invert(torch.sigmoid(tta.logits[0].float()).cpu(), image)
        seg = regions_to_label(torch.from_numpy(probs > 0.5), labels)[0].numpy().astype(np.uint8)
        del probs
        write_nifti(seg, files["seg"], np.uint8, affine)
        out = {"seg": seg, "affine": affine, "cams": [], "entropy": []}
        for i, region in enumerate(REGIONS):
            cam = np.clip(self._invert(cams[i : i + 1], image)[0], 0, 1)
            write_nifti(cam, files[f"gradcam_{region}"], np.float32, affine)
            out["cams"].append(cam)
            out["entropy"].append(np.clip(self._invert(tta.entropy[0, i : i + 1].cpu(), image)[0], 0, 1))
        write_nifti(np.stack(out["entropy"], -1), files["uncertainty"], np.float32, affine)
        return out


class _CasePage:
    """The HTML page of one case; figures and numbers from the input grid (figures on its canonical view)."""

    def __init__(self, case_id, item, entry, volumes, tta, scores, labels, workflow: ReportWorkflow):
        self.case_id, self.item, self.entry, self.tta, self.scores = case_id, item, entry, tta, scores
        self.labels, self.workflow, self.affine = labels, workflow, volumes["affine"]
        self.spacing = tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        self.seg = volumes["seg"]
        self.classes = self._classes(self.seg)
        native = workflow.native({k: v for k, v in entry.items() if k not in ("label", "reference")})["image"]
        native = native.detach().cpu().numpy()
        if native.shape[1:] != self.seg.shape:
            raise ValueError(f"native images {native.shape[1:]} are not on the prediction's grid {self.seg.shape}")
        self.view = lambda v: canonical(v, self.affine)[0]
        self.acquired, self.missing = sequences_of(item)
        self.images = {n: self.view(native[MODALITY_NAMES.index(n)]) for n in ("FLAIR", "T1ce", "T1", "T2")}
        self.view_spacing = canonical(self.seg, self.affine)[1]
        self.brain = self.view(native.any(0))
        self.windows = {n: window(v, self.brain) for n, v in self.images.items() if n in self.acquired}
        self.cams = [self.view(c) for c in volumes["cams"]]
        self.entropy = [self.view(e) for e in volumes["entropy"]]
        self.centre = centre_of(self.view(self.seg > 0), self.brain)
        self.reference = self._reference()

    def _classes(self, label_map: np.ndarray) -> np.ndarray:
        """Label values -> class index 1, 2, 3 (necrotic, oedema, enhancing), 0 elsewhere."""
        out = np.zeros(label_map.shape, np.uint8)
        for k, value in enumerate(self.labels, start=1):
            out[label_map == value] = k
        return out

    def _reference(self) -> np.ndarray | None:
        """The reference label map on the input grid, or ``None``; ``ValueError`` (naming the file) when it is
        not on the image's grid."""
        path = self.item.get("reference")
        if not path:
            return None
        img = nib.load(str(path))
        if img.shape[:3] != self.seg.shape or not affines_match(img.affine, self.affine):
            raise ValueError(f"reference {path}: grid {img.shape} does not match the image's {self.seg.shape}")
        return np.asarray(img.dataobj).reshape(self.seg.shape)

    def html(self, timings: dict, start: float) -> str:
        """The page; ``timings`` of the steps so far, ``start``: ``time.perf_counter()`` at the case's start."""
        flagged = self.workflow.calibration.flags(self.scores)
        parts = [
            f"<h1>Case {_e(self.case_id)}</h1>",
            f"<p class='{'flag' if flagged else 'ok'}'>{_e(flag_text(self.workflow.calibration, self.scores))}</p>",
            self._sequences_html(),
            "<h2>Volumes</h2>" + _table(["compartment", "volume (mL)"], self._volumes()),
            "<h2>Segmentation</h2>" + _legend_html() + _orientation_html(self.centre, self.shown(("FLAIR", "T1ce"), 2)),
            _figure_html("segmentation", self._segmentation_figure()),
            "<h2>Lesions</h2>" + self._lesion_section(),
            self._reference_section(),
            self._images_section(),
            self._gradcam_section(),
            self._uncertainty_section(),
        ]
        timings["figures and tables"] = time.perf_counter() - start - sum(timings.values())
        total = time.perf_counter() - start
        parts.append("<h2>Model and inputs</h2>" + _table(["item", "value"], self._provenance(timings, total)))
        return _PAGE.format(title=_e(f"Report {self.case_id}"), body="\n".join(p for p in parts if p))

    def _volumes(self) -> list:
        voxel_ml = float(np.prod(self.spacing)) / 1000.0
        count = {c: int((self.classes == k).sum()) for k, c in enumerate(TUMOUR_CLASSES, start=1)}
        rows = [(r, f"{sum(count[c] for c in REGION_CLASSES[r]) * voxel_ml:.2f}") for r in REGIONS]
        return rows + [(f"{d} (label {v})", f"{count[c] * voxel_ml:.2f}")
                       for c, d, v in zip(TUMOUR_CLASSES, CLASS_DESCRIPTIONS, self.labels)]  # fmt: skip

    def shown(self, preferred: Sequence[str], count: int = 1) -> list[str]:
        """The first ``count`` acquired sequences of ``preferred``, then of the others: the backgrounds of the
        figures (a sequence that was not acquired is never drawn as if it were)."""
        return list(dict.fromkeys(n for n in (*preferred, *MODALITY_NAMES) if n in self.acquired))[:count]

    def _sequences_html(self) -> str:
        """The banner of a case with sequences missing ("" when all four were acquired)."""
        if not self.missing:
            return ""
        weights = f" ({self.workflow.imputer})" if self.workflow.imputer else ""
        return (f"<p class='missing'>Sequences acquired: {_e(', '.join(self.acquired))}. Not acquired: "
                f"{_e(', '.join(self.missing))}, imputed from {_e(' + '.join(self.acquired))} by the imputation "
                f"network{_e(weights)} before segmentation. The segmentation, Grad-CAM and uncertainty rest on the "
                "imputed sequences; the figures show acquired images only.</p>")  # fmt: skip

    def _images_section(self) -> str:
        images = {n: (v if n in self.acquired else None) for n, v in self.images.items()}
        if self.missing:
            text = (f"The acquired sequences ({_e(', '.join(self.acquired))}) as acquired; "
                    f"{_e(', '.join(self.missing))}: not acquired (imputed for the segmentation, not shown). ")  # fmt: skip
        else:
            text = "The four input sequences as acquired "
        text += ("(after reorientation only: no resampling, no intensity normalisation), each windowed from its 1st "
                 "to its 99th intensity percentile inside the brain.")  # fmt: skip
        fig = images_figure(images, self.centre, self.view_spacing, self.windows)
        return f"<h2>Images</h2><p>{text}</p>" + _figure_html("images", fig)

    def _segmentation_figure(self):
        backgrounds = {n: self.images[n] for n in self.shown(("FLAIR", "T1ce"), 2)}
        classes = self.view(self.classes)
        return segmentation_figure(backgrounds, classes, self.centre, self.view_spacing, self.windows)

    def _lesion_section(self) -> str:
        rows = lesion_rows(self.classes, self.affine, self.brain_midline(), MIN_LESION_ML)
        if not rows:
            return "<p>No tumour predicted.</p>"
        header = ["lesion", *(f"{d} (mL)" for d in CLASS_DESCRIPTIONS), "total (mL)", "centroid (mm, RAS)", "side"]
        note = ("<p>One row per connected piece of the predicted tumour (26-connected), largest first. Side: the "
                "patient's side of the brain's midline, taken as the middle of the brain's left-right extent "
                "(no atlas registration: check lesions near the midline). Lobe: not given, no brain lobe atlas "
                "is available offline in this bundle or its dependencies. Centroid: scanner coordinates (RAS: "
                "+x patient's left to right, +y posterior to anterior, +z inferior to superior).</p>")  # fmt: skip
        return _table(header, rows) + note

    def brain_midline(self) -> float:
        """The canonical x index of the brain's mid-sagittal plane (the middle of its left-right extent)."""
        xs = np.flatnonzero(self.brain.any((1, 2)))
        return float(xs[0] + xs[-1]) / 2 if xs.size else (self.brain.shape[0] - 1) / 2

    def _reference_section(self) -> str:
        path = self.item.get("reference")
        if self.reference is None:
            return "<h2>Reference</h2><p>No reference segmentation for this case.</p>"
        ref_classes = self._classes(self.reference)
        (name,) = self.shown(("FLAIR", "T2"))
        fig = reference_figure(self.images[name], self.view(self.classes), self.view(ref_classes), self.centre,
                               self.view_spacing, self.windows[name], name)  # fmt: skip
        swatch = _swatch(REFERENCE_COLOUR)
        text = (f"<h2>Reference: {_e(Path(str(path)).name)}</h2><p>Top: the reference's compartments outlined in the "
                f"label colours. Bottom: the prediction (filled) with the reference's whole tumour outlined {swatch} "
                f"(cyan, dashed).{_background_note([name])}</p>")  # fmt: skip
        table = _table(["compartment", "Dice", "predicted (mL)", "reference (mL)", "difference (mL)"],
                       compare_rows(self.classes, ref_classes, self.spacing))  # fmt: skip
        return text + _figure_html("reference", fig) + table + self._metrics_table(path)

    def _metrics_table(self, ref_path) -> str:
        row = label_map_metrics(self.seg, self.reference, self.spacing, self.labels, self.labels, "brats",
                                self.case_id, str(ref_path))  # fmt: skip
        names = [("dice", "Dice"), ("hd95", "HD95 (mm)"), ("pq_dsc", "lesion-wise PQ"), ("sq_hd95", "lesion HD95")]
        rows = [(r, *(f"{row[f'{m}_{r}']:.3f}" for m, _ in names)) for r in REGIONS]
        return f"<h3>Metrics against {_e(Path(str(ref_path)).name)}</h3>" + _table(
            ["region", *(n for _, n in names)], rows
        )

    def _gradcam_section(self) -> str:
        masks = [self.view(m) for m in self._region_masks()]
        (name,) = self.shown(("T1ce",))
        fig = heatmap_figure(self.images[name], np.stack(self.cams), np.stack(masks), self.centre,
                             self.view_spacing, self.windows[name], "Grad-CAM", name)  # fmt: skip
        return ("<h2>Grad-CAM</h2><p>Where the evidence for each predicted region comes from (Seg-Grad-CAM at the "
                f"layer <code>{_e(self.workflow.gradcam.target_layer)}</code>, scaled to 0-1 per region; nothing "
                f"drawn below 0.1; white outline: the predicted region).{_background_note([name])}</p>"
                + _figure_html("gradcam", fig))  # fmt: skip

    def _uncertainty_section(self) -> str:
        masks = [self.view(m) for m in self._region_masks()]
        (name,) = self.shown(("FLAIR", "T2"))
        fig = heatmap_figure(self.images[name], np.stack(self.entropy), np.stack(masks), self.centre,
                             self.view_spacing, self.windows[name], "entropy", name)  # fmt: skip
        rows = [(r, f"{v:.3f}") for r, v in self.tta.region_scores.items()]
        rows += [(f"{k}: {REVIEW_SCORES[k]}", f"{v:.3f}") for k, v in self.scores.items()]
        return (f"<h2>Uncertainty (flip TTA: {_e(tta_in_words(self.workflow.tta_axes))})</h2><p>Binary entropy "
                "of the mean probability over the passes (0 = the passes agree and are sure, 1 bit = 50/50); "
                f"nothing drawn below 0.05 bit.{_background_note([name])}</p>" + _figure_html("uncertainty", fig)
                + _table(["score", "value"], rows))  # fmt: skip

    def _region_masks(self) -> list[np.ndarray]:
        return [np.isin(self.classes, [TUMOUR_CLASSES.index(c) + 1 for c in REGION_CLASSES[r]]) for r in REGIONS]

    def _provenance(self, timings: dict, total: float) -> list:
        cal = self.workflow.calibration
        rows = [(k, v) for k, v in self.workflow.info.items()]
        rows += [("test-time augmentation", tta_in_words(self.workflow.tta_axes)),
                 ("review flag", f"{cal.score} > {cal.threshold:.3g} ("
                  + (f"calibration {cal.source}" if cal.measured else "not calibrated") + ")"),
                 ("sequences acquired", ", ".join(self.acquired)),
                 ("sequences not acquired (imputed)", ", ".join(self.missing) or "none"),
                 ("input files (md5)", "<br>".join(_e(line) for line in input_files(self.entry, self.item))),
                 ("input voxel spacing (mm)", ", ".join(f"{s:.3g}" for s in self.spacing)),
                 ("label values (necrotic, oedema, enhancing)", str(list(self.labels))),
                 ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]  # fmt: skip
        if self.missing and self.workflow.imputer:
            imputer = self.workflow.imputer
            rows.append(("imputation weights (md5)", f"{imputer}  md5 {file_md5(imputer)}"))
        rows += [(f"time: {k}", f"{v:.1f} s") for k, v in timings.items()] + [("time: total", f"{total:.1f} s")]
        return rows


def input_files(entry: dict, item: dict) -> list[str]:
    """``"<path>  md5 <digest>"`` of every input file of a case (the image files, the reference); a folder (a
    DICOM series) is listed with its number of files."""
    paths = [str(p) for p in np.atleast_1d(entry.get("image", sources_of(item)))]
    if item.get("reference"):
        paths.append(str(item["reference"]))
    lines = []
    for p in paths:
        if os.path.isdir(p):
            lines.append(f"{p}  (folder of {sum(len(f) for _, _, f in os.walk(p))} files)")
        else:
            lines.append(f"{p}  md5 {file_md5(p)}" if os.path.isfile(p) else f"{p}  (no such file: not acquired)")
    return lines


def lesion_rows(classes: np.ndarray, affine: np.ndarray, midline: float, min_ml: float) -> list[tuple]:
    """The lesion table: one row per connected piece of ``classes`` > 0 (class index map on the input grid
    with its ``affine``), largest first: volume per class and in total (mL), centroid (mm, RAS) and side of the
    canonical x index ``midline``; pieces under ``min_ml`` are summed in a last row."""
    canon, _ = canonical(classes, affine)
    canon_affine = _canonical_affine(affine, classes.shape)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    pieces, n = lesions(canon > 0)
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    rows, small = [], np.zeros(len(CLASS_DESCRIPTIONS) + 1)
    for k in sorted(range(1, n + 1), key=lambda i: -sizes[i]):
        idx = np.argwhere(pieces == k)
        values = canon[tuple(idx.T)]
        ml = [float((values == c).sum()) * voxel_ml for c in range(1, len(CLASS_DESCRIPTIONS) + 1)]
        if sum(ml) < min_ml:
            small += [*ml, 1]
            continue
        centroid = canon_affine[:3, :3] @ idx.mean(0) + canon_affine[:3, 3]
        rows.append((str(len(rows) + 1), *(f"{v:.2f}" for v in ml), f"{sum(ml):.2f}",
                     ", ".join(f"{v:.0f}" for v in centroid), side_of(idx[:, 0], midline)))  # fmt: skip
    if small[-1]:
        rows.append((f"{int(small[-1])} smaller pieces (< {min_ml:g} mL)", *(f"{v:.2f}" for v in small[:-1]),
                     f"{small[:-1].sum():.2f}", "", ""))  # fmt: skip
    return rows


def _canonical_affine(affine: np.ndarray, shape) -> np.ndarray:
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    return np.asarray(affine, dtype=float) @ nio.inv_ornt_aff(ornt, shape)


def side_of(xs: np.ndarray, midline: float) -> str:
    """``"right"``/``"left"`` when at least 90% of the voxels (canonical x indices ``xs``; RAS: larger x is the
    patient's right) lie on that side of ``midline``, else ``"both (R 60%, L 40%)"``."""
    right = float((xs > midline).mean()) if xs.size else 0.0
    if right >= 0.9:
        return "right"
    if right <= 0.1:
        return "left"
    return f"both (R {right * 100:.0f}%, L {(1 - right) * 100:.0f}%)"


def compare_rows(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> list[tuple]:
    """Dice and volumes (mL) of the prediction and the reference (class index maps) per region and class."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    groups = [(r, [TUMOUR_CLASSES.index(c) + 1 for c in REGION_CLASSES[r]]) for r in REGIONS]
    groups += [(d, [k]) for k, d in enumerate(CLASS_DESCRIPTIONS, start=1)]
    rows = []
    for name, values in groups:
        p, r = np.isin(pred, values), np.isin(ref, values)
        total = int(p.sum()) + int(r.sum())
        dice = f"{2 * int((p & r).sum()) / total:.3f}" if total else "n/a (both empty)"
        vp, vr = int(p.sum()) * voxel_ml, int(r.sum()) * voxel_ml
        rows.append((name, dice, f"{vp:.2f}", f"{vr:.2f}", f"{vp - vr:+.2f}"))
    return rows


def _e(text) -> str:
    return html.escape(str(text))


def _swatch(rgb: Sequence[int]) -> str:
    return f"<span class='swatch' style='background: rgb({rgb[0]}, {rgb[1]}, {rgb[2]})'></span>"


def _legend_html() -> str:
    items = "".join(f"<span class='key'>{_swatch(c)} {_e(d)}</span>" for c, d in zip(CLASS_COLOURS, CLASS_DESCRIPTIONS))
    return f"<p class='legend'>{items}</p>"


def _background_note(names: Sequence[str]) -> str:
    """`` Drawn over FLAIR.``: the acquired sequence(s) a figure is drawn over."""
    return f" Drawn over {_e(' and '.join(names))}."


def _orientation_html(centre, backgrounds: Sequence[str]) -> str:
    return (f"<p class='caption'>Radiological convention: the patient's right is on the image's left. Marks "
            f"{_swatch(MARK_COLOUR)} on every panel: R/L right/left, A/P anterior/posterior, S/I superior/inferior. "
            "Axial slices are seen from the feet, coronal slices from the front, sagittal slices with anterior on "
            f"the left. Slices through the centre of the predicted tumour (voxel {', '.join(map(str, centre))} "
            f"of the reoriented input).{_background_note(backgrounds)}</p>")  # fmt: skip


def _figure_html(kind: str, fig) -> str:
    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    return f"<img alt='{kind}' src='data:image/png;base64,{data}'>"


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
.missing {{ background: #fec; padding: 6px; border-left: 4px solid #e80; }}
.swatch {{ display: inline-block; width: 28px; height: 16px; vertical-align: middle; border: 1px solid #555; }}
.key {{ margin-right: 1.5em; }}
.caption {{ font-size: 0.9em; }}
@media print {{ img {{ break-inside: avoid; }} h2 {{ break-after: avoid; }} }}
</style></head><body>
{body}
<p><small>Research use only; not a medical device.</small></p>
</body></html>
"""


def pages(output_dir) -> list[str]:
    """The report pages under ``output_dir`` (for scripts and tests)."""
    return sorted(str(p) for p in Path(output_dir).glob(f"*{os.sep}report.html"))
