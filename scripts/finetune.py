"""The fine-tuning recipe (``configs/finetune.json``): learn a few corrected real cases from trained weights
without forgetting what the weights know.

* :func:`finetune_datalist` trains on every labelled case of the given data and on synthetic training cases
  replayed beside them, each listed once (preprocessed and cached once) with sampling weights that make the
  real cases half of the draws; it validates on the synthetic cases the weights were never trained on (the
  held-out fold of the shipped recipe) plus any validation cases given.
* :func:`freeze_norm_statistics` keeps the BatchNorm statistics of the trained weights: a handful of cases
  would otherwise pull the running means towards themselves, and every other scan would be normalised wrongly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from scripts.data.checks import format_failure
from scripts.data.layouts import find_cases, load_datalist, prepare_datalist, valid_entries

logger = logging.getLogger(__name__)


def labelled_cases(dataset_dir: str | os.PathLike | Sequence[dict]) -> list[dict]:
    """Every labelled case of ``dataset_dir``: a datalist JSON (every entry of its ``training`` and ``validation``
    lists, folds or not; a bad entry is skipped with a warning), a folder in any layout the bundle reads, or the
    entries themselves (``image``, ``label``, ``case_id``; e.g. a MONAI Label datastore's labelled studies). One
    case is enough; none is a ``FileNotFoundError``."""
    if isinstance(dataset_dir, Sequence) and not isinstance(dataset_dir, str):
        good, skipped = valid_entries({"training": list(dataset_dir)}, "training", "the given cases")
        for record in skipped:
            logger.warning("case skipped: %s", format_failure(record))
        if not good:
            raise FileNotFoundError("no labelled case to fine-tune on among the given cases")
        return [dict(c) for c in good]
    path = Path(dataset_dir)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: datalist file does not exist (check --dataset_dir)")
        datalist, cases = load_datalist(path), []
        for key in ("training", "validation"):
            good, skipped = valid_entries(datalist, key, path) if key in datalist else ([], [])
            for record in skipped:
                logger.warning("case skipped: %s", format_failure(record))
            cases += [c for c in good if "label" in c]
    else:
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: dataset folder does not exist (check --dataset_dir)")
        cases = [c for c in find_cases(path)[1] if "label" in c]
    if not cases:
        raise FileNotFoundError(f"{path}: no labelled case to fine-tune on (a case needs its <id>_seg.nii.gz)")
    return cases


def finetune_datalist(
    dataset_dir: str | os.PathLike | Sequence[dict],
    replay_dir: str | os.PathLike | None,
    replay_folds: int = 48,
    val_dir: str | os.PathLike | Sequence[dict] | None = None,
    num_replay: int = 32,
    seed: int = 0,
    real_fraction: float = 0.5,
) -> dict:
    """``{"training": ..., "validation": ..., "sampling_weights": ...}`` of a fine-tuning run.

    Training: the labelled cases of ``dataset_dir`` (:func:`labelled_cases`) and ``num_replay`` cases drawn
    (with ``seed``) from the training folds of ``replay_dir`` (the synthetic data of the shipped recipe, split
    into ``replay_folds`` folds as that recipe splits it), each listed once (so each is preprocessed and cached
    once).
    ``sampling_weights`` (one per training item) make the real cases ``real_fraction`` of the draws of a
    ``WeightedRandomSampler``. Validation: the held-out fold of ``replay_dir`` and the labelled cases of
    ``val_dir``. Without ``replay_dir`` the real cases alone are trained and validated on ``val_dir`` only
    (which must then be given).
    """
    if not 0 < real_fraction <= 1:
        raise ValueError(f"real_fraction {real_fraction}: must be in (0, 1]")
    real = labelled_cases(dataset_dir)
    validation = labelled_cases(val_dir) if val_dir else []
    replay = []
    if replay_dir:
        split = prepare_datalist(replay_dir, 0, replay_folds, 0)
        pool = split["training"]
        picks = np.random.default_rng(seed).choice(len(pool), size=min(num_replay, len(pool)), replace=False)
        replay = [pool[i] for i in sorted(picks)]
        validation = split["validation"] + validation
    if not validation:
        raise ValueError("fine-tuning needs held-out cases to validate on: give --replay_dir or --val_dir")
    fraction = real_fraction if replay else 1.0
    weights = [fraction / len(real)] * len(real) + [(1 - fraction) / max(1, len(replay))] * len(replay)
    names = ", ".join(sorted({c["case_id"] for c in real}))
    logger.info(
        "fine-tuning on %d real case(s) (%s, %.0f%% of the patches) and %d replayed synthetic case(s); "
        "%d validation case(s)",
        len(real),
        names,
        100 * fraction,
        len(replay),
        len(validation),
    )
    training = _shared_keys([dict(case) for case in real] + replay)
    return {"training": training, "validation": validation, "sampling_weights": weights}


def _shared_keys(items: list[dict]) -> list[dict]:
    """``items`` with only the keys every one of them has (real and synthetic items carry different extras, e.g.
    ``fold``, and one batch must collate them together)."""
    keys = set.intersection(*(set(item) for item in items))
    return [{k: v for k, v in item.items() if k in keys} for item in items]


def _keep_eval(module: torch.nn.Module, _inputs) -> None:
    module.train(False)


def freeze_norm_statistics(network: torch.nn.Module) -> torch.nn.Module:
    """Keep every BatchNorm layer of ``network`` in eval mode, also while the network trains: it normalises with
    the running statistics of the trained weights and never updates them (its affine weights still learn).
    Returns ``network``."""
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(_keep_eval)
    return network


def freeze_parameters(network: torch.nn.Module, prefixes: list[str] | tuple[str, ...] = ()) -> torch.nn.Module:
    """Stop the parameters whose names start with one of ``prefixes`` (e.g. ``["encoder"]``) from learning
    (``requires_grad`` False; the optimiser then leaves them as they are). Returns ``network``.

    Raises:
        ValueError: a prefix names no parameter of ``network`` (a typo would otherwise freeze nothing).
    """
    names = [name for name, _ in network.named_parameters()]
    for prefix in prefixes:
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            raise ValueError(f"frozen_modules: {prefix!r} names no parameter of the network (e.g. {names[0]!r})")
        for name, p in network.named_parameters():
            if name in hits:
                p.requires_grad_(False)
    if prefixes:
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        total = sum(p.numel() for p in network.parameters())
        logger.info("fine-tuning %d of %d parameters (frozen: %s)", trainable, total, ", ".join(prefixes))
    return network
