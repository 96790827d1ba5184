"""Intensity model of the generator: per-case random tissue intensities within MRI-physics orderings, then
acquisition artefacts.

Tissue classes: CSF, grey matter (GM), white matter (WM), necrosis, non-enhancing tumour (NET), enhancing tumour,
oedema, and the distractors (vessel/choroid plexus, white-matter hyperintensity, resection cavity). Mean
intensities are drawn per case and per sequence (arbitrary units in [0, 1]) so that:

- T1: WM > GM > CSF; oedema mildly darker than GM, necrosis darker than oedema, NET between them;
- T1ce: as T1, and enhancing tumour and vessels brighter than WM (oedema and necrosis do not enhance);
- T2: CSF > GM > WM; oedema, NET and necrosis brighter than GM, necrosis (fluid) brighter than oedema and the
  cellular NET darker than oedema; vessels dark (flow void);
- FLAIR: CSF darkest; oedema the brightest tissue, above NET, white-matter hyperintensities and GM; necrosis
  between CSF and oedema, below oedema by at least half the oedema-GM gap; cavity dark.

The orderings between oedema, necrosis and NET are the ones radiology describes for glioblastoma (vasogenic oedema
T2/FLAIR bright around the enhancing rim, a necrotic centre dark on T1 and T1ce and bright on T2); they make the
core and the oedema separable on at least one sequence, as the annotation protocol of BraTS requires
(docs/synthetic.md cites the sources).

Artefacts, each drawn per sequence: texture (smooth multiplicative noise), partial-volume blur (Gaussian sigma
``U(0.2, 1.0)`` mm), thick slices with probability 0.4 (``U(2, 6)`` mm along one axis, resampled back to 1 mm),
a smooth bias field (``exp(U(0, 0.35) * noise)``, 50 mm wavelength), a gamma ``exp(N(0, 0.3))`` and Rician
noise (sigma ``U(0.005, 0.05)`` of the maximum). Images are skull-stripped (zero outside the brain) and scaled
to int16 "scanner" values with a random maximum of 400-4000.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from scripts.conventions import MODALITIES
from scripts.synthetic.fields import smooth_noise

CLASSES = ("csf", "gm", "wm", "necrosis", "net", "enhancing", "oedema", "vessel", "wmh", "cavity")


def _u(rng: np.random.Generator | None, low: float, high: float) -> float:
    """``U(low, high)``; the midpoint when ``rng`` is None (fixed contrast, for the ablation)."""
    return 0.5 * (low + high) if rng is None else float(rng.uniform(low, high))


def _t1(rng, enhanced: bool) -> dict[str, float]:
    csf = _u(rng, 0.05, 0.3)
    gm = csf + _u(rng, 0.12, 0.35)
    wm = gm + _u(rng, 0.06, 0.3)
    c = {"csf": csf, "gm": gm, "wm": wm, "oedema": _u(rng, csf + 0.5 * (gm - csf), gm)}
    c["necrosis"] = _u(rng, 0.7 * csf, csf + 0.4 * (gm - csf))
    c["net"] = _u(rng, c["necrosis"], c["oedema"])
    c["wmh"] = _u(rng, gm, wm)
    c["cavity"] = csf * _u(rng, 0.9, 1.1)
    if enhanced:
        c["enhancing"] = wm + _u(rng, 0.1, 0.5)
        c["vessel"] = wm + _u(rng, 0.05, 0.5)
    else:
        c["enhancing"] = _u(rng, csf + 0.5 * (gm - csf), gm)
        c["vessel"] = _u(rng, csf, gm)
    return c


def _t2(rng) -> dict[str, float]:
    wm = _u(rng, 0.08, 0.3)
    gm = wm + _u(rng, 0.06, 0.25)
    csf = gm + _u(rng, 0.2, 0.5)
    oedema = gm + _u(rng, 0.2, 0.9) * (csf - gm)
    return {
        "csf": csf, "gm": gm, "wm": wm, "oedema": oedema,
        "necrosis": _u(rng, oedema, csf), "net": _u(rng, gm + 0.2 * (oedema - gm), oedema),
        "enhancing": _u(rng, gm, oedema), "vessel": _u(rng, 0.02, wm), "wmh": _u(rng, gm, oedema),
        "cavity": csf * _u(rng, 0.9, 1.1),
    }  # fmt: skip


def _flair(rng) -> dict[str, float]:
    csf = _u(rng, 0.02, 0.15)
    wm = csf + _u(rng, 0.12, 0.35)
    gm = wm + _u(rng, 0.03, 0.2)
    oedema = gm + _u(rng, 0.15, 0.5)
    return {
        "csf": csf, "gm": gm, "wm": wm, "oedema": oedema,
        "necrosis": _u(rng, csf, gm + 0.5 * (oedema - gm)), "net": _u(rng, gm + 0.05, oedema),
        "enhancing": _u(rng, gm, oedema), "vessel": _u(rng, csf, gm), "wmh": _u(rng, gm + 0.05, oedema),
        "cavity": csf * _u(rng, 0.8, 1.5),
    }  # fmt: skip


def sample_contrasts(rng: np.random.Generator | None) -> dict[str, dict[str, float]]:
    """Mean intensity of every class in every sequence (keys: :data:`scripts.conventions.MODALITIES`).

    ``rng=None`` gives the fixed midpoint contrast (the "no randomised contrast" ablation).
    """
    return dict(zip(MODALITIES, (_t1(rng, False), _t1(rng, True), _t2(rng), _flair(rng))))


def sharpen(maps: dict, power: float) -> dict[str, np.ndarray]:
    """Crisper tissue boundaries than the population-average template: ``p_k ** power``, renormalised to the
    brain (``power`` 1 keeps the template's partial volume)."""
    raised = {k: maps[k] ** power for k in ("csf", "gm", "wm")}
    total = sum(raised.values())
    scale = np.divide(maps["brain"], total, out=np.zeros_like(total), where=total > 1e-6)
    return {**maps, **{k: v * scale for k, v in raised.items()}}


def class_fractions(maps: dict, labels: np.ndarray, kind: str, distractors: dict) -> dict[str, np.ndarray]:
    """Soft fraction of each class in every voxel (partial volume from the 1 mm maps and 0.6 mm edge blur)."""

    def soft(mask):
        return ndi.gaussian_filter(mask.astype(np.float32), 0.6)

    core1 = soft(labels == 1)
    f = {"enhancing": soft(labels == 4), "oedema": soft(labels == 2)}
    f["necrosis"], f["net"] = (np.zeros_like(core1), core1) if kind == "nonenhancing" else (core1, 0 * core1)
    f.update({k: soft(v) for k, v in distractors.items()})
    replaced = np.clip(f["necrosis"] + f["net"] + f["enhancing"] + f["vessel"] + f["cavity"], 0, 1)
    for k in ("csf", "gm", "wm"):
        f[k] = maps[k] * (1.0 - replaced)
    return f


def render_sequence(rng: np.random.Generator, fractions: dict, contrast: dict[str, float]) -> np.ndarray:
    """Noise-free image of one sequence: mixture of class means, oedema and WMH blended over the tissue,
    with smooth texture."""
    image = sum(fractions[k] * contrast[k] for k in ("csf", "gm", "wm"))
    for k in ("oedema", "wmh"):
        strength = rng.uniform(0.75, 1.0) * fractions[k]
        image = image * (1.0 - strength) + strength * contrast[k]
    tumour = fractions["necrosis"] + fractions["net"] + fractions["enhancing"]
    image = image + sum(fractions[k] * contrast[k] for k in ("necrosis", "net", "enhancing", "vessel", "cavity"))
    texture = rng.uniform(0.0, 0.08) * smooth_noise(rng, image.shape, 3.0)
    texture += tumour * rng.uniform(0.0, 0.15) * smooth_noise(rng, image.shape, 4.0)
    return image * (1.0 + texture)


def _thick_slices(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Simulate a 2-6 mm slice thickness along one axis (z with probability 0.6) and resample back."""
    axis = 2 if rng.random() < 0.6 else int(rng.integers(0, 2))
    thickness = rng.uniform(2.0, 6.0)
    blurred = ndi.gaussian_filter1d(image, thickness / 2.355, axis=axis)
    coarse = ndi.zoom(blurred, [1.0 / thickness if d == axis else 1.0 for d in range(3)], order=1)
    back = ndi.zoom(coarse, [image.shape[d] / coarse.shape[d] for d in range(3)], order=1)
    return back[tuple(slice(0, s) for s in image.shape)]


def acquire(rng: np.random.Generator, image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Artefacts of one sequence (blur, thick slices, bias field, gamma, Rician noise), skull-stripping and
    int16 scaling."""
    image = ndi.gaussian_filter(image, rng.uniform(0.2, 1.0))
    if rng.random() < 0.4:
        image = _thick_slices(rng, image)
    image = image * np.exp(rng.uniform(0.0, 0.35) * smooth_noise(rng, image.shape, 50.0))
    image = np.clip(image / max(float(image[brain].max()), 1e-6), 0, 1) ** np.exp(rng.normal(0.0, 0.3))
    sigma = rng.uniform(0.005, 0.05)
    noisy = np.sqrt((image + sigma * rng.standard_normal(image.shape, np.float32)) ** 2
                    + (sigma * rng.standard_normal(image.shape, np.float32)) ** 2)  # fmt: skip
    noisy[~brain] = 0.0
    scale = rng.uniform(400.0, 4000.0) / max(float(noisy.max()), 1e-6)
    return np.round(noisy * scale).astype(np.int16)
