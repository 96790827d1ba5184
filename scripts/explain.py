"""Grad-CAM for the segmentation network, one map per region (TC, WT, ET), on MONAI's ``monai.visualize``.

A segmentation network has no class score, so :class:`RegionScore` makes one the Seg-Grad-CAM way (Vinogradova
et al., 2020): the score of a region is the sum of that region's logits inside the region as predicted (the
whole image when the prediction of the region is empty). MONAI's ``GradCAM`` then weighs the target layer's
activations by the spatial mean of the score's gradient, keeps the positive part and upsamples the map to the
input's size. The map is scaled by its maximum (0 stays "no evidence"; MONAI's default normaliser would map the
maximum to 0 instead).

The default target layer is the bottleneck (the deepest encoder block of :class:`scripts.networks.ResUNet`):
the most semantic features, at 1/8 of the input resolution. Only that layer's parameters take gradients while
the maps are computed, so the backward pass stops there. The decoder blocks after it (each stage's ``block``) are
recomputed during the backward pass instead of keeping their activations (``torch.utils.checkpoint``): the maps
are the same, the memory of the full-resolution decoder is held one block at a time.

:func:`randomisation_check` is the model-randomisation sanity test of Adebayo et al. (2018): maps computed with
the trained weights should differ from maps computed with re-initialised weights (low rank correlation); a
Grad-CAM that does not change is explaining the input, not the model.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from monai.transforms import DivisiblePad
from monai.visualize import GradCAM
from torch import nn
from torch.utils.checkpoint import checkpoint

from scripts.conventions import REGIONS


class RegionScore(nn.Module):
    """``network`` (B, C, *S) -> logits (B, R, *S) turned into region scores (B, R): the sum of each region's
    logits over ``masks`` (B, R, *S), or over the voxels the network itself predicts (logit > 0) when ``masks``
    is None; a region whose mask is empty is scored over the whole image.

    With ``reuse`` set, a call with the very tensor of the previous call returns the previous scores (and
    graph): the three regions' maps then share one forward pass."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.masks: torch.Tensor | None = None
        self.reuse = False
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reuse and self._last is not None and self._last[0] is x:
            return self._last[1]
        scores = self._scores(x)
        self._last = (x, scores) if self.reuse else None
        return scores

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        masks = (logits > 0) if self.masks is None else self.masks.to(logits.device).bool()
        empty = masks.flatten(2).sum(-1) == 0
        weights = torch.where(empty.view(*empty.shape, *[1] * (logits.ndim - 2)), torch.ones_like(logits), masks)
        return (logits * weights).flatten(2).sum(-1)


def scale_by_max(cam: torch.Tensor) -> torch.Tensor:
    """Each map (B, 1, *S) divided by its maximum; an all-zero map stays zero."""
    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, *[1] * (cam.ndim - 1))
    return cam / peak


def default_target_layer(network: nn.Module) -> str:
    """Name of the bottleneck: the deepest block of ``network.encoder`` (``encoder.<L-1>`` for ResUNet)."""
    encoder = getattr(network, "encoder", None)
    if encoder is None or not len(encoder):
        raise ValueError(
            f"{type(network).__name__} has no 'encoder' block list: give the Grad-CAM target layer by name "
            f"(one of {[n for n, _ in network.named_modules()][1:12]}...)"
        )
    return f"encoder.{len(encoder) - 1}"


@contextlib.contextmanager
def _gradients_only_for(module: nn.Module, trainable: nn.Module) -> Iterator[None]:
    """Inside the block only ``trainable``'s parameters require gradients (restored after)."""
    before = {p: p.requires_grad for p in module.parameters()}
    keep = {id(p) for p in trainable.parameters()}
    try:
        for p in module.parameters():
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in before.items():
            p.requires_grad_(flag)


class Recomputed(nn.Module):
    """``module`` (one tensor in, one out) whose activations are recomputed in the backward pass instead of kept,
    when its input requires gradients (``torch.utils.checkpoint``, non-reentrant)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(self.module, x, use_reentrant=False)
        return self.module(x)


def recompute_decoder_blocks(network: nn.Module) -> int:
    """Wrap the ``block`` of every stage of ``network.decoder`` in :class:`Recomputed`; returns how many."""
    stages = [m for m in getattr(network, "decoder", []) if isinstance(getattr(m, "block", None), nn.Module)]
    for stage in stages:
        stage.block = Recomputed(stage.block)
    return len(stages)


class RegionGradCAM:
    """Grad-CAM maps of every region of a segmentation network.

    ``network`` is deep-copied (MONAI's hooks stay on the copy, the caller's network is untouched);
    ``target_layer`` is a module name of ``network`` (default: :func:`default_target_layer`). Call with an
    input (1, C, *S) and, optionally, the predicted region masks (1, R, *S) that define the scores; returns
    (R, *S) maps in [0, 1] (the input is padded to the network's divisor and the maps cropped back).
    ``recompute``: recompute the decoder blocks in the backward pass (:func:`recompute_decoder_blocks`; not when
    the target layer is in the decoder). ``margin``: with masks, the maps are computed in the box around the
    predicted regions widened by ``margin`` voxels on every side (:func:`tumour_box`; 0 outside it), which bounds
    the memory by the tumour's size rather than the brain's; ``None`` computes them on the whole input.
    """

    def __init__(
        self,
        network: nn.Module,
        target_layer: str | None = None,
        divisor: int | Sequence[int] = 8,
        recompute: bool = True,
        margin: int | None = 32,
    ):
        self.scorer = RegionScore(copy.deepcopy(network).eval())
        self.target_layer = target_layer or default_target_layer(network)
        names = dict(self.scorer.network.named_modules())
        if self.target_layer not in names:
            raise ValueError(f"Grad-CAM target layer {self.target_layer!r} is not a module of the network")
        self.layer = names[self.target_layer]
        if recompute and not self.target_layer.startswith("decoder"):
            recompute_decoder_blocks(self.scorer.network)
        self.cam = GradCAM(self.scorer, target_layers=f"network.{self.target_layer}", postprocessing=scale_by_max)
        self.pad = DivisiblePad(k=divisor, mode="constant")
        self.margin = margin

    def __call__(self, image: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        if image.ndim < 3 or image.shape[0] != 1:
            raise ValueError(f"expected one image (1, C, *S), got shape {tuple(image.shape)}")
        box = None if masks is None or self.margin is None else tumour_box(masks, self.margin)
        if box is None:
            return self._maps(image, masks)
        region = (slice(None), slice(None), *box)
        out = torch.zeros((len(REGIONS), *image.shape[2:]), dtype=torch.float32, device=image.device)
        out[(slice(None), *box)] = self._maps(image[region], torch.as_tensor(masks)[region])
        return out

    def _maps(self, image: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        spatial = image.shape[2:]
        x = self.pad(image[0].as_tensor() if hasattr(image, "as_tensor") else image[0])[None]
        self.scorer.masks = None if masks is None else self.pad(torch.as_tensor(masks)[0])[None]
        maps, last = [], len(REGIONS) - 1
        self.scorer.reuse = True
        try:
            with torch.enable_grad(), _gradients_only_for(self.scorer, self.layer), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                for r in range(len(REGIONS)):
                    maps.append(self.cam(x, class_idx=r, retain_graph=r < last)[0, 0].detach())
        finally:
            self.scorer.reuse, self.scorer._last, self.scorer.masks = False, None, None
        crop = tuple(slice(0, s) for s in spatial)
        return torch.stack(maps)[(slice(None), *crop)]


def tumour_box(masks: torch.Tensor, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of every voxel of ``masks`` (1, R, *S) widened by ``margin`` voxels per side (clipped to
    the image), as slices; ``None`` when the masks are empty."""
    found = torch.nonzero(torch.as_tensor(masks)[0].any(dim=0))
    if len(found) == 0:
        return None
    low, high = found.min(dim=0).values, found.max(dim=0).values
    shape = masks.shape[2:]
    return tuple(slice(max(int(lo) - margin, 0), min(int(hi) + 1 + margin, n)) for lo, hi, n in zip(low, high, shape))


def _reinitialised(network: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``network`` with every layer that has ``reset_parameters`` re-initialised (seeded)."""
    net = copy.deepcopy(network)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
    return net


def _spearman(a: np.ndarray, b: np.ndarray, max_voxels: int = 200_000) -> float:
    from scipy.stats import spearmanr

    step = max(1, a.size // max_voxels)
    a, b = a.ravel()[::step], b.ravel()[::step]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # a constant map has no ranks to compare
    return float(spearmanr(a, b).statistic)


def randomisation_check(
    network: nn.Module, image: torch.Tensor, masks: torch.Tensor | None = None, target_layer: str | None = None
) -> dict:
    """Adebayo et al.'s model-randomisation test: Spearman rank correlation, per region, between the Grad-CAM
    maps of ``network`` and of the same architecture with re-initialised weights (same input and region
    masks). Values near 1 mean the maps do not depend on what the network learned; NaN where either map is
    constant (e.g. all zero: no positive evidence at the target layer)."""
    trained = RegionGradCAM(network, target_layer)(image, masks).cpu().numpy()
    random = RegionGradCAM(_reinitialised(network), target_layer)(image, masks).cpu().numpy()
    return {region: _spearman(trained[i], random[i]) for i, region in enumerate(REGIONS)}
