"""Structures that look like tumour in one sequence but are not (BraTS label 0), so the network learns to
ignore them:

- vessels (thin tortuous tubes in the sulci and cisterns) and choroid plexus (blobs in the ventricles) that
  enhance on T1ce (probability 0.8 and 0.6);
- periventricular FLAIR/T2 hyperintensities (caps and bands of white matter along the ventricles, probability
  0.5) and punctate white-matter hyperintensities (probability 0.4);
- a resection cavity: a CSF-filled blob of ``logU(2, 40)`` mL in the parenchyma (probability 0.2).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from scripts.synthetic.fields import box_around, box_coords, log_uniform, smooth_noise

DISTRACTORS = ("vessel", "wmh", "cavity")


def _balls(shape, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Union of balls (float32 mask) drawn into an array of ``shape``."""
    mask = np.zeros(shape, dtype=bool)
    for c, r in zip(centres, radii):
        lo = np.maximum(np.floor(c - r - 1), 0).astype(int)
        hi = np.minimum(np.ceil(c + r + 2), shape).astype(int)
        if np.any(hi <= lo):
            continue
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        d2 = sum((g - ci) ** 2 for g, ci in zip(grid, c))
        mask[tuple(slice(a, b) for a, b in zip(lo, hi))] |= d2 <= r * r
    return mask


def _random_voxels(rng: np.random.Generator, where: np.ndarray, n: int) -> np.ndarray:
    flat = np.flatnonzero(where)
    if flat.size == 0:
        return np.zeros((0, 3))
    return np.array(np.unravel_index(rng.choice(flat, size=n), where.shape), dtype=float).T


def _vessels(rng: np.random.Generator, maps: dict, mask: np.ndarray) -> np.ndarray:
    """Tortuous tubes (random walks with momentum) starting in CSF, radius 0.6-1.6 mm."""
    starts = _random_voxels(rng, (maps["csf"] > 0.5) & (maps["brain"] > 0.5), int(rng.integers(4, 14)))
    points, radii = [], []
    for start in starts:
        direction = rng.standard_normal(3)
        position, radius = start.copy(), rng.uniform(0.6, 1.6)
        for _ in range(int(rng.integers(15, 60))):
            direction = direction / np.linalg.norm(direction) + 0.35 * rng.standard_normal(3)
            position = position + direction / np.linalg.norm(direction)
            points.append(position.copy())
            radii.append(radius)
    vessel = _balls(mask.shape, np.array(points).reshape(-1, 3), np.array(radii))
    return vessel & (maps["brain"] > 0.5) & ~mask


def _choroid_plexus(rng: np.random.Generator, maps: dict, depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A few blobs of 2-5 mm radius inside the ventricles (deep CSF)."""
    centres = _random_voxels(rng, (maps["csf"] > 0.6) & (depth > 20), int(rng.integers(2, 6)))
    return _balls(mask.shape, centres, rng.uniform(2.0, 5.0, size=len(centres))) & (maps["csf"] > 0.3) & ~mask


def _periventricular(rng: np.random.Generator, maps: dict, depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """White matter within a few mm (Gaussian sigma 1-3.5 mm) of the ventricles, thinned by smooth noise."""
    ventricles = (maps["csf"] > 0.6) & (depth > 15)
    near = ndi.gaussian_filter(ventricles.astype(np.float32), rng.uniform(1.0, 3.5)) > 0.1
    patchy = smooth_noise(rng, mask.shape, 8.0) > rng.uniform(-0.5, 0.8)
    return near & patchy & (maps["wm"] > 0.5) & ~mask


def _punctate(rng: np.random.Generator, maps: dict, mask: np.ndarray) -> np.ndarray:
    centres = _random_voxels(rng, maps["wm"] > 0.8, int(rng.integers(3, 16)))
    return _balls(mask.shape, centres, rng.uniform(1.0, 3.5, size=len(centres))) & ~mask


def _cavity(rng: np.random.Generator, maps: dict, depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    volume = log_uniform(rng, 2.0, 40.0) * 1000.0
    radius = (3 * volume / (4 * np.pi)) ** (1 / 3)
    centre = _random_voxels(rng, (maps["gm"] + maps["wm"] > 0.6) & (depth > radius), 1)
    if len(centre) == 0:
        return np.zeros_like(mask)
    box = box_around(centre[0], 1.3 * radius + 1, mask.shape)
    offset = box_coords(box) - centre[0].astype(np.float32)[:, None, None, None]
    lobes = smooth_noise(rng, offset.shape[1:], max(3.0, radius / 2)) * 0.25 * radius
    cavity = np.zeros_like(mask)
    cavity[box] = np.sqrt((offset**2).sum(0)) + lobes < radius
    return cavity & (maps["brain"] > 0.5) & ~mask


def paint_distractors(rng: np.random.Generator, maps: dict[str, np.ndarray], tumour: np.ndarray) -> dict:
    """Boolean masks ``vessel``, ``wmh`` and ``cavity`` on the maps' grid, never overlapping the tumour.

    ``vessel`` holds vessels and choroid plexus (both enhance on T1ce); ``wmh`` the white-matter
    hyperintensities. Each part is present with its probability (see the module docstring).
    """
    mask = tumour > 0
    depth = maps["depth"]
    out = {name: np.zeros(mask.shape, dtype=bool) for name in DISTRACTORS}
    if rng.random() < 0.8:
        out["vessel"] |= _vessels(rng, maps, mask)
    if rng.random() < 0.6:
        out["vessel"] |= _choroid_plexus(rng, maps, depth, mask)
    if rng.random() < 0.5:
        out["wmh"] |= _periventricular(rng, maps, depth, mask)
    if rng.random() < 0.4:
        out["wmh"] |= _punctate(rng, maps, mask)
    if rng.random() < 0.2:
        out["cavity"] = _cavity(rng, maps, depth, mask | out["vessel"])
    out["wmh"] &= ~(out["vessel"] | out["cavity"])
    return out
