"""MONAI Label app serving this bundle: automatic ResUNet segmentation of four-modality brain MRI, click-based
correction with the DeepEdit-style variant, and retraining on the labels clinicians save.

Start it with ``python apps/server.py start --studies DATASTORE`` (see docs/monailabel.md), which runs
``monailabel start_server --app apps/resunet_brats ...`` in the server environment. Options (``--conf KEY VALUE``):

- ``bundle_path``: the bundle whose configs and weights are served (default: the repository this app lives in;
  the Python package ``scripts`` is the one installed in the server environment, this repository's);
- ``models``: ``all`` (default) or a comma-separated list of ``resunet_brats``, ``resunet_brats_deepedit``,
  ``resunet_brats_student`` (the distilled student, ``configs/student.json``);
- ``max_epochs``: default epochs of a training request (default: the fine-tuning recipe's, ``finetune.json``);
- ``allow_missing_modalities``: ``true`` segments studies that lack sequences (all-zero channels, imputed) and
  names them in the result (``missing_sequences``); default ``false``: such a study is an error;
- ``preload``, ``skip_trainers``: as in MONAI Label's sample apps.

A model is served once its weights exist (``models/model.pt``, ``models/deepedit/model.pt``,
``models/student.pt``); train them with the bundle's configs first (README.md, docs/interactive.md).
"""

from __future__ import annotations

import json
import logging
import os

from lib import endpoints
from lib.bundle_tasks import ResUNetInferTask, ResUNetTrainTask
from lib.dicomweb import DICOMwebStudiesApp
from lib.models import MODELS, missing_files
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ResUNetBraTSApp(DICOMwebStudiesApp, MONAILabelApp):  # DICOMweb: four MR series per study (lib/dicomweb.py)
    def __init__(self, app_dir, studies, conf):
        self.bundle_dir = os.path.abspath(conf.get("bundle_path", DEFAULT_BUNDLE))
        wanted = conf.get("models", "all")
        names = list(MODELS) if wanted == "all" else [m.strip() for m in wanted.split(",") if m.strip()]
        unknown = sorted(set(names) - set(MODELS))
        if unknown:
            raise ValueError(f"--conf models: unknown {unknown}; choose from {list(MODELS)} or 'all'")
        self.models = {}
        for name in names:
            missing = missing_files(self.bundle_dir, MODELS[name])
            if missing:
                logger.warning(f"{name}: not served, {self.bundle_dir}/configs lacks {missing}")
            else:
                self.models[name] = MODELS[name]
        with open(os.path.join(self.bundle_dir, "configs", "metadata.json")) as f:
            metadata = json.load(f)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=metadata.get("name", "ResUNet BraTS"),
            description=metadata.get("description", ""),
            version=metadata.get("version", ""),
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, model in self.models.items():
            tasks = {name: ResUNetInferTask(self.bundle_dir, self.conf, model)}
            if model.type == InferType.DEEPEDIT:  # the same network without clicks: automatic first pass
                tasks[f"{name}_seg"] = ResUNetInferTask(self.bundle_dir, self.conf, model, type=InferType.SEGMENTATION)
            for key, task in tasks.items():
                if task.is_valid():
                    infers[key] = task
                else:
                    logger.warning(f"{key}: not served, no weights at {self.bundle_dir}/models/{model.weights}")
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        trainers = {name: ResUNetTrainTask(self.bundle_dir, self.conf, model) for name, model in self.models.items()}
        return {name: t for name, t in trainers.items() if t.is_valid()}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def on_init_complete(self):
        super().on_init_complete()
        endpoints.install()  # checked training requests, versions of the weights (lib/endpoints.py)
