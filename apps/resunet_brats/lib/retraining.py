"""The rules of a retraining request that a clinician can trust (no MONAI Label import: plain functions).

- :func:`check_options`: the request's options, or a :class:`TrainingRequestError` (HTTP 400) naming the option.
- :func:`split_validation`: the gate's studies are ones that neither the served weights nor the new ones were
  trained on. ``val_split`` of the labelled studies (at least one, at most all but one) are held out, chosen
  among those the served weights never saw; the bundle's fine-tuning recipe adds its held-out synthetic cases.
  When no study can be held out and there is no synthetic data, the request is refused (HTTP 409) with the
  remedies; ``val_split`` 0 asks to validate on the training studies themselves (a fit, said in the result).
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
    """``val_split`` (0 <= v < 1), ``max_epochs`` (>= 1, or None: the recipe's own), ``device`` of the request,
    checked."""
    options = {}
    try:
        options["val_split"] = float(request.get("val_split", DEFAULT_VAL_SPLIT))
        epochs = request.get("max_epochs")
        options["max_epochs"] = None if epochs in (None, "") else int(epochs)
    except (TypeError, ValueError) as e:
        raise TrainingRequestError(400, f"val_split and max_epochs must be numbers: {e}") from None
    if not 0.0 <= options["val_split"] < 1.0:
        raise TrainingRequestError(
            400,
            f"val_split {request.get('val_split')!r}: must be in [0, 1): the fraction of labelled studies held out "
            "for validation (0: validate on the training studies)",
        )
    if options["max_epochs"] is not None and options["max_epochs"] < 1:
        raise TrainingRequestError(400, f"max_epochs {request.get('max_epochs')!r}: must be at least 1")
    return options


def case_id(item: dict) -> str:
    name = os.path.basename(str(item["image"]))
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def split_validation(
    datalist: list[dict], val_split: float, model: str, seen=(), synthetic: str = ""
) -> tuple[list, list, dict]:
    """(training items, held-out items, description) of the labelled studies.

    Args:
        datalist: the labelled studies (``image``, ``label``).
        val_split: the fraction of them to hold out (0: validate on the training studies, a fit).
        model: the model's name, for the messages.
        seen: case ids the served weights were trained on (:func:`versions.trained_on`): never held out, since
            the gate must compare the two weights on studies neither was trained on.
        synthetic: where the recipe's held-out synthetic cases are, or "" when there are none.

    The held-out studies are the last unseen ones in case-id order, so the same labels give the same split.

    Raises:
        TrainingRequestError: no labelled study (409), or nothing to validate on that neither weights saw (409).
    """
    items = sorted(datalist, key=case_id)
    n = len(items)
    if n == 0:
        raise TrainingRequestError(
            409,
            f"{model}: cannot train: the datastore holds no study with a final label; save a corrected label "
            "first (Submit Label in 3D Slicer, PUT /datastore/label?image=<id>&tag=final)",
        )
    seen = set(seen)
    if val_split == 0.0:
        mode, train, val = "training_studies", items, items
        note = (
            f"{n} labelled study(ies): validating on the training studies themselves (val_split 0); the Dice "
            "measures fit to these labels, not accuracy on unseen studies"
        )
    else:
        unseen = [c for c in items if case_id(c) not in seen]
        n_val = min(len(unseen), n - 1, max(1, round(n * val_split)))
        val = unseen[len(unseen) - n_val :] if n_val else []
        held = {case_id(c) for c in val}
        train = [c for c in items if case_id(c) not in held]
        if not val and not synthetic:
            raise TrainingRequestError(409, _nothing_to_validate(model, n, len(unseen)))
        mode = "held_out"
        note = f"{n} labelled study(ies): {len(train)} for training, {n_val} held out"
        if len(unseen) < n:
            note += f" ({n - len(unseen)} were trained on by the served weights: never held out)"
        if synthetic:
            note += f", plus the held-out synthetic cases of {synthetic}"
        note += "; neither the served nor the new weights were trained on any validation case"
    info = {
        "mode": mode,
        "training_cases": [case_id(c) for c in train],
        "held_out_studies": [case_id(c) for c in val],
        "note": note,
    }
    return train, val, info


def _nothing_to_validate(model: str, n: int, unseen: int) -> str:
    why = "one labelled study cannot be both trained on and held out" if n == 1 else "no labelled study can be held out"
    if unseen == 0:
        why = f"the served weights were trained on all {n} labelled study(ies)"
    return (
        f"{model}: cannot compare the new weights with the served ones on studies neither was trained on: {why}, "
        "and the bundle has no synthetic replay data (data/synthetic_mni). Label another study, generate the "
        "replay data (python -m scripts.synthetic.generator --output_dir <bundle>/data/synthetic_mni "
        "--num_cases 249), or send val_split 0 to validate on the training studies (a fit, not a test)"
    )


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
