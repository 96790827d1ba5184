"""The bundle's models as the MONAI Label app serves them (no MONAI Label import: the tests read this too)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class BundleModel:
    """One model of the bundle as MONAI Label serves it.

    Attributes:
        infer_configs: config files (under ``<bundle>/configs``) merged in this order for inference.
        train_configs: the same for training from scratch (``python -m monai.bundle run training``).
        retrain_configs: the same for retraining on clinicians' corrections from the served weights: the
            bundle's fine-tuning recipe, ``finetune.json``, merged last.
        weights: the weights file under ``<bundle>/models`` that inference loads (a retraining run writes its
            own run folder, ``ckpt_path`` overridden, and the app serves its result there).
        type: MONAI Label infer type (``segmentation`` or ``deepedit``).
    """

    infer_configs: tuple[str, ...]
    train_configs: tuple[str, ...]
    weights: str
    type: str

    @property
    def retrain_configs(self) -> tuple[str, ...]:
        return (*self.train_configs, "finetune.json")


MODELS = {
    "resunet_brats": BundleModel(("inference.json",), ("train.json",), "model.pt", "segmentation"),
    "resunet_brats_deepedit": BundleModel(
        ("inference.json", "deepedit_inference.json"),
        ("train.json", "deepedit_train.json"),
        os.path.join("deepedit", "model.pt"),
        "deepedit",
    ),
    "resunet_brats_student": BundleModel(
        ("inference.json", "student.json"), ("train.json", "student.json"), "student.pt", "segmentation"
    ),
}


def missing_files(bundle_path: str, model: BundleModel) -> list[str]:
    """Config files of ``model`` that the bundle lacks."""
    files = {*model.infer_configs, *model.retrain_configs}
    return sorted(f for f in files if not os.path.isfile(os.path.join(bundle_path, "configs", f)))
