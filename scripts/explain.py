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
are the same, the memory of the full-resolution decoder is held one block at a time. Where the last decoder stage is
local (a ResUNet with batch norm, as the bundle's configs build it; :func:`slab_target`), the maps are computed
without MONAI's hooks by :func:`slab_region_gradients`: no graph below the target layer, and the full-resolution
stage and head run in slabs with a halo, so the backward pass holds one slab's activations (the same maps up to
float rounding, tested against ``GradCAM``).

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
from monai.visualize.visualizer import default_upsampler
from torch import nn
from torch.utils.checkpoint import checkpoint

from scripts.conventions import REGIONS
from scripts.networks import plain


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
        masks = (logits > 0) if self.masks is None else self.masks.to(logits.device)
        return (logits * region_weights(masks, logits.dtype)).flatten(2).sum(-1)


def region_weights(masks: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weights (B, R, *S) of the region scores of :class:`RegionScore` from region masks (B, R, *S): each
    mask as 0/1, or 1 everywhere for a region whose mask is empty."""
    masks = masks.bool()
    empty = masks.flatten(2).sum(-1) == 0
    return (masks | empty.view(*empty.shape, *[1] * (masks.ndim - 2))).to(dtype)


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


def recompute_decoder_blocks(network: nn.Module, last: bool = True) -> int:
    """Wrap the ``block`` of every stage of ``network.decoder`` (but the last one unless ``last``) in
    :class:`Recomputed`; returns how many."""
    stages = [m for m in getattr(network, "decoder", []) if isinstance(getattr(m, "block", None), nn.Module)]
    stages = stages if last else stages[:-1]
    for stage in stages:
        stage.block = Recomputed(stage.block)
    return len(stages)


SPATIAL_STATISTICS = (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
"""Layers whose output at a voxel depends on the whole image (statistics over space): a network with one of them
in its last decoder stage or head is not computed in slabs (:func:`slab_target`)."""


def slab_target(network: nn.Module, target_layer: str) -> int | None:
    """The encoder level ``k`` of ``target_layer`` (``encoder.<k>``, ``k >= 1``) when :func:`slab_region_gradients`
    gives ``network``'s Grad-CAM gradients exactly: a :class:`~scripts.networks.ResUNet` in eval mode whose last
    decoder stage and head are local (no layer of :data:`SPATIAL_STATISTICS`, no batch norm in training, stride-1
    zero-padded convs, a transposed conv with kernel = stride); ``None`` otherwise."""
    from scripts.networks import ResUNet

    parts = target_layer.split(".")
    if not isinstance(network, ResUNet) or network.training or not len(network.decoder):
        return None
    if len(parts) != 2 or parts[0] != "encoder" or not parts[1].isdigit() or int(parts[1]) < 1:
        return None
    stage = network.decoder[-1]
    for m in [*stage.modules(), *network.head.modules()]:
        if isinstance(m, SPATIAL_STATISTICS) or (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training):
            return None
        if isinstance(m, nn.modules.conv._ConvNd) and m is not stage.upsample:
            if any(v != 1 for v in m.stride) or m.padding_mode != "zeros" or m.transposed:
                return None
    if tuple(stage.upsample.kernel_size) != tuple(stage.upsample.stride) or any(stage.upsample.padding):
        return None
    return int(parts[1])


def slab_halo(network: nn.Module) -> int:
    """Voxels on each side that the last decoder stage and head of ``network`` look at beyond an output voxel
    (the sum of the half-widths of their convs: an upper bound of the receptive field's radius)."""
    convs = [
        m for m in [*network.decoder[-1].modules(), *network.head.modules()] if isinstance(m, nn.Conv3d | nn.Conv2d)
    ]
    return sum(max(d * (k - 1) // 2 for k, d in zip(m.kernel_size, m.dilation)) for m in convs)


def slabs(length: int, size: int, step: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges covering ``range(length)``, each at most ``size`` long (at least ``step``), with ``lo``
    a multiple of ``step``."""
    size = max(step, size // step * step)
    return [(lo, min(lo + size, length)) for lo in range(0, length, size)]


def slab_region_gradients(
    network: nn.Module, level: int, x: torch.Tensor, weights: torch.Tensor, max_voxels: int = 2**19
) -> tuple[torch.Tensor, torch.Tensor]:
    """The activations of ``network.encoder[level]`` (1, C, *s) and the gradient of each region's score with
    respect to them (R, C, *s), for an input ``x`` (1, C_in, *S) and the score weights (1, R, *S)
    (:func:`region_weights`): the score of region r is ``sum(logits[:, r] * weights[:, r])``.

    The forward pass keeps no graph below the target layer. The last decoder stage and the head (the
    full-resolution part, which holds most of the memory of a backward pass) run in slabs of at most
    ``max_voxels`` voxels across the axis outermost in memory (a slab is then one block of memory: no strided
    copies), each widened by :func:`slab_halo` on both sides (the halo's outputs are not scored): each slab's
    scores are differentiated with respect to the slab of the stage's input, and the sum of these gradients is
    passed back through the lower-resolution decoder to the target layer. The chain rule makes this the gradient of
    the whole-image scores, up to the order of the float sums; the memory of the backward pass is that of one slab.
    Needs :func:`slab_target`."""
    encoder = network.encoder
    with torch.no_grad():
        features = []
        for block in encoder[: level + 1]:
            x = block(x)
            features.append(x)
    acts = features[level] = x.detach().requires_grad_()
    with torch.enable_grad():
        h = acts
        for block in encoder[level + 1 :]:
            h = block(h)
            features.append(h)
        for j, dec in enumerate(network.decoder[:-1]):
            h = dec(h, features[len(features) - 2 - j])
        grads = _slab_gradients(network, h, features[0], weights, max_voxels)
        out = [torch.autograd.grad(h, acts, g, retain_graph=r < len(grads) - 1)[0] for r, g in enumerate(grads)]
    return acts.detach(), torch.cat(out)


def _slab_gradients(
    network: nn.Module, deeper: torch.Tensor, skip: torch.Tensor, weights: torch.Tensor, max_voxels: int
) -> list[torch.Tensor]:
    """Per region, the gradient (1, C, *s) of its score with respect to the last decoder stage's deeper input
    ``deeper`` (1, C, *s), the stage and the head run slab by slab (:func:`slab_region_gradients`)."""
    stage, spatial = network.decoder[-1], skip.shape[2:]
    axis = int(np.argmax(skip.stride()[2:]))  # outermost in memory: a slab is one block, not strided copies
    step = int(stage.upsample.stride[axis])
    halo = -(-slab_halo(network) // step) * step
    plane = int(np.prod(spatial)) // spatial[axis]
    grads = [torch.zeros_like(deeper) for _ in range(weights.shape[1])]
    for lo, hi in slabs(spatial[axis], max(max_voxels // plane - 2 * halo, step), step):
        a, b = max(lo - halo, 0), min(hi + halo, spatial[axis])
        part = deeper.narrow(axis + 2, a // step, (b - a) // step).detach().requires_grad_()
        logits = network.head(stage(part, skip.narrow(axis + 2, a, b - a)))
        kept = logits.narrow(axis + 2, lo - a, hi - lo) * weights.narrow(axis + 2, lo, hi - lo)
        scores = kept.flatten(2).sum(-1)[0]
        for r, grad in enumerate(grads):
            g = torch.autograd.grad(scores[r], part, retain_graph=r < len(grads) - 1)[0]
            grad.narrow(axis + 2, a // step, (b - a) // step).add_(g)
        del logits, kept, scores, part
    return grads


class RegionGradCAM:
    """Grad-CAM maps of every region of a segmentation network.

    ``network`` is deep-copied (MONAI's hooks stay on the copy, the caller's network is untouched);
    ``target_layer`` is a module name of ``network`` (default: :func:`default_target_layer`). Call with an
    input (1, C, *S) and, optionally, the predicted region masks (1, R, *S) that define the scores; returns
    (R, *S) maps in [0, 1] (the input is padded to the network's divisor and the maps cropped back).
    ``recompute``: recompute the decoder blocks in the backward pass (:func:`recompute_decoder_blocks`; not when
    the target layer is in the decoder). ``slab_voxels``: where :func:`slab_target` allows it (a ResUNet whose last
    decoder stage is local, e.g. with batch norm, and an encoder target layer), the full-resolution part of the
    backward pass runs in slabs of at most that many voxels (:func:`slab_region_gradients`: the same maps up to
    float rounding, the memory of one slab); ``None`` always uses ``monai.visualize.GradCAM`` on the whole
    input. ``margin``: with masks, the maps are computed in the box around the
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
        slab_voxels: int | None = 2**19,
    ):
        self.scorer = RegionScore(copy.deepcopy(network).eval())
        self.target_layer = target_layer or default_target_layer(network)
        names = dict(self.scorer.network.named_modules())
        if self.target_layer not in names:
            raise ValueError(f"Grad-CAM target layer {self.target_layer!r} is not a module of the network")
        self.layer = names[self.target_layer]
        self.level = None if slab_voxels is None else slab_target(self.scorer.network, self.target_layer)
        self.slab_voxels = slab_voxels
        if recompute and not self.target_layer.startswith("decoder"):
            recompute_decoder_blocks(self.scorer.network, last=self.level is None)
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
        x = plain(self.pad(plain(image[0])))[None]
        masks = None if masks is None else plain(self.pad(plain(masks[0])))[None]
        crop = (slice(None), *(slice(0, s) for s in spatial))
        if self.level is not None:
            return self._slab_maps(x, masks)[crop]
        self.scorer.masks = masks
        maps, last = [], len(REGIONS) - 1
        self.scorer.reuse = True
        try:
            with torch.enable_grad(), _gradients_only_for(self.scorer, self.layer), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                for r in range(len(REGIONS)):
                    maps.append(self.cam(x, class_idx=r, retain_graph=r < last)[0, 0].detach())
        finally:
            self.scorer.reuse, self.scorer._last, self.scorer.masks = False, None, None
        return torch.stack(maps)[crop]

    def _slab_maps(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """Maps (R, *S) of a padded input (1, C, *S) computed as ``monai.visualize.GradCAM`` does (the positive
        part of the activations weighted by the spatial mean of the gradient, upsampled, scaled by the maximum),
        with the gradients of :func:`slab_region_gradients`."""
        network = self.scorer.network
        if masks is None:
            with torch.no_grad():
                masks = network(x) > 0
        weights = region_weights(masks.to(x.device))
        acts, grads = slab_region_gradients(network, self.level, x, weights, self.slab_voxels)
        alpha = grads.flatten(2).mean(2).view(*grads.shape[:2], *[1] * (grads.ndim - 2))
        cams = torch.relu((alpha * acts).sum(1, keepdim=True))
        return scale_by_max(default_upsampler(x.shape[2:])(cams))[:, 0]


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
