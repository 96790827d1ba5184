"""Train the missing-sequence imputer (:class:`scripts.networks.imputer.SequenceImputer`) on the generator's cases.

The segmentation network stays as it is; the imputer learns to predict each sequence from any non-empty subset of
the others, in the network's input space (the preprocessing of ``configs/inference.json``: brain normalisation and
histogram equalisation). It trains on the synthetic training cases only (the validation fold of the segmentation
run is held out), so the real cases score it unseen::

    python -m scripts.imputation --dataset_dir data/synthetic_mni --output models/imputer.pt

Each step draws random crops of random training cases and, per crop, a random non-empty proper subset of the
sequences (each of the 14 equally likely); the loss is the mean absolute error on the missing sequences inside
the brain. Progress (loss, seconds) is printed every ``--log_every`` steps; the weights are written at the end
(temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose

from scripts.casework import load_network, parse_configs
from scripts.conventions import MODALITIES
from scripts.data.layouts import prepare_datalist
from scripts.io import atomic_path
from scripts.networks.imputer import SequenceImputer

CONFIG = "configs/inference.json"


def preprocessed_cases(dataset_dir: str, num_cases: int, num_folds: int, seed: int) -> list[dict]:
    """``{"image": (M, *S) float16, "tumour": (*S) bool}`` of ``num_cases`` training cases of ``dataset_dir``
    through inference.json's preprocessing (the validation fold of ``num_folds`` is left out)."""
    transform = Compose(parse_configs(CONFIG).get_parsed_content("preprocessing_transforms"))
    items = prepare_datalist(dataset_dir, 0, num_folds, seed)["training"]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(items), size=min(num_cases, len(items)), replace=False)
    cases = []
    for n, i in enumerate(chosen, 1):
        d = transform(items[i])
        image, regions = torch.as_tensor(d["image"]).half(), torch.as_tensor(d["label"])
        cases.append({"image": image, "tumour": (regions > 0.5).any(0)})
        print(f"[{n}/{len(chosen)}] {items[i].get('case_id', i)} {tuple(image.shape)}", flush=True)
    return cases


def random_batch(cases: list[dict], batch_size: int, roi: int, rng: np.random.Generator, tumour: float = 0.5):
    """(B, M, roi, roi, roi) crops centred on random brain voxels (on tumour voxels with probability
    ``tumour``), and the (B, M) kept-sequence masks."""
    crops, keep = [], []
    num = cases[0]["image"].shape[0]
    for _ in range(batch_size):
        case = cases[rng.integers(len(cases))]
        img = case["image"]
        where = case["tumour"] if rng.random() < tumour and case["tumour"].any() else (img != 0).any(0)
        voxels = torch.nonzero(where)
        centre = voxels[rng.integers(len(voxels))]
        start = [int(min(max(int(c) - roi // 2, 0), max(s - roi, 0))) for c, s in zip(centre, img.shape[1:])]
        crop = img[:, start[0] : start[0] + roi, start[1] : start[1] + roi, start[2] : start[2] + roi].float()
        pad = [p for s in reversed(crop.shape[1:]) for p in (0, roi - s)]
        crops.append(torch.nn.functional.pad(crop, pad))
        subset = int(rng.integers(1, 2**num - 1))
        keep.append(torch.tensor([float(subset >> c & 1) for c in range(num)]))
    return torch.stack(crops), torch.stack(keep)


def imputation_loss(
    model: torch.nn.Module,
    full: torch.Tensor,
    keep: torch.Tensor,
    segmenter: torch.nn.Module | None = None,
    segmentation_weight: float = 1.0,
) -> torch.Tensor:
    """Mean absolute error of the imputed sequences on the brain voxels of the missing ones; with a (frozen)
    ``segmenter``, plus ``segmentation_weight`` times the binary cross-entropy between its region sigmoids on the
    imputed input and on the full input (the imputation is judged by the segmentation it leads to)."""
    shape = (*keep.shape, *([1] * (full.dim() - 2)))
    given = keep.view(shape)
    pred = model(full * given)
    brain = (full * given != 0).any(dim=1, keepdim=True)
    weight = (1.0 - given) * brain
    loss = ((pred - full).abs() * weight).sum() / weight.sum().clamp_min(1.0)
    if segmenter is not None:
        with torch.no_grad():
            target = torch.sigmoid(segmenter(full))
        logits = segmenter(pred)
        loss = loss + segmentation_weight * torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    return loss


def train(args) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if args.cache and Path(args.cache).is_file():
        images = torch.load(args.cache, weights_only=True)
    else:
        images = preprocessed_cases(args.dataset_dir, args.num_cases, args.num_folds, args.seed)
        if args.cache:
            with atomic_path(args.cache) as tmp:
                torch.save(images, tmp)
    model = SequenceImputer(3, len(MODALITIES), args.channels, args.num_layers)
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
    segmenter = load_network(CONFIG, args.segmenter) if args.segmenter else None
    optimiser = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    start, running = time.perf_counter(), 0.0
    for step in range(1, args.steps + 1):
        full, keep = random_batch(images, args.batch_size, args.roi, rng)
        loss = imputation_loss(model, full, keep, segmenter, args.segmentation_weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        running += float(loss.detach())
        if step % args.log_every == 0 or step == args.steps:
            n = args.log_every if step % args.log_every == 0 else step % args.log_every
            print(f"step {step}/{args.steps} loss {running / n:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
            running = 0.0
    with atomic_path(args.output) as tmp:
        torch.save(model.state_dict(), tmp)
    print(f"imputer weights: {args.output}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset_dir", default="data/synthetic_mni")
    p.add_argument("--output", default="models/imputer.pt")
    p.add_argument("--num_cases", type=int, default=40)
    p.add_argument("--num_folds", type=int, default=48, help="the segmentation run's folds (fold 0 is held out)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--roi", type=int, default=48)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--log_every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", help="keep the preprocessed cases in this file (read back when it exists)")
    p.add_argument("--init", help="start from these imputer weights")
    p.add_argument("--segmenter", help="segmentation weights (inference.json's network): add its loss")
    p.add_argument("--segmentation_weight", type=float, default=1.0)
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
