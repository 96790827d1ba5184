"""Random smooth fields shared by the anatomy, tumour and intensity models of the generator.

All fields are float32 arrays on a 1 mm grid, drawn from a ``numpy.random.Generator`` so a case is reproducible
from its seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance noise that varies over about ``scale`` voxels: ``shape`` -> float32 ``shape``.

    A coarse normal grid (one node every ``scale`` voxels) is upsampled trilinearly (torch's interpolation:
    about 0.05 s for a BraTS-sized volume), so the cost does not grow with the smoothness.
    """
    shape = tuple(int(s) for s in shape)
    coarse = tuple(max(2, int(np.ceil(s / max(scale, 1.0))) + 1) for s in shape)
    grid = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    field = F.interpolate(grid, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()
    return (field - field.mean()) / (field.std() + 1e-6)


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A draw of ``logU(low, high)``: uniform in the logarithm, for volumes spread over orders of magnitude."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def random_rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """A 3x3 rotation matrix with three Euler angles uniform in ``[-max_angle, max_angle]`` (radians)."""
    a, b, c = rng.uniform(-max_angle, max_angle, size=3)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def box_around(center: Sequence[float], radius: float, shape: Sequence[int]) -> tuple[slice, ...]:
    """Slices of the box of half-size ``radius`` around ``center``, clipped to ``shape``."""
    return tuple(
        slice(max(0, int(np.floor(c - radius))), min(int(s), int(np.ceil(c + radius)) + 1))
        for c, s in zip(center, shape)
    )


def box_coords(box: Sequence[slice]) -> np.ndarray:
    """Voxel coordinates of a box: ``(3, *box_shape)`` float32."""
    return np.stack(np.meshgrid(*[np.arange(b.start, b.stop, dtype=np.float32) for b in box], indexing="ij"))
