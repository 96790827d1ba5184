"""Simulated acquisition changes for the robustness study (:mod:`scripts.robustness`), each at several severities.

Every degradation takes the raw four-channel image (C, X, Y, Z) in the bundle's resampled grid (RAS, ``pixdim``
mm; before intensity normalisation), a severity and a seed, and returns the degraded image. The background is
set back to 0 afterwards (the images are skull-stripped after acquisition, so an acquisition change does not
move the brain mask); a missing modality is the exception: its channel is all zero.

| name | severities | what it does |
|---|---|---|
| ``slice_thickness`` | 3, 5, 7 mm | thick axial slices: average over the slab, keep one slice per slab, linear interpolation back |
| ``kernel_smooth`` | sigma 0.5, 1, 1.5 mm | soft reconstruction kernel: Gaussian smoothing (MONAI ``GaussianSmooth``) |
| ``kernel_sharp`` | 0.5, 1, 2 | sharp kernel: unsharp masking, x + a (x - smooth(x, 1 mm)) |
| ``rician_noise`` | 0.05, 0.1, 0.2 | Rician noise, std relative to each channel's std (MONAI ``RandRicianNoise``) |
| ``bias_field`` | 0.2, 0.4, 0.6 | smooth multiplicative field, degree 3, coefficients in [-c, c] (MONAI ``RandBiasField``) |
| ``motion`` | 1, 2, 3 | rigid motion during the acquisition, k-space composed of moved copies (TorchIO ``RandomMotion``: up to 2s degrees, 2s mm, s+1 movements) |
| ``ghosting`` | 0.3, 0.6, 0.9 | ghosts along the phase-encoding axis (TorchIO ``RandomGhosting``, 4 ghosts, that intensity) |
| ``gibbs`` | 0.3, 0.5, 0.7 | Gibbs ringing: k-space truncated (MONAI ``GibbsNoise``, alpha) |
| ``gamma`` | 0.5, 0.75, 1.5, 2 | intensity gamma (MONAI ``AdjustContrast``) |
| ``contrast`` | 0.5, 0.75, 1.5 | linear contrast around each channel's brain mean |
| ``missing_modality`` | T1, T1ce, T2, FLAIR, T1+T2, T1+T1ce+T2 | those channels all zero (the last two leave T1ce + FLAIR and FLAIR alone) |

The same seed is used for every severity of a degradation, so the random parts scale with the severity instead
of being drawn again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import AdjustContrast, GaussianSmooth, GibbsNoise, RandBiasField, RandRicianNoise

from scripts.conventions import MODALITY_NAMES


def _slice_thickness(img: torch.Tensor, mm: float, spacing, seed: int) -> torch.Tensor:
    k = max(1, int(round(mm / spacing[2])))
    depth = img.shape[-1]
    pad = (-depth) % k
    x = torch.cat([img, img[..., -1:].expand(*img.shape[:-1], pad)], -1) if pad else img
    slabs = x.reshape(*x.shape[:-1], -1, k).mean(-1)  # one value per slab
    up = F.interpolate(slabs.reshape(-1, 1, slabs.shape[-1]), scale_factor=k, mode="linear", align_corners=False)
    return up.reshape(*img.shape[:-1], -1)[..., :depth]


def _smooth(img: torch.Tensor, sigma_mm: float, spacing, seed: int = 0) -> torch.Tensor:
    return GaussianSmooth(sigma=[sigma_mm / s for s in spacing])(img)


def _sharpen(img: torch.Tensor, amount: float, spacing, seed: int) -> torch.Tensor:
    return (img + amount * (img - _smooth(img, 1.0, spacing))).clamp_min(0)


def _rician(img: torch.Tensor, std: float, spacing, seed: int) -> torch.Tensor:
    noise = RandRicianNoise(prob=1.0, std=std, relative=True, channel_wise=True, sample_std=False)
    noise.set_random_state(seed)
    return torch.as_tensor(noise(img))


def _bias(img: torch.Tensor, coeff: float, spacing, seed: int) -> torch.Tensor:
    field = RandBiasField(degree=3, coeff_range=(-coeff, coeff), prob=1.0)
    field.set_random_state(seed)
    return torch.as_tensor(field(img))


def _torchio(transform, img: torch.Tensor, spacing, seed: int) -> torch.Tensor:
    import torchio as tio

    affine = np.diag([*spacing, 1.0])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        out = transform(tio.ScalarImage(tensor=img.float(), affine=affine))
    return out.data.float().clamp_min(0)


def _motion(img: torch.Tensor, level: float, spacing, seed: int) -> torch.Tensor:
    import torchio as tio

    move = tio.RandomMotion(degrees=2.0 * level, translation=2.0 * level, num_transforms=int(level) + 1)
    return _torchio(move, img, spacing, seed)


def _ghosting(img: torch.Tensor, intensity: float, spacing, seed: int) -> torch.Tensor:
    import torchio as tio

    ghosts = tio.RandomGhosting(num_ghosts=(4, 4), axes=(1,), intensity=(intensity, intensity))
    return _torchio(ghosts, img, spacing, seed)


def _gibbs(img: torch.Tensor, alpha: float, spacing, seed: int) -> torch.Tensor:
    return torch.as_tensor(GibbsNoise(alpha=alpha)(img)).clamp_min(0)


def _gamma(img: torch.Tensor, gamma: float, spacing, seed: int) -> torch.Tensor:
    return torch.as_tensor(AdjustContrast(gamma=gamma)(img))


def _contrast(img: torch.Tensor, factor: float, spacing, seed: int) -> torch.Tensor:
    brain = (img != 0).any(0)
    out = img.clone()
    for c in range(img.shape[0]):
        mean = img[c][brain].mean() if brain.any() else img[c].mean()
        out[c] = (mean + factor * (img[c] - mean)).clamp_min(0)
    return out


def _missing(img: torch.Tensor, modalities: str, spacing, seed: int) -> torch.Tensor:
    out = img.clone()
    for name in modalities.split("+"):
        out[MODALITY_NAMES.index(name)] = 0
    return out


DEGRADATIONS: dict[str, tuple[tuple, Callable]] = {
    "slice_thickness": ((3, 5, 7), _slice_thickness),
    "kernel_smooth": ((0.5, 1.0, 1.5), _smooth),
    "kernel_sharp": ((0.5, 1.0, 2.0), _sharpen),
    "rician_noise": ((0.05, 0.1, 0.2), _rician),
    "bias_field": ((0.2, 0.4, 0.6), _bias),
    "motion": ((1, 2, 3), _motion),
    "ghosting": ((0.3, 0.6, 0.9), _ghosting),
    "gibbs": ((0.3, 0.5, 0.7), _gibbs),
    "gamma": ((0.5, 0.75, 1.5, 2.0), _gamma),
    "contrast": ((0.5, 0.75, 1.5), _contrast),
    "missing_modality": ((*MODALITY_NAMES, "T1+T2", "T1+T1ce+T2"), _missing),
}
"""name -> (severities, function(image, severity, spacing, seed))."""


def degrade(image: torch.Tensor, name: str, severity, spacing, seed: int) -> torch.Tensor:
    """``image`` (C, X, Y, Z) with degradation ``name`` at ``severity``; the background stays 0."""
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; known: {', '.join(DEGRADATIONS)}")
    img = torch.as_tensor(image).float().clone()  # some MONAI transforms work in place
    brain = (img != 0).any(0, keepdim=True)
    out = DEGRADATIONS[name][1](img, severity, tuple(float(s) for s in spacing), int(seed))
    return torch.as_tensor(out).float() * brain
