"""Glioma-like tumours for the generator: lobulated core, necrosis, enhancing rim, oedema along white matter,
mass effect.

Distributions (per case; ``U`` uniform, ``logU`` log-uniform):

- tumour core (necrosis, non-enhancing and enhancing tumour) ``logU(2, 90)`` mL; peritumoral oedema
  ``logU(20, 150)`` mL with probability 0.85 (larger than the core in most cases, as in glioblastoma), otherwise
  ``logU(2, 20)`` mL (little oedema, as in many lower-grade gliomas); whole tumour = core + oedema;
- location: a supratentorial parenchymal voxel (not the cerebellum or brainstem) of either hemisphere, deep (more
  than 25 mm under the brain surface) or cortical (8-25 mm) with probability 1/2 each, at least 0.6 core radii
  inside the brain;
- shape: an ellipsoid (axis ratios ``U(0.7, 1.3)``, random orientation) whose surface is displaced by smooth noise
  (``U(0.1, 0.4)`` of the radius, wavelength about half the radius): irregular, lobulated;
- kind: necrotic core with an enhancing rim of varying thickness (55 %), the same with a patchy rim (20 %),
  solid enhancing without necrosis (10 %), non-enhancing low-grade-like core (15 %);
- oedema: voxels whose distance from the core, stretched where white matter is dense (up to 2.5x farther along
  white matter) and perturbed by smooth noise, is below a threshold set to reach the drawn whole-tumour volume
  (at most 35 mm); it does not enter the ventricles;
- mass effect: the surrounding anatomy is pushed outwards by ``U(0, 0.6)`` core radii at the core's surface,
  decaying with distance.

BraTS labels: 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing tumour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from scripts.synthetic.anatomy import Template, Warp
from scripts.synthetic.fields import box_around, box_coords, log_uniform, random_rotation, smooth_noise

KINDS = ("rim", "patchy", "solid", "nonenhancing")
KIND_PROBABILITIES = (0.55, 0.2, 0.1, 0.15)
CORE_ML = (2.0, 90.0)  # log-uniform
OEDEMA_ML = (20.0, 150.0)  # log-uniform, with probability OEDEMA_LARGE
SMALL_OEDEMA_ML = (2.0, 20.0)  # log-uniform, otherwise
OEDEMA_LARGE = 0.85


@dataclass
class TumourSpec:
    """One tumour, in target-box voxel coordinates (1 mm)."""

    centre: np.ndarray
    wt_ml: float
    core_ml: float
    axes: np.ndarray
    rotation: np.ndarray
    lobulation: float
    kind: str
    necrosis: float  # relative radius of the necrotic core (0 for none)
    mass_effect: float

    @property
    def core_radius(self) -> float:
        return float((3.0 * self.core_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))

    @property
    def wt_radius(self) -> float:
        return float((3.0 * self.wt_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))


def _pick_centre(rng: np.random.Generator, template: Template, core_radius: float) -> np.ndarray:
    """A template voxel for the tumour centre: parenchyma, deep or cortical, far enough inside the brain."""
    deep = rng.random() < 0.5
    depth = template.depth
    parenchyma = (template.gm + template.wm > 0.6) & template.supratentorial
    ok = parenchyma & (depth > max(8.0, 0.6 * core_radius))
    ok &= (depth > 25.0) if deep else (depth <= 25.0)
    if not ok.any():  # a core too large for the cortex: any parenchymal voxel deep enough
        ok = parenchyma & (depth > 0.6 * core_radius)
    candidates = np.flatnonzero(ok[::2, ::2, ::2])
    index = np.unravel_index(rng.choice(candidates), ok[::2, ::2, ::2].shape)
    return np.array(index, dtype=float) * 2.0


def sample_tumour(rng: np.random.Generator, template: Template, warp: Warp, box: tuple[slice, ...]) -> TumourSpec:
    """Draw a tumour for a case whose anatomy is ``template`` seen through ``warp``, on the target ``box``."""
    core_ml = log_uniform(rng, *CORE_ML)
    wt_ml = core_ml + log_uniform(rng, *(OEDEMA_ML if rng.random() < OEDEMA_LARGE else SMALL_OEDEMA_ML))
    kind = str(rng.choice(KINDS, p=KIND_PROBABILITIES))
    spec = TumourSpec(
        centre=np.zeros(3),
        wt_ml=wt_ml,
        core_ml=core_ml,
        axes=rng.uniform(0.7, 1.3, size=3),
        rotation=random_rotation(rng, np.pi),
        lobulation=rng.uniform(0.1, 0.4),
        kind=kind,
        necrosis=rng.uniform(0.3, 0.8) if kind in ("rim", "patchy") else 0.0,
        mass_effect=rng.uniform(0.0, 0.6),
    )
    source = _pick_centre(rng, template, spec.core_radius)
    spec.centre = warp.to_target(source) - np.array([b.start for b in box], dtype=float)
    return spec


def mass_effect(spec: TumourSpec, shape) -> np.ndarray:
    """Target-space displacement ``(3, *shape)``: outwards, ``mass_effect * R`` at the core surface (radius
    ``R``), decaying exponentially over ``1.5 R + 10`` mm; inside the core it grows linearly from 0."""
    field = np.zeros((3, *shape), dtype=np.float32)
    radius = spec.core_radius
    decay = 1.5 * radius + 10.0
    box = box_around(spec.centre, radius + 4.0 * decay, shape)
    offset = box_coords(box) - spec.centre.astype(np.float32)[:, None, None, None]
    r = np.sqrt((offset**2).sum(0)) + 1e-3
    magnitude = spec.mass_effect * np.where(r < radius, r, radius * np.exp(-(r - radius) / decay))
    field[(slice(None), *box)] = offset * (magnitude / r)
    return field


def _core_distance(rng: np.random.Generator, spec: TumourSpec, box: tuple[slice, ...]) -> np.ndarray:
    """Normalised lobulated distance of the local ``box`` voxels to the centre: the core is ``< 1``."""
    offset = box_coords(box) - spec.centre.astype(np.float32)[:, None, None, None]
    local = np.einsum("ji,j...->i...", spec.rotation.astype(np.float32), offset)
    local /= spec.axes.astype(np.float32)[:, None, None, None]
    radius = spec.core_radius
    dist = np.sqrt((local**2).sum(0)) / radius
    shape = dist.shape
    return dist + spec.lobulation * smooth_noise(rng, shape, max(3.0, 0.5 * radius))


def _core_labels(rng: np.random.Generator, spec: TumourSpec, dist: np.ndarray) -> np.ndarray:
    """BraTS labels of the core (1 necrotic/non-enhancing, 4 enhancing) from the lobulated distance."""
    core = dist < 1.0
    labels = np.zeros(dist.shape, np.uint8)
    if spec.kind == "nonenhancing":
        labels[core] = 1
        return labels
    labels[core] = 4
    if spec.necrosis > 0:
        necrotic = dist + 0.15 * smooth_noise(rng, dist.shape, max(3.0, 0.3 * spec.core_radius)) < spec.necrosis
        labels[core & necrotic] = 1
    if spec.kind == "patchy":
        gaps = smooth_noise(rng, dist.shape, max(3.0, 0.4 * spec.core_radius)) < rng.uniform(-0.5, 0.5)
        labels[core & gaps & (labels == 4)] = 1
    return labels


def _oedema(rng: np.random.Generator, spec: TumourSpec, core: np.ndarray, maps: dict, box) -> np.ndarray:
    """Oedema mask on the local ``box``: spreads preferentially along white matter, up to the drawn volume."""
    wm, csf, brain = (maps[k][box] for k in ("wm", "csf", "brain"))
    distance = ndi.distance_transform_edt(~core)
    stretch = 1.0 + 1.5 * np.clip(wm, 0, 1) + 0.3 * smooth_noise(rng, core.shape, 6.0)
    field = distance / np.clip(stretch, 0.5, None)
    allowed = (brain > 0.5) & (csf < 0.6) & ~core
    needed = int(round((spec.wt_ml - spec.core_ml) * 1000.0))
    values = np.sort(field[allowed])
    if needed <= 0 or values.size == 0:
        return np.zeros_like(core)
    threshold = min(values[min(needed, values.size) - 1], 35.0)
    return allowed & (field <= threshold)


def paint_tumour(rng: np.random.Generator, spec: TumourSpec, maps: dict[str, np.ndarray]) -> np.ndarray:
    """The tumour's BraTS label map (uint8 0/1/2/4) on the maps' grid."""
    shape = maps["brain"].shape
    box = box_around(spec.centre, 1.6 * max(spec.core_radius, 1.0) * spec.axes.max() + 40.0, shape)
    dist = _core_distance(rng, spec, box)
    local = _core_labels(rng, spec, dist)
    local[_oedema(rng, spec, local > 0, maps, box)] = 2
    labels = np.zeros(shape, np.uint8)
    labels[box] = local
    return labels
