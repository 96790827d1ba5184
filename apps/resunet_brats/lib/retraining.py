"""The rules of a retraining request that a clinician can trust (no MONAI Label import: plain functions).

- :func:`check_options`: the request's options, or a :class:`TrainingRequestError` (HTTP 400) naming the option.
- :func:`split_validation`: never an empty validation set. With one labelled study it is trained on and
  validated on (said in the result); with two or more, ``val_split`` of them (at least one, at most all but one)
  are held out for validation; ``val_split`` 0 validates on all the training studies. No labelled study:
  :class:`TrainingRequestError` (HTTP 409).
- :func:`decide`: the new weights replace the served ones only if their validation Dice on the same cases is at
  least the served weights' Dice.
"""

from __future__ import annotations

import math
import os

from monai.bundle import ConfigParser

from scripts.casework import load_weights

DEFAULT_VAL_SPLIT = 0.2


class TrainingRequestError(ValueError):
    """A training request that cannot train; ``status`` is the HTTP status the client gets (400: a bad option,
    409: the datastore cannot give a training, e.g. no labelled study, 429: a training is already running)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_options(request: dict) -> dict:
    """``val_split`` (0 <= v < 1), ``max_epochs`` (>= 1), ``device`` of the request, checked."""
    options = {}
    try:
        options["val_split"] = float(request.get("val_split", DEFAULT_VAL_SPLIT))
        options["max_epochs"] = int(request.get("max_epochs", 50))
    except (TypeError, ValueError) as e:
        raise TrainingRequestError(400, f"val_split and max_epochs must be numbers: {e}") from None
    if not 0.0 <= options["val_split"] < 1.0:
        raise TrainingRequestError(
            400,
            f"val_split {request.get('val_split')!r}: must be in [0, 1): the fraction of labelled studies held out "
            "for validation (0: validate on the training studies)",
        )
    if options["max_epochs"] < 1:
        raise TrainingRequestError(400, f"max_epochs {request.get('max_epochs')!r}: must be at least 1")
    return options


def case_id(item: dict) -> str:
    name = os.path.basename(str(item["image"]))
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def split_validation(datalist: list[dict], val_split: float, model: str) -> tuple[list, list, dict]:
    """(training items, validation items, description) of the labelled studies; never an empty validation set.

    The held-out studies are the last ones in case-id order, so the same labels give the same split.
    """
    items = sorted(datalist, key=case_id)
    n = len(items)
    if n == 0:
        raise TrainingRequestError(
            409,
            f"{model}: cannot train: the datastore holds no study with a final label; save a corrected label "
            "first (Submit Label in 3D Slicer, PUT /datastore/label?image=<id>&tag=final)",
        )
    if n == 1 or val_split == 0.0:
        mode = "training_studies"
        train, val = items, items
        note = (
            f"{n} labelled study(ies): validating on the training studies themselves "
            + ("(one label cannot be split)" if n == 1 else "(val_split 0)")
            + "; the Dice measures fit to these labels, not accuracy on unseen studies"
        )
    else:
        n_val = min(n - 1, max(1, round(n * val_split)))
        mode = "held_out"
        train, val = items[: n - n_val], items[n - n_val :]
        note = (
            f"{n} labelled studies: {len(train)} for training, {n_val} held out for validation (val_split {val_split})"
        )
    info = {
        "mode": mode,
        "training_cases": [case_id(c) for c in train],
        "validation_cases": [case_id(c) for c in val],
        "note": note,
    }
    return train, val, info


def evaluate(parser: ConfigParser, weights: str, val_items: list[dict], device, seed: int = 0) -> dict:
    """The bundle's own validation (``validate#evaluator`` of the parsed train configs) of ``weights`` on
    ``val_items``: ``{metric name: value}``, the key metric first. No handler runs (nothing is written).

    Raises:
        scripts.casework.CheckpointError: ``weights`` is missing, unreadable or another network's (one line).
    """
    from monai.utils import set_determinism

    parser["device"] = device
    parser["num_workers"] = 0
    parser["validate#dataset#data"] = val_items
    parser["validate#handlers"] = []
    set_determinism(seed=seed)  # the interactive model's validation simulates clicks: the same for every weights
    try:
        network = parser.get_parsed_content("network", instantiate=True)
        load_weights(network, weights, device, exit_on_error=False)
        evaluator = parser.get_parsed_content("validate#evaluator", instantiate=True)
        evaluator.run()
    finally:
        set_determinism(seed=None)
    metrics = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))}
    key = evaluator.state.key_metric_name
    return {key: metrics.pop(key), **metrics}


def decide(served: float | None, candidate: float) -> tuple[bool, str]:
    """(replace the served weights?, why): only when the candidate validates at least as well."""
    if not math.isfinite(candidate):
        return False, f"the new weights' validation Dice is {candidate}: kept the served weights"
    if served is None:
        return True, "no weights were served: the new weights are served"
    if not math.isfinite(served):
        return True, f"the served weights' validation Dice was {served}: the new weights ({candidate:.4f}) are served"
    if candidate >= served:
        return (
            True,
            f"validation Dice {candidate:.4f} >= {served:.4f} of the served weights: the new weights are served",
        )
    return False, f"validation Dice {candidate:.4f} < {served:.4f} of the served weights: kept the served weights"
