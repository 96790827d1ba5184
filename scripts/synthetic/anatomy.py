"""Real anatomy for the generator: nilearn's MNI152 2009 tissue maps, randomly deformed onto the BraTS grid.

nilearn's wheel ships the MNI152 2009 template with grey- and white-matter probability maps (1 mm,
197 x 233 x 189). It has no CSF map: the brain is the closed, hole-filled grey+white-matter mask (so the
ventricles and the sulci inside it are included, and the generous template mask with its extra-cerebral CSF is
not), and CSF is what the brain holds besides grey and white matter.

A case's anatomy is the template seen through a random spatial transform (affine: rotation, per-axis scaling,
translation, optional left-right flip; plus a smooth random deformation; plus the tumour's mass effect, added by
the caller), sampled on the BraTS grid: 240 x 240 x 155 voxels of 1 mm, skull-stripped, zero background.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from scripts.synthetic.fields import box_coords, random_rotation, smooth_noise

BRATS_SHAPE = (240, 240, 155)
# Voxel index (RAS array order) on the BraTS grid where the brain centre lands before the random shift.
BRATS_BRAIN_CENTRE = np.array([119.0, 109.0, 73.0])


@dataclass(frozen=True, eq=False)
class Template:
    """The MNI152 maps in template voxel space (RAS array order): float32 probabilities in [0, 1]."""

    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    centre: np.ndarray  # voxel index of the brain's centre of mass
    depth: np.ndarray  # distance (mm) to the brain's surface, 0 outside
    supratentorial: np.ndarray  # bool: above the tentorium (cerebrum), where adult gliomas grow


def _supratentorial(shape, affine: np.ndarray) -> np.ndarray:
    """Voxels above the tentorium, in MNI mm: not the cerebellum (``z < -18`` behind ``y = -35``) and not the
    brainstem (``|x| < 14``, ``-45 < y < -10``, ``z < -8``): an approximation of the posterior fossa that is
    enough to keep the tumours where adult gliomas grow."""
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    x, y, z = (affine[:3, :3] @ ijk + affine[:3, 3:]).reshape(3, *shape)
    cerebellum = (z < -18) & (y < -35)
    brainstem = (np.abs(x) < 14) & (y > -45) & (y < -10) & (z < -8)
    return ~(cerebellum | brainstem)


NILEARN_MISSING = (
    "the synthetic generator needs nilearn, an optional extra (its wheel ships the MNI152 tissue maps the generator "
    "deforms): pip install -c constraints.txt -r requirements-synthetic.txt"
)


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Load nilearn's MNI152 2009 grey/white-matter maps (shipped in its wheel) and derive the brain mask.

    Raises:
        ImportError: nilearn is not installed (:data:`NILEARN_MISSING` says how to install it).
    """
    try:
        from nilearn import datasets
    except ImportError:
        raise ImportError(NILEARN_MISSING) from None

    gm_image = datasets.load_mni152_gm_template(resolution=1)
    gm = gm_image.get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    tissue = ndi.binary_closing(gm + wm > 0.25, structure=ndi.generate_binary_structure(3, 1), iterations=3)
    brain = ndi.binary_fill_holes(ndi.binary_dilation(tissue, iterations=1)).astype(np.float32)
    brain = ndi.gaussian_filter(brain, 0.6)
    centre = np.array(ndi.center_of_mass(brain > 0.5))
    depth = ndi.distance_transform_edt(brain > 0.5).astype(np.float32)
    return Template(
        gm=np.clip(gm, 0, 1),
        wm=np.clip(wm, 0, 1),
        brain=np.clip(brain, 0, 1),
        centre=centre,
        depth=depth,
        supratentorial=_supratentorial(gm.shape, gm_image.affine),
    )


@dataclass
class Warp:
    """Map from BraTS-grid voxels to template voxels: ``src = matrix @ (x - target_centre) + source_centre +
    displacement(x)``."""

    matrix: np.ndarray
    target_centre: np.ndarray
    source_centre: np.ndarray
    displacement: np.ndarray | None  # (3, *shape) in template voxels, or None

    def to_target(self, source: np.ndarray) -> np.ndarray:
        """Target voxel of a template voxel ``(3,)`` through the affine part (the smooth deformation, a few mm,
        is left out)."""
        return np.linalg.inv(self.matrix) @ (np.asarray(source, float) - self.source_centre) + self.target_centre

    def target_box(self, template: Template, shape=BRATS_SHAPE, margin: int = 10) -> tuple[slice, ...]:
        """The box of the target grid that holds the warped brain (plus ``margin`` voxels for the deformation
        and the mass effect), clipped to ``shape``."""
        idx = np.argwhere(template.brain > 0.05)
        lo, hi = idx.min(0), idx.max(0)
        corners = [[(lo, hi)[b][d] for d, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)]
        target = np.array([self.to_target(c) for c in corners])
        start = np.maximum(np.floor(target.min(0)) - margin, 0).astype(int)
        stop = np.minimum(np.ceil(target.max(0)) + margin + 1, shape).astype(int)
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))

    def coords(self, box: tuple[slice, ...], extra: np.ndarray | None = None) -> np.ndarray:
        """Template coordinates ``(3, *box_shape)`` of the target voxels in ``box``; ``extra`` is a target-space
        displacement on the same box (e.g. mass effect: the anatomy at ``x`` comes from ``x - extra``)."""
        grid = box_coords(box)
        for d in range(3):
            grid[d] -= self.target_centre[d]
        if extra is not None:
            grid -= extra
        src = np.einsum("ij,j...->i...", self.matrix.astype(np.float32), grid)
        for d in range(3):
            src[d] += self.source_centre[d]
        if self.displacement is not None:
            src += self.displacement[(slice(None), *box)]
        return src


def random_warp(
    rng: np.random.Generator,
    template: Template,
    shape=BRATS_SHAPE,
    deform: bool = True,
) -> Warp:
    """A random anatomy transform: rotation up to 12 degrees, scaling 0.82-1.0 per axis (brain volumes from
    about 0.55x to 1x the template's 1640 mL), shift up to 6 mm, left-right flip with probability 0.5 and, if
    ``deform``, a smooth random displacement (about 40 mm wavelength, up to about 4 mm)."""
    scale = rng.uniform(0.82, 1.0, size=3)
    flip = np.diag([-1.0 if rng.random() < 0.5 else 1.0, 1.0, 1.0])
    # target -> source: inverse scaling, rotation, flip
    matrix = flip @ random_rotation(rng, np.deg2rad(12)) @ np.diag(1.0 / scale) if deform else np.diag(1.0 / scale)
    target_centre = BRATS_BRAIN_CENTRE + rng.uniform(-6, 6, size=3)
    displacement = None
    if deform:
        amplitude = rng.uniform(1.0, 4.0)
        displacement = np.stack([amplitude * smooth_noise(rng, shape, 40.0) for _ in range(3)])
    return Warp(matrix=matrix, target_centre=target_centre, source_centre=template.centre, displacement=displacement)


def sample(template: Template, coords: np.ndarray) -> dict[str, np.ndarray]:
    """Trilinear samples (0 outside) of the template's maps at template coordinates ``(3, *S)``: a dict of
    float32 arrays ``S`` with keys ``brain``, ``gm``, ``wm`` and ``depth``. Uses torch's ``grid_sample``
    (multi-threaded, several times faster than ``scipy.ndimage.map_coordinates``)."""
    stack = _template_stack(template)
    size = torch.tensor(stack.shape[2:], dtype=torch.float32)
    grid = torch.from_numpy(coords).permute(1, 2, 3, 0).flip(-1)  # (*S, 3) as (z, y, x) -> grid_sample's (x, y, z)
    grid = (2.0 * grid / (size.flip(0) - 1) - 1.0)[None]
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0].numpy()
    return dict(zip(("brain", "gm", "wm", "depth"), out))


@functools.lru_cache(maxsize=1)
def _template_stack(template: Template) -> torch.Tensor:
    return torch.from_numpy(np.stack([template.brain, template.gm, template.wm, template.depth]))[None]


def tissue_maps(template: Template, coords: np.ndarray) -> dict[str, np.ndarray]:
    """Grey matter, white matter, CSF and brain probabilities, and the depth under the brain surface (mm), at
    template coordinates ``(3, *S)``.

    CSF is the brain's remainder, ``brain - gm - wm`` clipped at 0; probabilities are then renormalised so
    ``gm + wm + csf == brain`` inside the brain.
    """
    maps = sample(template, coords)
    brain, gm, wm = maps["brain"], maps["gm"], maps["wm"]
    csf = np.clip(brain - gm - wm, 0.0, None)
    total = gm + wm + csf
    scale = np.divide(brain, total, out=np.zeros_like(total), where=total > 1e-6)
    return {"gm": gm * scale, "wm": wm * scale, "csf": csf * scale, "brain": brain, "depth": maps["depth"]}
