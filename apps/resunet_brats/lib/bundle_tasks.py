"""MONAI Label infer and train tasks over this bundle's configs.

MONAI Label's stock ``BundleInferTask``/``BundleTrainTask`` read one config file each (``inference.json``,
``train.json``); the automatic model's configs stand alone. The interactive model is an overlay merged
over them (``deepedit_inference.json``, ``deepedit_train.json``), as ``python -m monai.bundle run --config_file
"[...]"`` does, so the tasks below are the stock ones with three changes: they read a list of config files, they
load weights from the model's own file under ``models/``, and they report the BraTS label names and values that
the label maps carry.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence

import monai.bundle
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer import bundle as infer_bundle
from monailabel.tasks.train import bundle as train_bundle

from .models import BundleModel

logger = logging.getLogger(__name__)


def read_configs(bundle_path: str, files: Sequence[str]) -> ConfigParser:
    """The bundle's config files merged in order (later files override earlier ids), ``bundle_root`` set."""
    parser = ConfigParser()
    parser.read_config([os.path.join(bundle_path, "configs", f) for f in files])
    parser.config.update({"bundle_root": bundle_path})
    return parser


def label_names(parser: ConfigParser, with_background: bool) -> dict[str, int]:
    """Label name -> value in the label maps the bundle writes: the bundle's class names
    (``scripts.conventions.CLASS_NAMES``, read through its configs) with its ``brats_labels`` (e.g. 1, 2, 4)."""
    values = [int(v) for v in parser.get_parsed_content("brats_labels")]
    parser["class_names"] = "$list(scripts.conventions.CLASS_NAMES)"
    background, *classes = parser.get_parsed_content("class_names")
    names = dict(zip(classes, values))
    return {background: 0, **names} if with_background else names


class _InferConstants(infer_bundle.BundleConstants):
    def __init__(self, model: BundleModel):
        self.model = model

    def configs(self) -> Sequence[str]:
        return self.model.infer_configs[:1]

    def model_pytorch(self) -> str:
        return self.model.weights


class _TrainConstants(train_bundle.BundleConstants):
    def __init__(self, model: BundleModel):
        self.model = model

    def configs(self) -> Sequence[str]:
        return self.model.train_configs[:1]


class ResUNetInferTask(infer_bundle.BundleInferTask):
    """Inference with the merged ``model.infer_configs``; the label map (uint8, BraTS values, the study's
    geometry) comes from the bundle's own post-processing, which MONAI Label's writer saves."""

    def __init__(self, bundle_path: str, conf: dict, model: BundleModel, type: str | None = None, **kwargs):
        self.model = model
        # extend_load_image=False keeps the bundle's LoadImaged (it allows a missing "label" key; MONAI Label's
        # LoadImageTensord wrapper does not).
        super().__init__(
            bundle_path,
            conf,
            const=_InferConstants(model),
            type=type or model.type,
            extend_load_image=False,
            load_strict=True,
            **kwargs,
        )
        if not self.valid:
            return
        self.labels = label_names(self.bundle_config, with_background=self.type == InferType.DEEPEDIT)
        weights_dir = os.path.dirname(os.path.join(bundle_path, "models", model.weights))
        self._config["model_filename"] = [os.path.basename(model.weights)] + sorted(
            os.path.basename(p)
            for p in glob.glob(os.path.join(weights_dir, "*.pt"))
            if os.path.basename(p) != os.path.basename(model.weights)
            and not os.path.basename(p).startswith("checkpoint_")
        )

    def _load_bundle_config(self, path, config):
        return read_configs(path, self.model.infer_configs)


class ResUNetTrainTask(train_bundle.BundleTrainTask):
    """Training with the merged ``model.train_configs`` on the datastore's saved labels, starting from the
    served weights; the best model replaces them (atomically), and the infer task reloads it on its next call."""

    def __init__(self, bundle_path: str, conf: dict, model: BundleModel, **kwargs):
        self.model = model
        super().__init__(bundle_path, conf, const=_TrainConstants(model), load_strict=True, **kwargs)

    def _load_bundle_config(self, path, config):
        return read_configs(path, self.model.train_configs)

    def config(self):
        options = super().config()
        options["model_filename"] = os.path.basename(self.model.weights)
        options["max_epochs"] = int(self.conf.get("max_epochs", options["max_epochs"]))
        return options

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        # Start from the served weights (the stock task fails on pretrained=False: os.path.exists(None)).
        if pretrained:
            super()._load_checkpoint(os.path.join(self.bundle_path, "models", self.model.weights), True, train_handlers)

    def _update_overrides(self, overrides):
        # Validate at least once however short the run, so that the best model (the served weights) is written.
        epochs = int(overrides[self.const.key_train_trainer_max_epochs()])
        overrides["val_interval"] = max(1, min(int(self.bundle_config.get("val_interval", 1)), epochs))
        # Retraining from the clinicians' labels replaces the served weights on purpose.
        overrides["overwrite_shipped"] = True
        return overrides

    def run_single_gpu(self, request, overrides):
        # The stock task runs the first config file only; merge them all.
        monai.bundle.run(
            run_id=request.get("run_id", "run"),
            init_id=None,
            final_id=None,
            meta_file=self.bundle_metadata_path,
            config_file=[os.path.join(self.bundle_path, "configs", f) for f in self.model.train_configs],
            **overrides,
        )
