"""The domain-randomised glioma generator the shipped weights are trained on (SynthSeg-style, Billot et al.
2023): real anatomy (:mod:`~scripts.synthetic.anatomy`), random tumours (:mod:`~scripts.synthetic.tumour`),
distractors (:mod:`~scripts.synthetic.distractors`) and random contrasts and artefacts
(:mod:`~scripts.synthetic.intensity`), written in the BraTS 2020 layout on the BraTS grid (240 x 240 x 155,
1 mm, LPS voxel order as in BraTS, skull-stripped, int16 images, uint8 labels 0/1/2/4).

Every case is a pure function of ``(seed, index, options)``. Command line::

    python -m scripts.synthetic.generator --output_dir data/synthetic_mni --num_cases 120 --workers 2

``--no_deform``, ``--fixed_contrast`` and ``--no_distractors`` switch parts of the generator off (ablations).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from scripts.conventions import BRATS2020_LABELS, LABEL_SUFFIX, MODALITIES
from scripts.io import write_nifti
from scripts.synthetic import anatomy, distractors, intensity, tumour

GENERATOR_VERSION = "1.1"
CASE_PREFIX = "SynthGlioma_"
# BraTS grid orientation: voxel axes run right->left, anterior->posterior, inferior->superior (LPS).
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


@dataclass(frozen=True)
class Options:
    """Switches of the generator (all on by default; the ablations switch one off)."""

    deform: bool = True
    random_contrast: bool = True
    distractors: bool = True


def _labels_to_brats(labels: np.ndarray) -> np.ndarray:
    """Internal 1/2/4 labels -> the BraTS 2020 values of :mod:`scripts.conventions` (identical today)."""
    out = np.zeros_like(labels)
    for internal, value in zip((1, 2, 4), BRATS2020_LABELS):
        out[labels == internal] = value
    return out


def generate_case(index: int, seed: int = 0, options: Options = Options()) -> dict[str, np.ndarray]:
    """One case on the BraTS grid in RAS array order: ``{"t1", "t1ce", "t2", "flair"}`` int16 and ``"seg"``
    uint8, each ``240 x 240 x 155``; plus ``"info"`` (the tumour's drawn parameters)."""
    rng = np.random.default_rng([int(seed), int(index)])
    template = anatomy.load_template()
    warp = anatomy.random_warp(rng, template, deform=options.deform)
    box = warp.target_box(template)
    spec = tumour.sample_tumour(rng, template, warp, box)
    shape = tuple(b.stop - b.start for b in box)
    maps = anatomy.tissue_maps(template, warp.coords(box, extra=tumour.mass_effect(spec, shape)))
    labels = tumour.paint_tumour(rng, spec, maps)
    labels[maps["brain"] < 0.3] = 0
    extra = distractors.paint_distractors(rng, maps, labels) if options.distractors else {}
    extra = {k: extra.get(k, np.zeros(shape, bool)) for k in distractors.DISTRACTORS}
    sharp = intensity.sharpen(maps, rng.uniform(1.0, 3.0))
    fractions = intensity.class_fractions(sharp, labels, spec.kind, extra)
    contrasts = intensity.sample_contrasts(rng if options.random_contrast else None)
    brain = (maps["brain"] > 0.5) | (labels > 0)
    case = {"seg": np.zeros(anatomy.BRATS_SHAPE, np.uint8)}
    case["seg"][box] = _labels_to_brats(labels)
    for mod in MODALITIES:
        case[mod] = np.zeros(anatomy.BRATS_SHAPE, np.int16)
        case[mod][box] = intensity.acquire(rng, intensity.render_sequence(rng, fractions, contrasts[mod]), brain)
    case["info"] = {k: v for k, v in asdict(spec).items() if not isinstance(v, np.ndarray)}
    return case


def case_name(index: int, prefix: str = CASE_PREFIX) -> str:
    return f"{prefix}{int(index):04d}"


def case_files(out_dir: str, index: int, prefix: str = CASE_PREFIX) -> dict[str, str]:
    """BraTS 2020 layout: ``out_dir/<name>/<name>_<modality|seg>.nii.gz``."""
    name = case_name(index, prefix)
    return {k: os.path.join(out_dir, name, f"{name}_{k}.nii.gz") for k in (*MODALITIES, LABEL_SUFFIX)}


def write_case(
    out_dir: str, index: int, seed: int = 0, options: Options = Options(), prefix: str = CASE_PREFIX
) -> dict[str, str]:
    """Generate case ``index`` and write its five files (each to a temporary name, then renamed); ``prefix`` names
    the case (``<prefix><index:04d>``) and does not change its content."""

    files = case_files(out_dir, index, prefix)
    if all(os.path.isfile(p) for p in files.values()):
        return files
    case = generate_case(index, seed, options)
    os.makedirs(os.path.dirname(files[LABEL_SUFFIX]), exist_ok=True)
    for key in (*MODALITIES, LABEL_SUFFIX):
        dtype = np.uint8 if key == LABEL_SUFFIX else np.int16
        write_nifti(case[key][::-1, ::-1], files[key], dtype, BRATS_AFFINE)  # RAS arrays -> BraTS LPS order
    return files


def write_dataset(
    out_dir: str,
    num_cases: int,
    seed: int = 0,
    options: Options = Options(),
    workers: int = 1,
    first: int = 1,
    prefix: str = CASE_PREFIX,
) -> list[dict[str, str]]:
    """Write cases ``first .. first + num_cases - 1`` (existing complete cases are kept), with a progress bar."""
    from tqdm.auto import tqdm

    indices = range(int(first), int(first) + int(num_cases))
    args = [(out_dir, i, seed, options, prefix) for i in indices]
    if workers <= 1:
        return [write_case(*a) for a in tqdm(args, desc="synthetic gliomas")]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(_write_case_args, args), total=len(args), desc="synthetic gliomas"))


def _write_case_args(args) -> dict[str, str]:
    return write_case(*args)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_cases", type=int, default=120)
    parser.add_argument("--first", type=int, default=1, help="index of the first case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--case_prefix",
        default=CASE_PREFIX,
        help="case names <prefix><index>: another prefix lets cases of another seed share a datalist",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no_deform", action="store_true", help="ablation: no deformation, rotation or flip")
    parser.add_argument("--fixed_contrast", action="store_true", help="ablation: fixed tissue intensities")
    parser.add_argument("--no_distractors", action="store_true", help="ablation: no vessels, WMH or cavities")
    a = parser.parse_args(argv)
    if importlib.util.find_spec("nilearn") is None:  # before anything is written
        raise SystemExit(f"error: {anatomy.NILEARN_MISSING}")
    options = Options(deform=not a.no_deform, random_contrast=not a.fixed_contrast, distractors=not a.no_distractors)
    write_dataset(a.output_dir, a.num_cases, a.seed, options, a.workers, a.first, a.case_prefix)


if __name__ == "__main__":
    main()
